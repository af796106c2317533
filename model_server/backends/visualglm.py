"""The `visualglm` backend: VisualGLM-6B (optionally + a LoRA adapter) run in-process with our own architecture.

Serves any checkpoint `finetune.visualglm` can load through the transformers Auto classes: the
published `THUDM/visualglm-6b` directory as downloaded (sharded `.bin` + index, or safetensors),
a Defect-GLM SAT release converted with `defect-glm convert defect-glm-sat`, or a checkpoint/adapter
trained with `defect-glm train --lora --base <visualglm dir>`. No trust_remote_code, no SAT.

The prompt is VisualGLM's own: `<img>` + image slots + `</img>问：…\\n答：` `[gMASK]` `<sop>`, earlier
turns re-serialised into every prompt as `问：q\\n答：a\\n` (the processor's chat template). Whether
the first question also carries the line of facts measured from the die grid
(`finetune.prompting.facts_line`) depends on the model: models trained by this project (adapters,
merged checkpoints) saw it in training and get it; the published model and the converted SAT
release never saw it and get the plain question. `measured_facts` overrides the choice.
"""

from __future__ import annotations

import gc
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from finetune.generation import generation_kwargs
from finetune.prompting import PromptTooLong, build_messages, fit_history, images_of
from model_server.backends.base import Backend, BackendError, BackendInfo, GenerationRequest, Turn


def default_measured_facts(model_dir: Path, adapter_dir: Path | None) -> bool:
    """True for models this project trained (they saw the facts line); False for upstream/converted weights."""
    if adapter_dir is not None:
        return True
    try:
        model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError):
        model_type = None
    if model_type == "chatglm":  # the published THUDM/visualglm-6b directory
        return False
    return not (model_dir / "conversion.json").is_file()  # written by `defect-glm convert`


class VisualGLMBackend(Backend):
    """Answers with VisualGLM-6B (greedy decoding, KV cache); generation is serialised by a lock."""

    def __init__(
        self,
        model_dir: str | Path,
        adapter_dir: str | Path | None = None,
        dtype: str = "float32",
        quantization: str | None = None,
        device: str | None = None,
        measured_facts: bool | None = None,
    ) -> None:
        import finetune.visualglm  # noqa: F401  (registers VisualGLM, incl. the published "chatglm" config)
        from finetune.loading import load_model
        from model_server.backends.hf import checkpoint_info

        self.model_dir = Path(model_dir).expanduser()
        self.adapter_dir = Path(adapter_dir).expanduser() if adapter_dir is not None else None
        self.model, self.processor = load_model(
            self.model_dir, self.adapter_dir, dtype=dtype, quantization=quantization, device=device
        )
        base = getattr(self.model, "base_model", self.model)
        base = getattr(base, "model", base)  # peft wraps the model twice
        if not hasattr(base, "encode_images"):
            raise ValueError(
                f"{self.model_dir} holds a {type(base).__name__}, not VisualGLM; serve it with --backend hf"
            )
        self.config = base.config
        self.measured_facts = (
            default_measured_facts(self.model_dir, self.adapter_dir) if measured_facts is None else measured_facts
        )
        # fine-tuned on the corpus (the facts line), it saw a map in every conversation: it needs one to answer
        self._info = checkpoint_info(
            "visualglm", self.model_dir, self.adapter_dir, dtype=dtype, device=device, quantization=quantization,
            architecture=type(base).__name__, measured_facts=self.measured_facts, needs_map=self.measured_facts,
            context=int(self.config.max_sequence_length),
        )
        self._lock = threading.Lock()

    @property
    def info(self) -> BackendInfo:
        return self._info

    # ------------------------------------------------------------------ prompts
    def prompt(self, request: GenerationRequest) -> tuple[str, list]:
        """(rendered prompt text, images) for one request; oldest turns dropped in pairs until it fits."""

        def encode(history: tuple[Turn, ...]) -> tuple[int, tuple[str, list]]:
            messages = build_messages(request.wafer, history, request.question, facts=self.measured_facts)
            text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            images = images_of(messages)
            return len(self.processor.encode_prompt(text, bool(images))), (text, images)

        try:
            return fit_history(request.history, request.max_new_tokens, int(self.config.max_sequence_length), encode)
        except PromptTooLong as exc:
            raise BackendError(str(exc)) from None

    def _inputs(self, requests: Sequence[GenerationRequest]) -> dict[str, Any]:
        import torch

        texts, images = [], []
        for request in requests:
            text, request_images = self.prompt(request)
            texts.append(text)
            images.extend(request_images)
        encoded = self.processor(text=texts, images=images or None, padding=True, padding_side="left")
        parameter = next(self.model.parameters())
        device = parameter.device
        compute = parameter.dtype if parameter.dtype.is_floating_point else torch.float16
        return {
            k: v.to(device=device, dtype=compute) if k == "pixel_values" else v.to(device)
            for k, v in encoded.items()
        }

    # ------------------------------------------------------------------ Backend
    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        import torch

        if not requests:
            return []
        try:
            with self._lock:
                inputs = self._inputs(requests)
                with torch.inference_mode():
                    output = self.model.generate(
                        **inputs, **generation_kwargs(self.processor, max(r.max_new_tokens for r in requests))
                    )
                new_tokens = output[:, inputs["input_ids"].shape[1] :]
                return [
                    self.processor.tokenizer.decode(row[: r.max_new_tokens].tolist(), skip_special_tokens=True).strip()
                    for row, r in zip(new_tokens, requests)
                ]
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"the model failed to answer: {type(exc).__name__}: {exc}") from exc

    def generate_stream(self, request: GenerationRequest) -> Iterator[str]:
        from finetune.generation import GenerationError, stream_generate

        with self._lock:
            try:
                inputs = self._inputs([request])
            except BackendError:
                raise
            except Exception as exc:
                raise BackendError(f"the model failed to answer: {type(exc).__name__}: {exc}") from exc
            kwargs = generation_kwargs(self.processor, request.max_new_tokens)
            try:
                yield from stream_generate(self.model, self.processor.tokenizer, inputs, kwargs)
            except GenerationError as exc:
                cause = exc.__cause__ or exc
                raise BackendError(f"the model failed to answer: {type(cause).__name__}: {cause}") from cause

    def close(self) -> None:
        model: Any = self.__dict__.pop("model", None)
        self.__dict__.pop("processor", None)
        del model
        gc.collect()
