"""Yes/no answers checked against the recognised patterns (finetune.yesno), "is this wafer ok?" included."""

from __future__ import annotations

import pytest

from data_tools.answers import normal_answer, recognition_answer, yesno_answer
from data_tools.dialogue import MapContext
from data_tools.phrasing import asks_if_normal, language_of
from data_tools.wafer_map import WaferMap
from finetune.yesno import asked_pattern, ground_answer, ground_yesno, needs_recognition, said_yes
from model_server.testing import wafer_grid

WAFER = WaferMap(wafer_grid(52, "center"))


@pytest.mark.parametrize(("answer", "expected"), [
    ("Yes, there is a Scratch pattern.", True),
    ("yes", True),
    ("是的，存在划痕缺陷。", True),
    ("No, there is no Donut pattern.", False),
    ("没有，不存在环状缺陷。", False),
    ("不存在中心缺陷。", False),
    ("The wafer shows a Center pattern.", None),
    ("Nothing unusual", None),  # "no" only as a whole word
    ("Yesterday's lot", None),
])
def test_said_yes_reads_the_opening_word(answer, expected):
    assert said_yes(answer) is expected


def test_asked_pattern_comes_from_the_question_else_the_answer():
    assert asked_pattern("Is there a scratch?", "Yes, there is a Scratch pattern.") == "Scratch"
    assert asked_pattern("Is a local cluster on the edge present?", "Yes, there is a Loc pattern.") == "Edge_Loc"
    assert asked_pattern("有划痕吗？", "是的，存在划痕缺陷。") == "Scratch"
    assert asked_pattern("Any problem here?", "No, there is no Edge-Ring pattern. The wafer shows Center.") == "Edge_Ring"
    assert asked_pattern("有问题吗？", "不存在边缘环缺陷。") == "Edge_Ring"
    assert asked_pattern("Is it a Center or a Donut?", "Yes, there is a Center pattern.") is None  # two asked
    assert asked_pattern("Any problem here?", "No, Donut.") == "Donut"  # terse: yes/no and a name
    # a sentence of context is not asked about
    assert asked_pattern("Looks like a Center to me. Is there a scratch?", "No, there is no Scratch pattern.") == "Scratch"
    assert asked_pattern("Center and Donut, is there a scratch?", "No, there is no Scratch pattern.") is None


@pytest.mark.parametrize(("question", "answer"), [
    ("Is there a scratch?", "Yes."),  # not worded as the corpus's yes/no answers: not checked
    ("Is it bad?", "Yes, there are failing dies."),
    ("Is this wafer normal?", "No, it shows a Center pattern."),  # the no is about "normal", not the Center
    ("Is the failure at the centre?", "Yes, the failing dies sit at the centre."),
])
def test_answers_not_worded_as_a_yes_no_about_one_pattern_have_no_asked_pattern(question, answer):
    assert asked_pattern(question, answer) is None


def test_a_yes_to_a_pattern_the_recognition_lacks_becomes_no_with_what_was_recognised():
    answer = ground_yesno("Is there a scratch?", "Yes, there is a Scratch pattern.", WAFER, ("Center",))
    assert answer == yesno_answer("Scratch", ("Center",), "en")
    assert answer.startswith("No, there is no Scratch pattern.") and "Center" in answer


def test_a_no_to_a_recognised_pattern_becomes_yes_placed_on_the_map_in_the_question_language():
    answer = ground_yesno("有中心缺陷吗？", "没有，不存在中心缺陷。", WAFER, ("Center", "Scratch"))
    context = MapContext.of(WAFER, ("Center", "Scratch"))
    (location,) = [loc for loc in context.locations if loc.key == "Center"] or [None]
    assert answer == yesno_answer("Center", context.patterns, "zh", location, context.facts)
    assert answer.startswith("是的，存在") and "划痕" in answer  # the other pattern recognised is named too


@pytest.mark.parametrize(("question", "answer", "recognised", "key"), [
    ("是中心失效吗？", "没有，存在中心缺陷。中心缺陷位于晶圆中心。", ("Center", "Scratch"), "Center"),
    ("能看到局部缺陷吗？", "是的，不存在局部缺陷。这片晶圆的缺陷模式是：中心、划痕。", ("Center", "Scratch"), "Loc"),
    ("Is there a center?", "No, there is a Center pattern.", ("Center",), "Center"),
])
def test_an_answer_whose_yes_or_no_contradicts_its_own_sentence_follows_the_recognition(question, answer, recognised,
                                                                                       key):
    """"没有，存在中心缺陷" says no and then yes: its opening word is checked, and it is rewritten from the findings."""
    context = MapContext.of(WAFER, recognised)
    location = next((loc for loc in context.locations if loc.key == key), None)
    expected = yesno_answer(key, context.patterns, language_of(question), location, context.facts)
    assert ground_yesno(question, answer, WAFER, recognised) == expected
    assert said_yes(expected) is (key in recognised)


def test_a_no_on_a_normal_wafer_is_kept_and_a_yes_is_corrected():
    assert ground_yesno("Is there a donut?", "No, there is no Donut pattern.", WAFER, ()) == \
        "No, there is no Donut pattern."
    assert ground_yesno("Is there a donut?", "Yes, there is a Donut pattern.", WAFER, ()) == \
        yesno_answer("Donut", (), "en")


@pytest.mark.parametrize(("question", "answer", "wafer", "recognised"), [
    ("Is there a scratch?", "Yes, there is a Scratch pattern. It also shows Center.", WAFER, ("Center", "Scratch")),
    ("Is there a scratch?", "No, there is no Scratch pattern.", WAFER, ("Center",)),  # agrees
    ("Is there a scratch?", "Yes, there is a Scratch pattern.", WAFER, None),  # recognition unreadable
    ("Is there a scratch?", "Yes, there is a Scratch pattern.", None, ("Center",)),  # no map in the thread
    ("How many dies fail?", "<num_failing> of the <num_dies> dies fail.", WAFER, ("Center",)),  # not yes/no
    ("Is the yield good?", "Yes, the yield is high.", WAFER, ("Center",)),  # no pattern asked
])
def test_answers_that_agree_or_cannot_be_checked_are_kept(question, answer, wafer, recognised):
    assert ground_yesno(question, answer, wafer, recognised) == answer


def test_the_rewritten_yes_says_an_edge_ring():
    answer = ground_yesno("Do you see an edge ring?", "No, there is no Edge-Ring pattern.", WAFER, ("Edge_Ring",))
    assert answer.startswith("Yes, there is an Edge-Ring pattern.")


@pytest.mark.parametrize(("question", "expected"), [
    ("Is this wafer ok?", True), ("is this wafer ok", True), ("Does this look fine?", True),
    ("Does the wafer map look normal?", True), ("Is it clean?", True), ("这片晶圆正常吗？", True), ("晶圆是否正常？", True),
    ("Is there a scratch?", False), ("Is the yield ok?", False), ("Is this a Center pattern?", False),
    ("这片晶圆有划痕吗？", False), ("What is wrong with this wafer?", False),
    ("Hey bot, is this wafer ok?", True), ("Lot 42 came off CMP-03. Is it fine?", True), ("你好，这片晶圆正常吗？", True),
    ("Hi, is there a scratch?", False), ("This is fine. What pattern is it?", False), ("Lot 7, yield is ok?", False),
])
def test_a_question_about_the_wafer_as_a_whole_is_told_apart(question, expected):
    assert asks_if_normal(question) is expected


def test_is_this_wafer_ok_is_answered_from_the_recognised_patterns():
    # the model answers as if asked about one pattern, "yes" meaning "there is a Center": not what was asked
    assert ground_yesno("is this wafer ok?", "Yes, there is a Center pattern.", WAFER, ("Center", "Scratch")) == \
        "No, this wafer is not normal. This wafer shows two defect patterns: Center and Scratch."
    assert ground_yesno("这片晶圆正常吗", "是的，存在中心缺陷。", WAFER, ("Center",)) == \
        "不正常。这片晶圆有一种缺陷模式：中心。"
    assert ground_yesno("Does this look fine?", "No, there is no Center pattern.", WAFER, ()) == \
        normal_answer((), "en") == "Yes, this wafer looks normal: no defect pattern is present."
    assert needs_recognition("Is this wafer ok?", "Anything")
    assert not needs_recognition("What is wrong?", "A Center.")


@pytest.mark.parametrize(("answer", "recognised"), [
    ("No, it shows a Center pattern and a scratch.", ("Center", "Scratch")),
    ("Yes, it looks normal.", ()),
])
def test_a_right_answer_to_is_this_wafer_ok_is_kept(answer, recognised):
    assert ground_yesno("Is this wafer ok?", answer, WAFER, recognised) == answer


def test_is_this_wafer_ok_is_not_answered_yes_while_the_findings_ask_to_check_the_map():
    cluster = "The model found no defect pattern, but 120 failing dies form one connected cluster."
    assert ground_yesno("Is this wafer ok?", "Yes, it looks normal.", WAFER, (), [cluster]) == \
        f"I can't call it normal. {cluster}"
    assert ground_yesno("这片晶圆正常吗？", "是的，正常。", WAFER, (), ["请人工核对。"]) == "无法确认它正常。请人工核对。"
    # with patterns recognised the answer is no anyway; a caution changes nothing there
    assert ground_yesno("Is this wafer ok?", "Yes, there is a Center pattern.", WAFER, ("Center",), [cluster]) == \
        normal_answer(("Center",), "en")


@pytest.mark.parametrize("question", ["are you sure?", "What pattern is it then?", "you see anything unusual?", "确定吗"])
def test_an_answer_to_what_the_map_shows_follows_the_findings(question):
    wafer = WaferMap(wafer_grid(52, "center"))
    language = "zh" if "确" in question else "en"
    other = "检测到的缺陷模式：中心、划痕。" if language == "zh" else "Detected defect patterns: Center and Scratch."
    assert ground_answer(question, other, wafer, ("Center",)) == recognition_answer(("Center",), language)
    agreeing = "I see one defect pattern on this wafer: Center."
    assert ground_answer(question, agreeing, wafer, ("Center",)) == agreeing
    causes = "Likely causes of the Center pattern: ..."  # names the patterns found: kept
    assert ground_answer(question, causes, wafer, ("Center",)) == causes
    assert ground_answer(question, other, wafer, None) == other  # nothing to hold it to
    assert ground_answer(question, other, wafer, (), ["check the map by eye"]) == other  # "normal", with a caveat


def test_ground_answer_checks_yes_no_answers_as_ground_yesno_does():
    wafer = WaferMap(wafer_grid(52, "center"))
    wrong = "Yes, there is a Scratch pattern."
    assert ground_answer("Is there a scratch?", wrong, wafer, ("Center",)) == \
        ground_yesno("Is there a scratch?", wrong, wafer, ("Center",))
    assert ground_answer("How many dies fail?", "Center and Scratch.", wafer, ("Center",)) == "Center and Scratch."
