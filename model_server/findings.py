"""Findings: the facts shown beside an answer — patterns the model recognised and numbers measured.

When a thread gets a new image the server asks the model one recognition question (in the
same batch as the user's question), parses the answer back to a pattern set with
`finetune.answer_parser`, and stores the result with the thread, so every follow-up shows the
same findings.

Findings also carry caveats: when the model finds no pattern but the map's failing dies form a
cluster far larger than random failure makes (`data_tools.background.has_large_cluster`),
the reader is told to check the map by eye. That is the default model's known weak spot: trained on
MixedWM38, whose maps all carry random failures, it calls many defective maps without them normal
(model card, Known limitations). Likewise when the model reads a map as Near-full although fewer
than half its dies fail (`NEAR_FULL_CAVEAT_MAX_SHARE`): on maps without random failures it has read
a clean Edge-Ring so. Caveats change neither the answer nor the patterns.
"""

from __future__ import annotations

from collections.abc import Iterable

from data_tools import taxonomy
from data_tools.background import has_large_cluster
from data_tools.wafer_map import WaferMap
from model_server import wire


def recognition_question() -> str:
    """The question asked to recognise the patterns on a new map (the evaluator asks the same kind)."""
    from data_tools.corpus import RECOGNITION_QUESTIONS

    return RECOGNITION_QUESTIONS["en"][0]


#: The class reported when the recognition answer names no readable pattern set.
UNKNOWN_CLASS = "Unknown"

#: A map called normal gets a caveat when its largest cluster of failing dies is larger than random
#: failures make (`data_tools.background.has_large_cluster`).
CAVEAT_CLUSTER_WITHOUT_PATTERN = "cluster_without_pattern"
#: A map read as Near-full gets a caveat when fewer than this share of its dies fail. The 109 Near-full
#: maps of `../shared/data` have 67 % or more of their dies failing (`benchmarks/noise_robustness.py
#: --mixedwm38`); the default model has read clean Edge-Ring maps with ~27 % failing as Near-full.
NEAR_FULL_CAVEAT_MAX_SHARE = 0.5
CAVEAT_SPARSE_NEAR_FULL = "near_full_with_few_failing"


def parse_patterns(answer: str) -> tuple[str, ...] | None:
    """Canonical pattern keys the answer states (column order); () for normal; None if it states none."""
    from finetune.answer_parser import parse_answer

    keys = parse_answer(answer)
    return None if keys is None else taxonomy.canonical_set(keys)


def recognised_patterns(findings: wire.Findings | None) -> tuple[str, ...] | None:
    """The patterns the findings say were recognised; None without findings or when unreadable."""
    if findings is None or findings.class_name == UNKNOWN_CLASS:
        return None
    return tuple(findings.patterns)


def build_findings(wafer: WaferMap, patterns: Iterable[str] | None) -> wire.Findings:
    """Findings for a map and the patterns recognised on it (None: the answer was not readable)."""
    keys = () if patterns is None else taxonomy.canonical_set(patterns)
    if patterns is None:
        class_name = UNKNOWN_CLASS
    elif taxonomy.is_valid_combination(keys):
        class_name = taxonomy.class_of(keys).name
    else:  # the model named a combination that never occurs; report what it said
        class_name = "+".join(keys)
    measured = wafer.facts()
    return wire.Findings(
        patterns=list(keys),
        pattern_names={"en": taxonomy.display_names(keys, "en"), "zh": taxonomy.display_names(keys, "zh")},
        class_name=class_name,
        measured=measured,
        grid=wafer.to_list(),
        caveats=caveats_for(None if patterns is None else keys, measured),
    )


def caveats_for(patterns: Iterable[str] | None, measured: dict) -> list[wire.Caveat]:
    """What to double-check in findings: a large failing cluster on a map recognised as normal, or a
    map recognised as Near-full with fewer than half its dies failing. None for an unreadable answer."""
    from data_tools.answers import LANGUAGES, sparse_near_full_note, unrecognised_cluster_note

    if patterns is None:
        return []
    keys = tuple(patterns)
    caveats = []
    if not keys and has_large_cluster(measured):
        size = measured["clusters"]["largest"]["size"]
        caveats.append(wire.Caveat(CAVEAT_CLUSTER_WITHOUT_PATTERN, {
            language: unrecognised_cluster_note(size, language) for language in LANGUAGES}))
    share = measured["failing"] / measured["dies"] if measured.get("dies") else 0.0
    if "Near_Full" in keys and share < NEAR_FULL_CAVEAT_MAX_SHARE:
        caveats.append(wire.Caveat(CAVEAT_SPARSE_NEAR_FULL, {
            language: sparse_near_full_note(100 * share, language) for language in LANGUAGES}))
    return caveats
