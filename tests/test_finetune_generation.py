"""Prompt building, checkpoint loading and generation with a tiny random checkpoint of the real architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from data_tools.synthetic import generate
from data_tools.wafer_map import WaferMap
from finetune.generation import (
    GenerationError,
    _encode_together,
    generate_answers,
    left_pad_batch,
    prepare_prompt,
    stream_answer,
)
from finetune.loading import ModelLoadError, load_model
from finetune.prompting import (
    FACTS_PREFIX,
    PromptTooLong,
    build_messages,
    facts_line,
    fit_history,
    images_of,
    model_image,
    set_measured_facts,
    uses_measured_facts,
)
from model_server.backends.base import GenerationRequest, Turn


@pytest.fixture(scope="module")
def wafer() -> WaferMap:
    return generate("Center+Scratch", np.random.default_rng(0))


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_model(tiny_model_dir)


def test_first_user_turn_carries_image_and_measured_facts(wafer):
    history = [Turn("user", "What defects?"), Turn("assistant", "Center and Scratch.")]
    messages = build_messages(wafer, history, "Where is it?")
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    first = messages[0]["content"]
    assert first[0]["type"] == "image" and first[0]["image"].size == (52, 52)
    text = first[1]["text"]
    assert text.startswith(FACTS_PREFIX) and text.endswith("\nWhat defects does this wafer show?")  # opening_question
    assert f"failing {wafer.failing}" in text and f"yield {wafer.yield_percent:.2f}%" in text
    assert messages[2]["content"] == [{"type": "text", "text": "Where is it?"}]
    assert len(images_of(messages)) == 1


def test_user_turns_reach_the_model_in_the_corpus_form_and_answers_as_said(wafer):
    history = [Turn("user", "whats the yield  of it"), Turn("assistant", "a center blob. no scratch")]
    messages = build_messages(wafer, history, "这片晶圆的良率是多少")
    assert messages[0]["content"][1]["text"].endswith("\nWhats the yield of it?")
    assert messages[1]["content"] == [{"type": "text", "text": "a center blob. no scratch"}]
    assert messages[2]["content"] == [{"type": "text", "text": "这片晶圆的良率是多少？"}]


def test_the_question_with_the_map_asks_what_it_shows_when_it_asks_nothing_more(wafer):
    history = [Turn("user", "anything odd here?"), Turn("assistant", "Center and Scratch.")]
    messages = build_messages(wafer, history, "anything odd here?")
    assert messages[0]["content"][1]["text"].endswith("\nWhat defects does this wafer show?")
    assert messages[2]["content"] == [{"type": "text", "text": "Anything odd here?"}]  # a later turn: as written
    asked = build_messages(wafer, [], "这片晶圆怎么回事")[0]["content"][1]["text"]
    assert asked.endswith("\n这片晶圆有哪些缺陷？")
    assert build_messages(wafer, [], "where is the damage?")[0]["content"][1]["text"].endswith("\nWhere is the damage?")
    assert build_messages(None, [], "anything odd here?")[0]["content"] == [{"type": "text", "text": "Anything odd here?"}]


def test_text_only_thread_has_no_image():
    messages = build_messages(None, [], "What is an Edge-Ring?")
    assert images_of(messages) == [] and messages[0]["content"][0]["text"] == "What is an Edge-Ring?"


def test_grids_of_other_sizes_render_square(wafer):
    small = WaferMap(wafer.grid[:30, :40])
    assert model_image(small).size[0] == model_image(small).size[1]
    assert facts_line(small).startswith(FACTS_PREFIX)


def test_empty_question_is_refused(wafer):
    with pytest.raises(ValueError, match="question"):
        build_messages(wafer, [], "  ")


def test_tiny_checkpoint_loads_with_auto_classes_alone(tiny_model_dir):
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "FastVlmForConditionalGeneration"
    assert processor.chat_template
    assert sum(f.stat().st_size for f in tiny_model_dir.iterdir()) < 5_000_000


@pytest.fixture(scope="module")
def mixed_batch(wafer) -> list[GenerationRequest]:
    """A map question, a question without a map, and a follow-up with history on another map."""
    other = generate("Edge_Ring", np.random.default_rng(1))
    return [
        GenerationRequest("What defects does this wafer show?", wafer, max_new_tokens=6),
        GenerationRequest("hi", None, max_new_tokens=4),
        GenerationRequest("And the yield?", other, history=(Turn("user", "What?"), Turn("assistant", "Edge-Ring.")),
                          max_new_tokens=5),
    ]


def test_batched_answers_equal_one_by_one(loaded, mixed_batch):
    model, processor = loaded
    batched = generate_answers(model, processor, mixed_batch)
    single = [generate_answers(model, processor, [r])[0] for r in mixed_batch]
    assert batched == single
    assert all(isinstance(a, str) for a in batched) and batched[0] and batched[2]  # random weights: "hi" may get ""


def test_channels_last_weights_answer_the_same(tiny_model_dir, loaded, mixed_batch):
    model, processor = loaded
    fast, _ = load_model(tiny_model_dir, channels_last=True)
    convs = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs)  # (1×1 kernels are both)
    assert generate_answers(fast, processor, mixed_batch) == generate_answers(model, processor, mixed_batch)


def test_a_batch_encoded_in_one_call_equals_its_requests_encoded_one_by_one(loaded, mixed_batch):
    model, processor = loaded
    together = _encode_together(model, processor, mixed_batch)
    expected = left_pad_batch([prepare_prompt(model, processor, r)[1] for r in mixed_batch],
                              processor.tokenizer.pad_token_id)
    assert together is not None and together.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(together[key], tensor), key


def test_a_batch_with_a_prompt_too_long_for_the_context_is_fitted_request_by_request(loaded, wafer):
    model, processor = loaded
    history = tuple(Turn("user" if i % 2 == 0 else "assistant", "word " * 200) for i in range(30))
    requests = [GenerationRequest("Where?", wafer, history=history, max_new_tokens=3),
                GenerationRequest("What defects does this wafer show?", wafer, max_new_tokens=3)]
    assert _encode_together(model, processor, requests) is None  # the long thread must drop turns
    assert generate_answers(model, processor, requests) == [generate_answers(model, processor, [r])[0] for r in requests]


def test_streaming_yields_the_same_text(loaded, wafer):
    model, processor = loaded
    request = GenerationRequest("What defects does this wafer show?", wafer, max_new_tokens=6)
    pieces = list(stream_answer(model, processor, request))
    assert pieces and "".join(pieces).strip() == generate_answers(model, processor, [request])[0]


def test_the_facts_line_is_in_the_prompt_unless_the_checkpoint_says_it_was_trained_without(loaded, wafer):
    model, processor = loaded
    request = GenerationRequest("What defects does this wafer show?", wafer, max_new_tokens=4)
    assert uses_measured_facts(model)  # a checkpoint that says nothing was trained with the facts line
    with_facts, encoded = prepare_prompt(model, processor, request)
    assert FACTS_PREFIX in with_facts
    set_measured_facts(model, False)
    try:
        without, shorter = prepare_prompt(model, processor, request)
        assert FACTS_PREFIX not in without and "What defects does this wafer show?" in without
        assert shorter["input_ids"].shape[1] < encoded["input_ids"].shape[1] - 30
        assert generate_answers(model, processor, [request])[0] is not None
    finally:
        set_measured_facts(model, True)


def test_long_history_is_trimmed_and_an_overlong_question_refused(loaded, wafer):
    model, processor = loaded
    history = tuple(Turn("user" if i % 2 == 0 else "assistant", "word " * 200) for i in range(30))
    answer = generate_answers(model, processor, [GenerationRequest("Where?", wafer, history=history, max_new_tokens=3)])
    assert len(answer) == 1
    with pytest.raises(GenerationError, match="context"):
        generate_answers(model, processor, [GenerationRequest("word " * 5000, wafer, max_new_tokens=3)])


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        load_model(tmp_path)


def test_quantization_without_cuda_is_a_clear_error(tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="CUDA"):
        load_model(tiny_model_dir, quantization="4bit")


def test_fit_history_drops_the_oldest_turns_in_pairs_until_the_prompt_fits():
    history = tuple(Turn("user" if i % 2 == 0 else "assistant", f"t{i}") for i in range(6))
    seen: list[int] = []

    def encode(turns: tuple[Turn, ...]) -> tuple[int, tuple[str, ...]]:
        seen.append(len(turns))
        return 10 + 10 * len(turns), tuple(t.text for t in turns)

    assert fit_history(history, max_new_tokens=5, limit=40, encode=encode) == ("t4", "t5")
    assert seen == [6, 4, 2]
    assert fit_history(history, max_new_tokens=5, limit=100, encode=encode) == tuple(f"t{i}" for i in range(6))
    with pytest.raises(PromptTooLong, match="needs 10 prompt tokens \\+ 5 new tokens, more than the model's context of 12"):
        fit_history(history, max_new_tokens=5, limit=12, encode=encode)
