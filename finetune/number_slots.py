"""Measured numbers as slot tokens: the small model writes *which* number goes where, the grid supplies it.

A 4-layer decoder does not learn to copy a multi-digit count out of its prompt digit by digit
(the first default model wrote plausible numbers near the truth instead). So a small checkpoint
whose tokenizer holds the slot tokens below is trained on answers where every measured number
(dies, failing, good, yield, the zone counts, cluster count and size) is one slot token, e.g.
``<num_failing> of the <num_dies> dies fail.``, and `fill_slots` puts the numbers measured from
the die grid into the generated text. What the model learns is the language (which number a
question asks for, and where it goes in the sentence); the numbers are exact by construction.

`slot_numbers` turns a written answer into its slotted form using the map's facts
(`WaferMap.facts()`); a number that matches no fact, or several facts at once, stays as written.
Checkpoints without slot tokens (VisualGLM, older small models) are untouched: both functions
only act when asked to.

`slot_answer`, `fill_from_map` and `fill_stream` are what training and generation call: they
handle the location slots of `finetune.location_slots` as well, so every slot kind is put in and
filled in one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from finetune.added_tokens import holds_added_tokens
from finetune.location_slots import LOCATION_PREFIX, fill_locations, slot_locations

if TYPE_CHECKING:
    from data_tools.wafer_map import WaferMap

#: The measured numbers that have a slot (values: `slot_values`).
SLOT_NAMES: tuple[str, ...] = (
    "dies", "failing", "good", "yield",
    "center_dies", "center_failing", "middle_dies", "middle_failing", "edge_dies", "edge_failing",
    "clusters", "largest",
)
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w]|\.\d)")
SLOT_PREFIX = "<num_"
_SLOT = re.compile(re.escape(SLOT_PREFIX) + r"([a-z_]+)>")


def slot_token(name: str) -> str:
    """The token text of one slot (added to the tokenizer as an ordinary, decoded token)."""
    if name not in SLOT_NAMES:
        raise ValueError(f"unknown number slot {name!r}; slots are {SLOT_NAMES}")
    return f"{SLOT_PREFIX}{name}>"


SLOT_TOKENS: tuple[str, ...] = tuple(slot_token(name) for name in SLOT_NAMES)


def slot_values(facts: dict) -> dict[str, str]:
    """Each slot's text for a map (as answers write it: yield with two decimals, counts as integers)."""
    zones = facts["zones"]
    values = {
        "dies": facts["dies"],
        "failing": facts["failing"],
        "good": facts["good"],
        "yield": f"{facts['yield']:.2f}",
        "clusters": facts["clusters"]["count"],
    }
    for zone in ("center", "middle", "edge"):
        values[f"{zone}_dies"] = zones[zone]["dies"]
        values[f"{zone}_failing"] = zones[zone]["failing"]
    largest = facts["clusters"]["largest"]
    if largest is not None:
        values["largest"] = largest["size"]
    return {name: str(value) for name, value in values.items()}


def has_slots(tokenizer: object) -> bool:
    """True when a tokenizer holds every slot token as an added token (a checkpoint trained with slots)."""
    return holds_added_tokens(tokenizer, SLOT_TOKENS)


def slot_numbers(text: str, facts: dict) -> str:
    """`text` with every number that equals exactly one measured value replaced by that value's slot."""
    by_text: dict[str, list[str]] = {}
    for name, value in slot_values(facts).items():
        by_text.setdefault(value, []).append(name)

    def replace(match: re.Match) -> str:
        names = by_text.get(match.group(0), [])
        return slot_token(names[0]) if len(names) == 1 else match.group(0)

    return _NUMBER.sub(replace, text)


def slot_answer(text: str, wafer: WaferMap, patterns: Iterable[str], locations: bool = False) -> str:
    """An answer as a checkpoint with slots reads and writes it: numbers and, with `locations`, places as slots.

    Places are measured among `patterns`: the map's labels in training, the patterns the thread
    has named so far for a history answer at inference (as `fill_from_map` filled them).
    """
    if locations:
        text = slot_locations(text, wafer, patterns)
    return slot_numbers(text, wafer.facts())


def fill_slots(text: str, facts: dict) -> str:
    """`text` with every slot token replaced by the map's measured value (unknown slots are left as written)."""
    values = slot_values(facts)
    return _SLOT.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def fill_from_map(answer: str, wafer: WaferMap | None, said: Sequence[str] = ()) -> str:
    """A generated answer with its location and number slots filled from `wafer` (as written when there is no map).

    `said` holds the thread's earlier answers, whose pattern names count where places are measured
    (`finetune.location_slots.fill_locations`).
    """
    if wafer is None:
        return answer
    return fill_slots(fill_locations(answer, wafer, _context(said)), wafer.facts())


def _context(said: Sequence[str]) -> str:
    return "".join(f"{text}\n" for text in said)


def _may_be_slot(tail: str) -> bool:
    """True when `tail` (text from a "<" on, without ">") could still become a slot token."""
    return any(prefix.startswith(tail[: len(prefix)]) for prefix in (SLOT_PREFIX, LOCATION_PREFIX))


def fill_stream(pieces: Iterator[str], wafer: WaferMap, said: Sequence[str] = ()) -> Iterator[str]:
    """`fill_from_map` over streamed text: a piece ending inside a slot token waits for the rest of it.

    From a location slot on, the rest of the answer is held and filled at its end: where a Loc
    cluster is looked for depends on every pattern the answer names, including those after it.
    """
    facts = wafer.facts()
    sent, pending = "", ""
    for piece in pieces:
        pending += piece
        if LOCATION_PREFIX in pending:
            continue
        cut = pending.rfind("<")
        if cut != -1 and ">" not in pending[cut:] and _may_be_slot(pending[cut:]):
            ready, pending = pending[:cut], pending[cut:]
        else:
            ready, pending = pending, ""
        if ready:
            sent += ready
            yield fill_slots(ready, facts)
    if pending:
        yield fill_slots(fill_locations(pending, wafer, _context(said) + sent), facts)
