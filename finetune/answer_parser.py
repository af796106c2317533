"""Parsing a generated answer back to a set of defect patterns (English and Chinese).

The evaluator (and the server, for `findings`) reads what the model said, as a user would:
every pattern name or alias from `data_tools.taxonomy` is found in the text (longest spelling
first, so "Edge-Ring" is not also read as "ring"), mentions inside a negated clause ("no
scratch", "without Donut", "没有划痕", "不存在中心缺陷") are dropped, and an answer that names no
pattern but says the wafer is normal parses to the empty set. Text that names nothing and does
not say "normal" parses to None (unparseable).
"""

from __future__ import annotations

import re
from functools import lru_cache

from data_tools.phrasing import language_of
from data_tools.taxonomy import PATTERNS, alias_table, canonical_set, parse_class_name

#: Clause boundaries: punctuation (EN and ZH, not the enumeration comma 、) and contrast words.
_CLAUSE_SPLIT = re.compile(
    r"[.;:!?,()\[\]\n。；：！？，（）]|\b(?:but|however|though|although|whereas|while)\b|但是|但|不过|而是|然而"
)
_NEGATION_EN = re.compile(
    r"\b(?:no|not|without|none|neither|nor|never|absent|free of|lacks?|cannot|can't|isn't|aren't|doesn't|don't)\b"
)
_NEGATION_ZH = re.compile(r"没有|没|无|未|不|非|否")
_NORMAL_EN = re.compile(
    r"\b(?:normal|no (?:defect|failure) patterns?|no defects?|defect[- ]free|no pattern)\b"
)
_NORMAL_ZH = re.compile(r"正常|无缺陷|没有缺陷|未检测到缺陷")
#: Aliases this short are only read in a compact class label such as "C+EL", never in prose.
_MIN_PROSE_ALIAS = 3


def _normalise(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.lower())


@lru_cache(maxsize=1)
def _matchers() -> tuple[tuple[re.Pattern[str], str], ...]:
    spellings = dict(alias_table())
    for p in PATTERNS:
        spellings[_normalise(p.english)] = p.key
        spellings[_normalise(p.key)] = p.key
    usable = [(s, k) for s, k in spellings.items() if language_of(s) == "zh" or len(s) >= _MIN_PROSE_ALIAS]
    usable.sort(key=lambda sk: -len(sk[0]))
    matchers = []
    for spelling, key in usable:
        if language_of(spelling) == "zh":
            regex = re.compile(re.escape(spelling))
        else:
            body = r"\s?".join(re.escape(part) for part in spelling.split(" "))
            regex = re.compile(rf"(?<![a-z0-9]){body}(?![a-z0-9])")
        matchers.append((regex, key))
    return tuple(matchers)


@lru_cache(maxsize=1)
def _name_matchers() -> tuple[tuple[re.Pattern[str], str], ...]:
    """Display names exactly as `data_tools.answers` writes them: English in their own case, Chinese where a
    name stands as one ("中心缺陷", "…：中心、局部。"), not place words ("晶圆中心", "中心区")."""
    matchers = []
    for p in sorted(PATTERNS, key=lambda p: -len(p.english)):
        matchers.append((re.compile(rf"(?<![A-Za-z-]){re.escape(p.english)}(?![A-Za-z-])"), p.key))
    for p in sorted(PATTERNS, key=lambda p: -len(p.chinese)):
        name = re.escape(p.chinese)
        matchers.append((re.compile(rf"(?<=[：、]){name}(?!区)|{name}(?=缺陷|、|。|是|失效)"), p.key))
    return tuple(matchers)


def _clause_start(text: str, position: int) -> int:
    start = 0
    for match in _CLAUSE_SPLIT.finditer(text, 0, position):
        start = match.end()
    return start


def _negated(text: str, start: int) -> bool:
    clause = text[_clause_start(text, start) : start]
    return bool(_NEGATION_EN.search(clause) or _NEGATION_ZH.search(clause))


def mentions(text: str, names_only: bool = False) -> list[tuple[str, bool]]:
    """Every pattern mention in `text`, in order, as (key, negated).

    With `names_only`, only the display names as this project's answers write them count, not
    aliases or words such as "centre" or "ring" that also describe places.
    """
    norm = text if names_only else _normalise(text)
    taken = [False] * len(norm)
    found: list[tuple[int, str, bool]] = []
    for regex, key in _name_matchers() if names_only else _matchers():
        for match in regex.finditer(norm):
            if any(taken[match.start() : match.end()]):
                continue
            for i in range(match.start(), match.end()):
                taken[i] = True
            found.append((match.start(), key, _negated(norm, match.start())))
    return [(key, neg) for _, key, neg in sorted(found)]


def says_normal(text: str) -> bool:
    norm = _normalise(text)
    return bool(_NORMAL_EN.search(norm) or _NORMAL_ZH.search(norm))


def parse_answer(text: str) -> tuple[str, ...] | None:
    """The pattern set an answer states (canonical keys, column order); () for normal; None if unreadable."""
    if not isinstance(text, str) or not text.strip():
        return None
    compact = text.strip().strip(".。!！ ")
    if len(compact) <= 40 and re.fullmatch(r"[A-Za-z_\-\s+,&/]+|正常|无缺陷", compact):
        try:
            return parse_class_name(compact).patterns
        except ValueError:
            pass
    found = mentions(text)
    positive = {key for key, negated in found if not negated}
    if positive:
        return canonical_set(positive)
    if says_normal(text) or found:
        # only negated mentions ("no scratch"), or an explicit "normal": no pattern present
        return () if says_normal(text) or all(neg for _, neg in found) else None
    return None
