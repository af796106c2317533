"""Where a pattern sits as a slot token: the small model says *that* it locates a pattern, the grid says where.

The default model learnt the form of a location answer but not the place: the sectors it named
were the ones most common in training, not the map's (`defect-glm eval --locations`). The fix is
the one that made its numbers exact (`finetune.number_slots`): in training answers, the sentence
that places an Edge-Loc, Loc or Scratch pattern (`data_tools.answers.location_sentence`, built
from `data_tools.locate`) is one slot token per pattern and language, e.g. ``<loc_scratch_en>``,
and so is the place of the largest cluster of failing dies (``<loc_largest_cluster_zh>`` for
"中心区（W）"); after generation, `fill_locations` measures the map and writes them in. The
patterns the other places depend on (a Loc cluster is looked for away from a Center blob, a
Donut ring and the edge failures) are the ones the answer names, so a filled answer agrees with
what it says the wafer shows.

Only patterns whose place is measured get a slot; the others' sentences hold nothing but their
zone and numbers (number slots). Checkpoints without these tokens are untouched.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from data_tools.answers import LANGUAGES, cluster_place, location_sentence
from data_tools.locate import locate
from data_tools.taxonomy import BY_KEY, canonical_set
from finetune.added_tokens import holds_added_tokens

if TYPE_CHECKING:
    from collections.abc import Iterable

    from data_tools.wafer_map import WaferMap

#: Patterns whose place is measured from the grid (sectors, orientation), so have a location slot.
LOCATED_PATTERNS: tuple[str, ...] = ("Edge_Loc", "Loc", "Scratch")
#: The other measured place in answers: where the largest cluster of failing dies sits (zone, sector).
LARGEST_CLUSTER = "largest_cluster"
LOCATION_PREFIX = "<loc_"
_SLOT = re.compile(re.escape(LOCATION_PREFIX) + r"([a-z_]+?)_(en|zh)>")
_PATTERN_OF = {key.lower(): key for key in LOCATED_PATTERNS}
_PLACES = (*LOCATED_PATTERNS, LARGEST_CLUSTER)


def location_token(place: str, language: str) -> str:
    """The token text of one place's slot in one language; `place` is a located pattern or LARGEST_CLUSTER."""
    if place not in _PLACES or language not in LANGUAGES:
        raise ValueError(f"no location slot for {place!r} in {language!r}; slots: {_PLACES} × {LANGUAGES}")
    return f"{LOCATION_PREFIX}{place.lower()}_{language}>"


#: (place, language) of every location slot, in token order.
LOCATION_SLOTS: tuple[tuple[str, str], ...] = tuple((place, lang) for place in _PLACES for lang in LANGUAGES)
LOCATION_TOKENS: tuple[str, ...] = tuple(location_token(place, lang) for place, lang in LOCATION_SLOTS)


def opening_words(place: str, language: str) -> str:
    """The words a place's slot text starts with ("The Scratch", "划痕"): a checkpoint given the slots
    later starts each new token's embedding from theirs, so the tokens differ from the first step."""
    if place == LARGEST_CLUSTER:
        return "the zone" if language == "en" else "区"
    pattern = BY_KEY[place]
    return f"The {pattern.english}" if language == "en" else pattern.chinese


def has_location_slots(tokenizer: object) -> bool:
    """True when a tokenizer holds every location slot token (a checkpoint trained with them)."""
    return holds_added_tokens(tokenizer, LOCATION_TOKENS)


def slot_locations(text: str, wafer: WaferMap, patterns: Iterable[str]) -> str:
    """`text` with each measured place as its slot: the located patterns' sentences (as `locate` places
    them among `patterns`) and the largest cluster's zone and sector."""
    facts = wafer.facts()
    largest = facts["clusters"]["largest"]
    if largest is not None:
        for language in LANGUAGES:
            text = text.replace(cluster_place(largest, language), location_token(LARGEST_CLUSTER, language))
    keys = canonical_set(patterns)
    if not any(key in LOCATED_PATTERNS for key in keys):
        return text
    for loc in locate(wafer, keys):
        if loc.key in LOCATED_PATTERNS:
            for language in LANGUAGES:
                text = text.replace(location_sentence(loc, facts, language), location_token(loc.key, language))
    return text


def named_patterns(text: str) -> tuple[str, ...]:
    """The patterns an answer names (not negated) plus those whose location slot it holds."""
    from finetune.answer_parser import mentions

    plain = _SLOT.sub(" ", text)
    keys = {key for key, negated in mentions(plain, names_only=True) if not negated}
    keys.update(_PATTERN_OF[m.group(1)] for m in _SLOT.finditer(text) if m.group(1) in _PATTERN_OF)
    return canonical_set(keys)


def fill_locations(text: str, wafer: WaferMap, context: str = "") -> str:
    """`text` with every location slot replaced by the place measured on `wafer` (unknown slots stay).

    Patterns are placed among the patterns named (`named_patterns`) in `context + text`: `context`
    is what came before `text` in the thread (earlier answers, the streamed part of this one), so
    "where is the Loc?" after "Center and Loc" looks for the cluster away from the Center blob.
    """
    if LOCATION_PREFIX not in text:
        return text
    facts = wafer.facts()
    largest = facts["clusters"]["largest"]
    by_key = {}
    if any(m.group(1) in _PATTERN_OF for m in _SLOT.finditer(text)):
        by_key = {loc.key: loc for loc in locate(wafer, named_patterns(context + text))}

    def replace(match: re.Match) -> str:
        place, language = match.group(1), match.group(2)
        if place == LARGEST_CLUSTER:
            return match.group(0) if largest is None else cluster_place(largest, language)
        loc = by_key.get(_PATTERN_OF.get(place, ""))
        return match.group(0) if loc is None else location_sentence(loc, facts, language)

    return _SLOT.sub(replace, text)
