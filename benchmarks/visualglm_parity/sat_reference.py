"""The reference: VisualGLM-6B assembled from SwissArmyTransformer 0.4.12's own models (run in the SAT venv).

VisualGLM-6B's original code is a thin composition over SAT: SAT's `ChatGLMModel` for the
language model, SAT's `ViTModel` (with its classifier mixin swapped for a final LayerNorm) as
the EVA encoder, a SAT `BaseModel` (post-LN, learned queries, no positions) as the Q-Former, a
linear projection, and a word-embedding hook that splices the image into the prompt. This module
rebuilds that composition, at any size, so our implementation can be compared with SAT's layers,
attention, rotary code and LoRA (`sat.model.finetune.lora2`). Only this benchmark imports it.
"""

from __future__ import annotations

import argparse
import json
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sat.model import BaseMixin, BaseModel, ViTModel
from sat.model.finetune.lora2 import LoraMixin, replace_linear_with_lora
from sat.model.official import ChatGLMModel


class FinalLayerNormMixin(BaseMixin):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.ln_vision = torch.nn.LayerNorm(hidden_size)

    def final_forward(self, logits, **kw_args):
        return self.ln_vision(logits)


class EvaEncoder(ViTModel):
    def __init__(self, args, **kwargs) -> None:
        super().__init__(args, **kwargs)
        self.del_mixin("cls")
        self.add_mixin("cls", FinalLayerNormMixin(args.hidden_size))

    def forward(self, image):
        ids = torch.zeros(image.size(0), 1, dtype=torch.long, device=image.device)
        mask = torch.tensor([[1.0]], dtype=image.dtype, device=image.device)
        return super().forward(input_ids=ids, position_ids=None, attention_mask=mask, image=image)


class QueryFormer(BaseModel):
    def __init__(self, args, **kwargs) -> None:
        super().__init__(args, activation_func=torch.nn.functional.gelu, **kwargs)
        self.transformer.position_embeddings = None
        self.num_queries = args.vocab_size

    def final_forward(self, logits, **kw_args):
        return logits

    def position_embedding_forward(self, position_ids, **kw_args):
        return None

    def forward(self, encoder_outputs):
        batch = encoder_outputs.size(0)
        ids = torch.arange(self.num_queries, device=encoder_outputs.device)[None].expand(batch, -1)
        one = torch.tensor([[1.0]], dtype=encoder_outputs.dtype, device=encoder_outputs.device)
        return super().forward(input_ids=ids, position_ids=None, attention_mask=one,
                               encoder_outputs=encoder_outputs, cross_attention_mask=one)


class ImageEncoder(torch.nn.Module):
    def __init__(self, eva_args: dict, qformer_args: dict, lm_hidden: int) -> None:
        super().__init__()
        self.vit = EvaEncoder(EvaEncoder.get_args(**eva_args))
        self.qformer = QueryFormer(QueryFormer.get_args(**qformer_args))
        self.glm_proj = torch.nn.Linear(qformer_args["hidden_size"], lm_hidden)

    def forward(self, image, **kwargs):
        return self.glm_proj(self.qformer(self.vit(image)[0])[0])


class ImageSpliceMixin(BaseMixin):
    def __init__(self, args) -> None:
        super().__init__()
        self.image_length = args.image_length
        self.model = ImageEncoder(args.eva_args, args.qformer_args, args.hidden_size)

    def word_embedding_forward(self, input_ids, output_cross_layer, **kw_args):
        if kw_args.get("image") is None or kw_args["pre_image"] > input_ids.shape[1]:
            return self.transformer.word_embeddings(input_ids)
        image_emb = self.model(**kw_args)
        start = kw_args["pre_image"]
        pre, _, post = torch.tensor_split(input_ids, [start, start + self.image_length], dim=1)
        return torch.cat([self.transformer.word_embeddings(pre), image_emb, self.transformer.word_embeddings(post)], 1)


class SatVisualGLM(ChatGLMModel):
    def __init__(self, args, **kwargs) -> None:
        super().__init__(args, **kwargs)
        self.add_mixin("eva", ImageSpliceMixin(args))


# ---------------------------------------------------------------------------------------- configs
def tiny_sat_args(**token_ids: int) -> dict[str, Any]:
    """A tiny VisualGLM in SAT argument names (token ids: those of the tiny test tokenizer)."""
    ids = {"bos_token_id": 8, "eos_token_id": 9, "mask_token_id": 4, "gmask_token_id": 5, "pad_token_id": 3}
    ids.update(token_ids)
    return {
        "num_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 240, "inner_hidden_size": 256,
        "layernorm_order": "post", "layernorm_epsilon": 1e-5, "max_sequence_length": 512, "image_length": 4,
        "model_parallel_size": 1,
        **ids,
        "eva_args": {
            "num_layers": 2, "hidden_size": 48, "num_attention_heads": 4, "vocab_size": 1, "layernorm_order": "pre",
            "model_parallel_size": 1, "max_sequence_length": 5, "inner_hidden_size": 96, "use_final_layernorm": False,
            "layernorm_epsilon": 1e-6, "image_size": [28, 28], "pre_len": 1, "post_len": 0, "in_channels": 3,
            "num_classes": 0, "patch_size": 14,
        },
        "qformer_args": {
            "num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "vocab_size": 4, "layernorm_order": "post",
            "model_parallel_size": 1, "max_sequence_length": 0, "is_decoder": [True, False],
            "cross_attn_hidden_size": 48, "layernorm_epsilon": 1e-12,
        },
    }


def build(sat_args: dict[str, Any], seed: int = 0, scale: float = 0.3) -> SatVisualGLM:
    """A SAT VisualGLM with random weights (normal * scale; LayerNorms 1 + noise) in eval mode."""
    args = SatVisualGLM.get_args(**deepcopy(sat_args))
    args.skip_init = False
    model = SatVisualGLM(args).eval()
    torch.manual_seed(seed)  # after construction: SAT re-seeds its RNG while building
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name or "ln_vision" in name:
                param.copy_(1.0 + scale * torch.randn_like(param) if name.endswith("weight") else scale * torch.randn_like(param))
            else:
                param.normal_(0.0, scale)
    return model


def add_lora(model: SatVisualGLM, rank: int, lm_layers: list[int], vit_layers: list[int], seed: int = 1) -> None:
    """Defect-GLM's LoRA layout (LM and ViT attention, the projection) with non-zero B matrices."""
    model.add_mixin("lora", LoraMixin(len(model.transformer.layers), rank, layer_range=lm_layers), reinit=True)
    encoder = model.get_mixin("eva").model
    encoder.vit.add_mixin("lora", LoraMixin(len(encoder.vit.transformer.layers), rank, layer_range=vit_layers), reinit=True)
    encoder.glm_proj = replace_linear_with_lora(encoder.glm_proj, 1, rank)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "matrix_B" in name or "matrix_A" in name:
                param.normal_(0.0, 0.5)
    model.eval()


# ---------------------------------------------------------------------------------------- running
def glm_mask_and_positions(length: int, context_length: int, mask_position: int) -> tuple[torch.Tensor, torch.Tensor]:
    """VisualGLM chat's mask (bidirectional prefix, causal after) and 2-D positions for one sequence."""
    mask = torch.ones(1, length, length).tril_()
    mask[..., :context_length] = 1
    positions = torch.zeros(2, length, dtype=torch.long)
    positions[0, :context_length] = torch.arange(context_length)
    positions[0, context_length:] = mask_position
    positions[1, context_length:] = torch.arange(1, length - context_length + 1)
    return mask[:, None], positions[None]


@torch.no_grad()
def logits(model: SatVisualGLM, ids: torch.Tensor, image: torch.Tensor | None, pre_image: int, bos: int) -> torch.Tensor:
    context = ids[0].tolist().index(bos)
    mask, positions = glm_mask_and_positions(ids.shape[1], context, context - 1)
    kw = {"image": image, "pre_image": pre_image} if image is not None else {"pre_image": 0}
    return model(input_ids=ids, position_ids=positions, attention_mask=mask, **kw)[0]


@torch.no_grad()
def greedy(model: SatVisualGLM, ids: torch.Tensor, image: torch.Tensor | None, pre_image: int, bos: int,
           steps: int) -> list[int]:
    """Greedy decoding without a cache: the whole sequence is recomputed every step."""
    seq = ids.clone()
    for _ in range(steps):
        nxt = logits(model, seq, image, pre_image, bos)[0, -1].argmax()
        seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
    return seq[0, ids.shape[1]:].tolist()


@torch.no_grad()
def vision(model: SatVisualGLM, image: torch.Tensor) -> dict[str, torch.Tensor]:
    encoder = model.get_mixin("eva").model
    vit = encoder.vit(image)[0]
    qformer = encoder.qformer(vit)[0]
    return {"vit": vit, "qformer": qformer, "projected": encoder.glm_proj(qformer)}


def save_sat_checkpoint(model: SatVisualGLM, sat_args: dict[str, Any], directory: Path, iteration: int,
                        lora: dict[str, Any] | None) -> None:
    """Write SAT's DeepSpeed checkpoint layout: latest, <iter>/mp_rank_00_model_states.pt, model_config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "latest").write_text(str(iteration))
    (directory / str(iteration)).mkdir(exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainable = {k: tuple(v.shape) for k, v in state.items() if "matrix_" in k}
    torch.save(
        {"module": state, "param_shapes": [trainable], "iteration": iteration, "np_rng_state": np.random.get_state(),
         "dp_world_size": 1, "mp_world_size": 1},
        directory / str(iteration) / "mp_rank_00_model_states.pt",
    )
    config = {"model_class": "FineTuneVisualGLMModel", "tokenizer_type": "THUDM/chatglm-6b", **sat_args}
    if lora:
        config.update({"use_lora": True, "use_qlora": False, "use_ptuning": False, **lora})
    (directory / "model_config.json").write_text(json.dumps(config, indent=4))


def parse_args() -> argparse.Namespace:  # pragma: no cover - helper for manual runs
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--print-names", action="store_true")
    return parser.parse_args()
