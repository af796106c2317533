"""The `hf` backend: a transformers image-text-to-text checkpoint (optionally + LoRA) run in-process.

A thin wrapper: loading is `finetune.loading.load_model`, prompting and generation are
`finetune.generation` (the same code the evaluator measures), so the server answers exactly
as the evaluated model does.
"""

from __future__ import annotations

import gc
import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from model_server.backends.base import Backend, BackendError, BackendInfo, GenerationRequest, Unfinished


def checkpoint_version(model_dir: Path, adapter_dir: Path | None = None) -> str:
    """A short content hash of the weights (and adapter): changes whenever the served model does."""
    h = hashlib.sha256()
    for folder in (model_dir, adapter_dir):
        if folder is None:
            continue
        for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + [folder / "config.json"]:
            if path.is_file():
                h.update(path.name.encode())
                with path.open("rb") as fh:
                    for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                        h.update(block)
    return h.hexdigest()[:12]


def checkpoint_name(model_dir: Path, adapter_dir: Path | None = None) -> str:
    """The served model's name: the checkpoint folder's name, plus the adapter's after a `+`."""
    return model_dir.resolve().name + (f"+{adapter_dir.resolve().name}" if adapter_dir else "")


def checkpoint_info(backend: str, model_dir: Path, adapter_dir: Path | None, *, dtype: str, device: str | None,
                    quantization: str | None, architecture: str, **details: Any) -> BackendInfo:
    """What `/health` and every reply say about a served local checkpoint: its name, the content hash
    of its weights, and how it was loaded (plus the backend's own `details`)."""
    from finetune.loading import loaded_dtype

    return BackendInfo(
        name=checkpoint_name(model_dir, adapter_dir),
        version=checkpoint_version(model_dir, adapter_dir),
        backend=backend,
        details={
            "model_dir": str(model_dir),
            "adapter_dir": str(adapter_dir) if adapter_dir else None,
            "dtype": loaded_dtype(dtype, device),
            "quantization": quantization,
            "architecture": architecture,
            **details,
        },
    )


class HFBackend(Backend):
    """Answers with a local transformers model; generation is serialised by the server's batcher,
    which calls `generate_round` (`generate` answers a batch in full, for the other callers)."""

    def __init__(
        self,
        model_dir: str | Path,
        adapter_dir: str | Path | None = None,
        dtype: str = "float32",
        quantization: str | None = None,
        device: str | None = None,
        views: int | None = None,
        views_below: float | None = None,
    ) -> None:
        from finetune.loading import load_model
        from finetune.number_slots import has_slots
        from finetune.views import answer_views
        from finetune.views import views_below as views_below_of

        self.model_dir = Path(model_dir).expanduser()
        self.adapter_dir = Path(adapter_dir).expanduser() if adapter_dir is not None else None
        self.model, self.processor = load_model(
            self.model_dir, self.adapter_dir, dtype=dtype, quantization=quantization, device=device,
            channels_last=True, views=views, views_below=views_below,
        )
        self._info = checkpoint_info(
            "hf", self.model_dir, self.adapter_dir, dtype=dtype, device=device, quantization=quantization,
            architecture=type(getattr(self.model, "base_model", self.model)).__name__, views=answer_views(self.model),
            views_below=views_below_of(self.model), needs_map=has_slots(self.processor.tokenizer),
        )
        self._lock = threading.Lock()

    @property
    def info(self) -> BackendInfo:
        return self._info

    def _answering(self, answer: Callable[..., Any], *args: Any) -> Any:
        """`answer(model, processor, *args)` under the generation lock, a failure raised as BackendError."""
        try:
            with self._lock:
                return answer(self.model, self.processor, *args)
        except Exception as exc:
            raise BackendError(f"the model failed to answer: {type(exc).__name__}: {exc}") from exc

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        from finetune.generation import generate_answers

        return self._answering(generate_answers, requests)

    def generate_round(
        self, requests: list[GenerationRequest], unfinished: list[Unfinished]
    ) -> tuple[list[str | Unfinished], list[str]]:
        """Answers, with those unsure about a map left `Unfinished` (`finetune.generation.answer_round`):
        their other views are asked in the next call, beside the next batch's requests. A subclass that
        overrides `generate` alone is answered by its `generate`, in one pass."""
        from finetune.generation import UnsureAnswer, answer_round

        if type(self).generate is not HFBackend.generate:
            return super().generate_round(requests, unfinished)
        if not all(isinstance(u, UnsureAnswer) for u in unfinished):
            raise BackendError("the hf backend finishes only the unsure answers it left unfinished")
        answers, finished = self._answering(answer_round, requests, unfinished)
        return list(answers), finished

    def generate_stream(self, request: GenerationRequest) -> Iterator[str]:
        from finetune.generation import stream_answer

        with self._lock:
            pieces = stream_answer(self.model, self.processor, request)
            try:
                yield from pieces
            except Exception as exc:
                raise BackendError(f"the model failed to answer: {type(exc).__name__}: {exc}") from exc
            finally:
                pieces.close()

    def close(self) -> None:
        model: Any = self.__dict__.pop("model", None)
        self.__dict__.pop("processor", None)
        del model
        gc.collect()
