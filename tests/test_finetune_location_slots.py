"""Location slots: answers place Edge-Loc, Loc and Scratch by slot tokens; generation fills them from the map."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from data_tools.answers import count_answer, location_answer, location_sentence, yesno_answer
from data_tools.locate import locate
from data_tools.synthetic import generate
from data_tools.wafer_map import SECTORS, WaferMap
from finetune.dataset import Example, encode_example
from finetune.generation import generate_answers, prepare_prompt, stream_answer
from finetune.loading import load_model
from finetune.location_slots import (
    LARGEST_CLUSTER,
    LOCATION_SLOTS,
    LOCATION_TOKENS,
    fill_locations,
    has_location_slots,
    location_token,
    named_patterns,
    opening_words,
    slot_locations,
)
from finetune.number_slots import fill_from_map, fill_stream
from finetune.tiny import build_fixed_answer_checkpoint
from finetune.train import add_location_slots
from model_server.backends.base import GenerationRequest, Turn

_CODES = tuple(f"({code})" for code in SECTORS) + tuple(f"（{code}）" for code in SECTORS)


def _map(label: str, seed: int) -> tuple[WaferMap, tuple[str, ...]]:
    wafer = generate(label, np.random.default_rng(seed))
    return wafer, tuple(label.split("+"))


@pytest.mark.parametrize("label", ["Edge_Loc+Loc+Scratch", "Center+Loc", "Donut+Loc+Scratch", "Edge_Ring+Loc"])
@pytest.mark.parametrize("language", ["en", "zh"])
def test_location_answers_round_trip_through_slots(label, language):
    wafer, patterns = _map(label, 7)
    answer = location_answer(locate(wafer, patterns), wafer.facts(), language)
    slotted = slot_locations(answer, wafer, patterns)
    assert not any(code in slotted for code in _CODES), slotted  # no measured place left for the model to write
    for key in set(patterns) & {"Edge_Loc", "Loc", "Scratch"}:
        assert location_token(key, language) in slotted
    assert fill_locations(slotted, wafer) == answer
    assert named_patterns(slotted) == tuple(k for k in ("Center", "Donut", "Edge_Loc", "Edge_Ring", "Loc", "Scratch")
                                            if k in patterns)


def test_a_loc_slot_is_placed_among_every_pattern_the_answer_names():
    wafer, patterns = _map("Center+Loc", 11)
    answer = yesno_answer("Loc", patterns, "en", locate(wafer, patterns)[1], wafer.facts())
    slotted = slot_locations(answer, wafer, patterns)
    assert slotted.startswith("Yes, there is a Loc pattern. <loc_loc_en> It also shows Center.")
    assert fill_locations(slotted, wafer) == answer  # "Center" comes after the slot and still counts
    alone = location_sentence(locate(wafer, ["Loc"])[0], wafer.facts(), "en")
    among = location_sentence(locate(wafer, patterns)[1], wafer.facts(), "en")
    assert alone != among  # alone, the Center blob itself is taken for the Loc cluster
    assert fill_locations("<loc_loc_en>", wafer) == alone
    assert fill_locations("<loc_loc_en>", wafer, "It shows Center and Loc.\n") == among


@pytest.mark.parametrize("language", ["en", "zh"])
def test_the_largest_cluster_is_placed_by_slot(language):
    wafer, patterns = _map("Loc", 5)
    answer = count_answer(wafer.facts(), "clusters", language)
    slotted = slot_locations(answer, wafer, patterns)
    assert location_token(LARGEST_CLUSTER, language) in slotted
    assert not any(code in slotted for code in _CODES) and "zone" not in slotted and "区" not in slotted
    assert fill_locations(slotted, wafer) == answer
    other, _ = _map("Edge_Loc", 6)
    assert other.facts()["clusters"]["largest"]["sector"] in fill_locations(slotted, other)


def test_negated_names_and_unknown_slots_do_not_count():
    assert named_patterns("No, there is no Center pattern. <loc_scratch_zh>") == ("Scratch",)
    wafer, _ = _map("Scratch", 2)
    assert fill_locations("<loc_centre_en> stays", wafer) == "<loc_centre_en> stays"
    with pytest.raises(ValueError, match="no location slot"):
        location_token("Center", "en")


def test_streamed_answers_are_filled_as_whole_ones_cut_anywhere():
    wafer, _ = _map("Center+Loc", 11)
    text = "The Center pattern sits at the wafer centre: <num_center_failing> fail. <loc_loc_en> Yield <num_yield>%."
    whole = fill_from_map(text, wafer)
    assert "<" not in whole and "Loc pattern is a local cluster" in whole
    for cut in range(1, len(text)):
        assert "".join(fill_stream(iter([text[:cut], text[cut:]]), wafer)) == whole
    pieces = list(fill_stream(iter(["The Center pattern ", "sits. ", "<loc_loc_en>", " more"]), wafer))
    assert pieces[:2] == ["The Center pattern ", "sits. "]  # text before a location slot is not held


def test_training_targets_place_patterns_by_slot(tiny_model_dir):
    _, processor = load_model(tiny_model_dir)
    tokenizer = processor.tokenizer
    assert has_location_slots(tokenizer)
    wafer, patterns = _map("Edge_Loc+Scratch", 4)
    answer = location_answer(locate(wafer, patterns), wafer.facts(), "zh")
    encoded = encode_example(processor, Example(wafer, ("缺陷在哪里？", answer), patterns), max_length=512)
    target = [t for t in encoded["labels"] if t != -100]
    for key in patterns:
        assert tokenizer.convert_tokens_to_ids(location_token(key, "zh")) in target
    assert not any(code in tokenizer.decode(target) for code in _CODES)


def test_generated_location_slots_are_filled_from_the_request_map(tmp_path):
    model, processor = load_model(build_fixed_answer_checkpoint(tmp_path / "fixed", "<loc_scratch_en>"))
    maps = [_map("Scratch", seed)[0] for seed in (1, 2)]
    expected = [location_sentence(locate(w, ["Scratch"])[0], w.facts(), "en") for w in maps]
    assert expected[0] != expected[1]
    requests = [GenerationRequest("Where is it?", w, max_new_tokens=4) for w in maps]
    assert generate_answers(model, processor, requests) == expected
    assert "".join(stream_answer(model, processor, requests[1])) == expected[1]


def test_history_answers_reach_the_prompt_with_their_places_as_slots(tiny_model_dir):
    model, processor = load_model(tiny_model_dir)
    wafer, patterns = _map("Scratch", 3)
    said = location_answer(locate(wafer, patterns), wafer.facts(), "en")
    history = (Turn("user", "Where is it?"), Turn("assistant", said))
    text, _ = prepare_prompt(model, processor, GenerationRequest("Why?", wafer, history=history))
    assert "<loc_scratch_en>" in text and said not in text


def test_a_follow_up_place_is_measured_among_the_patterns_the_thread_named(tmp_path, tiny_model_dir):
    wafer, patterns = _map("Center+Loc", 11)
    among = location_sentence(locate(wafer, patterns)[1], wafer.facts(), "en")
    history = (Turn("user", "What is wrong?"), Turn("assistant", "This wafer shows Center and Loc."),
               Turn("user", "Where is the Loc?"), Turn("assistant", among))
    model, processor = load_model(tiny_model_dir)
    text, _ = prepare_prompt(model, processor, GenerationRequest("Why?", wafer, history=history))
    assert "<loc_loc_en>" in text and among not in text
    model, processor = load_model(build_fixed_answer_checkpoint(tmp_path / "fixed", "<loc_loc_en>"))
    request = GenerationRequest("And the Loc?", wafer, history=history[:2], max_new_tokens=4)
    assert generate_answers(model, processor, [request]) == [among]
    assert "".join(stream_answer(model, processor, request)) == among


def _drop_location_tokens(checkpoint):
    """Rewrite a checkpoint's tokenizer files as a release before location slots wrote them."""
    for name, key in (("tokenizer.json", "added_tokens"), ("tokenizer_config.json", "added_tokens_decoder")):
        path = checkpoint / name
        data = json.loads(path.read_text())
        entries = data.get(key)
        if isinstance(entries, list):
            data[key] = [e for e in entries if e["content"] not in LOCATION_TOKENS]
        elif isinstance(entries, dict):
            data[key] = {i: e for i, e in entries.items() if e["content"] not in LOCATION_TOKENS}
        path.write_text(json.dumps(data))


def test_a_base_without_location_slots_gets_them_for_a_refresh(tmp_path):
    checkpoint = build_fixed_answer_checkpoint(tmp_path / "old", "fine")
    _drop_location_tokens(checkpoint)
    model, processor = load_model(checkpoint, trainable=True)
    assert not has_location_slots(processor.tokenizer)
    rows = model.get_input_embeddings().weight.shape[0]
    assert add_location_slots(model, processor)
    assert has_location_slots(processor.tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(processor.tokenizer) >= rows
    ids = processor.tokenizer.convert_tokens_to_ids(list(LOCATION_TOKENS))
    table = model.get_input_embeddings().weight
    assert max(ids) < table.shape[0]
    for token_id, (place, language) in zip(ids, LOCATION_SLOTS):  # each starts from its own words
        words = processor.tokenizer(opening_words(place, language), add_special_tokens=False)["input_ids"]
        assert torch.allclose(table[token_id], table[words].mean(dim=0))
    assert len({tuple(row.tolist()) for row in table[ids]}) == len(ids)
    assert not add_location_slots(model, processor)  # once is enough
