"""The committed default model (`finetune/default_model`) in a Slack-like thread, through the server's backend.

Real weights on the CPU, greedy decoding, synthetic maps: a regression check of behaviour users
rely on and that the recognition benchmark does not measure — a number question asked as a
follow-up gets the number it asks for, in the language it was asked (an earlier default answered
"And how many dies are good?" with the failing-die count), also when the thread so far was in the
other language (an earlier default answered a Chinese yield question after English turns
with causes, in English), and places named where the map has them.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from data_tools.answers import cluster_place, location_answer
from data_tools.knowledge import KNOWLEDGE
from data_tools.locate import locate
from data_tools.synthetic import generate_grid
from data_tools.wafer_map import WaferMap
from finetune.answer_parser import parse_answer
from finetune.evaluate import sectors_named
from finetune.generation import generate_answers
from model_server.backends.base import GenerationRequest, Turn
from model_server.backends.hf import HFBackend

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "finetune" / "default_model"
CLASSES = ("Center", "Edge_Ring", "Loc+Scratch")
#: The synthetic map of each class the thread tests ask about, by its generator seed. These tests check what
#: follows a recognition answer, so their maps are ones the model reads right; the recognition benchmark
#: (`defect-glm eval`) measures how often it does. Since scratches are drawn as MixedWM38's lie (2026-12-08),
#: the Loc+Scratch map of seed 2 hides its scratch in its Loc blob and is missed, so seed 3.
CLASS_SEEDS = (0, 1, 3)


def class_wafers() -> list[WaferMap]:
    return [WaferMap(generate_grid(name, np.random.default_rng(seed))) for name, seed in zip(CLASSES, CLASS_SEEDS)]
OPENERS = {"en": "What is wrong with this wafer?", "zh": "这片晶圆有什么问题？"}
FOLLOW_UPS = {
    "en": (("How many dies are good?", "good"), ("And how many dies are good?", "good"),
           ("How many dies fail?", "failing"), ("What is the yield?", "yield")),
    "zh": (("有多少颗良品？", "good"), ("失效芯片有几颗？", "failing"), ("良率是多少？", "yield")),
}


@pytest.fixture(scope="module")
def backend() -> HFBackend:
    return HFBackend(DEFAULT_MODEL)


def _expected(facts: dict, topic: str) -> str:
    return f"{facts['yield']:.2f}%" if topic == "yield" else str(facts[topic])


@pytest.mark.parametrize("language", ["en", "zh"])
def test_number_follow_ups_get_the_number_asked_for(backend, language):
    wafers = class_wafers()
    first = Turn("user", OPENERS[language])
    replies = backend.generate([GenerationRequest(first.text, wafer) for wafer in wafers])
    asked = [(wafer, question, topic, Turn("assistant", reply))
             for wafer, reply in zip(wafers, replies) for question, topic in FOLLOW_UPS[language]]
    answers = backend.generate([GenerationRequest(question, wafer, history=(first, reply))
                                for wafer, question, _, reply in asked])
    for (wafer, question, topic, _), answer in zip(asked, answers):
        facts = wafer.facts()
        numbers = set(re.findall(r"\d+(?:\.\d+)?%?", answer))
        assert _expected(facts, topic) in numbers, (question, answer, facts["failing"], facts["good"])
        if topic == "good":
            assert str(facts["failing"]) not in numbers, (question, answer)
        assert (language == "zh") == any("\u4e00" <= ch <= "\u9fff" for ch in answer), answer


#: A thread that switches language after a few turns, as bilingual engineers do (an earlier default
#: answered the Chinese yield question below, after three English turns, with causes in English).
SWITCHED_THREADS = {
    "en": (("What is wrong with this wafer?", "Where are the failures concentrated?", "How many dies fail?"),
           (("这片晶圆的良率是多少？", "yield"), ("有多少颗良品？", "good"))),
    "zh": (("这片晶圆有什么问题？", "失效芯片集中在哪里？", "失效芯片有几颗？"),
           (("What is the yield?", "yield"), ("How many dies are good?", "good"))),
}


@pytest.mark.parametrize("opened_in", ["en", "zh"])
def test_a_question_in_the_other_language_deep_in_a_thread_is_answered_in_its_language(backend, opened_in):
    opening, switched = SWITCHED_THREADS[opened_in]
    wafers = class_wafers()
    histories: list[tuple[Turn, ...]] = [() for _ in wafers]
    for question in opening:  # the thread so far, with the model's own answers
        replies = backend.generate([GenerationRequest(question, wafer, history=history)
                                    for wafer, history in zip(wafers, histories)])
        histories = [(*history, Turn("user", question), Turn("assistant", reply))
                     for history, reply in zip(histories, replies)]
    asked = [(wafer, history, question, topic) for wafer, history in zip(wafers, histories)
             for question, topic in switched]
    answers = backend.generate([GenerationRequest(question, wafer, history=history)
                                for wafer, history, question, _ in asked])
    for (wafer, _, question, topic), answer in zip(asked, answers):
        in_chinese = any("\u4e00" <= ch <= "\u9fff" for ch in answer)
        assert in_chinese == (opened_in == "en"), (question, answer)
        numbers = set(re.findall(r"\d+(?:\.\d+)?%?", answer))
        assert _expected(wafer.facts(), topic) in numbers, (question, answer)


#: Maps whose patterns have a measured place (sectors, a scratch's direction) and the thread asking for it.
PLACED_CLASSES = ("Edge_Loc", "Loc+Scratch", "Center+Edge_Loc+Scratch")
WHERE = {"en": ("Where are the defects?", "How many clusters of failing dies are there?"),
         "zh": ("缺陷在晶圆的什么位置？", "失效芯片形成了几个失效团？")}


@pytest.mark.parametrize("language", ["en", "zh"])
def test_places_in_answers_are_the_ones_measured_on_the_map(backend, language):
    """The sectors a location answer names, and the largest cluster's zone and sector, are the map's
    own for the patterns the thread recognised (an earlier default named the sectors most common in
    training, whatever the map)."""
    wafers = [WaferMap(generate_grid(name, np.random.default_rng(seed + 10))) for seed, name in enumerate(PLACED_CLASSES)]
    first = Turn("user", OPENERS[language])
    replies = backend.generate([GenerationRequest(first.text, wafer) for wafer in wafers])
    where, clusters = WHERE[language]
    answers = backend.generate([GenerationRequest(question, wafer, history=(first, Turn("assistant", reply)))
                                for wafer, reply in zip(wafers, replies) for question in (where, clusters)])
    for wafer, reply, located, clustered in zip(wafers, replies, answers[0::2], answers[1::2]):
        recognised = parse_answer(reply)  # places are measured for the patterns the thread names
        measured = location_answer(locate(wafer, recognised), wafer.facts(), language)
        assert sectors_named(located) == sectors_named(measured) != set(), (reply, located, measured)
        assert cluster_place(wafer.facts()["clusters"]["largest"], language) in clustered, (reply, clustered)


#: Questions as typed in chat, and the corpus form the model reads them in. Passed as typed, lowercase and
#: without a question mark, they were often misread (on these maps, an English question got a Chinese answer);
#: `benchmarks/chat_phrasings.py` measures recognition for such phrasings.
CHAT_TYPED = {"whats wrong with this wafer": "Whats wrong with this wafer?",
              "what defects do you see? thanks! :eyes:": "What defects do you see?",
              "这片晶圆有什么缺陷": "这片晶圆有哪些缺陷？"}


def test_a_question_typed_as_in_chat_is_answered_as_its_corpus_form(backend):
    wafers = class_wafers()
    asked = [(typed, written, wafer) for typed, written in CHAT_TYPED.items() for wafer in wafers]
    typed = backend.generate([GenerationRequest(t, wafer) for t, _, wafer in asked])
    written = backend.generate([GenerationRequest(w, wafer) for _, w, wafer in asked])
    assert typed == written
    assert all(parse_answer(answer) is not None for answer in typed), typed


#: Questions that name only a topic or only ask to look at the wafer, and what their answers must hold: the
#: patterns, the measured yield or failing count, causes. Read as typed, the model answered "defects?" and "这片是什么缺陷？" with the yield, "causes?" with a
#: zone's count, "原因？", "良率？" and "What is the failure rate?" with the patterns, "坏了多少颗？" with the clusters,
#: "check this wafer please" with the good dies and "麻烦看下这片。" with the yield;
#: `data_tools.phrasing.bare_topic_question` asks the banks' form.
SHORT_QUESTIONS = (("defects?", "patterns"), ("这片是什么缺陷？", "patterns"), ("check this wafer please", "patterns"),
               ("麻烦看下这片。", "patterns"), ("yield?", "yield"), ("良率？", "yield"),
               ("failing dies?", "failing"), ("What is the failure rate?", "failing"), ("坏了多少颗？", "failing"),
               ("causes?", "causes"), ("原因？", "causes"))


def test_a_short_question_or_request_is_answered_on_its_topic(backend):
    wafers = class_wafers()
    asked = [(question, topic, name, wafer) for question, topic in SHORT_QUESTIONS for name, wafer in zip(CLASSES, wafers)]
    answers = backend.generate([GenerationRequest(question, wafer) for question, _, _, wafer in asked])
    for (question, topic, name, wafer), answer in zip(asked, answers):
        if topic == "patterns":
            assert set(parse_answer(answer) or ()) == set(name.split("+")), (question, answer)
        elif topic == "causes":  # the most likely cause of one of the map's patterns, in the question's language
            language = "zh" if "原因" in question else "en"
            top = [getattr(KNOWLEDGE[key].causes[0].name, language) for key in name.split("+")]
            assert any(cause in answer for cause in top), (question, answer)
        else:
            assert _expected(wafer.facts(), topic) in re.findall(r"\d+(?:\.\d+)?%?", answer), (question, answer)


SAMPLES = Path(__file__).resolve().parents[1] / "model_server" / "web" / "static" / "samples"


@pytest.mark.parametrize("question", ["What defects does this wafer show?", "这片晶圆有哪些缺陷？"])
def test_the_demo_pages_samples_are_read_as_the_classes_they_are_labelled(backend, question):
    """The first maps a new user tries: every sample of the demo page, as its PNG, read as its class."""
    import json

    from data_tools.image_reader import read_wafer_image

    samples = json.loads((SAMPLES / "samples.json").read_text(encoding="utf-8"))["samples"]
    wafers = [WaferMap(read_wafer_image(SAMPLES / sample["file"]).grid) for sample in samples]
    answers = backend.generate([GenerationRequest(question, wafer, max_new_tokens=48) for wafer in wafers])
    read = {sample["class"]: parse_answer(answer) for sample, answer in zip(samples, answers)}
    assert read == {sample["class"]: tuple(sample["patterns"]) for sample in samples}


@pytest.fixture(scope="module")
def one_view() -> HFBackend:
    return HFBackend(DEFAULT_MODEL, views=1)


@pytest.mark.parametrize(("name", "seed"), [("Center+Edge_Loc+Loc+Scratch", 13), ("Center+Edge_Loc+Loc", 3)])
def test_the_other_views_outvote_a_mistake_about_the_map_as_sent(backend, one_view, name, seed):
    """The model misreads these maps as sent (one misses the scratch, one sees a scratch that is not there)
    and reads their three other rotations right. Served as committed (four views, the other three asked
    when the first answer is unsure), it answers right."""
    assert (backend.info.details["views"], backend.info.details["views_below"]) == (4, 0.9)
    wafer = WaferMap(generate_grid(name, np.random.default_rng(seed)))
    request = GenerationRequest("What defects does this wafer show?", wafer, max_new_tokens=48)
    truth = set(name.split("+"))
    assert set(parse_answer(one_view.generate([request])[0]) or ()) != truth
    rotated = one_view.generate([GenerationRequest(request.question, wafer.transformed(k), max_new_tokens=48)
                                 for k in (1, 2, 3)])
    assert all(set(parse_answer(answer) or ()) == truth for answer in rotated)
    (answer,) = backend.generate([request])
    assert set(parse_answer(answer) or ()) == truth
    assert "".join(backend.generate_stream(request)).strip() == answer


def test_only_unsure_answers_that_name_patterns_ask_the_other_views():
    """Asked again about the other three rotations: the recognition answers (unsure at this bar), not the
    yield answer (no pattern set to vote on) nor a question without a map; the first answer stands for
    the map as sent, so each map asked again adds three images, not four."""
    from test_finetune_views import rows_seen_by_the_vision_tower

    unsure = HFBackend(DEFAULT_MODEL, views=4, views_below=0.999999)
    wafer = WaferMap(generate_grid("Center+Edge_Loc+Loc", np.random.default_rng(3)))
    requests = [GenerationRequest("What defects does this wafer show?", wafer, max_new_tokens=48),
                GenerationRequest("What is the yield?", wafer, max_new_tokens=48),
                GenerationRequest("hi", None, max_new_tokens=8),
                GenerationRequest("这片晶圆有哪些缺陷？", wafer.transformed(1), max_new_tokens=48)]
    assert rows_seen_by_the_vision_tower(unsure.model, unsure.processor, requests) == [3, 6]
    # in batches of two, the first batch's unsure map is asked again beside the second, the second's after it
    assert rows_seen_by_the_vision_tower(unsure.model, unsure.processor, requests, batch_size=2) == [2, 4, 3]
    always = HFBackend(DEFAULT_MODEL, views=4, views_below=1)
    assert rows_seen_by_the_vision_tower(always.model, always.processor, requests) == [12]
    assert unsure.generate(requests) == always.generate(requests)  # the same vote, one image fewer per map
    assert generate_answers(unsure.model, unsure.processor, requests, batch_size=2) == always.generate(requests)


def test_a_round_leaves_unsure_answers_unfinished_and_finishes_them_beside_the_next_batch(backend):
    """What the server's batcher does with a round (`HFBackend.generate_round`): the answer unsure about
    this map comes back unfinished, and is finished in the next call beside a new request, its three other
    views and the new map read by the vision tower in one pass, with the answer a lone request gets."""
    from finetune.generation import UnsureAnswer
    from finetune.vision_pretrain import vision_tower

    wafer = WaferMap(generate_grid("Center+Edge_Loc+Loc", np.random.default_rng(3)))
    unsure_request = GenerationRequest("What defects does this wafer show?", wafer, max_new_tokens=48)
    yield_request = GenerationRequest("What is the yield?", wafer, max_new_tokens=48)
    answers, finished = backend.generate_round([unsure_request, yield_request], [])
    assert isinstance(answers[0], UnsureAnswer) and isinstance(answers[1], str) and finished == []
    assert answers[0].rows == 3  # the prompts finishing it adds to the next call, counted by the batcher
    assert answers[1] == backend.generate([yield_request])[0]
    donut = WaferMap(generate_grid("Donut", np.random.default_rng(0)))
    new_request = GenerationRequest("What defects does this wafer show?", donut, max_new_tokens=48)
    seen: list[int] = []
    hook = vision_tower(backend.model).register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
    try:
        next_answers, finished = backend.generate_round([new_request], [answers[0]])
    finally:
        hook.remove()
    assert seen == [4]  # the new map and the unsure map's three other views, one call
    assert finished == backend.generate([unsure_request])
    assert set(parse_answer(finished[0]) or ()) == {"Center", "Edge_Loc", "Loc"}
    assert next_answers == backend.generate([new_request])


def test_a_clean_map_with_a_pattern_is_read_at_the_training_maps_noise():
    """Trained on MixedWM38 alone, the model took its background noise for part of every defect and called
    clean maps with a pattern normal. Shown them at that noise (finetune.background_match), it names their
    patterns (26 of these 35 maps, 1 as sent); the numbers it gives are still the map's as sent."""
    from data_tools.taxonomy import CLASS_NAMES, PATTERN_KEYS
    from finetune.background_match import set_background_match
    from finetune.loading import load_model

    model, processor = load_model(DEFAULT_MODEL)
    classes = [name for name in CLASS_NAMES if name not in ("Normal", "Near_Full", "Random")]
    wafers = [WaferMap(generate_grid(name, np.random.default_rng(i), noise=0.0)) for i, name in enumerate(classes)]
    requests = [GenerationRequest("What defects does this wafer show?", wafer, max_new_tokens=48) for wafer in wafers]

    def right(answers: list[str]) -> int:
        return sum(parse_answer(a) == tuple(k for k in PATTERN_KEYS if k in name.split("+"))
                   for a, name in zip(answers, classes))

    shown_raised = right(generate_answers(model, processor, requests))
    failing = generate_answers(model, processor, [GenerationRequest("How many dies fail?", w) for w in wafers[:5]])
    set_background_match(model, None, 0.0)
    as_sent = right(generate_answers(model, processor, requests))
    assert shown_raised >= 24 and as_sent <= 5
    assert all(str(w.failing) in re.findall(r"\d+", a) for w, a in zip(wafers, failing))
