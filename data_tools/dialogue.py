"""Sampling question/answer conversations about one wafer map (single- and multi-turn).

A conversation follows one scenario: a single question of one type (recognition,
location, count, cause, check, yes/no), or a chain whose later questions only make sense
with the earlier turns ("What could cause it?", "And the second one?", "Where is it?",
"那良率呢？"). It is in one language, except that a share of them (`SWITCH_SHARE`) go on
with one or two self-contained questions in the other language, as bilingual engineers
do in one thread: the answer follows the language of the question, not of the thread.
Questions come from `data_tools.phrasing`, answers from `data_tools.answers`; the random
generator only picks phrasings and scenarios, so every answer is fully determined by the
map, its labels and the question asked.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from data_tools import answers as A
from data_tools import phrasing as P
from data_tools.locate import PatternLocation, locate
from data_tools.taxonomy import PATTERN_KEYS, canonical_set
from data_tools.wafer_map import ZONE_WORDS_ZH, WaferMap

#: Question types; "followup" marks turns that rely on earlier turns.
KINDS = ("recognition", "location", "count", "cause", "check", "yesno", "followup")
ZONES = ("center", "middle", "edge")
#: Share of conversations that continue with questions in the other language.
SWITCH_SHARE = 0.12


@dataclass(frozen=True)
class MapContext:
    """What the answers about one map are computed from (measure once, sample many conversations)."""

    patterns: tuple[str, ...]
    facts: dict
    locations: tuple[PatternLocation, ...]

    @classmethod
    def of(cls, wafer: WaferMap, patterns: Iterable[str]) -> MapContext:
        keys = canonical_set(patterns)
        return cls(keys, wafer.facts(), tuple(locate(wafer, keys)))


@dataclass(frozen=True)
class Conversation:
    messages: list[dict]
    kinds: tuple[str, ...]  # kinds of its turns, in order of first appearance
    scenario: str


Turn = tuple[str, str, tuple[str, ...]]  # question, answer, kinds


def _q(bank: dict[str, Sequence[str]], rng: random.Random, lang: str, **fields: str) -> str:
    return rng.choice(list(bank[lang])).format(**fields)


def _variant(rng: random.Random) -> int:
    return rng.randrange(6)


def _zone_word(zone: str, rng: random.Random, lang: str) -> str:
    return rng.choice(P.ZONE_NAMES[lang][zone])


# ---------------------------------------------------------------- single turns


def _t_recognition(ctx: MapContext, rng: random.Random, lang: str) -> Turn:
    question = _q(P.RECOGNITION_QUESTIONS, rng, lang)
    return question, A.recognition_answer(ctx.patterns, lang, _variant(rng)), ("recognition",)


def _t_location(ctx: MapContext, rng: random.Random, lang: str) -> Turn:
    return _q(P.LOCATION_QUESTIONS, rng, lang), A.location_answer(ctx.locations, ctx.facts, lang), ("location",)


def _t_count(ctx: MapContext, rng: random.Random, lang: str, topic: str | None = None) -> tuple[Turn, str, str]:
    topic = topic or rng.choice(A.COUNT_TOPICS)
    zone = rng.choice(ZONES)
    question = _q(P.COUNT_QUESTIONS[topic], rng, lang, zone=_zone_word(zone, rng, lang))
    answer = A.count_answer(ctx.facts, topic, lang, zone=zone, variant=_variant(rng))
    return (question, answer, ("count",)), topic, zone


def _t_cause(ctx: MapContext, rng: random.Random, lang: str) -> Turn:
    return _q(P.CAUSE_QUESTIONS, rng, lang), A.cause_answer(ctx.patterns, lang, _variant(rng)), ("cause",)


def _t_check(ctx: MapContext, rng: random.Random, lang: str) -> Turn:
    return _q(P.CHECK_QUESTIONS, rng, lang), A.check_answer(ctx.patterns, lang, _variant(rng)), ("check",)


def yesno_turn(ctx: MapContext, rng: random.Random, lang: str) -> tuple[Turn, str]:
    """"Is there <pattern>?" (a pattern the map has or, half the time, one it lacks) and its answer; the pattern asked."""
    absent = [k for k in PATTERN_KEYS if k not in ctx.patterns]
    key = rng.choice(ctx.patterns) if ctx.patterns and (not absent or rng.random() < 0.5) else rng.choice(absent)
    question = _q(P.YESNO_QUESTIONS, rng, lang, p=rng.choice(P.PATTERN_NOUNS[key][lang]))
    location = _location_of(ctx, key)
    return (question, A.yesno_answer(key, ctx.patterns, lang, location, ctx.facts), ("yesno",)), key


def _location_of(ctx: MapContext, key: str) -> PatternLocation | None:
    return next((loc for loc in ctx.locations if loc.key == key), None)


# ---------------------------------------------------------------- scenarios


def _single(turn_fn: Callable[[MapContext, random.Random, str], Turn]) -> Callable[..., list[Turn]]:
    def scenario(ctx: MapContext, rng: random.Random, lang: str) -> list[Turn]:
        return [turn_fn(ctx, rng, lang)]

    return scenario


def _s_count(ctx: MapContext, rng: random.Random, lang: str) -> list[Turn]:
    return [_t_count(ctx, rng, lang)[0]]


def _s_yesno(ctx: MapContext, rng: random.Random, lang: str) -> list[Turn]:
    return [yesno_turn(ctx, rng, lang)[0]]


def _s_recognition_followups(ctx: MapContext, rng: random.Random, lang: str) -> list[Turn]:
    """Recognition, then 1–3 questions about "it"/"them": cause, location, checks, yield."""
    turns = [_t_recognition(ctx, rng, lang)]
    plural = len(ctx.patterns) > 1
    options = ["cause", "location", "check", "yield"]
    rng.shuffle(options)
    for which in options[: rng.randint(1, 3)]:
        if which == "cause":
            q = _q(P.FOLLOW_CAUSE_PLURAL if plural else P.FOLLOW_CAUSE, rng, lang)
            turns.append((q, A.cause_answer(ctx.patterns, lang, _variant(rng), intro=False), ("cause", "followup")))
        elif which == "location":
            q = _q(P.FOLLOW_LOCATION_PLURAL if plural else P.FOLLOW_LOCATION, rng, lang)
            turns.append((q, A.location_answer(ctx.locations, ctx.facts, lang), ("location", "followup")))
        elif which == "check":
            q = _q(P.FOLLOW_CHECK, rng, lang)
            turns.append((q, A.check_answer(ctx.patterns, lang, _variant(rng), intro=False), ("check", "followup")))
        else:
            q = _q(P.FOLLOW_YIELD, rng, lang)
            turns.append((q, A.count_answer(ctx.facts, "yield", lang, variant=_variant(rng)), ("count", "followup")))
    return turns


def _s_nth_chain(ctx: MapContext, rng: random.Random, lang: str) -> list[Turn]:
    """Recognition of a mixture, a question about the first pattern, then "And the second one?"…"""
    turns = [_t_recognition(ctx, rng, lang)]
    which = rng.choice(("cause", "location", "check"))
    bank = {"cause": P.NTH_CAUSE, "location": P.NTH_LOCATION, "check": P.NTH_CHECK}[which]
    variant = _variant(rng)

    def answer(i: int) -> str:
        key = ctx.patterns[i]
        if which == "cause":
            return A.pattern_cause(key, lang, 3, variant)
        if which == "check":
            return A.pattern_check(key, lang, 3, variant)
        return A.location_sentence(ctx.locations[i], ctx.facts, lang)

    turns.append((_q(bank, rng, lang, nth=P.ORDINALS[lang][0]), answer(0), (which, "followup")))
    for i in range(1, rng.randint(2, len(ctx.patterns))):
        turns.append((_q(P.FOLLOW_NEXT, rng, lang, nth=P.ORDINALS[lang][i]), answer(i), (which, "followup")))
    return turns


def _s_yesno_followup(ctx: MapContext, rng: random.Random, lang: str) -> list[Turn]:
    """Yes/no about one pattern; if yes, what causes it or what to check; if no, what is there instead."""
    first, key = yesno_turn(ctx, rng, lang)
    turns = [first]
    if key in ctx.patterns:  # the yes answer already says where it is: ask why, or what to check
        if rng.random() < 0.5:
            answer = A.pattern_cause(key, lang, 3, _variant(rng))
            turns.append((_q(P.FOLLOW_CAUSE, rng, lang), answer, ("cause", "followup")))
        else:
            answer = A.pattern_check(key, lang, 3, _variant(rng))
            turns.append((_q(P.FOLLOW_CHECK, rng, lang), answer, ("check", "followup")))
    else:
        answer = A.recognition_answer(ctx.patterns, lang, _variant(rng))
        turns.append((_q(P.FOLLOW_WHAT_THEN, rng, lang), answer, ("recognition", "followup")))
    return turns


def _s_count_followup(ctx: MapContext, rng: random.Random, lang: str) -> list[Turn]:
    """A count, then "那良率呢？" (the yield) or the same count for another zone."""
    first, topic, zone = _t_count(ctx, rng, lang, rng.choice(("failing", "good", "dies", "zone")))
    turns = [first]
    if topic == "zone" and rng.random() < 0.6:
        other = rng.choice([z for z in ZONES if z != zone])
        word = ZONE_WORDS_ZH[other] if lang == "zh" else _zone_word(other, rng, lang)
        answer = A.count_answer(ctx.facts, "zone", lang, zone=other)
        turns.append((_q(P.FOLLOW_ZONE, rng, lang, zone=word), answer, ("count", "followup")))
    else:
        answer = A.count_answer(ctx.facts, "yield", lang, variant=_variant(rng))
        turns.append((_q(P.FOLLOW_YIELD, rng, lang), answer, ("count", "followup")))
    return turns


@dataclass(frozen=True)
class _Scenario:
    name: str
    run: Callable[[MapContext, random.Random, str], list[Turn]]
    kinds: frozenset[str]  # every kind its turns can have
    weight: float
    min_patterns: int = 0


SCENARIOS: tuple[_Scenario, ...] = (
    _Scenario("recognition", _single(_t_recognition), frozenset({"recognition"}), 3.0),
    _Scenario("location", _single(_t_location), frozenset({"location"}), 1.0),
    _Scenario("count", _s_count, frozenset({"count"}), 1.0),
    _Scenario("cause", _single(_t_cause), frozenset({"cause"}), 1.0),
    _Scenario("check", _single(_t_check), frozenset({"check"}), 0.7),
    _Scenario("yesno", _s_yesno, frozenset({"yesno"}), 1.5),
    _Scenario(
        "recognition_followups",
        _s_recognition_followups,
        frozenset({"recognition", "cause", "location", "check", "count", "followup"}),
        2.0,
    ),
    _Scenario("nth_chain", _s_nth_chain, frozenset({"recognition", "cause", "location", "check", "followup"}), 1.5, 2),
    _Scenario(
        "yesno_followup", _s_yesno_followup, frozenset({"yesno", "cause", "check", "recognition", "followup"}), 1.0
    ),
    _Scenario("count_followup", _s_count_followup, frozenset({"count", "followup"}), 1.0),
)


def _switched_turns(ctx: MapContext, rng: random.Random, language: str, allowed: set[str]) -> list[Turn]:
    """One or two self-contained questions (those of the single-question scenarios) that continue a
    thread: the first in the other language, a second one (half the time) in either."""
    singles = [s for s in SCENARIOS if "followup" not in s.kinds and s.kinds <= allowed]
    other = A.other_language(language)
    languages = [other] if rng.random() < 0.5 else [other, rng.choice(A.LANGUAGES)]
    return [turn for lang in languages for turn in rng.choice(singles).run(ctx, rng, lang)]


def sample_dialogue(
    context: MapContext, rng: random.Random, language: str, kinds: Iterable[str] | None = None,
    switch_share: float = SWITCH_SHARE,
) -> Conversation:
    """One conversation about the map; `kinds` restricts the question types that may appear.

    `language` is the language it opens in; with probability `switch_share` it goes on in the other
    one (`Conversation.scenario` then ends in ``+switch``).
    """
    if language not in A.LANGUAGES:
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
    allowed = set(KINDS if kinds is None else kinds)
    unknown = allowed - set(KINDS)
    if unknown:
        raise ValueError(f"unknown conversation kinds {sorted(unknown)}; expected some of {KINDS}")
    options = [
        s for s in SCENARIOS if s.kinds <= allowed and len(context.patterns) >= s.min_patterns
    ]
    if not options:
        raise ValueError(f"no conversation scenario uses only the kinds {sorted(allowed)}")
    scenario = rng.choices(options, weights=[s.weight for s in options])[0]
    turns = scenario.run(context, rng, language)
    name = scenario.name
    if rng.random() < switch_share:
        turns += _switched_turns(context, rng, language, allowed)
        name += "+switch"
    messages: list[dict] = []
    seen: list[str] = []
    for question, answer, turn_kinds in turns:
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer})
        seen.extend(k for k in turn_kinds if k not in seen)
    return Conversation(messages, tuple(seen), name)


def sample_conversation(
    wafer: WaferMap,
    patterns: Iterable[str],
    rng: random.Random,
    language: str = "en",
    kinds: Iterable[str] | None = None,
) -> list[dict]:
    """Messages (``{"role", "content"}``, user first) of one sampled conversation about `wafer`."""
    return sample_dialogue(MapContext.of(wafer, patterns), rng, language, kinds).messages
