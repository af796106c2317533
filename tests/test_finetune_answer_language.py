"""Answers stay in the language of their question (finetune.answer_language): the tokens only the
other language writes are forbidden row by row, and no answer the corpus writes needs one of them."""

from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from data_tools.dialogue import MapContext, sample_dialogue
from data_tools.phrasing import language_of
from data_tools.synthetic import generate_grid
from data_tools.taxonomy import CLASSES
from data_tools.wafer_map import WaferMap
from finetune.answer_language import answer_language, foreign_tokens
from finetune.generation import generate_answers
from finetune.loading import load_model
from finetune.location_slots import location_token
from model_server.backends.base import GenerationRequest

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "finetune" / "default_model"
_CJK = re.compile(r"[\u3400-\u9fff]")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(DEFAULT_MODEL)


def test_no_answer_of_the_corpus_needs_a_token_of_the_other_language(tokenizer):
    foreign = {language: set(ids) for language, ids in foreign_tokens(tokenizer).items()}
    checked = {"en": 0, "zh": 0}
    for index, cls in enumerate(CLASSES):
        grid = generate_grid(cls.name, np.random.default_rng(index))
        context = MapContext.of(WaferMap(grid), list(cls.patterns))
        for seed in range(24):
            messages = sample_dialogue(context, random.Random(seed), ("en", "zh")[seed % 2]).messages
            for question, answer in zip(messages[::2], messages[1::2]):
                language = language_of(question["content"])
                ids = tokenizer.encode(answer["content"], add_special_tokens=False)
                assert not foreign[language] & set(ids), (question["content"], answer["content"])
                checked[language] += 1
    assert min(checked.values()) > 500


def test_the_foreign_tokens_of_each_language(tokenizer):
    foreign = foreign_tokens(tokenizer)
    decoded = {language: {tokenizer.decode([i]) for i in ids} for language, ids in foreign.items()}
    assert "缺陷" in decoded["en"] and " pattern" in decoded["zh"]
    assert location_token("Scratch", "zh") in decoded["en"] and location_token("Scratch", "en") in decoded["zh"]
    for kept in ("缺陷", "<num_failing>", location_token("Scratch", "zh"), " CMP", " mm"):
        assert all(i not in foreign["zh"] for i in tokenizer.encode(kept, add_special_tokens=False)), kept
    for kept in (" pattern", " —", "<num_failing>", location_token("Scratch", "en")):
        assert all(i not in foreign["en"] for i in tokenizer.encode(kept, add_special_tokens=False)), kept
    assert tokenizer.eos_token_id not in foreign["en"] + foreign["zh"]


def test_a_wording_the_model_never_saw_is_answered_in_its_language():
    """Asked without the rule, the default model answered 3 of these 38 maps in Chinese for "Any
    thoughts?" and 4 in English for "有啥想法？", in the same batch as here."""
    model, processor = load_model(DEFAULT_MODEL)
    wafers = [WaferMap(generate_grid(cls.name, np.random.default_rng(i))) for i, cls in enumerate(CLASSES)]
    requests = [GenerationRequest(question, wafer, max_new_tokens=48)
                for wafer in wafers for question in ("Any thoughts?", "有啥想法？")]
    answers = generate_answers(model, processor, requests)
    assert all(bool(_CJK.search(a)) == (language_of(r.question) == "zh") for r, a in zip(requests, answers))


def test_a_tokenizer_that_is_not_ours_or_a_model_that_says_so_is_left_alone(tiny_model_dir, tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from finetune.tiny import build_fixed_answer_checkpoint

    model, processor = load_model(tiny_model_dir)
    plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0, "what": 1}, "[UNK]")))
    assert answer_language(model, plain, ["What?"]) is None  # a large model's tokenizer: its answers are its own
    assert answer_language(model, processor.tokenizer, ["What?", "什么？"]).languages == ["en", "zh"]
    fixed, fixed_processor = load_model(build_fixed_answer_checkpoint(tmp_path / "normal", "normal"))
    assert answer_language(fixed, fixed_processor.tokenizer, ["什么？"]) is None  # "normal" to every question
