"""Number slots: answers name measured numbers as slot tokens; generation fills them from the map."""

from __future__ import annotations

import numpy as np
import pytest

from data_tools.answers import COUNT_TOPICS, count_answer, location_answer
from data_tools.dialogue import MapContext
from data_tools.synthetic import generate
from data_tools.wafer_map import WaferMap
from finetune.dataset import Example, encode_example
from finetune.generation import generate_answers, prepare_prompt, stream_answer
from finetune.loading import load_model
from finetune.number_slots import (
    SLOT_TOKENS,
    fill_slots,
    fill_stream,
    has_slots,
    slot_numbers,
    slot_token,
    slot_values,
)
from finetune.tiny import build_fixed_answer_checkpoint
from model_server.backends.base import GenerationRequest, Turn


@pytest.fixture(scope="module")
def wafer() -> WaferMap:
    return generate("Center+Scratch", np.random.default_rng(3))


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize("topic", COUNT_TOPICS)
def test_every_count_answer_round_trips_through_slots(wafer, topic, language):
    facts = wafer.facts()
    answer = count_answer(facts, topic, language, zone="middle")
    slotted = slot_numbers(answer, facts)
    assert fill_slots(slotted, facts) == answer
    ambiguous = {v for v in slot_values(facts).values() if list(slot_values(facts).values()).count(v) > 1}
    for value in set(slot_values(facts).values()) - ambiguous:
        assert value not in slotted.replace("<num_", " ").split(), (value, slotted)


def test_location_answers_slot_their_zone_counts(wafer):
    context = MapContext.of(wafer, ("Center", "Scratch"))
    answer = location_answer(context.locations, context.facts, "en")
    slotted = slot_numbers(answer, context.facts)
    assert slot_token("center_failing") in slotted and slot_token("center_dies") in slotted
    assert fill_slots(slotted, context.facts) == answer


def test_numbers_matching_no_fact_or_several_stay_as_written():
    facts = WaferMap(np.array([[0, 1, 1, 0], [1, 2, 2, 1], [1, 1, 1, 1], [0, 1, 1, 0]])).facts()
    assert facts["failing"] == facts["clusters"]["largest"]["size"] == 2  # "2" is ambiguous here
    text = "2 dies fail of 12; check 7 tools; yield 83.33%."
    assert slot_numbers(text, facts) == "2 dies fail of <num_dies>; check 7 tools; yield <num_yield>%."


def test_slots_are_filled_in_streamed_pieces_cut_anywhere(wafer):
    facts = wafer.facts()
    text = "<num_failing> of the <num_dies> dies fail (<num_yield>% yield)."
    whole = fill_slots(text, facts)
    assert whole == f"{wafer.failing} of the {wafer.dies} dies fail ({wafer.yield_percent:.2f}% yield)."
    for cut in range(1, len(text)):
        assert "".join(fill_stream(iter([text[:cut], text[cut:]]), wafer)) == whole
    assert "".join(fill_stream(iter(["a < b", " <num_x"]), wafer)) == "a < b <num_x"


def test_unknown_slot_names_are_refused_or_left_alone(wafer):
    with pytest.raises(ValueError, match="unknown number slot"):
        slot_token("wafers")
    assert fill_slots("<num_wafers> left", wafer.facts()) == "<num_wafers> left"


def test_small_tokenizers_hold_every_slot_as_one_decoded_token(tiny_model_dir):
    _, processor = load_model(tiny_model_dir)
    tokenizer = processor.tokenizer
    assert has_slots(tokenizer)
    for token in SLOT_TOKENS:
        ids = tokenizer(f"is {token}%", add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_tokens_to_ids(token) in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == f"is {token}%"


def test_training_targets_name_the_numbers_as_slots(tiny_model_dir, wafer):
    _, processor = load_model(tiny_model_dir)
    tokenizer = processor.tokenizer
    answer = count_answer(wafer.facts(), "failing", "en")
    encoded = encode_example(processor, Example(wafer, ("How many fail?", answer)), max_length=512)
    target = [t for t in encoded["labels"] if t != -100]
    assert tokenizer.convert_tokens_to_ids(slot_token("failing")) in target
    assert str(wafer.failing) not in tokenizer.decode(target)


def test_generated_slots_are_filled_from_the_request_map(tmp_path, wafer):
    model, processor = load_model(build_fixed_answer_checkpoint(tmp_path / "fixed", "<num_failing> failing"))
    other = generate("Edge_Ring", np.random.default_rng(5))
    history = (Turn("user", "How many fail?"), Turn("assistant", f"{wafer.failing} failing"))
    requests = [
        GenerationRequest("How many fail?", wafer, max_new_tokens=8),
        GenerationRequest("And now?", other, history=history, max_new_tokens=8),
        GenerationRequest("No map here", None, max_new_tokens=8),
    ]
    answers = generate_answers(model, processor, requests)
    assert answers == [f"{wafer.failing} failing", f"{other.failing} failing", "<num_failing> failing"]
    assert "".join(stream_answer(model, processor, requests[1])) == f"{other.failing} failing"


def test_history_answers_reach_the_prompt_in_slot_form(tiny_model_dir, wafer):
    model, processor = load_model(tiny_model_dir)
    history = (Turn("user", "How many fail?"), Turn("assistant", f"{wafer.failing} of the {wafer.dies} dies fail."))
    text, _ = prepare_prompt(model, processor, GenerationRequest("And the yield?", wafer, history=history))
    assert "<num_failing> of the <num_dies> dies fail." in text
    assert f"{wafer.failing} of the" not in text
    plain, _ = prepare_prompt(model, processor, GenerationRequest("And the yield?", None, history=history))
    assert f"{wafer.failing} of the {wafer.dies} dies fail." in plain  # no map, nothing to name
