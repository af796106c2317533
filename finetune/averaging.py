"""Weight averaging ("model soup"): one checkpoint whose weights are the mean of several runs'.

Refreshes of one checkpoint (`defect-glm train --base X`, different seeds or data shares) end in
the same basin of the loss; the average of their weights often recognises better than any one of
them, and it costs nothing at inference (one model, same size, same speed). `average_checkpoints`
loads each checkpoint with the Auto classes, checks that they share an architecture, a vocabulary
and every weight's name and shape, and saves the (optionally weighted) mean of every floating-point
tensor, batch-norm statistics included; integer buffers are taken from the first checkpoint. The
first checkpoint also gives the config and processor. `averaged_from.json` in the result names the
ingredients and their weights.

Averaging only makes sense for checkpoints fine-tuned from a common ancestor; two runs trained
from scratch average to noise. Pick the ingredients on validation maps (`defect-glm eval --split
val`) and promote the result like any checkpoint (`defect-glm promote`, which evaluates it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from finetune.checkpoints import require_new_dir, save_new_checkpoint
from finetune.loading import load_model
from finetune.prompting import MEASURED_FACTS_ATTRIBUTE, uses_measured_facts
from finetune.views import BELOW_ATTRIBUTE, VIEWS_ATTRIBUTE

AVERAGED_FROM_FILE = "averaged_from.json"
#: Config entries that may differ between checkpoints of one architecture (bookkeeping and how it
#: answers, not shape); the average keeps the first checkpoint's.
_CONFIG_BOOKKEEPING = ("_name_or_path", "transformers_version", "name_or_path", VIEWS_ATTRIBUTE, BELOW_ATTRIBUTE)


class AveragingError(ValueError):
    """Checkpoints that cannot be averaged (different architecture, vocabulary or weights)."""


def _comparable_config(model: Any) -> dict:
    config = model.config.to_dict()
    for key in _CONFIG_BOOKKEEPING:
        config.pop(key, None)
    config[MEASURED_FACTS_ATTRIBUTE] = uses_measured_facts(model)  # absent from older configs: on
    return config


def _normalised_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise AveragingError(f"give one weight per checkpoint: {count} checkpoints, {len(weights)} weights")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise AveragingError(f"weights must be 0 or more and not all 0; got {list(weights)}")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def _check_same_shape(first: dict[str, torch.Tensor], other: dict[str, torch.Tensor], name: str) -> None:
    missing, extra = sorted(set(first) - set(other)), sorted(set(other) - set(first))
    if missing or extra:
        raise AveragingError(f"{name} has different weights from the first checkpoint "
                             f"(missing: {missing[:3]}, extra: {extra[:3]}); average runs of one architecture")
    for key, tensor in first.items():
        if other[key].shape != tensor.shape:
            raise AveragingError(f"{name}: weight {key} is {tuple(other[key].shape)}, "
                                 f"the first checkpoint's is {tuple(tensor.shape)}")


def average_checkpoints(model_dirs: Sequence[str | Path], out_dir: str | Path,
                        weights: Sequence[float] | None = None) -> Path:
    """Save the weighted mean of `model_dirs`' weights as a new checkpoint in `out_dir` (new or empty)."""
    if len(model_dirs) < 2:
        raise AveragingError(f"averaging needs at least two checkpoints; got {len(model_dirs)}")
    shares = _normalised_weights(weights, len(model_dirs))
    out = Path(out_dir)
    require_new_dir(out, "averaged checkpoint")
    first, processor = load_model(model_dirs[0], device="cpu")
    first_state = first.state_dict()
    first_config = _comparable_config(first)
    first_vocab = processor.tokenizer.get_vocab()
    sums = {key: tensor.detach().float() * shares[0] for key, tensor in first_state.items()
            if tensor.is_floating_point()}
    for model_dir, share in zip(model_dirs[1:], shares[1:], strict=True):
        model, other_processor = load_model(model_dir, device="cpu")
        if _comparable_config(model) != first_config:
            raise AveragingError(f"{model_dir} has another architecture or settings than {model_dirs[0]} (config.json "
                                 "differs); average refreshes of one checkpoint")
        if other_processor.tokenizer.get_vocab() != first_vocab:
            raise AveragingError(f"{model_dir} has another vocabulary than {model_dirs[0]}; average refreshes of "
                                 "one checkpoint")
        state = model.state_dict()
        _check_same_shape(first_state, state, str(model_dir))
        for key in sums:
            sums[key] += state[key].detach().float() * share
        del model, state
    averaged = {key: sums[key].to(tensor.dtype) if key in sums else tensor for key, tensor in first_state.items()}
    first.load_state_dict(averaged)
    record = {"checkpoints": [str(Path(d)) for d in model_dirs], "weights": [round(s, 6) for s in shares]}
    return save_new_checkpoint(out, first, processor, what="averaged checkpoint",
                               extra_json={AVERAGED_FROM_FILE: record})
