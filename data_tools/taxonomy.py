"""The wafer-defect taxonomy: the 8 base patterns, the 38 MixedWM38 classes and their names.

This module is the single home of the defect vocabulary. Everything that needs a
pattern name, an alias, a Chinese name, the multi-hot column order of MixedWM38 or
the rules of which patterns may occur together imports it from here.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pattern:
    """One base defect pattern."""

    key: str  # canonical key, as in MixedWM38 column names, e.g. "Edge_Loc"
    english: str  # display name, e.g. "Edge-Loc"
    chinese: str  # display name in Chinese, e.g. "边缘局部"
    description: str  # one line: what the pattern looks like on the map
    aliases: tuple[str, ...] = ()


#: The base patterns, in MixedWM38 multi-hot column order.
PATTERNS: tuple[Pattern, ...] = (
    Pattern(
        "Center", "Center", "中心",
        "a cluster of failing dies around the wafer centre",
        ("centre", "c", "center defect", "中心型", "中心缺陷"),
    ),
    Pattern(
        "Donut", "Donut", "环形",
        "a ring of failing dies part-way between centre and edge, with a good centre",
        ("dount", "d", "ring", "doughnut", "甜甜圈", "环状", "圆环"),
    ),
    Pattern(
        "Edge_Loc", "Edge-Loc", "边缘局部",
        "a localised cluster of failing dies on one stretch of the wafer edge",
        ("edge loc", "edge-local", "edge local", "edgeloc", "el", "edge-localised",
         "edge localized", "local cluster on the edge", "局部边缘", "边缘局部型"),
    ),
    Pattern(
        "Edge_Ring", "Edge-Ring", "边缘环",
        "failing dies all around the wafer edge",
        ("edge ring", "edgering", "er", "ring of failures along the edge", "边缘环形", "边缘环状", "外环"),
    ),
    Pattern(
        "Loc", "Loc", "局部",
        "a localised cluster of failing dies away from the edge and centre",
        ("local", "localized", "localised", "l", "局部型", "局部缺陷"),
    ),
    Pattern(
        "Near_Full", "Near-full", "近全片",
        "almost every die on the wafer fails",
        ("near full", "nearfull", "near-full", "nf", "full", "几乎全部失效", "近满", "全片"),
    ),
    Pattern(
        "Scratch", "Scratch", "划痕",
        "a thin line or arc of failing dies",
        ("s", "scratches", "划伤", "刮痕"),
    ),
    Pattern(
        "Random", "Random", "随机",
        "failing dies scattered over the whole wafer with no structure",
        ("r", "random defect", "randomly distributed", "randomly scattered failures", "随机型", "随机分布"),
    ),
)

PATTERN_KEYS: tuple[str, ...] = tuple(p.key for p in PATTERNS)
NUM_PATTERNS = len(PATTERNS)
BY_KEY: dict[str, Pattern] = {p.key: p for p in PATTERNS}

#: Pairs of patterns that never occur together in MixedWM38.
EXCLUSIVE_PAIRS: tuple[tuple[str, str], ...] = (("Center", "Donut"), ("Edge_Loc", "Edge_Ring"))
#: Patterns that only ever occur alone.
SOLO_ONLY: tuple[str, ...] = ("Near_Full", "Random")

NORMAL = "Normal"
NORMAL_CHINESE = "正常"


def _norm(text: str) -> str:
    return re.sub(r"[\s_\-]+", " ", text.strip().lower())


def _build_alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for p in PATTERNS:
        for name in (p.key, p.english, p.chinese, *p.aliases):
            table[_norm(name)] = p.key
    return table


_ALIASES = _build_alias_table()


def pattern_key(name: str) -> str:
    """Canonical key for any accepted spelling of a base pattern.

    >>> pattern_key("Edge-Loc"), pattern_key("EL"), pattern_key("Dount"), pattern_key("划痕")
    ('Edge_Loc', 'Edge_Loc', 'Donut', 'Scratch')
    """
    key = _ALIASES.get(_norm(name))
    if key is None:
        raise ValueError(
            f"unknown defect pattern {name!r}; expected one of {', '.join(PATTERN_KEYS)} "
            "(or an alias such as Edge-Loc, EL, Dount, 划痕)"
        )
    return key


def alias_table() -> dict[str, str]:
    """Every accepted spelling (normalised: lower case, single spaces) → canonical key."""
    return dict(_ALIASES)


def canonical_set(names: Iterable[str]) -> tuple[str, ...]:
    """Canonical keys for `names`, de-duplicated, in column order."""
    keys = {pattern_key(n) for n in names}
    return tuple(k for k in PATTERN_KEYS if k in keys)


def violations(keys: Iterable[str]) -> list[str]:
    """The rules of the data that a pattern set breaks (empty when it is a valid MixedWM38 class)."""
    keyset = set(canonical_set(keys))
    problems = []
    for a, b in EXCLUSIVE_PAIRS:
        if a in keyset and b in keyset:
            problems.append(f"{BY_KEY[a].english} and {BY_KEY[b].english} never occur together")
    for solo in SOLO_ONLY:
        if solo in keyset and len(keyset) > 1:
            problems.append(f"{BY_KEY[solo].english} only occurs alone")
    return problems


def is_valid_combination(keys: Iterable[str]) -> bool:
    return not violations(keys)


# ---------------------------------------------------------------- classes


@dataclass(frozen=True)
class DefectClass:
    """One of the 38 MixedWM38 classes: a (possibly empty) set of base patterns."""

    patterns: tuple[str, ...]  # canonical keys in column order; () is Normal

    @property
    def name(self) -> str:
        """`+`-joined canonical keys, e.g. ``Center+Edge_Loc+Scratch``; ``Normal`` when empty."""
        return "+".join(self.patterns) if self.patterns else NORMAL

    @property
    def english(self) -> str:
        return " + ".join(BY_KEY[k].english for k in self.patterns) if self.patterns else NORMAL

    @property
    def chinese(self) -> str:
        return "+".join(BY_KEY[k].chinese for k in self.patterns) if self.patterns else NORMAL_CHINESE

    @property
    def multi_hot(self) -> np.ndarray:
        return to_multi_hot(self.patterns)

    @property
    def order(self) -> int:
        """Number of base patterns (0 for Normal)."""
        return len(self.patterns)


def _enumerate_classes() -> tuple[DefectClass, ...]:
    classes = [DefectClass(())]
    for size in range(1, NUM_PATTERNS + 1):
        for combo in itertools.combinations(PATTERN_KEYS, size):
            if is_valid_combination(combo):
                classes.append(DefectClass(combo))
    return tuple(classes)


#: The 38 MixedWM38 classes: Normal, 8 single, 13 two-, 12 three- and 4 four-pattern mixtures.
CLASSES: tuple[DefectClass, ...] = _enumerate_classes()
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
CLASS_BY_NAME: dict[str, DefectClass] = {c.name: c for c in CLASSES}
assert len(CLASSES) == 38, len(CLASSES)

#: Defect-GLM's evaluation protocol: 36 classes, Near-full and Random excluded.
DEFECT_GLM_36: tuple[str, ...] = tuple(n for n in CLASS_NAMES if n not in SOLO_ONLY)


def to_multi_hot(names: Iterable[str]) -> np.ndarray:
    """Multi-hot int vector (column order Center…Random) for pattern names or aliases."""
    keys = set(canonical_set(names))
    return np.array([1 if k in keys else 0 for k in PATTERN_KEYS], dtype=np.int32)


def from_multi_hot(vector: Sequence[int] | np.ndarray) -> tuple[str, ...]:
    """Canonical keys present in a multi-hot vector of length 8."""
    vec = np.asarray(vector).reshape(-1)
    if vec.shape[0] != NUM_PATTERNS:
        raise ValueError(f"a multi-hot label needs {NUM_PATTERNS} entries, got {vec.shape[0]}")
    return tuple(k for k, v in zip(PATTERN_KEYS, vec) if v)


def class_of(names_or_vector: Iterable[str] | np.ndarray) -> DefectClass:
    """The DefectClass for pattern names or a multi-hot vector; raises if it is not one of the 38."""
    if isinstance(names_or_vector, np.ndarray) and names_or_vector.dtype.kind in "iub":
        keys = from_multi_hot(names_or_vector)
    else:
        items = list(names_or_vector)
        if items and all(isinstance(v, (int, np.integer)) for v in items):
            keys = from_multi_hot(items)
        else:
            keys = canonical_set(str(v) for v in items)
    problems = violations(keys)
    if problems:
        raise ValueError(f"{'+'.join(keys)} is not a MixedWM38 class: {'; '.join(problems)}")
    return DefectClass(keys)


def class_name(names_or_vector: Iterable[str] | np.ndarray) -> str:
    """`+`-joined canonical class name (``Normal`` for none)."""
    return class_of(names_or_vector).name


def parse_class_name(name: str) -> DefectClass:
    """Parse ``Center+Edge_Loc``, ``C+EL``, ``Normal``, ``none`` or ``正常`` into a class."""
    text = name.strip()
    if _norm(text) in {"normal", "none", "no defect", "正常", "无缺陷", ""}:
        return CLASSES[0]
    return class_of(part for part in re.split(r"\s*[+,&/]\s*", text) if part)


def display_names(keys: Iterable[str], language: str = "en") -> list[str]:
    """Display names of pattern keys in English (``en``) or Chinese (``zh``)."""
    if language not in ("en", "zh"):
        raise ValueError(f"language must be 'en' or 'zh', got {language!r}")
    return [BY_KEY[k].english if language == "en" else BY_KEY[k].chinese for k in canonical_set(keys)]
