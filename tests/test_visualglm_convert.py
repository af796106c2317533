"""SAT -> ours: the tiny Defect-GLM-layout LoRA checkpoint converts and reproduces SwissArmyTransformer's outputs.

`tests/fixtures/visualglm/sat_tiny` was written by `benchmarks/visualglm_parity/run.sh --write-fixture`:
a SAT VisualGLM (2 LM layers, 2 ViT layers) with LoRA (rank 4) on the LM and ViT attention and the
projection, saved in SAT's DeepSpeed layout, plus the outputs SAT itself computed (`sat_outputs.pt`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from finetune.visualglm.convert_sat import (
    SatCheckpointError,
    convert_sat_checkpoint,
    qkv_grouped_to_sat,
    qkv_sat_to_grouped,
    read_sat_checkpoint,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "visualglm"
SAT_DIR = FIXTURES / "sat_tiny" / "sat_checkpoint"
TOKENIZER = FIXTURES / "tiny_ice_text.model"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("vg-convert") / "converted"
    return out, convert_sat_checkpoint(SAT_DIR, out, tokenizer=TOKENIZER)


@pytest.fixture(scope="module")
def model(converted):
    from transformers import AutoModelForImageTextToText

    import finetune.visualglm  # noqa: F401  (registers the architecture)

    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_pretrained(converted[0]).eval()


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(SAT_DIR.parent / "sat_outputs.pt", weights_only=True)


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    tolerance = 1e-4 + 1e-5 * float(theirs.abs().max())
    assert float((ours - theirs).abs().max()) <= tolerance


def test_conversion_merges_every_lora_layer_and_writes_a_loadable_checkpoint(converted):
    out, summary = converted
    assert sorted(summary["merged_lora_layers"]) == sorted([
        "mixins.eva.model.glm_proj",
        "mixins.eva.model.vit.transformer.layers.1.attention.dense",
        "mixins.eva.model.vit.transformer.layers.1.attention.query_key_value",
        "transformer.layers.0.attention.dense",
        "transformer.layers.0.attention.query_key_value",
        "transformer.layers.1.attention.dense",
        "transformer.layers.1.attention.query_key_value",
    ])
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "visualglm" and config["num_layers"] == 2 and config["image_length"] == 4
    assert (out / "ice_text.model").is_file() and (out / "model.safetensors").is_file()
    assert json.loads((out / "conversion.json").read_text())["iteration"] == "6000"


def test_vision_outputs_match_sat(model, reference):
    with torch.no_grad():
        vit = model.image_encoder.vit(reference["image"])
        qformer = model.image_encoder.qformer(vit)
        projected = model.image_encoder.glm_proj(qformer)
    _close(vit, reference["vision_vit"])
    _close(qformer, reference["vision_qformer"])
    _close(projected, reference["vision_projected"])


def test_logits_match_sat_with_and_without_image(model, reference):
    with torch.no_grad():
        image_logits = model(input_ids=reference["input_ids"], pixel_values=reference["image"], use_cache=False).logits
        text_logits = model(input_ids=reference["text_ids"], use_cache=False).logits
    _close(image_logits, reference["logits"])
    _close(text_logits, reference["text_logits"])


def test_greedy_generation_with_kv_cache_matches_sat(model, reference):
    steps = len(reference["generated"])
    out = model.generate(input_ids=reference["input_ids"], pixel_values=reference["image"], max_new_tokens=steps,
                         do_sample=False, eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id)
    new = out[0, reference["input_ids"].shape[1]:].tolist()
    assert new == reference["generated"].tolist()


def test_lora_merge_is_sat_lora_formula(model):
    """A LoRA'd fused QKV computes xWᵀ + b + concat_i(x A_iᵀ B_iᵀ)·(alpha/r); ours does that after the row regrouping."""
    state, config, _ = read_sat_checkpoint(SAT_DIR)
    prefix = "transformer.layers.0.attention.query_key_value"
    weight, bias = state[f"{prefix}.original.weight"], state[f"{prefix}.original.bias"]
    rank = state[f"{prefix}.matrix_A.0"].shape[0]
    x = torch.randn(3, weight.shape[1], generator=torch.Generator().manual_seed(1))
    lora = torch.cat([x @ state[f"{prefix}.matrix_A.{i}"].T @ state[f"{prefix}.matrix_B.{i}"].T for i in range(3)], -1)
    sat_out = x @ weight.T + bias + lora * (1.0 / rank)
    with torch.no_grad():
        ours = model.transformer.layers[0].attention.query_key_value(x)
    heads = config["num_attention_heads"]
    assert torch.allclose(qkv_grouped_to_sat(ours.T, heads).T, sat_out, atol=1e-5)
    assert not torch.allclose(ours, sat_out, atol=1e-3)  # the layouts really differ: the permutation matters


def test_qkv_regrouping_puts_each_heads_q_k_v_together():
    heads, head_dim = 3, 2
    rows = torch.arange(3 * heads * head_dim)  # SAT: [Q h0 h1 h2 | K h0 h1 h2 | V h0 h1 h2]
    grouped = qkv_sat_to_grouped(rows, heads)
    assert grouped.tolist() == [0, 1, 6, 7, 12, 13, 2, 3, 8, 9, 14, 15, 4, 5, 10, 11, 16, 17]
    assert torch.equal(qkv_grouped_to_sat(grouped, heads), rows)


def test_refuses_what_is_not_a_sat_checkpoint(tmp_path, converted):
    with pytest.raises(SatCheckpointError, match="latest"):
        convert_sat_checkpoint(tmp_path, tmp_path / "out", tokenizer=TOKENIZER)
    broken = tmp_path / "broken"
    shutil.copytree(SAT_DIR, broken)
    (broken / "latest").write_text("7000")
    with pytest.raises(SatCheckpointError, match="7000"):
        convert_sat_checkpoint(broken, tmp_path / "out2", tokenizer=TOKENIZER)
    with pytest.raises(SatCheckpointError, match="already exists"):
        convert_sat_checkpoint(SAT_DIR, converted[0], tokenizer=TOKENIZER)
    with pytest.raises(SatCheckpointError, match=r"ice_text\.model"):
        convert_sat_checkpoint(SAT_DIR, tmp_path / "out3", tokenizer=tmp_path)


def test_cli_convert_command(tmp_path, capsys):
    from defect_glm import main

    out = tmp_path / "wafer-glm"
    assert main(["convert", "defect-glm-sat", str(SAT_DIR), str(out), "--tokenizer", str(TOKENIZER)]) == 0
    assert "LoRA merged in 7 layers" in capsys.readouterr().out and (out / "model.safetensors").is_file()
    assert main(["convert", "defect-glm-sat", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert "not a directory" in capsys.readouterr().err
