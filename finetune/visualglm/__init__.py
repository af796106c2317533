"""VisualGLM-6B (ChatGLM-6B + EVA ViT + BLIP-2 Q-Former) on current transformers, its tokenizer and SAT import.

Importing this package registers the architecture with the transformers Auto classes
(`register_auto_classes()`, idempotent), so `AutoModelForImageTextToText.from_pretrained(dir)`
and `AutoProcessor.from_pretrained(dir)` work both for our checkpoints and for the published
`THUDM/visualglm-6b` directory, without trust_remote_code.
"""

from __future__ import annotations

from .auto import register_auto_classes
from .configuration import VisualGLMConfig, VisualGLMConfigError, tiny_config
from .image_processing import VisualGLMImageProcessor
from .lora import DEFECT_GLM_RELEASE, lora_config, lora_target_modules
from .modeling import VisualGLMForConditionalGeneration, VisualGLMInputError
from .processing import VisualGLMProcessor, VisualGLMProcessorError
from .tokenization import ChatGLMTokenizer

register_auto_classes()

__all__ = [
    "DEFECT_GLM_RELEASE",
    "ChatGLMTokenizer",
    "VisualGLMConfig",
    "VisualGLMConfigError",
    "VisualGLMForConditionalGeneration",
    "VisualGLMImageProcessor",
    "VisualGLMInputError",
    "VisualGLMProcessor",
    "VisualGLMProcessorError",
    "lora_config",
    "lora_target_modules",
    "register_auto_classes",
    "tiny_config",
]
