"""Findings: the facts shown beside an answer — patterns the model recognised and numbers measured.

When a thread gets a new image the server asks the model one recognition question (in the
same batch as the user's question), parses the answer back to a pattern set with
`finetune.answer_parser`, and stores the result with the thread, so every follow-up shows the
same findings.
"""

from __future__ import annotations

from collections.abc import Iterable

from data_tools import taxonomy
from data_tools.wafer_map import WaferMap
from model_server import wire


def recognition_question() -> str:
    """The question asked to recognise the patterns on a new map (the evaluator asks the same kind)."""
    from data_tools.corpus import RECOGNITION_QUESTIONS

    return RECOGNITION_QUESTIONS["en"][0]


#: The class reported when the recognition answer names no readable pattern set.
UNKNOWN_CLASS = "Unknown"


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
    return wire.Findings(
        patterns=list(keys),
        pattern_names={"en": taxonomy.display_names(keys, "en"), "zh": taxonomy.display_names(keys, "zh")},
        class_name=class_name,
        measured=wafer.facts(),
        grid=wafer.to_list(),
    )
