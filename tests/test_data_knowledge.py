"""The process knowledge base: complete, bilingual, composable, and saying what an engineer expects."""

from __future__ import annotations

import re

import pytest

from data_tools.knowledge import (
    KNOWLEDGE,
    PAIR_NOTES,
    PROCESS_AREAS,
    SEPARATION_STEPS,
    Text,
    display_name,
    knowledge,
    pair_notes,
    reference_text,
)
from data_tools.taxonomy import NORMAL, PATTERN_KEYS

CJK = re.compile(r"[\u4e00-\u9fff]")


def _texts(record):
    yield record.appearance
    yield record.signature
    for cause in record.causes:
        yield cause.name
        yield cause.reasoning
    yield from record.checks
    yield from record.actions


def test_every_pattern_and_normal_has_a_record():
    assert set(KNOWLEDGE) == {*PATTERN_KEYS, NORMAL}
    for key in PATTERN_KEYS:
        record = KNOWLEDGE[key]
        assert record.key == key
        assert len(record.causes) >= 3, key
        assert len(record.checks) >= 3, key
        assert record.actions, key
        assert all(cause.area in PROCESS_AREAS for cause in record.causes)


@pytest.mark.parametrize("key", [*PATTERN_KEYS, NORMAL])
def test_texts_are_filled_in_both_languages(key):
    for text in _texts(KNOWLEDGE[key]):
        assert text.en.strip() and text.zh.strip()
        assert not CJK.search(text.en), text.en
        assert CJK.search(text.zh), text.zh
        # texts are composed into sentences, so they carry no end punctuation of their own
        assert not text.en.rstrip().endswith("."), text.en
        assert not text.zh.rstrip().endswith("。"), text.zh


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("Center", ["cmp", "etch", "spin-coat", "lift-pin"]),
        ("Donut", ["temperature", "gas-flow", "rta", "spin"]),
        ("Edge_Ring", ["edge-bead removal", "clamp", "bevel", "cmp"]),
        ("Edge_Loc", ["clamp", "notch", "chipping", "ebr"]),
        ("Loc", ["particle", "focus", "probe"]),
        ("Scratch", ["handling", "cmp", "slurry", "cassette"]),
        ("Near_Full", ["test program", "recipe", "excursion"]),
        ("Random", ["particles", "cleanroom", "random defectivity"]),
    ],
)
def test_causes_cover_what_a_process_engineer_expects(key, expected):
    text = " ".join(t.en for t in _texts(KNOWLEDGE[key])).lower()
    missing = [word for word in expected if word not in text]
    assert not missing, f"{key} knowledge does not mention {missing}"


def test_lookup_accepts_aliases_and_normal():
    assert knowledge("EL").key == "Edge_Loc"
    assert knowledge("划痕").key == "Scratch"
    assert knowledge("normal").key == NORMAL
    with pytest.raises(ValueError, match="unknown defect pattern"):
        knowledge("Banana")


def test_text_rejects_unknown_language():
    with pytest.raises(ValueError, match="'en' or 'zh'"):
        Text("a", "b").get("fr")


def test_pair_notes_are_found_in_any_order_and_only_for_known_pairs():
    assert pair_notes(["Scratch", "Loc"]) == [PAIR_NOTES[("Loc", "Scratch")]]
    assert pair_notes(["Center"]) == []
    assert pair_notes(["Donut", "Loc"]) == []
    for a, b in PAIR_NOTES:
        assert a in PATTERN_KEYS and b in PATTERN_KEYS


def test_reference_text_composes_mixtures_with_separation_advice():
    single = reference_text(["Center"], "en")
    assert single.startswith("Center:") and "CMP centre-fast polishing" in single
    assert SEPARATION_STEPS[0].en not in single
    mixed = reference_text(["Center", "Edge_Ring"], "zh")
    assert mixed.startswith("中心：") and "边缘环：" in mixed
    assert SEPARATION_STEPS[0].zh in mixed and PAIR_NOTES[("Center", "Edge_Ring")].zh in mixed
    assert reference_text([], "en").startswith("Normal:")


def test_display_names():
    assert display_name("Edge_Loc", "en") == "Edge-Loc"
    assert display_name("Edge_Loc", "zh") == "边缘局部"
    assert display_name(NORMAL, "zh") == "正常"
