"""finetune.answer_parser: generated answers (EN/ZH, aliases, negations) back to pattern sets."""

from __future__ import annotations

import pytest

from data_tools.answers import recognition_answer, yesno_answer
from data_tools.taxonomy import CLASSES
from finetune.answer_parser import mentions, parse_answer


@pytest.mark.parametrize("language", ["en", "zh"])
def test_every_class_round_trips_through_the_corpus_answers(language):
    for defect_class in CLASSES:
        for variant in range(3):
            answer = recognition_answer(defect_class.patterns, language, variant)
            assert parse_answer(answer) == defect_class.patterns, answer


@pytest.mark.parametrize("language", ["en", "zh"])
def test_yes_no_answers_state_the_full_set(language):
    for defect_class in CLASSES[::3]:
        for asked in ("Scratch", "Center", "Edge_Ring"):
            answer = yesno_answer(asked, defect_class.patterns, language)
            assert parse_answer(answer) == defect_class.patterns, answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("There is no scratch, but a Center pattern.", ("Center",)),
        ("No Center or Donut here; the wafer shows Edge-Ring.", ("Edge_Ring",)),
        ("It shows a ring and no scratch.", ("Donut",)),
        ("Edge loc and scratches", ("Edge_Loc", "Scratch")),
        ("edge ring", ("Edge_Ring",)),
        ("Donut + Loc + Edge-Loc", ("Donut", "Edge_Loc", "Loc")),
        ("C+EL", ("Center", "Edge_Loc")),
        ("The wafer is normal.", ()),
        ("No defect pattern, the wafer is clean", ()),
        ("没有划痕，但有中心缺陷。", ("Center",)),
        ("这片晶圆有边缘环和划伤。", ("Edge_Ring", "Scratch")),
        ("不存在环形缺陷：这片晶圆正常。", ()),
        ("这片晶圆有两种缺陷模式：边缘局部、局部。", ("Edge_Loc", "Loc")),
        ("Near-full failure", ("Near_Full",)),
        ("Randomly distributed failures", ("Random",)),
    ],
)
def test_phrasings_aliases_and_negations(text, expected):
    assert parse_answer(text) == expected


def test_longest_spelling_wins_so_edge_ring_is_not_also_a_donut():
    assert mentions("an Edge-Ring pattern") == [("Edge_Ring", False)]
    assert mentions("边缘环形") == [("Edge_Ring", False)]


@pytest.mark.parametrize("text", ["", "   ", "blah blah", "I cannot tell.", "12345"])
def test_answers_that_name_nothing_are_unparseable(text):
    assert parse_answer(text) is None


def test_single_letter_aliases_are_not_read_inside_prose():
    # "a", "s", "c" would otherwise match everywhere
    assert parse_answer("This is a wafer with a Scratch.") == ("Scratch",)


def test_every_noun_the_questions_use_for_a_pattern_reads_as_that_pattern():
    from data_tools.phrasing import PATTERN_NOUNS

    for key, by_language in PATTERN_NOUNS.items():
        for nouns in by_language.values():
            for noun in nouns:
                assert {k for k, _negated in mentions(noun)} == {key}, noun
