"""Compare synthetic wafer maps with real MixedWM38 maps, class by class.

Prints, per class, real vs synthetic: map count, mean and standard deviation of the failing-die
fraction, and the mean share of failing dies in the centre / middle / edge zones, then the
average absolute differences over all classes.

    python benchmarks/compare_synthetic.py [--real PATH] [--per-class N] [--seed S]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_tools.loaders import load_mixedwm38  # noqa: E402
from data_tools.stats import ZONES, dataset_stats  # noqa: E402
from data_tools.synthetic import generate_dataset  # noqa: E402
from data_tools.taxonomy import CLASS_NAMES  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=REPO.parent / "shared" / "data" / "mixedwm38_dev.npz",
                        help="real MixedWM38 .npz (default: ../shared/data/mixedwm38_dev.npz beside the repo)")
    parser.add_argument("--per-class", type=int, default=200, help="synthetic maps per class (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.real.is_file():
        print(f"no real data at {args.real}; pass --real PATH to a MixedWM38 .npz", file=sys.stderr)
        return 2

    real = dataset_stats(load_mixedwm38(args.real))
    start = time.perf_counter()
    synthetic_data = generate_dataset(args.per_class, seed=args.seed)
    elapsed = time.perf_counter() - start
    synth = dataset_stats(synthetic_data)

    width = max(len(n) for n in CLASS_NAMES)
    print(f"real: {args.real}   synthetic: {args.per_class} per class, seed {args.seed} "
          f"({len(synthetic_data)} maps in {elapsed:.1f} s, {1000 * elapsed / len(synthetic_data):.2f} ms/map)")
    print(f"{'class':<{width}}  {'n real':>6}  {'fail% real':>11}  {'fail% syn':>11}  "
          f"{'zones c/m/e real':>17}  {'zones c/m/e syn':>17}")
    diffs_fail, diffs_sd, diffs_zone = [], [], []
    for name in CLASS_NAMES:
        if name not in real or name not in synth:
            continue
        r, s = real[name], synth[name]
        rz = "/".join(f"{r.zone_share[z]:.2f}" for z in ZONES)
        sz = "/".join(f"{s.zone_share[z]:.2f}" for z in ZONES)
        print(f"{name:<{width}}  {r.count:>6}  {100 * r.fail_fraction_mean:>5.1f}±{100 * r.fail_fraction_std:<4.1f} "
              f"  {100 * s.fail_fraction_mean:>5.1f}±{100 * s.fail_fraction_std:<4.1f}  {rz:>17}  {sz:>17}")
        diffs_fail.append(abs(r.fail_fraction_mean - s.fail_fraction_mean))
        diffs_sd.append(abs(r.fail_fraction_std - s.fail_fraction_std))
        diffs_zone.append(max(abs(r.zone_share[z] - s.zone_share[z]) for z in ZONES))
    n = len(diffs_fail)
    print(f"mean |Δ| over {n} classes: fail fraction {100 * sum(diffs_fail) / n:.2f} points, "
          f"its sd {100 * sum(diffs_sd) / n:.2f} points, largest zone share {sum(diffs_zone) / n:.3f}; "
          f"worst class fail fraction Δ {100 * max(diffs_fail):.2f} points, zone Δ {max(diffs_zone):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
