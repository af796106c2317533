"""VisualGLM-6B's processor: the original prompt format, as a chat template plus piecewise tokenisation.

The original builds `<img>` + 32 image slots + `</img>问：…\\n答：` then `[gMASK]` `<sop>`; history
is re-serialised into every turn's prompt as `问：q\\n答：a\\n`, and an answer is trained as
`answer` `<eop>` after `<sop>`. The chat template renders exactly that text, with `<image>` standing
for the slots and the literal markers `[gMASK]<sop>` and `<eop>`. `__call__` then tokenises the
pieces separately, as the original does (text before the image, the slots, the prompt after the
image, the answer), so token ids match it. Everything after the first `<sop>` is the answer:
`answer_labels` turns input ids into answer-only labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import BatchFeature, ProcessorMixin

from .image_processing import VisualGLMImageProcessor
from .tokenization import ChatGLMTokenizer

IMAGE_PLACEHOLDER = "<image>"
ANSWER_START = "[gMASK]<sop>"
ANSWER_END = "<eop>"
DEFAULT_IMAGE_LENGTH = 32

#: Messages -> the original prompt. The image goes first (`<img><image></img>`), each user turn is
#: `问：text\n答：`, earlier answers are `text\n`, the final answer (or the generation prompt) follows
#: `[gMASK]<sop>` and ends with `<eop>`.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}"
    "{%- set parts = [{'type': 'text', 'text': message['content']}] -%}"
    "{%- else -%}{%- set parts = message['content'] -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- for part in parts if part['type'] == 'image' -%}<img><image></img>{%- endfor -%}"
    "{{ '问：' }}{%- for part in parts if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}{{ '\\n答：' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- set text = parts | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- if loop.last -%}{{ '[gMASK]<sop>' }}{{ text }}{{ '<eop>' }}{%- else -%}{{ text }}{{ '\\n' }}{%- endif -%}"
    "{%- else -%}{{ raise_exception('VisualGLM prompts have user and assistant turns only; got role ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt and messages[-1]['role'] != 'assistant' -%}{{ '[gMASK]<sop>' }}{%- endif -%}"
)


class VisualGLMProcessorError(ValueError):
    """Text and images that do not form a VisualGLM prompt."""


class VisualGLMProcessor(ProcessorMixin):
    """Image processor + ChatGLM tokenizer, producing `input_ids`, `attention_mask`, `pixel_values`."""

    def __init__(
        self,
        image_processor: VisualGLMImageProcessor | None = None,
        tokenizer: ChatGLMTokenizer | None = None,
        chat_template: str | None = None,
        image_length: int = DEFAULT_IMAGE_LENGTH,
        **kwargs: Any,
    ) -> None:
        if tokenizer is None:
            raise VisualGLMProcessorError("VisualGLMProcessor needs a ChatGLMTokenizer (from ice_text.model)")
        self.image_length = int(image_length)
        super().__init__(
            image_processor or VisualGLMImageProcessor(), tokenizer, chat_template=chat_template or CHAT_TEMPLATE, **kwargs
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> VisualGLMProcessor:
        """Load from one of our checkpoints or from the published directory (ice_text.model + config.json)."""
        path = Path(pretrained_model_name_or_path)
        if not (path / "ice_text.model").is_file():
            raise VisualGLMProcessorError(
                f"{path} has no ice_text.model: expected a VisualGLM checkpoint directory with its tokenizer"
            )
        tokenizer = ChatGLMTokenizer.from_pretrained(path)
        settings: dict[str, Any] = {}
        for name in ("processor_config.json", "config.json"):  # ours, else the published model config
            if (path / name).is_file():
                settings = json.loads((path / name).read_text())
                break
        image_settings = settings.get("image_processor")
        if isinstance(image_settings, dict):
            image_settings = {k: v for k, v in image_settings.items() if k != "image_processor_type"}
            image_processor = VisualGLMImageProcessor(**image_settings)
        elif (path / "preprocessor_config.json").is_file():
            image_processor = VisualGLMImageProcessor.from_pretrained(path)
        else:  # the published config.json: the ViT's input size
            eva = settings.get("eva_config") or {}
            size = eva.get("image_size", [VisualGLMImageProcessor().image_size])
            image_processor = VisualGLMImageProcessor(image_size=int(size[0] if isinstance(size, list) else size))
        image_length = int(settings.get("image_length", DEFAULT_IMAGE_LENGTH))
        template_file = path / "chat_template.jinja"
        template = template_file.read_text() if template_file.is_file() else None
        return cls(image_processor, tokenizer, chat_template=template, image_length=image_length)

    # ------------------------------------------------------------------ encoding
    def encode_prompt(self, text: str, has_image: bool) -> list[int]:
        """Token ids of one rendered prompt, tokenised piecewise as the original."""
        tok: ChatGLMTokenizer = self.tokenizer
        count = text.count(IMAGE_PLACEHOLDER)
        if count > 1:
            raise VisualGLMProcessorError(f"VisualGLM takes one image per prompt; the text has {count} {IMAGE_PLACEHOLDER}")
        if has_image != (count == 1):
            raise VisualGLMProcessorError(
                "a prompt with an image needs exactly one <image> placeholder (render it with the chat template) "
                f"and a prompt without one none; got image={has_image}, placeholders={count}"
            )
        prompt, marker, answer = text.partition(ANSWER_START)
        ids: list[int] = []
        if has_image:
            before, _, after = prompt.partition(IMAGE_PLACEHOLDER)
            ids += tok.encode_text(before) + [tok.pad_token_id] * self.image_length + tok.encode_text(after)
        else:
            ids += tok.encode_text(prompt)
        ids += [tok.gmask_token_id, tok.bos_token_id]
        if marker:
            ended = answer.endswith(ANSWER_END)
            ids += tok.encode_text(answer[: -len(ANSWER_END)] if ended else answer)
            if ended:
                ids.append(tok.eos_token_id)
        return ids

    def __call__(
        self,
        images: Any = None,
        text: str | list[str] | None = None,
        return_tensors: str | None = "pt",
        padding: bool | str = True,
        padding_side: str | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        """Encode prompts (each with at most one `<image>`) and their images, in order; pad to one length."""
        if text is None:
            raise VisualGLMProcessorError("VisualGLMProcessor needs text (render messages with apply_chat_template)")
        texts = [text] if isinstance(text, str) else list(text)
        image_list = [] if images is None else (list(images) if isinstance(images, (list, tuple)) else [images])
        flat: list[Any] = []
        for item in image_list:  # apply_chat_template(tokenize=True) passes one list of images per prompt
            flat.extend(item if isinstance(item, (list, tuple)) else [item])
        image_list = [im for im in flat if im is not None]
        wanted = sum(IMAGE_PLACEHOLDER in t for t in texts)
        if wanted != len(image_list):
            raise VisualGLMProcessorError(
                f"the prompts have {wanted} <image> placeholders but {len(image_list)} images were given"
            )
        rows = [self.encode_prompt(t, IMAGE_PLACEHOLDER in t) for t in texts]
        side = padding_side or self.tokenizer.padding_side
        longest = max(len(r) for r in rows)
        if not padding and len({len(r) for r in rows}) > 1:
            raise VisualGLMProcessorError("prompts of different lengths need padding=True")
        pad = self.tokenizer.pad_token_id
        input_ids, attention = [], []
        for row in rows:
            fill = longest - len(row)
            if side == "left":
                input_ids.append([pad] * fill + row)
                attention.append([0] * fill + [1] * len(row))
            else:
                input_ids.append(row + [pad] * fill)
                attention.append([1] * len(row) + [0] * fill)
        data: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention}
        if image_list:
            data["pixel_values"] = self.image_processor(image_list, return_tensors=None)["pixel_values"]
        return BatchFeature(data, tensor_type=return_tensors)

    # ------------------------------------------------------------------ training / decoding helpers
    def answer_labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Labels for training: -100 up to and including `<sop>` and on padding; answer tokens (+ `<eop>`) kept."""
        bos = self.tokenizer.bos_token_id
        is_bos = input_ids == bos
        if not bool(is_bos.any(-1).all()):
            raise VisualGLMProcessorError("every sequence must contain <sop>; render it with the chat template")
        first = is_bos.long().argmax(-1, keepdim=True)
        index = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        labels = input_ids.masked_fill(index <= first, -100)
        if attention_mask is not None:
            labels = labels.masked_fill(~attention_mask.bool(), -100)
        return labels

    def batch_decode(self, *args: Any, **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args: Any, **kwargs: Any) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]
