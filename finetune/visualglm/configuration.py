"""The VisualGLM-6B configuration: ChatGLM-6B language model + EVA ViT + BLIP-2 Q-Former + projection.

Field names follow the published `THUDM/visualglm-6b` `config.json` (so that file loads as is,
although its `model_type` says "chatglm"); `eva_config` and `qformer_config` keep the
SwissArmyTransformer argument names the original vision code was built from. Defaults are the
full-size published values; tests build tiny configs by overriding them.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

#: The published EVA-CLIP ViT-g settings (SwissArmyTransformer names).
EVA_DEFAULTS: dict[str, Any] = {
    "num_layers": 39,
    "hidden_size": 1408,
    "num_attention_heads": 16,
    "vocab_size": 1,
    "layernorm_order": "pre",
    "model_parallel_size": 1,
    "max_sequence_length": 257,
    "inner_hidden_size": 6144,
    "use_final_layernorm": False,
    "layernorm_epsilon": 1e-6,
    "image_size": [224, 224],
    "pre_len": 1,
    "post_len": 0,
    "in_channels": 3,
    "num_classes": 0,
    "patch_size": 14,
}

#: The published BLIP-2 Q-Former settings (cross-attention in every other layer).
QFORMER_DEFAULTS: dict[str, Any] = {
    "num_layers": 12,
    "hidden_size": 768,
    "num_attention_heads": 12,
    "vocab_size": 32,
    "layernorm_order": "post",
    "model_parallel_size": 1,
    "max_sequence_length": 0,
    "is_decoder": [i % 2 == 0 for i in range(12)],
    "cross_attn_hidden_size": 1408,
    "layernorm_epsilon": 1e-12,
}


class VisualGLMConfigError(ValueError):
    """A configuration that cannot describe a VisualGLM model."""


@strict(accept_kwargs=True)
class VisualGLMConfig(PreTrainedConfig):
    """Configuration of `VisualGLMForConditionalGeneration` (defaults: the published 7.8B model)."""

    model_type = "visualglm"
    keys_to_ignore_at_inference = ["past_key_values"]  # noqa: RUF012 (transformers API)
    attribute_map = {  # noqa: RUF012 (transformers API)
        "num_hidden_layers": "num_layers",
        "intermediate_size": "inner_hidden_size",
        "layer_norm_eps": "layernorm_epsilon",
        "max_position_embeddings": "max_sequence_length",
    }

    vocab_size: int = 130528
    hidden_size: int = 4096
    num_layers: int = 28
    num_attention_heads: int = 32
    inner_hidden_size: int = 16384
    layernorm_epsilon: float = 1e-5
    max_sequence_length: int = 2048
    position_encoding_2d: bool = True
    bos_token_id: int | None = 130004
    eos_token_id: int | list[int] | None = 130005
    mask_token_id: int = 130000
    gmask_token_id: int = 130001
    pad_token_id: int | None = 3
    image_length: int = 32
    image_token_id: int | None = None
    eva_config: dict | None = None
    qformer_config: dict | None = None
    initializer_range: float = 0.02
    use_cache: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        # The published config.json says model_type "chatglm" and points at remote code; neither applies here.
        kwargs.pop("model_type", None)
        kwargs.pop("auto_map", None)
        self.eva_config = {**EVA_DEFAULTS, **(self.eva_config or {})}
        qformer = dict(self.qformer_config or {})
        if "is_decoder" not in qformer:
            layers = int(qformer.get("num_layers", QFORMER_DEFAULTS["num_layers"]))
            qformer["is_decoder"] = [i % 2 == 0 for i in range(layers)]
        self.qformer_config = {**QFORMER_DEFAULTS, **qformer}
        super().__post_init__(**kwargs)
        self.check()

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def slot_token_id(self) -> int:
        """The id the image slots carry in `input_ids` (the original uses the pad token)."""
        if self.image_token_id is not None:
            return int(self.image_token_id)
        if self.pad_token_id is None:
            raise VisualGLMConfigError("the config has neither image_token_id nor pad_token_id; set one")
        return int(self.pad_token_id)

    def vit_num_positions(self) -> int:
        eva = self.eva_config
        grid = [int(s) // int(eva["patch_size"]) for s in eva["image_size"]]
        return int(eva["pre_len"]) + grid[0] * grid[1] + int(eva["post_len"])

    def check(self) -> None:
        """Refuse shapes the architecture cannot build, with the offending values named."""
        if self.hidden_size % self.num_attention_heads:
            raise VisualGLMConfigError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.head_dim % 4:
            raise VisualGLMConfigError(
                f"the 2-D rotary embedding needs a head size divisible by 4; got {self.head_dim}"
            )
        for name, sub in (("eva_config", self.eva_config), ("qformer_config", self.qformer_config)):
            if int(sub["hidden_size"]) % int(sub["num_attention_heads"]):
                raise VisualGLMConfigError(
                    f"{name}: hidden_size ({sub['hidden_size']}) must be a multiple of "
                    f"num_attention_heads ({sub['num_attention_heads']})"
                )
        decoder = self.qformer_config["is_decoder"]
        if isinstance(decoder, list) and len(decoder) != int(self.qformer_config["num_layers"]):
            raise VisualGLMConfigError(
                f"qformer_config.is_decoder lists {len(decoder)} layers but num_layers is "
                f"{self.qformer_config['num_layers']}"
            )
        if int(self.qformer_config["vocab_size"]) != self.image_length:
            raise VisualGLMConfigError(
                f"the Q-Former has {self.qformer_config['vocab_size']} query tokens but image_length is "
                f"{self.image_length}; they must match"
            )
        if self.vit_num_positions() != int(self.eva_config["max_sequence_length"]):
            raise VisualGLMConfigError(
                f"eva_config: image_size/patch_size give {self.vit_num_positions()} positions but "
                f"max_sequence_length is {self.eva_config['max_sequence_length']}"
            )


def tiny_config(**overrides: Any) -> VisualGLMConfig:
    """A few-kilobyte VisualGLM config with the full architecture, for tests and CPU smoke runs."""
    values: dict[str, Any] = {
        "vocab_size": 160,
        "hidden_size": 64,
        "num_layers": 2,
        "num_attention_heads": 4,
        "inner_hidden_size": 256,
        "max_sequence_length": 512,
        "bos_token_id": 150,
        "eos_token_id": 151,
        "mask_token_id": 152,
        "gmask_token_id": 153,
        "pad_token_id": 3,
        "image_length": 4,
        "eva_config": {
            "num_layers": 2, "hidden_size": 48, "num_attention_heads": 4, "inner_hidden_size": 96,
            "image_size": [28, 28], "patch_size": 14, "max_sequence_length": 5,
        },
        "qformer_config": {
            "num_layers": 2, "hidden_size": 32, "num_attention_heads": 4, "vocab_size": 4,
            "cross_attn_hidden_size": 48,
        },
    }
    values.update(overrides)
    return VisualGLMConfig(**values)
