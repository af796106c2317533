"""How well a vision-tower design separates the eight patterns: stage 1 alone, timed and scored.

Builds a fresh small model with the given tower settings (`SmallModelConfig` fields as JSON),
trains its tower for `--steps` stage-1 steps on the corpus's train maps exactly as `defect-glm
train` does (`finetune.vision_pretrain.pretrain_vision`, batch 128, bf16 autocast where the CPU
has it), then prints seconds per step and the pattern head's exact match on the val and test
maps. `--pad N` adds N rows and columns of off-wafer cells on every side of each map first (52
dies padded by 2 give 56, which 112 px or 224 px divide exactly). `--train-maps N` also scores the
head on N training maps (seen in training, without augmentation): about the same figure as on the
val maps says the tower underfits rather than overfits. This is how the tower experiments in the
model card's "Known limitations" were measured:

    python benchmarks/vision_tower_probe.py --data runs/corpus9 --steps 1500
    python benchmarks/vision_tower_probe.py --data runs/corpus9 --steps 1500 --pad 2
    python benchmarks/vision_tower_probe.py --data runs/corpus9 --steps 700 --pad 2 --config \
        '{"image_size": 224, "vision_stem": 16, "vision_channels": [16, 32, 64, 128], "vision_depths": [1, 2, 2, 2]}'
    python benchmarks/vision_tower_probe.py --data runs/corpus10 --steps 1500 --pad 2 --train-maps 2000
    python benchmarks/vision_tower_probe.py --data runs/corpus10 --steps 1500 --pad 2 --train-maps 2000 --config \
        '{"image_size": 224, "vision_stem": 16, "vision_channels": [16, 32, 64, 128], "vision_depths": [1, 2, 2, 2]}'
    (and the same with --steps 3000)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="corpus directory from `defect-glm data build`")
    parser.add_argument("--steps", type=int, default=1500, help="stage-1 steps (default 1500)")
    parser.add_argument("--pad", type=int, default=0, help="off-wafer cells added on every side of each map")
    parser.add_argument("--config", default="{}", help="SmallModelConfig overrides as JSON (default: the default model's)")
    parser.add_argument("--batch", type=int, default=128, help="maps per step (default 128, as in training)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-maps", type=int, default=0,
                        help="also score the head on this many training maps drawn at random (default 0: none)")
    parser.add_argument("--tokenizer", help="checkpoint whose tokenizer sizes the (untrained) decoder "
                        "(default: the committed default model)")
    args = parser.parse_args()
    if args.pad < 0:
        parser.error(f"--pad must be 0 or more, got {args.pad}")
    if args.train_maps < 0:
        parser.error(f"--train-maps must be 0 or more, got {args.train_maps}")
    torch.set_num_threads(args.threads)

    from transformers import AutoTokenizer

    from finetune.checkpoints import default_model_dir
    from finetune.dataset import Corpus
    from finetune.small_model import SmallModelConfig, build_model, build_processor
    from finetune.train import bf16_autocast_allowed
    from finetune.vision_pretrain import pattern_accuracy, pretrain_vision, vision_tower

    config = SmallModelConfig(**json.loads(args.config))
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or default_model_dir())  # only the tower is trained
    model = build_model(tokenizer, config, seed=args.seed)
    processor = build_processor(tokenizer, config)
    corpus = Corpus(args.data)
    grids = np.pad(corpus.grids, ((0, 0), (args.pad, args.pad), (args.pad, args.pad))) if args.pad else corpus.grids
    train = corpus.map_indices("train")
    bf16 = bf16_autocast_allowed(torch.device("cpu"))

    started = time.perf_counter()
    _, head = pretrain_vision(model, processor, grids[train], corpus.labels[train], args.steps,
                              batch_size=args.batch, seed=args.seed, bf16=bf16)
    seconds = time.perf_counter() - started
    figures = {"steps": args.steps, "pad": args.pad, "config": config.to_dict(), "bf16_autocast": bf16,
               "seconds_per_step": round(seconds / args.steps, 3),
               "tower_parameters": sum(p.numel() for p in vision_tower(model).parameters())}
    scored = {split: corpus.map_indices(split) for split in ("val", "test")}
    if args.train_maps:
        chosen = np.random.default_rng(args.seed).choice(len(train), min(args.train_maps, len(train)), replace=False)
        scored["train"] = train[np.sort(chosen)]
    for split, maps in scored.items():
        figures[f"{split}_maps"] = len(maps)
        if len(maps):
            figures[f"{split}_exact_match"] = round(
                pattern_accuracy(model, head, processor, grids[maps], corpus.labels[maps]), 4)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
