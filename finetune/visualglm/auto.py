"""Registering VisualGLM with transformers' Auto classes, in process (no trust_remote_code).

Two model types are registered:
- `visualglm`: checkpoints written by this package (`convert`, `save_pretrained`);
- `chatglm` with an `eva_config`: the published `THUDM/visualglm-6b` directory as downloaded (its
  config.json says "chatglm"). A text-only ChatGLM directory under that type is refused with a
  clear message instead of being misread.
After `register_auto_classes()`, AutoConfig / AutoModelForImageTextToText / AutoModelForCausalLM /
AutoTokenizer / AutoImageProcessor / AutoProcessor load both.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict

from .configuration import VisualGLMConfig, VisualGLMConfigError
from .image_processing import VisualGLMImageProcessor
from .modeling import VisualGLMForConditionalGeneration
from .processing import VisualGLMProcessor
from .tokenization import ChatGLMTokenizer

_registered = False


@strict(accept_kwargs=True)
class PublishedVisualGLMConfig(VisualGLMConfig):
    """The published checkpoint's config.json (model_type "chatglm" plus eva/qformer configs)."""

    model_type = "chatglm"

    def __post_init__(self, **kwargs: Any) -> None:
        if not self.eva_config or not self.qformer_config:
            raise VisualGLMConfigError(
                "this config.json says model_type 'chatglm' but has no eva_config/qformer_config: it is a text-only "
                "ChatGLM checkpoint, not VisualGLM-6B, and cannot be loaded here"
            )
        super().__post_init__(**kwargs)


class PublishedVisualGLMForConditionalGeneration(VisualGLMForConditionalGeneration):
    config_class = PublishedVisualGLMConfig


def register_auto_classes() -> None:
    """Make the Auto classes resolve VisualGLM checkpoints (idempotent; call before from_pretrained)."""
    global _registered
    if _registered:
        return
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )

    for config_class, model_class in (
        (VisualGLMConfig, VisualGLMForConditionalGeneration),
        (PublishedVisualGLMConfig, PublishedVisualGLMForConditionalGeneration),
    ):
        AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        AutoModelForImageTextToText.register(config_class, model_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, model_class, exist_ok=True)
        AutoTokenizer.register(config_class, slow_tokenizer_class=ChatGLMTokenizer, exist_ok=True)
        AutoImageProcessor.register(config_class, slow_image_processor_class=VisualGLMImageProcessor, exist_ok=True)
        AutoProcessor.register(config_class, VisualGLMProcessor, exist_ok=True)
    _registered = True
