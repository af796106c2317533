"""Answering from several rotated/mirrored views of the map (finetune.views); generation with a tiny random checkpoint
(the committed model's votes are checked in test_default_model.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_tools.synthetic import generate
from data_tools.wafer_map import WaferMap
from finetune.generation import _encode_together, generate_answers, left_pad_batch, prepare_prompt, stream_answer
from finetune.loading import ModelLoadError, load_model
from finetune.small_model import DEFAULT_CONFIG, SmallModelConfig
from finetune.views import (
    VIEW_TRANSFORMS,
    SurenessRecorder,
    answer_views,
    check_below,
    check_views,
    consensus,
    set_answer_views,
    set_views_below,
    view_count,
    view_wafers,
    views_below,
)
from finetune.vision_pretrain import vision_tower
from model_server.backends.base import GenerationRequest, Turn


@pytest.fixture(scope="module")
def wafer() -> WaferMap:
    return generate("Edge_Loc+Scratch", np.random.default_rng(3))


@pytest.fixture(scope="module")
def eight_views(tiny_model_dir):
    return load_model(tiny_model_dir, views=8)


def test_views_are_distinct_transforms_of_the_map_with_the_map_itself_first(wafer):
    for count in VIEW_TRANSFORMS:
        maps = view_wafers(wafer, count)
        assert len(maps) == count and maps[0] is wafer
        assert len({m.grid.tobytes() for m in maps}) == count  # this map has no symmetry
        assert all(m.failing == wafer.failing for m in maps)
        others = view_wafers(wafer, count, others_only=True)
        assert [m.grid.tobytes() for m in others] == [m.grid.tobytes() for m in maps[1:]]
        assert view_count(wafer, count, others_only=True) == count - 1
    assert view_wafers(None, 8) == [None]  # a question without a map is asked once
    assert view_wafers(None, 8, others_only=True) == [None] and view_count(None, 8, others_only=True) == 1


def test_unsupported_view_counts_are_refused_with_the_choices():
    assert check_views(4) == 4
    with pytest.raises(ValueError, match="one of 1, 4, 8; got 3"):
        check_views(3)


def test_the_answer_is_the_first_naming_the_patterns_most_views_name():
    assert consensus(["Center.", "Center and Scratch.", "Scratch and Center.", "Center, Scratch"]) == 1
    assert consensus(["中心缺陷。", "Center.", "Donut.", "环状缺陷。"]) == 0  # same reading in either language
    assert consensus(["Center.", "Donut.", "Normal: no defects."]) == 0  # no majority: the map as sent
    assert consensus(["The yield is 93.50%.", "Center.", "The yield is 93.50%."]) == 0  # naming none is a choice too
    with pytest.raises(ValueError, match="no answers"):
        consensus([])


def test_the_setting_comes_from_the_checkpoint_and_loading_can_override_it(tiny_model_dir, tmp_path, eight_views):
    plain, _ = load_model(tiny_model_dir)
    assert answer_views(plain) == 1 and answer_views(eight_views[0]) == 8
    set_answer_views(plain, 4)
    plain.save_pretrained(tmp_path)
    for name in ("preprocessor_config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja", "special_tokens_map.json"):
        if (tiny_model_dir / name).exists():
            (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    assert answer_views(load_model(tmp_path)[0]) == 4
    assert answer_views(load_model(tmp_path, views=8)[0]) == 8
    with pytest.raises(ModelLoadError, match="views must be one of 1, 4, 8; got 2"):
        load_model(tiny_model_dir, views=2)


def test_views_batch_like_single_requests_and_stream_the_same_text(eight_views, wafer):
    model, processor = eight_views
    other = generate("Donut", np.random.default_rng(4))
    requests = [
        GenerationRequest("What defects does this wafer show?", wafer, max_new_tokens=6),
        GenerationRequest("hi", None, max_new_tokens=4),
        GenerationRequest("And the yield?", other, history=(Turn("user", "What?"), Turn("assistant", "Donut.")),
                          max_new_tokens=5),
    ]
    batched = generate_answers(model, processor, requests)
    assert batched == [generate_answers(model, processor, [r])[0] for r in requests]
    together = _encode_together(model, processor, requests, 8)
    assert together is not None and together["input_ids"].shape[0] == 8 + 1 + 8  # no views of no map
    expected = left_pad_batch([prepare_prompt(model, processor, r, 8)[1] for r in requests],
                              processor.tokenizer.pad_token_id)
    for key, tensor in expected.items():
        assert torch.equal(together[key], tensor), key
    assert "".join(stream_answer(model, processor, requests[0])).strip() == batched[0]  # one piece
    assert "".join(stream_answer(model, processor, requests[1])).strip() == batched[1]  # streamed


def test_sureness_is_the_least_likely_token_written_after_the_first():
    recorder = SurenessRecorder()
    for scores in ([[0.0, 0.0, 5.0], [1.0, 1.0, 1.0]], [[0.0, 0.0, 0.0], [9.0, 0.0, 0.0]], [[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]]):
        assert torch.equal(recorder(None, torch.tensor(scores)), torch.tensor(scores))  # scores pass unchanged
    pad = 0
    # row 0 wrote one token after its first (then padding): its probability 1/3 counts, the padding does not
    assert recorder.least_sure(torch.tensor([[2, 1, pad], [pad, pad, pad]]), pad) == pytest.approx([1 / 3, 1.0])
    assert recorder.least_sure(torch.tensor([[2, 1, 1], [3, 4, 4]]), pad) == pytest.approx([1 / 3, 1 / 3])
    assert SurenessRecorder().least_sure(torch.tensor([[2]]), pad) == [1.0]


def test_the_sureness_setting_is_checked_and_one_means_always():
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        check_below(0.0)
    with pytest.raises(ValueError, match="answer views must be one of 1, 4, 8"):
        SmallModelConfig(answer_views=2).validate()
    assert (DEFAULT_CONFIG.answer_views, DEFAULT_CONFIG.answer_views_below) == (4, 0.9)  # 4 views: unsure only


def rows_seen_by_the_vision_tower(model, processor, requests, **generate_options) -> list[int]:
    """How many images the vision tower reads in each forward pass while `requests` are answered."""
    seen: list[int] = []
    handle = vision_tower(model).register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
    try:
        generate_answers(model, processor, requests, **generate_options)
    finally:
        handle.remove()
    return seen


def test_only_unsure_answers_ask_the_other_views(tiny_model_dir, wafer):
    model, processor = load_model(tiny_model_dir, views=4)
    requests = [GenerationRequest("What defects does this wafer show?", wafer, max_new_tokens=4),
                GenerationRequest("hi", None, max_new_tokens=3),
                GenerationRequest("Any scratch?", wafer.transformed(1), max_new_tokens=4)]
    assert rows_seen_by_the_vision_tower(model, processor, requests) == [8]  # always: 4 views of 2 maps
    set_views_below(model, 1e-9)  # sure enough, always: one view each
    assert rows_seen_by_the_vision_tower(model, processor, requests) == [2]
    set_views_below(model, 0.999999)  # a random model is never this sure, but its answers name no pattern:
    assert rows_seen_by_the_vision_tower(model, processor, requests) == [2]  # nothing to vote on, not asked again
    set_views_below(model, 1.0)
    assert views_below(model) is None
    with pytest.raises(ModelLoadError, match=r"other views are asked must be in \(0, 1\], got 1.5"):
        load_model(tiny_model_dir, views_below=1.5)
