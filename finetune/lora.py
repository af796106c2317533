"""LoRA adapters: merging an adapter into its base checkpoint for serving without peft.

Training an adapter is `defect-glm train --lora` (finetune.train); loading one on top of its
base is `finetune.loading.load_model(base, adapter_dir=...)`. `merge_adapter` folds the adapter
weights into the base and saves a plain checkpoint (model + processor) that loads with the Auto
classes alone and gives the same outputs as base + adapter.
"""

from __future__ import annotations

from pathlib import Path

from finetune.checkpoints import require_new_dir, save_new_checkpoint
from finetune.loading import load_model


def merge_adapter(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base + adapter, merged, as a standalone checkpoint in `out_dir` (must not exist yet)."""
    out = Path(out_dir)
    require_new_dir(out, "merged checkpoint")
    model, processor = load_model(base_dir, adapter_dir=adapter_dir)
    return save_new_checkpoint(out, model.merge_and_unload(), processor, what="merged checkpoint")
