"""Loading a checkpoint (and optionally a LoRA adapter) for inference or training.

One function, `load_model`, used by the evaluator, the trainer (LoRA on a base model) and the
server's hf backend. It uses transformers' Auto classes only, so any image-text-to-text
checkpoint works, including a VisualGLM one once `finetune.visualglm` has registered its type.
4-bit / 8-bit loading goes through bitsandbytes, imported only when asked for and only on CUDA.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from finetune.precision import AUTO_DTYPE, resolve_dtype, slow_bf16_warning
from finetune.views import check_below, check_views, set_answer_views, set_views_below

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
QUANTIZATIONS = ("4bit", "8bit")


class ModelLoadError(ValueError):
    """A checkpoint or adapter that cannot be loaded, with what was expected and what was found."""


def _check_dir(path: str | Path, what: str, marker: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"{what} directory {path} does not exist")
    if not (path / marker).is_file():
        raise ModelLoadError(f"{path} is not a {what} directory: expected {marker} in it")
    return path


def _register_model_type(model_dir: Path) -> None:
    """Import the package that registers a custom model type with the Auto classes, if needed."""
    try:
        model_type = json.loads((model_dir / "config.json").read_text()).get("model_type")
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {model_dir / 'config.json'}: {exc}") from exc
    if model_type in ("visualglm", "chatglm"):  # chatglm: the published THUDM/visualglm-6b directory
        import finetune.visualglm  # noqa: F401  (registers the architecture with the Auto classes)


def resolve_device(device: str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but CUDA is not available on this machine")
    return device


def loaded_dtype(dtype: str, device: str | None) -> str:
    """The dtype `load_model(dtype=dtype, device=device)` gives the weights ("auto" resolved)."""
    return resolve_dtype(dtype, resolve_device(device))


def quantization_config(quantization: str | None, dtype: torch.dtype) -> Any:
    """A BitsAndBytesConfig for "4bit"/"8bit" (CUDA only), or None."""
    if quantization is None:
        return None
    if quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"quantization must be one of {', '.join(QUANTIZATIONS)}; got {quantization!r}")
    if not torch.cuda.is_available():
        raise ModelLoadError(
            f"--quant {quantization} needs a CUDA GPU (bitsandbytes); none is available here. "
            "Run without --quant on CPU, or on a machine with CUDA."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ModelLoadError(
            f"--quant {quantization} needs bitsandbytes: pip install 'defect-glm[gpu]'"
        ) from exc
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def load_processor(model_dir: str | Path, adapter_dir: str | Path | None = None) -> Any:
    """The checkpoint's processor (an adapter directory's own copy wins), padding on the left."""
    from transformers import AutoProcessor

    source = Path(model_dir)
    if adapter_dir is not None and (Path(adapter_dir) / "processor_config.json").is_file():
        source = Path(adapter_dir)
    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a processor from {source}: {exc}") from exc
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    return processor


def load_model(
    model_dir: str | Path,
    adapter_dir: str | Path | None = None,
    dtype: str = "float32",
    quantization: str | None = None,
    device: str | None = None,
    trainable: bool = False,
    with_processor: bool = True,
    channels_last: bool = False,
    views: int | None = None,
    views_below: float | None = None,
) -> tuple[Any, Any]:
    """Load `(model, processor)` from a checkpoint directory, with an optional peft adapter on top.

    dtype: float32 | float16 | bfloat16, or auto (`finetune.precision.resolve_dtype`: bfloat16 where the
    device runs it natively, else float32 on a CPU, float16 on CUDA); quantization: None | "4bit" | "8bit" (CUDA only);
    device: "cpu", "cuda", "cuda:N" or None (CUDA when present). The model is in eval mode
    unless `trainable`. With `with_processor=False` the processor is not loaded (None): for
    weights saved without one, such as an older run's training state.

    `channels_last=True` (inference on a CPU only) stores convolution weights channels-last, the
    layout oneDNN's kernels want: the small model's convolutional vision tower runs about twice as
    fast in bf16 and ~20 % faster in fp32, with identical fp32 answers. Such weights cannot be saved
    with safetensors, so a model that will be saved again (merged, averaged) keeps the default layout.

    `views` (1, 4 or 8) sets how many rotated/mirrored views of the map generation answers from,
    `views_below` (in (0, 1]; 1: always) the sureness under which it asks them (`finetune.views`);
    None keeps the checkpoint's setting.
    """
    from transformers import AutoModelForImageTextToText

    model_path = _check_dir(model_dir, "model checkpoint", "config.json")
    if dtype not in DTYPES and dtype != AUTO_DTYPE:
        raise ModelLoadError(f"dtype must be one of {', '.join(DTYPES)} or {AUTO_DTYPE}; got {dtype!r}")
    try:
        if views is not None:
            check_views(views)
        check_below(views_below)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    device = resolve_device(device)
    torch_dtype = DTYPES[resolve_dtype(dtype, device)]
    quant = quantization_config(quantization, torch_dtype)
    if torch_dtype is torch.bfloat16 and (reason := slow_bf16_warning(device)):
        warnings.warn(f"bfloat16 weights on {device}: {reason}; use float32 here", stacklevel=2)
    _register_model_type(model_path)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device if device != "cpu" else "cuda"}
    try:
        model = AutoModelForImageTextToText.from_pretrained(model_path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load a model from {model_path}: {exc}") from exc
    if quant is None:
        model = model.to(device)
    if adapter_dir is not None:
        from peft import PeftModel

        adapter_path = _check_dir(adapter_dir, "LoRA adapter", "adapter_config.json")
        try:
            model = PeftModel.from_pretrained(model, adapter_path, is_trainable=trainable)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"cannot apply the adapter {adapter_path} to {model_path}: {exc}") from exc
    if trainable:
        train_mode(model)
    else:
        model.eval()
        if channels_last and device == "cpu" and quant is None:
            model.to(memory_format=torch.channels_last)
    if views is not None:
        set_answer_views(model, views)
    if views_below is not None:
        set_views_below(model, views_below)
    processor = load_processor(model_path, adapter_dir) if with_processor else None
    return model, processor


def train_mode(model: Any) -> None:
    """`model.train()`, except batch-norm layers (a convolutional vision tower's), which keep their
    running statistics from the vision stage: stage-2 micro-batches of a few images are too small
    for batch statistics, and inference uses the running ones."""
    model.train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
