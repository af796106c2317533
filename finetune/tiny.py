"""Tiny random checkpoints of the small model's architecture, for tests of the server, bot and demo.

`build_tiny_checkpoint` trains a tokenizer on a few sentences, builds a randomly initialised
model with `TINY_CONFIG` and saves model + processor with `save_pretrained`: a few MB, built in
a few seconds, loadable with `AutoModelForImageTextToText` / `AutoProcessor` like the real one.
Its answers are gibberish; it exists to exercise the code paths, not to answer well.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from data_tools.taxonomy import PATTERNS
from finetune.small_model import TINY_CONFIG, build_model, build_processor
from finetune.tokenizer import train_tokenizer

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


def build_tiny_checkpoint(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random checkpoint (model + processor) to `out_dir` and return its path."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; give a new directory for the tiny checkpoint")
    tokenizer = train_tokenizer(tiny_corpus() * 4, vocab_size=400, min_frequency=1)
    processor = build_processor(tokenizer, TINY_CONFIG)
    model = build_model(tokenizer, TINY_CONFIG, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
