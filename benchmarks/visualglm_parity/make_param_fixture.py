"""Write tests/fixtures/visualglm/visualglm6b_parameters.json: every tensor name and shape of the published checkpoint.

Derived independently of our model: SwissArmyTransformer 0.4.12 builds VisualGLM-6B at the
published configuration (THUDM/visualglm-6b config.json: ChatGLM-6B 28x4096, vocabulary 130528,
EVA ViT-g 39x1408, Q-Former 12x768, 32 queries) on the meta device, and its names are mapped to
the published Hugging Face checkpoint's module tree: the image encoder is SAT's own modules under
`image_encoder.`, the language model is ChatGLM-6B's HF tree (`lm_head.weight` at the top, one
rotary `inv_freq` buffer per attention layer). Run in the SAT venv:
`PYTHONPATH=benchmarks/visualglm_parity /tmp/sat-venv/bin/python benchmarks/visualglm_parity/make_param_fixture.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "fixtures" / "visualglm" / "visualglm6b_parameters.json"

#: THUDM/visualglm-6b config.json, in SAT argument names.
PUBLISHED = {
    "num_layers": 28, "hidden_size": 4096, "num_attention_heads": 32, "vocab_size": 130528,
    "inner_hidden_size": 16384, "layernorm_order": "post", "layernorm_epsilon": 1e-5, "max_sequence_length": 2048,
    "image_length": 32, "bos_token_id": 130004, "eos_token_id": 130005, "mask_token_id": 130000,
    "gmask_token_id": 130001, "pad_token_id": 3, "model_parallel_size": 1,
    "eva_args": {
        "num_layers": 39, "hidden_size": 1408, "num_attention_heads": 16, "vocab_size": 1, "layernorm_order": "pre",
        "model_parallel_size": 1, "max_sequence_length": 257, "inner_hidden_size": 6144, "use_final_layernorm": False,
        "layernorm_epsilon": 1e-6, "image_size": [224, 224], "pre_len": 1, "post_len": 0, "in_channels": 3,
        "num_classes": 0, "patch_size": 14,
    },
    "qformer_args": {
        "num_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "vocab_size": 32, "layernorm_order": "post",
        "model_parallel_size": 1, "max_sequence_length": 0, "is_decoder": [i % 2 == 0 for i in range(12)],
        "cross_attn_hidden_size": 1408, "layernorm_epsilon": 1e-12,
    },
}


def main() -> None:
    import sat_reference as ref

    # SAT places its big linears on `torch.cuda.current_device()` when asked to initialise on the GPU:
    # point that at the meta device so 7.8B parameters cost no memory.
    torch.cuda.current_device = lambda: torch.device("meta")
    # SAT's parallel layers allocate with an explicit `device=torch.device("cpu")` default, which the meta
    # device context does not override: redirect torch.empty while the model is built.
    real_empty = torch.empty

    def meta_empty(*size, **kwargs):
        kwargs["device"] = "meta"
        return real_empty(*size, **kwargs)

    torch.empty = meta_empty
    args = ref.SatVisualGLM.get_args(**PUBLISHED)
    args.skip_init, args.use_gpu_initialization = True, True
    with torch.device("meta"):
        model = ref.SatVisualGLM(args)
    torch.empty = real_empty
    shapes: dict[str, list[int]] = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("mixins.eva.model."):
            shapes["image_encoder." + name[len("mixins.eva.model."):]] = list(tensor.shape)
        elif name == "mixins.chatglm-final.lm_head.weight":
            shapes["lm_head.weight"] = list(tensor.shape)
        elif name == "mixins.chatglm-attn.rotary_emb.inv_freq":
            for layer in range(PUBLISHED["num_layers"]):
                shapes[f"transformer.layers.{layer}.attention.rotary_emb.inv_freq"] = list(tensor.shape)
        elif name.startswith("transformer."):
            shapes[name] = list(tensor.shape)
        else:
            raise SystemExit(f"unexpected SAT tensor {name}")
    total = sum(int(torch.tensor(s).prod()) if s else 1 for s in shapes.values())
    OUT.write_text(json.dumps({
        "description": "tensor names and shapes of THUDM/visualglm-6b (Hugging Face layout), derived with "
                       "SwissArmyTransformer 0.4.12 by benchmarks/visualglm_parity/make_param_fixture.py",
        "total_elements": total,
        "tensors": dict(sorted(shapes.items())),
    }, indent=1) + "\n")
    print(f"wrote {len(shapes)} tensors ({total / 1e9:.2f} B elements) to {OUT}")


if __name__ == "__main__":
    main()
