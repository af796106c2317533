"""Shared test settings: offline, deterministic, single-threaded numerics."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mixedwm38_dev.npz"


@pytest.fixture(scope="session")
def real_mixedwm38() -> Path:
    """Path of the real development maps; tests using it skip cleanly when it is absent."""
    if not SHARED_DATA.exists():
        pytest.skip(f"real MixedWM38 data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a test module: tiny models gain nothing from more, and CI has 2 cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random checkpoint of the small model's architecture (finetune.tiny), built once per session."""
    from finetune.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-model") / "checkpoint")
