"""Whether bf16 arithmetic is native on a device, so `--bf16` / `--dtype bfloat16` only speed things up,
and what `--dtype auto` (the server's default) picks there.

On a CPU without AVX512-BF16 or AMX (most AMD and older Intel laptops and servers) PyTorch
emulates bf16: a training step of the small model under bf16 autocast took 8.4 s there against
1.0 s in fp32. Training falls back to fp32 on such a CPU (with a warning), and loading weights in
bf16 there warns; CUDA GPUs report their own support.
"""

from __future__ import annotations

import torch


def bf16_is_native(device: str | torch.device) -> bool:
    """True when `device` runs bf16 matrix and convolution kernels in hardware."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return True  # other accelerators (MPS, XPU) ship bf16 kernels
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def slow_bf16_warning(device: str | torch.device) -> str | None:
    """The warning to show before running bf16 on `device`, or None where bf16 is native."""
    if bf16_is_native(device):
        return None
    return (f"this {torch.device(device).type.upper()} has no native bf16 (AVX512-BF16 or AMX): PyTorch emulates it, "
            "several times slower than float32")


#: The dtype setting that lets the device decide (`resolve_dtype`).
AUTO_DTYPE = "auto"


def resolve_dtype(dtype: str, device: str | torch.device) -> str:
    """The weights' dtype for the setting `dtype` on `device`: any setting but "auto" as given.

    "auto" is bfloat16 where the device runs it natively (a CPU with AMX or AVX512-BF16, a CUDA GPU
    from Ampere on): there a batch of the small model's prefill runs on the bf16 units, about 1.35×
    the float32 throughput in batches of 32 on a 2-core Xeon with AMX (`benchmarks/model_latency.py`),
    with the same held-out recognition (see the model card). Elsewhere float16 on an older CUDA GPU, float32 on a CPU, where bf16 is emulated.
    """
    if dtype != AUTO_DTYPE:
        return dtype
    if bf16_is_native(device):
        return "bfloat16"
    return "float16" if torch.device(device).type == "cuda" else "float32"
