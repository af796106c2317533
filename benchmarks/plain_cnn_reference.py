"""Where the maps themselves limit recognition: a plain CNN beside the served model, map by map.

Trains a plain CNN classifier (not part of the product: a yardstick) on the corpus's training maps:
the die grid as three one-hot channels (off wafer, good, failing) at full resolution, 3×3
convolutions with batch norm in four stages (`--width` × 1, 2, 4, 4 channels, max-pooled between
them), mean- and max-pooled features → 8 sigmoid outputs, per-pattern loss, a random dihedral
transform per batch, AdamW with warm-up and cosine decay, bf16 autocast where the CPU runs it
natively. Then, on the test split's maps that come from the real MixedWM38 file (distinct maps,
synthetic ones left out), it prints:

- the CNN's exact match, one view and its eight views' logits averaged;
- the served model's (`--model`, answering as its config says) to "What is wrong with this wafer?";
- with `--probe-steps N`, a linear head trained for N steps on the frozen features of the served
  model's own vision tower: about the model's figure says the decoder reads all the tower offers;
- how many maps both get wrong, and the share an oracle picking the right one of the two would reach.

    python benchmarks/plain_cnn_reference.py --data runs/corpus10 --mixedwm38 ../shared/data/mixedwm38_dev.npz
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTION = "What is wrong with this wafer?"


def conv_block(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs),
                         nn.ReLU(inplace=True))


class PlainCNN(nn.Module):
    """Four stages of two 3×3 convolutions at full die resolution, max-pooled between stages."""

    def __init__(self, width: int) -> None:
        super().__init__()
        sizes = (width, 2 * width, 4 * width, 4 * width)
        layers: list[nn.Module] = []
        inputs = 3
        for stage, size in enumerate(sizes):
            if stage:
                layers.append(nn.MaxPool2d(2))
            layers += [conv_block(inputs, size), conv_block(size, size)]
            inputs = size
        self.features = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(2 * inputs)
        self.out = nn.Linear(2 * inputs, 8)

    def forward(self, grids: torch.Tensor) -> torch.Tensor:
        features = self.features(grids).flatten(2)
        return self.out(self.norm(torch.cat([features.mean(2), features.amax(2)], 1)))


def one_hot(grids: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack([grids == 0, grids == 1, grids == 2], 1).astype(np.float32))


def dihedral(grids: np.ndarray, turns: int, mirror: bool) -> np.ndarray:
    turned = np.rot90(grids, turns, axes=(1, 2))
    return np.ascontiguousarray(turned[:, :, ::-1] if mirror else turned)


def train_cnn(grids: np.ndarray, labels: np.ndarray, steps: int, width: int, seed: int, bf16: bool) -> PlainCNN:
    from finetune.vision_pretrain import warmup_cosine  # the stage-1 tower's schedule

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PlainCNN(width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, steps))
    targets = torch.from_numpy(labels.astype(np.float32))
    for _ in range(steps):
        chosen = rng.integers(len(grids), size=128)
        batch = one_hot(dihedral(grids[chosen], int(rng.integers(4)), bool(rng.integers(2))))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch)
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets[chosen])
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return model.eval()


@torch.no_grad()
def cnn_right(model: PlainCNN, grids: np.ndarray, labels: np.ndarray, views: int) -> np.ndarray:
    """Per map, whether the CNN's 8 outputs (averaged over `views` dihedral views) all match the labels."""
    transforms = [(k, m) for m in (False, True) for k in range(4)][:views]
    logits = np.mean([model(one_hot(dihedral(grids, k, m))).numpy() for k, m in transforms], axis=0)
    return ((logits > 0) == (labels > 0)).all(1)


def model_right(model, processor, grids: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from data_tools.taxonomy import to_multi_hot
    from data_tools.wafer_map import WaferMap
    from finetune.answer_parser import parse_answer
    from finetune.generation import generate_answers
    from model_server.backends.base import GenerationRequest

    requests = [GenerationRequest(QUESTION, WaferMap(grid), max_new_tokens=48) for grid in grids]
    parsed = [parse_answer(answer) for answer in generate_answers(model, processor, requests, batch_size=32)]
    return np.array([p is not None and ((to_multi_hot(p) > 0) == (truth > 0)).all() for p, truth in zip(parsed, labels)])


def probe_right(model, processor, train_grids, train_labels, grids, labels, steps: int, seed: int) -> np.ndarray:
    """A linear head on the frozen features of the model's own vision tower (one augmented view of each training map)."""
    from finetune.vision_pretrain import PatternHead, pixel_batch, vision_features, vision_tower

    vision_tower(model).eval()

    @torch.no_grad()
    def features(some: np.ndarray, augment: bool) -> torch.Tensor:
        rng = random.Random(seed)
        return torch.cat([vision_features(model, pixel_batch(processor, some[i : i + 256], rng, augment)).float()
                          for i in range(0, len(some), 256)])

    train_features, test_features = features(train_grids, True), features(grids, False)
    torch.manual_seed(seed)
    head = PatternHead(train_features.shape[-1])
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    targets = torch.from_numpy(train_labels.astype(np.float32))
    for _ in range(steps):
        chosen = torch.randint(len(train_features), (256,))
        loss = nn.functional.binary_cross_entropy_with_logits(head(train_features[chosen]), targets[chosen])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        return ((head(test_features) > 0).numpy() == (labels > 0)).all(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="corpus directory from `defect-glm data build` (its splits)")
    parser.add_argument("--mixedwm38", required=True, help="the MixedWM38 .npz the corpus was built from (which maps are real)")
    parser.add_argument("--model", help="checkpoint to compare (default: the served one)")
    parser.add_argument("--steps", type=int, default=1500, help="CNN training steps of 128 maps (default 1500)")
    parser.add_argument("--width", type=int, default=32, help="CNN channels of the first stage (default 32)")
    parser.add_argument("--probe-steps", type=int, default=3000, help="linear probe steps (default 3000; 0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from data_tools.wafer_map import WaferMap
    from finetune.checkpoints import default_model_dir
    from finetune.dataset import Corpus
    from finetune.loading import load_model
    from finetune.train import bf16_autocast_allowed

    corpus = Corpus(args.data)
    real = {WaferMap(grid).content_hash for grid in np.load(args.mixedwm38)["arr_0"]}  # how the corpus names maps
    train = corpus.map_indices("train")
    test = np.array([i for i in corpus.map_indices("test") if corpus.hashes[i] in real])
    grids, labels = corpus.grids[test], corpus.labels[test]

    started = time.perf_counter()
    cnn = train_cnn(corpus.grids[train], corpus.labels[train], args.steps, args.width, args.seed,
                    bf16_autocast_allowed(torch.device("cpu"), warn=False))
    cnn_minutes = (time.perf_counter() - started) / 60
    cnn_one, cnn_eight = cnn_right(cnn, grids, labels, 1), cnn_right(cnn, grids, labels, 8)

    model, processor = load_model(args.model or default_model_dir(), channels_last=True)
    served = model_right(model, processor, grids, labels)
    figures = {
        "test_real_distinct_maps": len(test), "cnn_steps": args.steps, "cnn_minutes": round(cnn_minutes, 1),
        "cnn_one_view": int(cnn_one.sum()), "cnn_eight_views": int(cnn_eight.sum()),
        "model": str(args.model or default_model_dir()), "model_right": int(served.sum()),
        "both_wrong": int((~served & ~cnn_eight).sum()), "either_right": int((served | cnn_eight).sum()),
    }
    if args.probe_steps:
        probe = probe_right(model, processor, corpus.grids[train], corpus.labels[train], grids, labels,
                            args.probe_steps, args.seed)
        figures["frozen_tower_probe_right"] = int(probe.sum())
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    n = len(test)
    print(f"{n} distinct real maps of the test split of {args.data}")
    print(f"plain CNN ({args.steps} steps, {cnn_minutes:.1f} min): one view {cnn_one.sum()} "
          f"({cnn_one.mean():.2%}), eight views averaged {cnn_eight.sum()} ({cnn_eight.mean():.2%})")
    print(f"served model, asked {QUESTION!r}: {served.sum()} ({served.mean():.2%})")
    if "frozen_tower_probe_right" in figures:
        print(f"linear head on the model's frozen tower: {figures['frozen_tower_probe_right']}")
    print(f"wrong for both the model and the CNN: {figures['both_wrong']}; right for either: "
          f"{figures['either_right']} ({figures['either_right'] / n:.2%})")


if __name__ == "__main__":
    main()
