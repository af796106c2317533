"""Where each known pattern sits on a wafer map, measured from the die grid.

Given a `WaferMap` and the patterns it is labelled with, `locate` returns one
`PatternLocation` per pattern: the radial zone, the compass sector(s) and, for a scratch,
the orientation of the line. Mixtures are handled by attributing failing-die groups to
patterns: edge failures go to Edge-Loc (the sector with the highest edge fail rate), the
largest compact cluster that is not the centre blob, the ring or the edge goes to Loc, and
the most elongated cluster goes to Scratch. Blobs are measured on "dense" failing dies (those
with several failing neighbours) so the background noise of real maps does not join them up. Only geometry lives here; words live in
`data_tools.phrasing`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from data_tools.taxonomy import canonical_set
from data_tools.wafer_map import FAIL, OFF, SECTORS, ZONE_EDGES, WaferMap

#: Spread kinds: how a pattern's failures are laid out.
SPREADS = ("centred", "ring", "all_around", "edge_local", "local", "line", "whole", "scattered")
#: Scratch orientations, as seen on the map (top = north).
ORIENTATIONS = ("horizontal", "vertical", "rising", "falling")


@dataclass(frozen=True)
class LocateLimits:
    """Thresholds of the attribution heuristics (fractions of the wafer radius, die counts)."""

    min_cluster: int = 5  # smallest group of failing dies taken as a Loc or Scratch cluster
    min_elongation: float = 2.5  # major/minor axis ratio of a scratch-like cluster
    ring_sectors: int = 6  # a group covering this many sectors is a centre blob or ring, not Loc
    centre_radius: float = 0.15  # a centroid closer than this has no meaningful sector
    neighbour_share: float = 0.7  # a neighbouring edge sector joins Edge-Loc at this share of the peak
    dense_neighbours: int = 4  # a failing die with this many failing neighbours belongs to a blob, not noise
    min_blob: int = 12  # dense groups this large and round are blobs a scratch is measured without
    edge_share: float = 0.6  # with an edge pattern present, a blob with this share of edge dies belongs to it
    ring_bin: float = 0.05  # radial bin width for finding a donut's ring band
    hollow: float = 0.15  # a group whose cells lie this much further out than its centroid is an arc


DEFAULT_LIMITS = LocateLimits()


@dataclass(frozen=True)
class PatternLocation:
    """Where one pattern sits."""

    key: str
    spread: str  # one of SPREADS
    zone: str | None = None  # "center" / "middle" / "edge"; None for whole-wafer patterns
    sectors: tuple[str, ...] = ()  # compass sectors (SECTORS), most failures first; () when none applies
    orientation: str | None = None  # scratch only: one of ORIENTATIONS, None when not measurable


@dataclass(frozen=True)
class _Group:
    size: int
    radius: float  # centroid distance from the wafer centre, fraction of the radius
    mean_radius: float  # mean distance of its cells from the wafer centre (≫ radius for an arc around the centre)
    sector: str
    sectors_covered: int
    edge_share: float  # fraction of the group's dies in the edge zone
    elongation: float
    orientation: str | None
    labels: np.ndarray  # the labelled grid the group is one label of
    label: int

    @property
    def mask(self) -> np.ndarray:
        """The group's cells."""
        return self.labels == self.label


def _orientation(axis_degrees: float) -> str:
    """Map an undirected axis angle (degrees counter-clockwise from east, in [0, 180)) to a word."""
    a = axis_degrees % 180.0
    if a < 22.5 or a >= 157.5:
        return "horizontal"
    if a < 67.5:
        return "rising"
    if a < 112.5:
        return "vertical"
    return "falling"


def _shapes(n: np.ndarray, sx: np.ndarray, sy: np.ndarray, sxx: np.ndarray, syy: np.ndarray,
            sxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(elongation, major-axis angle in degrees) of groups given their cell counts and sums of x, y,
    x², y², xy (x east, y up): the square root of the ratio of the principal variances of the cells
    (sample covariance), and the direction of the larger one, in closed form for a 2 × 2 matrix."""
    spare = np.maximum(n - 1, 1)
    var_x = (sxx - sx * sx / n) / spare
    var_y = (syy - sy * sy / n) / spare
    cov = (sxy - sx * sy / n) / spare
    half_sum, half_gap = (var_x + var_y) / 2, np.hypot((var_x - var_y) / 2, cov)
    major = np.maximum(half_sum + half_gap, 1e-6)
    minor = np.maximum(half_sum - half_gap, 1e-6)
    # rounded, so that groups of the same shape (mirror images) tie exactly and an axis at a boundary between
    # two orientations (22.5°, …) falls on the same side, whatever the float error
    return np.round(np.sqrt(major / minor), 9), np.round(np.degrees(0.5 * np.arctan2(2 * cov, var_x - var_y)), 9)


def _groups(wafer: WaferMap, mask: np.ndarray, min_size: int) -> list[_Group]:
    """Connected groups (8-neighbour) of `mask` cells with at least `min_size` cells, largest first.

    Every per-group figure comes from sums over the labelled cells in one pass (`np.bincount`): on a
    map with background noise there are hundreds of groups, most of them a few dies.
    """
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    kept = np.flatnonzero(sizes >= min_size)
    kept = kept[kept > 0]
    if not len(kept):
        return []
    r, theta = wafer.radial_position(), wafer.angle()
    cy, cx = wafer.center
    radius = max(math.sqrt(wafer.dies / math.pi), 0.5)
    rows, cols = np.nonzero(labels)
    of = labels[rows, cols]
    x, y = cols.astype(float), -rows.astype(float)  # map coordinates with y pointing up

    def total(weights: np.ndarray) -> np.ndarray:
        return np.bincount(of, weights=weights, minlength=count + 1)[kept]

    n = sizes[kept].astype(float)
    sx, sy = total(x), total(y)
    elongation, axis = _shapes(n, sx, sy, total(x * x), total(y * y), total(x * y))
    mean_radius = total(r[rows, cols]) / n
    edge_share = total(r[rows, cols] >= ZONE_EDGES["edge"][0]) / n
    sector_index = (((theta[rows, cols] + 22.5) % 360.0) // 45.0).astype(int)
    seen = np.bincount(of * len(SECTORS) + sector_index, minlength=(count + 1) * len(SECTORS))
    sectors_covered = np.count_nonzero(seen.reshape(count + 1, len(SECTORS))[kept], axis=1)
    groups = []
    for i, label in enumerate(kept):
        row, col = -sy[i] / n[i], sx[i] / n[i]
        ang = (math.degrees(math.atan2(col - cx, -(row - cy))) + 360.0) % 360.0
        shaped = n[i] >= 3
        groups.append(
            _Group(
                size=int(n[i]),
                radius=math.hypot(row - cy, col - cx) / radius,
                mean_radius=float(mean_radius[i]),
                sector=WaferMap.sector_of(ang),
                sectors_covered=int(sectors_covered[i]),
                edge_share=float(edge_share[i]),
                elongation=float(elongation[i]) if shaped else 1.0,
                orientation=_orientation(float(axis[i])) if shaped else None,
                labels=labels,
                label=int(label),
            )
        )
    return sorted(groups, key=lambda g: -g.size)


def _dense(fail: np.ndarray, limits: LocateLimits) -> np.ndarray:
    """Failing dies with at least `limits.dense_neighbours` failing neighbours: blobs without the noise."""
    counts = ndimage.convolve(fail.astype(np.int16), np.ones((3, 3), dtype=np.int16), mode="constant")
    return fail & (counts >= limits.dense_neighbours + 1)


def _edge_sectors(wafer: WaferMap, limits: LocateLimits) -> tuple[str, ...]:
    """The edge sector with the highest fail rate, plus a neighbour that comes close to it."""
    r, theta = wafer.radial_position(), wafer.angle()
    on_edge = (wafer.grid > OFF) & (r >= ZONE_EDGES["edge"][0])
    fail = wafer.grid == FAIL
    index = (((theta + 22.5) % 360.0) // 45.0).astype(int)
    rates = []
    for i in range(len(SECTORS)):
        dies = int((on_edge & (index == i)).sum())
        rates.append((on_edge & fail & (index == i)).sum() / dies if dies else 0.0)
    best = int(np.argmax(rates))
    if rates[best] == 0:
        return ()
    chosen = [best]
    left, right = (best - 1) % len(SECTORS), (best + 1) % len(SECTORS)
    neighbour = left if rates[left] >= rates[right] else right
    if rates[neighbour] >= limits.neighbour_share * rates[best]:
        chosen.append(neighbour)
    return tuple(SECTORS[i] for i in chosen)


def _sector_or_none(group: _Group, limits: LocateLimits) -> tuple[str, ...]:
    return () if group.radius < limits.centre_radius else (group.sector,)


def _scratch(wafer: WaferMap, limits: LocateLimits) -> _Group | None:
    """The most line-like group of failing dies, measured with round blobs taken out."""
    fail = wafer.grid == FAIL
    blobs = np.zeros_like(fail)
    for g in _groups(wafer, _dense(fail, limits), limits.min_blob):
        if g.elongation < limits.min_elongation:
            blobs |= g.mask
    if blobs.any():
        blobs = ndimage.binary_dilation(blobs, structure=np.ones((3, 3), dtype=bool))
    lines = [g for g in _groups(wafer, fail & ~blobs, limits.min_cluster) if g.elongation >= limits.min_elongation]
    if not lines:
        return None
    return max(lines, key=lambda g: g.size * min(g.elongation, 8.0))


def _ring_band(wafer: WaferMap, limits: LocateLimits) -> tuple[float, float]:
    """The radial band (fractions of the radius) of a donut ring: the bins around the fail-rate peak."""
    r = wafer.radial_position()
    on, fail = wafer.grid > OFF, wafer.grid == FAIL
    edges = np.arange(0.0, 1.0 + 1e-9, limits.ring_bin)
    rates = []
    for lo, hi in itertools.pairwise(edges):
        band = on & (r >= lo) & (r < hi)
        rates.append((band & fail).sum() / band.sum() if band.any() else 0.0)
    inner = [i for i, lo in enumerate(edges[:-1]) if 0.1 <= lo < ZONE_EDGES["edge"][0]]
    peak = max(inner, key=lambda i: rates[i])
    lo_i = hi_i = peak
    while lo_i - 1 >= 0 and rates[lo_i - 1] >= 0.5 * rates[peak]:
        lo_i -= 1
    while hi_i + 1 < len(rates) and rates[hi_i + 1] >= 0.5 * rates[peak]:
        hi_i += 1
    return float(edges[lo_i]), float(edges[hi_i + 1])


def _loc(wafer: WaferMap, keys: tuple[str, ...], limits: LocateLimits) -> _Group | None:
    """The largest compact blob that is not the centre blob, the donut ring or the edge failures."""
    r = wafer.radial_position()
    mask = _dense(wafer.grid == FAIL, limits)
    if "Center" in keys:
        mask &= r >= ZONE_EDGES["middle"][0]
    if "Donut" in keys:
        lo, hi = _ring_band(wafer, limits)
        mask &= (r < lo) | (r >= hi)
    edge_pattern = "Edge_Loc" in keys or "Edge_Ring" in keys
    for g in _groups(wafer, mask, limits.min_cluster):  # largest first
        if edge_pattern and g.edge_share >= limits.edge_share:
            continue
        if ("Donut" in keys or "Center" in keys) and (
            g.sectors_covered >= limits.ring_sectors or g.mean_radius - g.radius > limits.hollow
        ):
            continue  # a ring, or an arc around the centre: what is left of the donut or centre blob
        return g
    return None


def _zone_of(group: _Group) -> str:
    return WaferMap.zone_of(group.radius)


def locate(wafer: WaferMap, patterns: Iterable[str], limits: LocateLimits = DEFAULT_LIMITS) -> list[PatternLocation]:
    """One `PatternLocation` per pattern in `patterns` (column order); [] for a normal map."""
    keys = canonical_set(patterns)
    scratch = _scratch(wafer, limits) if "Scratch" in keys else None
    out = []
    for key in keys:
        if key == "Center":
            out.append(PatternLocation(key, "centred", "center"))
        elif key == "Donut":
            out.append(PatternLocation(key, "ring", "middle"))
        elif key == "Edge_Ring":
            out.append(PatternLocation(key, "all_around", "edge"))
        elif key == "Edge_Loc":
            out.append(PatternLocation(key, "edge_local", "edge", _edge_sectors(wafer, limits)))
        elif key == "Loc":
            group = _loc(wafer, keys, limits)
            if group is None:
                out.append(PatternLocation(key, "local"))  # not separable from the other failures
            else:
                out.append(PatternLocation(key, "local", _zone_of(group), _sector_or_none(group, limits)))
        elif key == "Scratch":
            if scratch is None:
                out.append(PatternLocation(key, "line"))
            else:
                out.append(
                    PatternLocation(key, "line", _zone_of(scratch), _sector_or_none(scratch, limits), scratch.orientation)
                )
        elif key == "Near_Full":
            out.append(PatternLocation(key, "whole"))
        elif key == "Random":
            out.append(PatternLocation(key, "scattered"))
    return out
