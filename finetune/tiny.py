"""Tiny checkpoints of the small model's architecture, for tests of training, evaluation, server, bot and demo.

`build_tiny_checkpoint` trains a tokenizer on a few sentences, builds a randomly initialised
model with `TINY_CONFIG` and saves model + processor with `save_pretrained`: a few MB, built in
a few seconds, loadable with `AutoModelForImageTextToText` / `AutoProcessor` like the real one.
Its answers are gibberish; it exists to exercise the code paths, not to answer well.

`build_fixed_answer_checkpoint` is the same architecture with hand-set weights that make greedy
generation answer one fixed text (e.g. "normal") to every question: a checkpoint of known
quality, so evaluation scores and promotion decisions can be checked with exact numbers.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch

from data_tools.taxonomy import PATTERNS
from finetune.answer_language import KEEP_ATTRIBUTE
from finetune.checkpoints import require_new_dir, save_new_checkpoint
from finetune.small_model import TINY_CONFIG, build_model, build_processor
from finetune.tokenizer import ASSISTANT, train_tokenizer

_SENTENCES = (
    "What defects does this wafer show?",
    "This wafer shows a Center pattern and a Scratch.",
    "The wafer is normal: no defect pattern.",
    "dies 2061, failing 143, yield 93.06%",
    "这片晶圆有什么缺陷？",
    "这片晶圆显示中心和划痕缺陷。",
    "良率是多少？ 失效芯片 0 1 2 3 4 5 6 7 8 9",
)


def tiny_corpus() -> list[str]:
    names = [f"{p.english} {p.chinese} {p.key}" for p in PATTERNS]
    return [*_SENTENCES, *names]


def _tiny_parts(seed: int) -> tuple[Any, Any, Any]:
    tokenizer = train_tokenizer(tiny_corpus() * 4, vocab_size=400, min_frequency=1)
    return tokenizer, build_processor(tokenizer, TINY_CONFIG), build_model(tokenizer, TINY_CONFIG, seed=seed)


def build_tiny_checkpoint(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint (model + processor) to `out_dir` and return its path."""
    out = Path(out_dir)
    require_new_dir(out, "tiny checkpoint")
    _, processor, model = _tiny_parts(seed)
    return save_new_checkpoint(out, model, processor, what="tiny checkpoint")


def build_fixed_answer_checkpoint(out_dir: str | Path, answer: str, seed: int = 0) -> Path:
    """Write a tiny checkpoint whose greedy answer to any question is `answer`; returns its path.

    The decoder's attention and MLP outputs are zeroed, so the last hidden state is the embedding
    of the last token, and an untied output layer maps each token of the chain
    `<|assistant|>`, answer tokens…, `<|end|>` to the next one (a hand-set bigram model).
    The answer's tokens must all differ (a bigram chain cannot repeat a token).
    """
    out = Path(out_dir)
    require_new_dir(out, "checkpoint")
    tokenizer, processor, model = _tiny_parts(seed)
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    chain = [tokenizer.convert_tokens_to_ids(ASSISTANT), *ids, tokenizer.eos_token_id]
    if not ids or len(set(chain)) != len(chain):
        raise ValueError(f"the answer {answer!r} must be non-empty and tokenize to distinct tokens; got {ids}")
    if len(chain) - 1 > TINY_CONFIG.text_hidden:
        raise ValueError(f"the answer {answer!r} is {len(ids)} tokens; at most {TINY_CONFIG.text_hidden - 1} fit")
    decoder = model.model.language_model
    with torch.no_grad():
        for layer in decoder.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        decoder.norm.weight.fill_(1.0)
        embeddings = decoder.embed_tokens.weight
        head = torch.zeros_like(embeddings)
        for dim, (current, following) in enumerate(itertools.pairwise(chain)):
            embeddings[current] = 0.0
            embeddings[current, dim] = 1.0
            head[following, dim] = 10.0
    model.config.tie_word_embeddings = False
    model.config.text_config.tie_word_embeddings = False
    setattr(model.config, KEEP_ATTRIBUTE, False)  # its one answer stands for any question, in either language
    model.lm_head.weight = torch.nn.Parameter(head)
    return save_new_checkpoint(out, model, processor, what="tiny checkpoint")
