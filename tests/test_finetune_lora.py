"""LoRA adapters: `defect-glm train --lora` on a tiny checkpoint, save, load back, merge, resume, evaluate.

The adapter is trained for a few steps (lora dropout on) on a corpus built by the real builder; the
checks compare logits and greedy answers of base + adapter with those of the merged checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from data_tools.synthetic import generate
from defect_glm import main
from finetune.dataset import Corpus, ExampleSampler, collate, encode_example
from finetune.generation import generate_answers
from finetune.loading import ModelLoadError, load_model
from finetune.lora import merge_adapter
from model_server.backends.base import GenerationRequest

#: A 3-step adapter run (lr high enough that the adapter visibly moves the outputs).
RUN = [
    "--steps", "3", "--batch-size", "4", "--micro-batches", "2", "--lr", "5e-2", "--warmup-steps", "1",
    "--eval-every", "100", "--eval-maps", "1", "--save-every", "100", "--log-every", "1",
    "--lora-r", "4", "--lora-alpha", "8", "--threads", "1", "--seed", "1", "--no-progress",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora-corpus") / "corpus"
    assert main(["data", "build", "--synthetic", "1", "-k", "1", "--val-fraction", "0.2", "--test-fraction", "0.1",
                 "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def adapter_dir(corpus_dir: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora-run") / "adapter"
    assert main(["train", "--lora", "--base", str(tiny_model_dir), "--data", str(corpus_dir), "--out", str(out),
                 *RUN]) == 0
    return out


def _batch(corpus_dir: Path, processor: Any) -> dict[str, torch.Tensor]:
    sampler = ExampleSampler(Corpus(corpus_dir, splits=("train", "val")), "train", 0.5)
    encoded = [encode_example(processor, e, 512) for e in sampler.batch((5, 1, 0), 3)]
    batch = collate(encoded, processor.tokenizer.pad_token_id)
    batch.pop("labels")
    return batch


def _logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_adapter_run_saves_only_the_adapter_and_the_processor(adapter_dir, tiny_model_dir):
    assert (adapter_dir / "adapter_config.json").is_file() and (adapter_dir / "adapter_model.safetensors").is_file()
    assert not (adapter_dir / "model.safetensors").exists()  # the base weights are not copied
    assert (adapter_dir / "processor_config.json").is_file()
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8
    assert Path(config["base_model_name_or_path"]).resolve() == tiny_model_dir.resolve()
    log = [json.loads(line) for line in (adapter_dir / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3]


def test_loaded_adapter_and_merged_checkpoint_give_the_same_outputs(adapter_dir, tiny_model_dir, corpus_dir, tmp_path,
                                                                    capsys):
    base, processor = load_model(tiny_model_dir)
    with_adapter, _ = load_model(tiny_model_dir, adapter_dir=adapter_dir)
    assert type(with_adapter).__name__ == "PeftModel"
    batch = _batch(corpus_dir, processor)
    base_logits, adapter_logits = _logits(base, batch), _logits(with_adapter, batch)
    assert not torch.allclose(base_logits, adapter_logits, atol=1e-3)  # the adapter learned something

    merged_dir = tmp_path / "merged"
    assert main(["merge", "--base", str(tiny_model_dir), "--adapter", str(adapter_dir), "--out", str(merged_dir)]) == 0
    assert (merged_dir / "model.safetensors").is_file() and not (merged_dir / "adapter_config.json").exists()
    merged, merged_processor = load_model(merged_dir)  # plain Auto classes, no peft
    assert type(merged).__name__ == "FastVlmForConditionalGeneration"
    torch.testing.assert_close(_logits(merged, batch), adapter_logits, rtol=1e-4, atol=1e-4)

    wafer = generate("Donut", np.random.default_rng(2))
    requests = [GenerationRequest("What defects does this wafer show?", wafer, max_new_tokens=12),
                GenerationRequest("这片晶圆有什么缺陷？", wafer, max_new_tokens=12)]
    assert generate_answers(merged, merged_processor, requests) == generate_answers(with_adapter, processor, requests)

    capsys.readouterr()
    assert main(["merge", "--base", str(tiny_model_dir), "--adapter", str(adapter_dir), "--out", str(merged_dir)]) == 2
    assert "already holds files" in capsys.readouterr().err
    with pytest.raises(ModelLoadError, match="not a LoRA adapter directory"):
        merge_adapter(tiny_model_dir, tiny_model_dir, tmp_path / "merged-again")


def test_resumed_adapter_run_matches_the_uninterrupted_one(adapter_dir, tiny_model_dir, corpus_dir, tmp_path):
    out = tmp_path / "adapter"
    args = ["train", "--lora", "--base", str(tiny_model_dir), "--data", str(corpus_dir), "--out", str(out), *RUN]
    assert main([*args, "--stop-after", "1"]) == 0
    assert not (out / "adapter_model.safetensors").exists()
    assert main([*args, "--resume"]) == 0
    expected = load_file(adapter_dir / "adapter_model.safetensors")
    got = load_file(out / "adapter_model.safetensors")
    assert expected.keys() == got.keys() and expected
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_eval_applies_the_adapter(adapter_dir, tiny_model_dir, tmp_path, capsys):
    maps = tmp_path / "maps.npz"
    assert main(["data", "synth", "--per-class", "1", "--classes", "Normal,Center", "--out", str(maps),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(tiny_model_dir), "--adapter", str(adapter_dir), "--mixedwm38", str(maps),
                 "--numbers", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["adapter"] == str(adapter_dir) and result["n"] == 2


def test_bad_adapter_directories_are_clear_errors(tiny_model_dir, tmp_path):
    with pytest.raises(ModelLoadError, match=r"LoRA adapter directory .* does not exist"):
        load_model(tiny_model_dir, adapter_dir=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"expected adapter_config\.json"):
        load_model(tiny_model_dir, adapter_dir=tmp_path / "empty")
