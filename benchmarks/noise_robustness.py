"""Recognition on synthetic maps at several levels of background noise, the dies failing at random
under the patterns.

Every defective MixedWM38 map carries about a fifth of its dies failing at random (its Normal maps
1–14.5 %); a fab's own maps often carry far less. A model trained on MixedWM38 alone can learn that
noise level as a sign of a defect. Per level, `--per-class` synthetic maps of each of the 38 classes
are made with that noise (Normal maps too, capped at 14.5 %, MixedWM38's highest for Normal), asked
one recognition question each (English and Chinese alternately, as `defect-glm eval` asks), and
scored: exact match and each pattern's recall.

    python benchmarks/noise_robustness.py                                  # the served checkpoint
    python benchmarks/noise_robustness.py --model runs/v20 --per-class 20 --noise 0,0.1,0.195 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: the served checkpoint)")
    parser.add_argument("--per-class", type=int, default=10, help="maps per class and noise level (default 10)")
    parser.add_argument("--noise", default="0,0.05,0.1,0.195",
                        help="comma-separated shares of dies failing at random (default 0,0.05,0.1,0.195)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the maps and questions (default 0)")
    parser.add_argument("--batch-size", type=int, default=32, help="generation batch size (default 32)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    try:
        levels = [float(x) for x in args.noise.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--noise must be comma-separated numbers, got {args.noise!r}")
    if not levels or any(not 0.0 <= x <= 1.0 for x in levels) or args.per_class < 1:
        parser.error("--noise needs shares between 0 and 1 and --per-class at least 1")

    from data_tools.synthetic import PARAM_RANGES, generate_dataset
    from finetune.checkpoints import serving_model_dir
    from finetune.evaluate import recognition_scores
    from finetune.loading import load_model

    normal_noise_cap = PARAM_RANGES["normal_noise"][1]  # MixedWM38's highest background noise on a Normal map
    model_dir = args.model or serving_model_dir()
    model, processor = load_model(model_dir, dtype=args.dtype, channels_last=True)
    rows = []
    for noise in levels:
        data = generate_dataset(args.per_class, seed=args.seed,
                                params={"noise": noise, "normal_noise": min(noise, normal_noise_cap)})
        scores = recognition_scores(model, processor, data.grids, data.labels, batch_size=args.batch_size,
                                    seed=args.seed)
        rows.append({
            "noise": noise,
            "maps": len(data),
            "exact_match": scores["exact_match"],
            "recall": {name: round(p["recall"], 4) for name, p in scores["per_pattern"].items()},
        })
    if args.json:
        print(json.dumps({"model": str(model_dir), "per_class": args.per_class, "seed": args.seed, "rows": rows},
                         indent=2))
        return 0
    names = list(rows[0]["recall"])
    print(f"model {model_dir}, {args.per_class} synthetic maps per class and noise level, seed {args.seed}")
    print("| noise | maps | exact match | " + " | ".join(f"{n} recall" for n in names) + " |")
    print("| --- " * (3 + len(names)) + "|")
    for row in rows:
        print(f"| {row['noise']:.3f} | {row['maps']} | {100 * row['exact_match']:.1f} % | "
              + " | ".join(f"{row['recall'][n]:.2f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
