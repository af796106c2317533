"""The small wafer VLM: its size settings, and building a fresh model + processor from them.

The model is transformers' own `LlavaForConditionalGeneration` (a SigLIP vision tower, a
two-layer projector and a Llama decoder), so a saved checkpoint loads with
`AutoModelForImageTextToText` / `AutoProcessor` and no code of ours. The processor is a
`LlavaProcessor` with a SigLIP image processor that resizes the rendered map (1 pixel per die)
to `image_size` with nearest-neighbour sampling, and the chat template of `finetune.tokenizer`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import (
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerBase,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
)

from finetune.tokenizer import CHAT_TEMPLATE, EOS, IMAGE, SPECIAL_TOKENS


@dataclass(frozen=True)
class SmallModelConfig:
    """Sizes of the small model. `image_size / patch_size` squared is the number of image tokens."""

    image_size: int = 56
    patch_size: int = 7
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 4
    vision_intermediate: int = 384
    text_hidden: int = 192
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 512
    max_positions: int = 1024

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def validate(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        for name in ("vision", "text"):
            hidden, heads = getattr(self, f"{name}_hidden"), getattr(self, f"{name}_heads")
            if hidden % heads:
                raise ValueError(f"{name}_hidden {hidden} must be divisible by {name}_heads {heads}")
        if self.text_heads % self.text_kv_heads:
            raise ValueError(f"text_heads {self.text_heads} must be a multiple of text_kv_heads {self.text_kv_heads}")

    def to_dict(self) -> dict:
        return asdict(self)


#: Settings of the committed default model.
DEFAULT_CONFIG = SmallModelConfig()
#: Settings of the tiny random test checkpoints (a few MB, instant to build).
TINY_CONFIG = SmallModelConfig(
    image_size=16, patch_size=8, vision_hidden=32, vision_layers=1, vision_heads=2, vision_intermediate=64,
    text_hidden=32, text_layers=1, text_heads=2, text_kv_heads=1, text_intermediate=64, max_positions=2048,
)


def build_processor(tokenizer: PreTrainedTokenizerBase, config: SmallModelConfig) -> LlavaProcessor:
    """The processor: image resize/normalise + tokenizer + chat template, saved with the model."""
    image_processor = SiglipImageProcessorPil(
        size={"height": config.image_size, "width": config.image_size},
        resample=0,  # PIL NEAREST: keep every die crisp
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.patch_size,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
        num_additional_image_tokens=0,
    )


def build_model(tokenizer: PreTrainedTokenizerBase, config: SmallModelConfig, seed: int = 0) -> LlavaForConditionalGeneration:
    """A freshly initialised small model whose vocabulary matches `tokenizer`."""
    config.validate()
    vision = SiglipVisionConfig(
        hidden_size=config.vision_hidden,
        intermediate_size=config.vision_intermediate,
        num_hidden_layers=config.vision_layers,
        num_attention_heads=config.vision_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
        vision_use_head=False,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden,
        intermediate_size=config.text_intermediate,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        num_key_value_heads=config.text_kv_heads,
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    llava = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=config.image_tokens,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(llava)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = False
    # The model never needs to emit a special token other than the end of its answer.
    model.generation_config.suppress_tokens = sorted(
        tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS if t != EOS
    )
    return model
