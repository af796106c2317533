"""The small wafer VLM: its size settings, and building a fresh model + processor from them.

The model is transformers' own `FastVlmForConditionalGeneration`: a convolutional vision tower
(`ResNetModel`), a two-layer projector and a Llama decoder. The tower's last feature map (one
vector per 16×16 pixels) becomes the image tokens. A convolutional tower learns the thin scratches
and small clusters of a die grid from 27k maps far better than a ViT of the same cost (the first
default model, a SigLIP/Llava one, stalled at 95 % recognition). A saved checkpoint loads with
`AutoModelForImageTextToText` / `AutoProcessor` and no code of ours. The processor is a
`LlavaProcessor` with a SigLIP image processor that resizes the rendered map (1 pixel per die) to
`image_size` with nearest-neighbour sampling, and the chat template of `finetune.tokenizer`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from transformers import (
    FastVlmConfig,
    FastVlmForConditionalGeneration,
    LlamaConfig,
    LlavaProcessor,
    PreTrainedTokenizerBase,
    ResNetConfig,
    SiglipImageProcessorPil,
)

from finetune.background_match import check_background, set_background_match
from finetune.tokenizer import CHAT_TEMPLATE, EOS, IMAGE, SPECIAL_TOKENS
from finetune.views import check_below, check_views, set_answer_views, set_views_below


@dataclass(frozen=True)
class SmallModelConfig:
    """Sizes of the small model (`(image_size / stride)` squared is the number of image tokens) and how
    it answers: from `answer_views` views of the map when less sure than `answer_views_below`
    (`finetune.views`), and shown a clean map with a pattern at background noise `background_level` when
    its background is under `background_below` (`finetune.background_match`; None: as sent). Saved in
    its config, so the server and the evaluator answer the same way."""

    image_size: int = 112
    vision_stem: int = 32
    vision_channels: tuple[int, ...] = field(default=(32, 64, 128))
    vision_depths: tuple[int, ...] = field(default=(2, 2, 2))
    text_hidden: int = 192
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    text_intermediate: int = 512
    max_positions: int = 1024
    answer_views: int = 4
    answer_views_below: float | None = 0.9
    background_level: float | None = 0.195
    background_below: float = 0.13

    def __post_init__(self) -> None:  # JSON overrides arrive as lists
        object.__setattr__(self, "vision_channels", tuple(self.vision_channels))
        object.__setattr__(self, "vision_depths", tuple(self.vision_depths))

    @property
    def stride(self) -> int:
        """Pixels per image token a side: the ResNet stem divides by 4, each later stage by 2."""
        return 4 * 2 ** (len(self.vision_channels) - 1)

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.stride) ** 2

    def validate(self) -> None:
        if not self.vision_channels or len(self.vision_channels) != len(self.vision_depths):
            raise ValueError(f"vision_channels {self.vision_channels} and vision_depths {self.vision_depths} "
                             "must be non-empty and of the same length (one entry per stage)")
        if min(self.vision_channels + self.vision_depths + (self.vision_stem,)) < 1:
            raise ValueError("vision_stem, vision_channels and vision_depths must be positive")
        if self.image_size % self.stride:
            raise ValueError(f"image_size {self.image_size} must be a multiple of the tower's stride {self.stride}")
        if self.text_hidden % self.text_heads:
            raise ValueError(f"text_hidden {self.text_hidden} must be divisible by text_heads {self.text_heads}")
        if self.text_heads % self.text_kv_heads:
            raise ValueError(f"text_heads {self.text_heads} must be a multiple of text_kv_heads {self.text_kv_heads}")

        check_views(self.answer_views)
        check_below(self.answer_views_below)
        check_background(self.background_level, self.background_below)

    def to_dict(self) -> dict:
        return asdict(self)


#: Settings of the committed default model.
DEFAULT_CONFIG = SmallModelConfig()
#: Settings of the tiny random test checkpoints (a few MB, instant to build).
TINY_CONFIG = SmallModelConfig(
    image_size=32, vision_stem=8, vision_channels=(8, 16, 16), vision_depths=(1, 1, 1),
    text_hidden=32, text_layers=1, text_heads=2, text_kv_heads=1, text_intermediate=64, max_positions=2048,
    answer_views=1, answer_views_below=None,  # a random model is never sure: one view keeps tests quick
    background_level=None,  # shown every map as sent: its answers are noise either way
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
        patch_size=config.stride,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
        num_additional_image_tokens=0,
    )


def build_model(tokenizer: PreTrainedTokenizerBase, config: SmallModelConfig, seed: int = 0) -> FastVlmForConditionalGeneration:
    """A freshly initialised small model whose vocabulary matches `tokenizer`."""
    config.validate()
    vision = ResNetConfig(
        num_channels=3,
        embedding_size=config.vision_stem,
        hidden_sizes=list(config.vision_channels),
        depths=list(config.vision_depths),
        layer_type="basic",
        hidden_act="relu",
        downsample_in_first_stage=False,
    )
    vision.hidden_size = config.vision_channels[-1]  # what FastVLM's projector reads
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
    fast_vlm = FastVlmConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=config.image_tokens,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = FastVlmForConditionalGeneration(fast_vlm)
    set_answer_views(model, config.answer_views)
    set_views_below(model, config.answer_views_below)
    set_background_match(model, config.background_level, config.background_below)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = False
    # The model never needs to emit a special token other than the end of its answer.
    model.generation_config.suppress_tokens = sorted(
        tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS if t != EOS
    )
    return model
