"""Background noise: the share of dies failing at random under the patterns, and a map with it raised.

Every defective MixedWM38 map carries about a fifth of its dies failing at random (19.1–19.9 %), its
Normal maps 1–14.5 %, so a model trained on them reads a clean map with a pattern as it never saw one
(v13 called most of them normal: model card, Known limitations). `background_rate` measures the
level on any map; `with_background` raises it to the training maps' level by failing good dies at
random, which leaves the patterns where they are. `finetune.generation` shows a model the raised map
when its config asks for it (`finetune.background_match`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from data_tools.wafer_map import FAIL, GOOD, OFF, WaferMap

#: A cluster of failing dies larger than random failures make holds at least this many dies and at least
#: this share of the wafer's dies. Random failures alone (1–14.5 % of the dies on MixedWM38's Normal
#: maps) leave clusters of at most 18 of their 2,032 dies (the 855 Normal maps of `../shared/data`,
#: `benchmarks/noise_robustness.py --mixedwm38`); a defect pattern without random failures mostly
#: leaves one of 30 or more, a lone Scratch (14 or more) excepted.
LARGE_CLUSTER_MIN_DIES = 20
LARGE_CLUSTER_MIN_SHARE = 0.015
#: Side of the square blocks of dies whose failing shares the background is the median of.
BLOCK_DIES = 6
#: Blocks with fewer dies on the wafer than this (at the rim) are left out of the median.
MIN_BLOCK_DIES = 18


#: A map looks clean, without random failures (`looks_clean`), when under this share of its dies fail with
#: no failing neighbour (random failures at 2 % of the dies leave about 1.3 %; clean synthetic maps with a
#: pattern at most 0.43 %, a scratch's broken dots) ...
CLEAN_ISOLATED_MAX_SHARE = 0.005
#: ... and the dies farther than `CLUSTER_MARGIN` dies from every large cluster make at least this share of
#: the wafer ...
CLEAN_AWAY_MIN_SHARE = 0.1
#: ... and under this share of them fail. None of the 31,319 MixedWM38 maps with a pattern in
#: `../shared/data` nor its 855 Normal maps passes all three (at 0.05 one Random map did, whose failures come
#: in clumps, and shown raised it was read as Near-full).
CLEAN_AWAY_MAX_RATE = 0.02
CLUSTER_MARGIN = 2
_EIGHT = np.ones((3, 3), dtype=bool)


def background_rate(wafer: WaferMap) -> float:
    """The share of dies failing at random on `wafer`: the median failing share of its blocks of
    `BLOCK_DIES` × `BLOCK_DIES` dies. Patterns cover a minority of the blocks on most maps, so the
    median is about the level between them (a little above: MixedWM38's maps with a pattern, at 19.1–19.9 %
    noise, measure 0.111 to 0.5, half of them over 0.25); on a map whose patterns cover most of it (three or
    four patterns, Near-full) it is high whatever the noise. So a map that looks clean (`looks_clean`)
    measures the failing share of its dies away from the clusters instead, when that is lower."""
    median = _block_median(wafer)
    away = _away_from_clusters(wafer)
    if away is not None and median > away[1] and looks_clean(wafer, away):
        return away[1]
    return median


def looks_clean(wafer: WaferMap, away: tuple[float, float] | None = None) -> bool:
    """Whether `wafer` carries no random failures: hardly a failing die without a failing neighbour, and a
    part of the wafer away from its large clusters (`CLUSTER_MARGIN`) that is large and hardly failing (the
    thresholds above). Random failures even at 2 % of the dies leave many lone failing dies."""
    away = _away_from_clusters(wafer) if away is None else away
    if away is None or away[0] < CLEAN_AWAY_MIN_SHARE or away[1] >= CLEAN_AWAY_MAX_RATE:
        return False
    failing = wafer.grid == FAIL
    neighbours = ndimage.convolve(failing.astype(np.int16), _EIGHT.astype(np.int16), mode="constant") - failing
    return int((failing & (neighbours == 0)).sum()) < CLEAN_ISOLATED_MAX_SHARE * wafer.dies


def _away_from_clusters(wafer: WaferMap) -> tuple[float, float] | None:
    """(share of the wafer's dies, failing share among them) for the dies farther than `CLUSTER_MARGIN`
    dies from every cluster of failing dies that random failures do not make (`has_large_cluster`);
    None when no die is that far."""
    grid = wafer.grid
    on = grid != OFF
    labels, _count = ndimage.label(grid == FAIL, structure=_EIGHT)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    large = np.flatnonzero(sizes >= large_cluster_min_dies(wafer.dies))
    near = ndimage.binary_dilation(np.isin(labels, large), structure=_EIGHT, iterations=CLUSTER_MARGIN)
    away = on & ~near
    dies = int(away.sum())
    if dies == 0:
        return None
    return dies / wafer.dies, int((away & (grid == FAIL)).sum()) / dies


def _block_median(wafer: WaferMap) -> float:
    grid = wafer.grid
    rows, cols = grid.shape
    shares = []
    for top in range(0, rows, BLOCK_DIES):
        for left in range(0, cols, BLOCK_DIES):
            block = grid[top : top + BLOCK_DIES, left : left + BLOCK_DIES]
            dies = int((block != OFF).sum())
            if dies >= MIN_BLOCK_DIES:
                shares.append(int((block == FAIL).sum()) / dies)
    if not shares:  # a map too small for one whole block: the wafer's own failing share
        return wafer.failing / wafer.dies
    return float(np.median(shares))


def has_large_cluster(facts: dict) -> bool:
    """Whether the largest cluster of failing dies in `facts` (`WaferMap.facts()`) is larger than random
    failures make: a pattern is there, whatever the model read."""
    largest = (facts.get("clusters") or {}).get("largest")
    return largest is not None and largest["size"] >= large_cluster_min_dies(facts["dies"])


def large_cluster_min_dies(dies: int) -> float:
    """The fewest dies a cluster larger than random failures make holds, on a wafer of `dies` dies."""
    return max(LARGE_CLUSTER_MIN_DIES, LARGE_CLUSTER_MIN_SHARE * dies)


def with_background(wafer: WaferMap, level: float, now: float | None = None) -> WaferMap:
    """`wafer` with good dies failed at random until about `level` of the dies fail at random, the
    same dies for the same map (the draw is seeded by its content); `wafer` itself when its
    background is already at `level` or above. `now` is its `background_rate` when the caller has
    measured it already."""
    if not 0.0 <= level < 1.0:
        raise ValueError(f"a background level is a share of dies in [0, 1), got {level!r}")
    now = background_rate(wafer) if now is None else now
    if now >= level:
        return wafer
    share = (level - now) / (1.0 - now)
    rng = np.random.default_rng(int(wafer.content_hash[:16], 16))
    grid = wafer.grid.copy()
    grid[(grid == GOOD) & (rng.random(grid.shape) < share)] = FAIL
    return WaferMap(grid)
