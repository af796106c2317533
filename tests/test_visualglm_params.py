"""Our VisualGLM at the published size has exactly the published checkpoint's tensor names and shapes.

`tests/fixtures/visualglm/visualglm6b_parameters.json` lists every tensor of THUDM/visualglm-6b
(Hugging Face layout), derived independently with SwissArmyTransformer by
`benchmarks/visualglm_parity/make_param_fixture.py`. The full 7.8B model is built on the meta
device here, so this costs no memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune.visualglm import VisualGLMConfig, VisualGLMConfigError, VisualGLMForConditionalGeneration, tiny_config

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "visualglm" / "visualglm6b_parameters.json"


def test_full_size_model_matches_the_published_parameter_list():
    expected = json.loads(FIXTURE.read_text())
    with torch.device("meta"):
        model = VisualGLMForConditionalGeneration(VisualGLMConfig())
    ours = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    assert sorted(set(expected["tensors"]) - set(ours)) == []
    assert sorted(set(ours) - set(expected["tensors"])) == []
    assert {k: v for k, v in ours.items() if v != expected["tensors"][k]} == {}
    assert sum(int(torch.Size(s).numel()) for s in ours.values()) == expected["total_elements"]
    assert ours["transformer.word_embeddings.weight"] == [130528, 4096]
    assert ours["image_encoder.glm_proj.weight"] == [4096, 768]


def test_impossible_configs_are_refused_with_the_values_named():
    with pytest.raises(VisualGLMConfigError, match="num_attention_heads"):
        tiny_config(hidden_size=66)
    with pytest.raises(VisualGLMConfigError, match="query tokens"):
        tiny_config(image_length=5)
    with pytest.raises(VisualGLMConfigError, match="positions"):
        tiny_config(eva_config={"num_layers": 1, "hidden_size": 48, "num_attention_heads": 4, "image_size": [42, 42],
                                "patch_size": 14, "max_sequence_length": 5})
