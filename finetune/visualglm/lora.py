"""LoRA targets for VisualGLM, anchored to full module names so the LM and the ViT never get confused.

Both the language model and the ViT have `…layers.N.attention.query_key_value`; a bare suffix
would put adapters on both. These helpers build one regular expression that peft matches
against whole module names (`re.fullmatch`), naming exactly the layers wanted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

LM_MODULES = ("query_key_value", "dense")
VIT_MODULES = ("query_key_value", "dense")

#: What Defect-GLM's release trained (rank 16): ChatGLM layers 0/19/27, ViT layers 0/13/26/38
#: (attention QKV and output projections) and the 768->4096 image projection.
DEFECT_GLM_RELEASE: dict[str, Any] = {
    "lm_layers": (0, 19, 27),
    "lm_modules": LM_MODULES,
    "vit_layers": (0, 13, 26, 38),
    "vit_modules": VIT_MODULES,
    "projection": True,
    "rank": 16,
}


def _layers(layers: Iterable[int] | None) -> str:
    if layers is None:
        return r"\d+"
    values = sorted({int(i) for i in layers})
    if not values or values[0] < 0:
        raise ValueError(f"layer indices must be non-negative integers; got {list(layers)}")
    return "(?:" + "|".join(str(i) for i in values) + ")"


def _modules(modules: Sequence[str], allowed: Sequence[str], where: str) -> str:
    unknown = sorted(set(modules) - set(allowed))
    if unknown or not modules:
        raise ValueError(f"{where} LoRA modules must be among {list(allowed)}; got {list(modules)}")
    return "(?:" + "|".join(re.escape(m) for m in modules) + ")"


def lora_target_modules(
    lm_layers: Iterable[int] | None = None,
    lm_modules: Sequence[str] = ("query_key_value",),
    vit_layers: Iterable[int] | None = (),
    vit_modules: Sequence[str] = ("query_key_value",),
    projection: bool = False,
) -> str:
    """A peft `target_modules` regex. Defaults: the LM's `query_key_value` in every layer, no vision.

    `lm_layers`/`vit_layers`: None for all layers, an empty sequence for none.
    """
    patterns = []
    if lm_layers is None or list(lm_layers):
        patterns.append(
            rf"transformer\.layers\.{_layers(lm_layers)}\.attention\.{_modules(lm_modules, LM_MODULES, 'language-model')}"
        )
    if vit_layers is None or list(vit_layers):
        patterns.append(
            rf"image_encoder\.vit\.transformer\.layers\.{_layers(vit_layers)}\.attention\."
            rf"{_modules(vit_modules, VIT_MODULES, 'ViT')}"
        )
    if projection:
        patterns.append(r"image_encoder\.glm_proj")
    if not patterns:
        raise ValueError("no LoRA targets selected: give LM layers, ViT layers or projection=True")
    return "(?:" + "|".join(patterns) + ")"


def lora_config(rank: int = 16, alpha: float | None = None, dropout: float = 0.0, **targets: Any) -> Any:
    """A `peft.LoraConfig` over anchored targets (alpha defaults to the rank: scaling 1)."""
    from peft import LoraConfig

    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive; got {rank}")
    return LoraConfig(
        r=rank,
        lora_alpha=float(alpha if alpha is not None else rank),
        lora_dropout=dropout,
        target_modules=lora_target_modules(**targets),
        bias="none",
    )
