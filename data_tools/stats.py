"""Per-class statistics of a wafer-map data set: counts, failing-die fractions, where failures sit.

Used by `defect-glm data stats FILE [--json]` (MixedWM38 .npz, WM-811K .pkl or an image folder with
a label CSV) and by `benchmarks/compare_synthetic.py`
to compare synthetic maps with real ones. Radial zones are measured as `WaferMap.zones` does
(centre of the dies, radius √(dies/π), zones centre < 0.4 ≤ middle < 0.8 ≤ edge), vectorised over
many maps at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from data_tools.loaders import LabelledWafer, WaferDataset
from data_tools.wafer_map import FAIL, OFF, ZONE_EDGES

ZONES = tuple(ZONE_EDGES)
#: Maps measured at a time (bounds temporary memory to a few tens of MB).
CHUNK = 1024


@dataclass(frozen=True)
class ClassStats:
    """Statistics of the maps of one class."""

    count: int
    dies_mean: float
    fail_fraction_mean: float  # failing dies / dies
    fail_fraction_std: float
    zone_share: dict[str, float]  # mean share of a map's failing dies in each radial zone

    def to_json(self) -> dict:
        out = asdict(self)
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()} | {
            "zone_share": {k: round(v, 4) for k, v in self.zone_share.items()}
        }


def per_map_measures(grids: np.ndarray) -> dict[str, np.ndarray]:
    """Per-map dies, failing dies and failing dies per radial zone, for (N, H, W) die grids."""
    grids = np.asarray(grids)
    if grids.ndim != 3:
        raise ValueError(f"expected (N, H, W) die grids, got shape {grids.shape}")
    n, h, w = grids.shape
    y, x = np.indices((h, w), dtype=np.float64)
    dies = np.zeros(n, dtype=np.int64)
    failing = np.zeros(n, dtype=np.int64)
    zone_failing = {z: np.zeros(n, dtype=np.int64) for z in ZONES}
    for start in range(0, n, CHUNK):
        chunk = grids[start : start + CHUNK]
        on = chunk > OFF
        fail = chunk == FAIL
        count = on.sum(axis=(1, 2))
        safe = np.maximum(count, 1)
        cy = (on * y).sum(axis=(1, 2)) / safe
        cx = (on * x).sum(axis=(1, 2)) / safe
        radius = np.maximum(np.sqrt(count / math.pi), 0.5)
        r = np.hypot(y[None] - cy[:, None, None], x[None] - cx[:, None, None]) / radius[:, None, None]
        sl = slice(start, start + len(chunk))
        dies[sl] = count
        failing[sl] = fail.sum(axis=(1, 2))
        for z, (lo, hi) in ZONE_EDGES.items():
            zone_failing[z][sl] = (fail & (r >= lo) & (r < hi)).sum(axis=(1, 2))
    return {"dies": dies, "failing": failing, **{f"failing_{z}": v for z, v in zone_failing.items()}}


def summarise(measures: dict[str, np.ndarray], selection: np.ndarray | None = None) -> ClassStats:
    """ClassStats of the maps picked by `selection` (a boolean mask or indices; all maps when None)."""
    pick = (lambda a: a) if selection is None else (lambda a: a[selection])
    dies, failing = pick(measures["dies"]), pick(measures["failing"])
    count = int(dies.size)
    if count == 0:
        return ClassStats(0, 0.0, 0.0, 0.0, dict.fromkeys(ZONES, 0.0))
    fraction = failing / np.maximum(dies, 1)
    with_fail = failing > 0
    shares = {}
    for z in ZONES:
        zf = pick(measures[f"failing_{z}"])
        shares[z] = float((zf[with_fail] / failing[with_fail]).mean()) if with_fail.any() else 0.0
    return ClassStats(count, float(dies.mean()), float(fraction.mean()), float(fraction.std()), shares)


def dataset_stats(data: WaferDataset) -> dict[str, ClassStats]:
    """ClassStats per class name (``Normal``, ``Center+Scratch``…), in taxonomy order; ``unlabelled`` if no labels."""
    from data_tools.taxonomy import CLASS_NAMES

    measures = per_map_measures(data.grids)
    if data.labels is None:
        return {"unlabelled": summarise(measures)}
    names = np.asarray(data.class_names())
    order = [c for c in CLASS_NAMES if c in set(names.tolist())]
    return {name: summarise(measures, names == name) for name in order}


def stats_json(data: WaferDataset) -> dict:
    """JSON-ready statistics of a data set: source, map count, grid shape and per-class statistics."""
    per_class = dataset_stats(data)
    return {
        "file": data.source,
        "maps": len(data),
        "shape": list(data.shape),
        "classes": {name: s.to_json() for name, s in per_class.items()},
    }


def format_table(data: WaferDataset) -> str:
    """A readable per-class table of the statistics."""
    per_class = dataset_stats(data)
    width = max([len(n) for n in per_class] + [5])
    head = f"{'class':<{width}}  {'maps':>6}  {'fail %':>7}  {'± sd':>6}  {'centre':>6}  {'middle':>6}  {'edge':>6}"
    lines = [f"{data.source}: {len(data)} maps of {data.shape[0]}×{data.shape[1]} dies", head, "-" * len(head)]
    for name, s in per_class.items():
        z = s.zone_share
        lines.append(
            f"{name:<{width}}  {s.count:>6}  {100 * s.fail_fraction_mean:>7.1f}  {100 * s.fail_fraction_std:>6.1f}  "
            f"{z['center']:>6.2f}  {z['middle']:>6.2f}  {z['edge']:>6.2f}"
        )
    lines.append("zone columns: mean share of each map's failing dies in the centre / middle / edge zone")
    return "\n".join(lines)


def records_stats(records: Sequence[LabelledWafer], source: str = "") -> dict:
    """JSON-ready statistics of maps of any sizes (WM-811K, image folders), like `stats_json`.

    Classes are keyed as in `stats_json` (``Normal``, ``Center+Scratch``…, in taxonomy order), with
    ``unlabelled`` last for maps without labels. ``shape`` is the common grid size, or None when the
    maps have several; ``shapes`` counts the maps of each size (``"26x26"``), most common first.
    """
    from data_tools.taxonomy import CLASS_NAMES

    n = len(records)
    measures = {key: np.zeros(n, dtype=np.int64) for key in ("dies", "failing", *(f"failing_{z}" for z in ZONES))}
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, record in enumerate(records):
        by_shape.setdefault(record.wafer.shape, []).append(i)
    for shape_indices in by_shape.values():
        picked = np.asarray(shape_indices)
        for start in range(0, len(picked), CHUNK):
            part = picked[start : start + CHUNK]
            found = per_map_measures(np.stack([records[int(i)].wafer.grid for i in part]))
            for key, values in found.items():
                measures[key][part] = values
    names = np.asarray([r.class_name or "unlabelled" for r in records], dtype=object)
    present = set(names.tolist())
    order = [c for c in (*CLASS_NAMES, "unlabelled") if c in present]
    shapes = sorted(by_shape.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    return {
        "file": source,
        "maps": n,
        "shape": list(shapes[0][0]) if len(shapes) == 1 else None,
        "shapes": {f"{h}x{w}": len(idx) for (h, w), idx in shapes},
        "classes": {name: summarise(measures, names == name).to_json() for name in order},
    }


def format_report(report: dict) -> str:
    """A readable per-class table of a `records_stats` (or `stats_json`) report."""
    classes = report["classes"]
    width = max([len(n) for n in classes] + [5])
    sizes = report.get("shapes") or {"x".join(str(v) for v in report["shape"]): report["maps"]}
    shown = ", ".join(f"{k} ({v})" for k, v in list(sizes.items())[:5]) + (" …" if len(sizes) > 5 else "")
    head = f"{'class':<{width}}  {'maps':>6}  {'fail %':>7}  {'± sd':>6}  {'centre':>6}  {'middle':>6}  {'edge':>6}"
    lines = [f"{report['file']}: {report['maps']} maps; grid sizes {shown}", head, "-" * len(head)]
    for name, s in classes.items():
        z = s["zone_share"]
        lines.append(
            f"{name:<{width}}  {s['count']:>6}  {100 * s['fail_fraction_mean']:>7.1f}  "
            f"{100 * s['fail_fraction_std']:>6.1f}  {z['center']:>6.2f}  {z['middle']:>6.2f}  {z['edge']:>6.2f}"
        )
    lines.append("zone columns: mean share of each map's failing dies in the centre / middle / edge zone")
    return "\n".join(lines)
