"""Recognition on synthetic maps at several levels of background noise, the dies failing at random
under the patterns.

Every defective MixedWM38 map carries about a fifth of its dies failing at random (its Normal maps
1–14.5 %); a fab's own maps often carry far less. A model trained on MixedWM38 alone can learn that
noise level as a sign of a defect. Per level, `--per-class` synthetic maps of each of the 38 classes
are made with that noise (Normal maps too, capped at 14.5 %, MixedWM38's highest for Normal), asked
one recognition question each (English and Chinese alternately, as `defect-glm eval` asks; a model whose
config holds `background_level` is shown clean maps with a pattern at that noise, `finetune.background_match`),
and scored: exact match and each pattern's recall. It also counts the defective maps called normal and how
many of those the server's findings flag with a caveat (`model_server.findings.caveats_for`: a large
failing cluster on a map called normal), the Normal maps called normal that are flagged wrongly, and
the maps wrongly read as Near-full and how many of those the Near-full caveat flags (under half the
dies failing). With `--mixedwm38 FILE` it also checks both rules on that file's real maps (no model
needed): the largest failing cluster of its Normal maps and how many the rule would flag, were they
called normal; the smallest failing share of its Near-full maps and how many would be flagged.

    python benchmarks/noise_robustness.py                                  # the served checkpoint
    python benchmarks/noise_robustness.py --model runs/v20 --per-class 20 --noise 0,0.1,0.195 --json
    python benchmarks/noise_robustness.py --mixedwm38 ../shared/data/mixedwm38_dev.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_tools.taxonomy import PATTERN_KEYS  # after the path set-up above

NEAR_FULL = PATTERN_KEYS.index("Near_Full")  # its column in a label row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: the served checkpoint)")
    parser.add_argument("--per-class", type=int, default=10, help="maps per class and noise level (default 10)")
    parser.add_argument("--noise", default="0,0.05,0.1,0.195",
                        help="comma-separated shares of dies failing at random (default 0,0.05,0.1,0.195)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the maps and questions (default 0)")
    parser.add_argument("--batch-size", type=int, default=32, help="generation batch size (default 32)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--mixedwm38", type=Path, default=None,
                        help="also check the caveat rule on this MixedWM38 file's Normal maps")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    try:
        levels = [float(x) for x in args.noise.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--noise must be comma-separated numbers, got {args.noise!r}")
    if not levels or any(not 0.0 <= x <= 1.0 for x in levels) or args.per_class < 1:
        parser.error("--noise needs shares between 0 and 1 and --per-class at least 1")

    from data_tools.synthetic import PARAM_RANGES, generate_dataset
    from data_tools.wafer_map import WaferMap
    from finetune.background_match import BELOW_ATTRIBUTE, LEVEL_ATTRIBUTE
    from finetune.checkpoints import serving_model_dir
    from finetune.evaluate import recognition_scores
    from finetune.loading import load_model
    from model_server.findings import caveats_for

    normal_noise_cap = PARAM_RANGES["normal_noise"][1]  # MixedWM38's highest background noise on a Normal map
    model_dir = args.model or serving_model_dir()
    model, processor = load_model(model_dir, dtype=args.dtype, channels_last=True)
    level = getattr(model.config, LEVEL_ATTRIBUTE, None)
    shown = ("each map as sent" if level is None else
             f"clean maps with a pattern shown at {level:g} noise (under {getattr(model.config, BELOW_ATTRIBUTE, 0):g})")
    rows = []
    for noise in levels:
        data = generate_dataset(args.per_class, seed=args.seed,
                                params={"noise": noise, "normal_noise": min(noise, normal_noise_cap)})
        scores = recognition_scores(model, processor, data.grids, data.labels, batch_size=args.batch_size,
                                    seed=args.seed, keep_predictions=True)
        called_normal = [(grid, bool(label.any())) for grid, label, keys in
                         zip(data.grids, data.labels, scores["predicted"]) if keys == []]
        flagged = [defective for grid, defective in called_normal if caveats_for((), WaferMap(grid).facts())]
        wrongly_near_full = [grid for grid, label, keys in zip(data.grids, data.labels, scores["predicted"])
                             if keys and "Near_Full" in keys and not label[NEAR_FULL]]
        rows.append({
            "noise": noise,
            "maps": len(data),
            "exact_match": scores["exact_match"],
            "recall": {name: round(p["recall"], 4) for name, p in scores["per_pattern"].items()},
            "defective_called_normal": sum(defective for _grid, defective in called_normal),
            "defective_called_normal_with_caveat": sum(flagged),
            "normal_called_normal_with_caveat": len(flagged) - sum(flagged),
            "wrongly_near_full": len(wrongly_near_full),
            "wrongly_near_full_with_caveat": sum(bool(caveats_for(("Near_Full",), WaferMap(grid).facts()))
                                                 for grid in wrongly_near_full),
        })
    real_normal = None if args.mixedwm38 is None else normal_map_caveats(args.mixedwm38)
    real_near_full = None if args.mixedwm38 is None else near_full_map_caveats(args.mixedwm38)
    if args.json:
        print(json.dumps({"model": str(model_dir), "shown": shown, "per_class": args.per_class, "seed": args.seed,
                          "rows": rows,
                          "real_normal_maps": real_normal, "real_near_full_maps": real_near_full}, indent=2))
        return 0
    names = list(rows[0]["recall"])
    print(f"model {model_dir}, {args.per_class} synthetic maps per class and noise level, seed {args.seed}; {shown}")
    print("| noise | maps | exact match | " + " | ".join(f"{n} recall" for n in names)
          + " | defective called normal (with caveat) | Normal flagged | wrongly Near-full (with caveat) |")
    print("| --- " * (6 + len(names)) + "|")
    for row in rows:
        print(f"| {row['noise']:.3f} | {row['maps']} | {100 * row['exact_match']:.1f} % | "
              + " | ".join(f"{row['recall'][n]:.2f}" for n in names)
              + f" | {row['defective_called_normal']} ({row['defective_called_normal_with_caveat']})"
              + f" | {row['normal_called_normal_with_caveat']}"
              + f" | {row['wrongly_near_full']} ({row['wrongly_near_full_with_caveat']}) |")
    if real_normal is not None:
        print(f"{args.mixedwm38}: {real_normal['maps']} Normal maps, largest failing cluster at most "
              f"{real_normal['largest_cluster_max']} dies; the caveat rule flags {real_normal['flagged']}")
        print(f"{args.mixedwm38}: {real_near_full['maps']} Near-full maps, at least "
              f"{100 * real_near_full['failing_share_min']:.1f} % of their dies failing; the Near-full caveat flags "
              f"{real_near_full['flagged']}")
    return 0


def _labelled(path: Path):
    from data_tools.loaders import load_mixedwm38

    data = load_mixedwm38(path)
    if data.labels is None:
        raise SystemExit(f"{path} has no labels, so its Normal and Near-full maps are not known")
    return data


def near_full_map_caveats(path: Path) -> dict:
    """On a MixedWM38 file's Near-full maps: their smallest failing share, and how many the Near-full
    caveat would flag (it should flag none)."""
    from data_tools.wafer_map import WaferMap
    from model_server.findings import caveats_for

    data = _labelled(path)
    shares, flagged = [], 0
    for grid in (grid for grid, label in zip(data.grids, data.labels) if label[NEAR_FULL]):
        facts = WaferMap(grid).facts()
        shares.append(facts["failing"] / facts["dies"])
        flagged += bool(caveats_for(("Near_Full",), facts))
    return {"maps": len(shares), "failing_share_min": round(min(shares), 4) if shares else None, "flagged": flagged}


def normal_map_caveats(path: Path) -> dict:
    """On a MixedWM38 file's Normal maps: how large their failing clusters get, and how many the findings'
    caveat rule would flag were they called normal (it should flag none)."""
    from data_tools.wafer_map import WaferMap
    from model_server.findings import caveats_for

    data = _labelled(path)
    largest, flagged = 0, 0
    normal = [grid for grid, label in zip(data.grids, data.labels) if not label.any()]
    for grid in normal:
        facts = WaferMap(grid).facts()
        cluster = facts["clusters"]["largest"]
        largest = max(largest, cluster["size"] if cluster else 0)
        flagged += bool(caveats_for((), facts))
    return {"maps": len(normal), "largest_cluster_max": largest, "flagged": flagged}


if __name__ == "__main__":
    raise SystemExit(main())
