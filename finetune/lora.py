"""LoRA adapters: merging an adapter into its base checkpoint for serving without peft.

Training an adapter is `defect-glm train --lora` (finetune.train); loading one on top of its
base is `finetune.loading.load_model(base, adapter_dir=...)`. `merge_adapter` folds the adapter
weights into the base and saves a plain checkpoint (model + processor) that loads with the Auto
classes alone and gives the same outputs as base + adapter.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from finetune.loading import ModelLoadError, load_model


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base + adapter, merged, as a standalone checkpoint in `out_dir` (must not exist yet)."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ModelLoadError(f"{out} already holds files; give a new directory for the merged checkpoint")
    model, processor = load_model(base_dir, adapter_dir=adapter_dir)
    merged = model.merge_and_unload()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        merged.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
