"""Stage 1 of training the small model from scratch: teach its vision tower the eight patterns.

A language-model loss carries the image's content through a handful of answer tokens, which is
a weak signal for a vision tower that starts from random weights. Before the full model is
trained on conversations, `pretrain_vision` trains the tower alone as a multi-label classifier
(mean- and max-pooled patch features → 8 sigmoid outputs, one per base pattern) on the
training maps under random dihedral transforms, with exactly the image the model sees
(`finetune.prompting.model_image` through the checkpoint's own image processor). The temporary
classifier head is thrown away; what remains is a vision tower that already separates the
patterns, which stage 2 (the conversation training in `finetune.train`) connects to words.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from data_tools.taxonomy import NUM_PATTERNS
from finetune.dataset import augmented_wafer
from finetune.prompting import model_image


class PatternHead(nn.Module):
    """Mean- and max-pooled patch features of the vision tower → one logit per base pattern."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(2 * hidden)
        self.out = nn.Linear(2 * hidden, NUM_PATTERNS)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([patches.mean(dim=1), patches.amax(dim=1)], dim=-1)
        return self.out(self.norm(pooled))


def vision_tower(model: Any) -> Any:
    """The vision tower of an image-text-to-text model (nested under `.model` in recent transformers)."""
    return model.model.vision_tower if hasattr(model, "model") else model.vision_tower


def vision_features(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """The image features the projector receives, one row per image token: (batch, tokens, channels).

    A convolutional tower (FastVLM) gives its last feature map, flattened; a ViT (Llava) the
    hidden states of the configured layer.
    """
    tower = vision_tower(model)
    outputs = tower(pixel_values, output_hidden_states=True)
    last = outputs.last_hidden_state
    if last.dim() == 4:
        return last.flatten(2).transpose(1, 2)
    return outputs.hidden_states[model.config.vision_feature_layer]


def pixel_batch(processor: Any, grids: np.ndarray, rng: random.Random, augment: bool = True) -> torch.Tensor:
    """Pixel values of `grids` (each under a random dihedral transform when `augment`), as the model sees them."""
    images = [model_image(augmented_wafer(grid, rng, augment)) for grid in grids]
    return processor.image_processor(images, return_tensors="pt")["pixel_values"]


def warmup_cosine(step: int, steps: int) -> float:
    """Learning-rate factor at `step` of `steps`: linear warm-up over the first twentieth, then cosine to 0."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def pretrain_vision(
    model: Any,
    processor: Any,
    grids: np.ndarray,
    labels: np.ndarray,
    steps: int,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    bf16: bool = False,
) -> tuple[list[float], PatternHead]:
    """Train the model's vision tower as a pattern classifier for `steps` steps (forward passes under
    bf16 autocast with `bf16`: weights stay fp32).

    Returns the loss of every step and the classifier head (for diagnostics; the model does not keep it).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if len(grids) != len(labels) or not len(grids):
        raise ValueError(f"need as many labels as maps (got {len(grids)} maps, {len(labels)} labels), at least one")
    tower = vision_tower(model)
    torch.manual_seed(seed)
    device = next(tower.parameters()).device
    head = PatternHead(model.config.vision_config.hidden_size).to(device)
    params = [*tower.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, steps))
    targets_all = torch.as_tensor(np.asarray(labels), dtype=torch.float32, device=device)
    was_training = tower.training
    tower.train()
    # Convolutions run about a quarter faster channels-last on a CPU (oneDNN) and on a GPU under autocast;
    # the weights go back to the default layout afterwards, as stage 2 and saving expect.
    tower.to(memory_format=torch.channels_last)
    losses = []
    for step in range(steps):
        rng = random.Random(f"vision-{seed}-{step}")
        chosen = [rng.randrange(len(grids)) for _ in range(batch_size)]
        pixels = pixel_batch(processor, grids[chosen], rng).to(device, memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = head(vision_features(model, pixels))
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets_all[chosen])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1])
    tower.to(memory_format=torch.contiguous_format)
    tower.train(was_training)
    return losses, head


@torch.no_grad()
def pattern_accuracy(model: Any, head: PatternHead, processor: Any, grids: np.ndarray, labels: np.ndarray) -> float:
    """Share of maps whose 8 thresholded head outputs all match their labels (a stage-1 diagnostic)."""
    tower = vision_tower(model)
    was_training = tower.training
    tower.eval()  # batch-norm layers use their running statistics, as at inference
    device = next(tower.parameters()).device
    correct = 0
    for start in range(0, len(grids), 256):
        pixels = pixel_batch(processor, grids[start : start + 256], random.Random(0), augment=False).to(device)
        predicted = (head(vision_features(model, pixels)) > 0).cpu()
        truth = torch.as_tensor(np.asarray(labels[start : start + 256]) > 0)
        correct += int((predicted == truth).all(dim=1).sum())
    tower.train(was_training)
    return correct / len(grids)
