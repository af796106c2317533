"""The wafer map type: a die grid (off wafer / good / failing) and the facts measured from it.

A `WaferMap` wraps an (H, W) uint8 grid using the MixedWM38 codes
(0 = off wafer, 1 = good die, 2 = failing die) and measures what a process engineer
reads off a map: die count, failing dies, yield, which radial zone (centre / middle /
edge), which angular sector and quadrant the failures sit in, and the clusters they form.
The measured facts are what answers quote as numbers, so they live in one place.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from scipy import ndimage

OFF, GOOD, FAIL = 0, 1, 2

#: Radial zone boundaries, as fractions of the wafer radius.
ZONE_EDGES = {"center": (0.0, 0.4), "middle": (0.4, 0.8), "edge": (0.8, math.inf)}
#: Compass sectors, clockwise from "north" (the top of the map), 45° each.
SECTORS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
#: Quadrants, clockwise from the top right, 90° each (NE = upper right, SE = lower right, …).
QUADRANTS = ("NE", "SE", "SW", "NW")
SECTOR_WORDS = {
    "N": "top", "NE": "upper right", "E": "right", "SE": "lower right",
    "S": "bottom", "SW": "lower left", "W": "left", "NW": "upper left",
}
SECTOR_WORDS_ZH = {
    "N": "上方", "NE": "右上", "E": "右侧", "SE": "右下",
    "S": "下方", "SW": "左下", "W": "左侧", "NW": "左上",
}
ZONE_WORDS_ZH = {"center": "中心区", "middle": "中间区", "edge": "边缘区"}


class WaferMapError(ValueError):
    """A grid that is not a usable wafer map."""


@dataclass(frozen=True)
class Cluster:
    """A connected group (8-neighbour) of failing dies."""

    size: int
    row: float  # centroid, grid coordinates
    col: float
    radius: float  # centroid distance from wafer centre, fraction of wafer radius
    zone: str
    sector: str


@dataclass(frozen=True)
class ZoneCount:
    dies: int
    failing: int

    @property
    def fail_rate(self) -> float:
        return self.failing / self.dies if self.dies else 0.0


@dataclass(frozen=True)
class WaferMap:
    """A die grid with codes 0 (off wafer), 1 (good) and 2 (failing)."""

    grid: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        grid = np.asarray(self.grid)
        if grid.ndim != 2:
            raise WaferMapError(f"a wafer map is a 2-D die grid; got an array of shape {grid.shape}")
        if grid.size == 0:
            raise WaferMapError("a wafer map needs at least one die; got an empty grid")
        values = np.unique(grid)
        if not np.isin(values, (OFF, GOOD, FAIL)).all():
            raise WaferMapError(
                "die codes must be 0 (off wafer), 1 (good) or 2 (failing); "
                f"found {sorted(int(v) for v in values)}"
            )
        if not (grid > OFF).any():
            raise WaferMapError("the grid has no dies on the wafer (every cell is 0)")
        grid = grid.astype(np.uint8, copy=True)
        grid.setflags(write=False)
        object.__setattr__(self, "grid", grid)

    # ------------------------------------------------------------ basics
    @property
    def shape(self) -> tuple[int, int]:
        return self.grid.shape  # type: ignore[return-value]

    @cached_property
    def dies(self) -> int:
        return int((self.grid > OFF).sum())

    @cached_property
    def failing(self) -> int:
        return int((self.grid == FAIL).sum())

    @property
    def good(self) -> int:
        return self.dies - self.failing

    @property
    def yield_fraction(self) -> float:
        """Good dies / dies, in [0, 1]."""
        return self.good / self.dies

    @property
    def yield_percent(self) -> float:
        return 100.0 * self.yield_fraction

    @cached_property
    def content_hash(self) -> str:
        """Stable hash of the grid's content (shape and codes): exact duplicates share it."""
        h = hashlib.sha256()
        h.update(np.asarray(self.shape, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(self.grid).tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------ geometry
    @cached_property
    def _geometry(self) -> tuple[np.ndarray, np.ndarray, float, float, float]:
        rows, cols = np.indices(self.shape, dtype=np.float64)
        on = self.grid > OFF
        cy, cx = rows[on].mean(), cols[on].mean()
        radius = max(math.sqrt(self.dies / math.pi), 0.5)
        r = np.hypot(rows - cy, cols - cx) / radius
        # angle clockwise from north (up), degrees in [0, 360)
        theta = (np.degrees(np.arctan2(cols - cx, -(rows - cy))) + 360.0) % 360.0
        return r, theta, float(cy), float(cx), radius

    @property
    def center(self) -> tuple[float, float]:
        _, _, cy, cx, _ = self._geometry
        return cy, cx

    def radial_position(self) -> np.ndarray:
        """Distance of each cell from the wafer centre, as a fraction of the wafer radius."""
        return self._geometry[0]

    def angle(self) -> np.ndarray:
        """Angle of each cell, degrees clockwise from the top of the map."""
        return self._geometry[1]

    @staticmethod
    def zone_of(radius_fraction: float) -> str:
        for name, (lo, hi) in ZONE_EDGES.items():
            if lo <= radius_fraction < hi:
                return name
        return "edge"

    @staticmethod
    def sector_of(angle_degrees: float) -> str:
        return SECTORS[int(((angle_degrees + 22.5) % 360.0) // 45.0)]

    # ------------------------------------------------------------ where failures sit
    @cached_property
    def zones(self) -> dict[str, ZoneCount]:
        r = self.radial_position()
        on, fail = self.grid > OFF, self.grid == FAIL
        out = {}
        for name, (lo, hi) in ZONE_EDGES.items():
            band = (r >= lo) & (r < hi)
            out[name] = ZoneCount(int((band & on).sum()), int((band & fail).sum()))
        return out

    @cached_property
    def sectors(self) -> dict[str, ZoneCount]:
        theta = self.angle()
        index = (((theta + 22.5) % 360.0) // 45.0).astype(int)
        on, fail = self.grid > OFF, self.grid == FAIL
        return {
            name: ZoneCount(int((on & (index == i)).sum()), int((fail & (index == i)).sum()))
            for i, name in enumerate(SECTORS)
        }

    @cached_property
    def quadrants(self) -> dict[str, ZoneCount]:
        """Dies and failing dies per quadrant around the wafer centre: NE (upper right), SE, SW, NW.

        Quadrant boundaries are the vertical and horizontal lines through the centre; a cell on a
        boundary goes to the quadrant clockwise of it (the top centre line to NE).
        """
        index = (self.angle() // 90.0).astype(int) % 4
        on, fail = self.grid > OFF, self.grid == FAIL
        return {
            name: ZoneCount(int((on & (index == i)).sum()), int((fail & (index == i)).sum()))
            for i, name in enumerate(QUADRANTS)
        }

    @cached_property
    def clusters(self) -> tuple[Cluster, ...]:
        """Connected groups of failing dies, largest first."""
        labels, count = ndimage.label(self.grid == FAIL, structure=np.ones((3, 3), dtype=int))
        if count == 0:
            return ()
        sizes = np.bincount(labels.ravel())[1:]
        centroids = ndimage.center_of_mass(np.ones_like(labels), labels, range(1, count + 1))
        _, _, cy, cx, radius = self._geometry
        found = []
        for size, (row, col) in zip(sizes, centroids):
            rf = math.hypot(row - cy, col - cx) / radius
            theta = (math.degrees(math.atan2(col - cx, -(row - cy))) + 360.0) % 360.0
            found.append(Cluster(int(size), float(row), float(col), rf, self.zone_of(rf), self.sector_of(theta)))
        return tuple(sorted(found, key=lambda c: (-c.size, c.row, c.col)))

    def dominant_zone(self) -> str | None:
        """The radial zone with the highest failure rate (None when nothing fails)."""
        if not self.failing:
            return None
        return max(self.zones, key=lambda z: self.zones[z].fail_rate)

    def dominant_sectors(self, share: float = 0.2) -> list[str]:
        """Sectors holding at least `share` of the failing dies, most first."""
        if not self.failing:
            return []
        ranked = sorted(self.sectors.items(), key=lambda kv: -kv[1].failing)
        return [name for name, zc in ranked if zc.failing / self.failing >= share]

    def facts(self) -> dict:
        """JSON-ready measured facts: counts, yield, zones, sectors and clusters."""
        clusters = self.clusters
        largest = clusters[0] if clusters else None
        return {
            "rows": self.shape[0],
            "cols": self.shape[1],
            "dies": self.dies,
            "failing": self.failing,
            "good": self.good,
            "yield": round(self.yield_percent, 2),
            "zones": {
                name: {"dies": z.dies, "failing": z.failing, "fail_rate": round(z.fail_rate, 4)}
                for name, z in self.zones.items()
            },
            "sectors": {name: z.failing for name, z in self.sectors.items()},
            "dominant_zone": self.dominant_zone(),
            "dominant_sectors": self.dominant_sectors(),
            "clusters": {
                "count": len(clusters),
                "sizes": [c.size for c in clusters[:10]],
                "largest": None
                if largest is None
                else {
                    "size": largest.size,
                    "zone": largest.zone,
                    "sector": largest.sector,
                    "row": round(largest.row, 1),
                    "col": round(largest.col, 1),
                },
            },
        }

    # ------------------------------------------------------------ transforms
    def transformed(self, k_rot90: int = 0, flip: bool = False) -> WaferMap:
        """The map rotated by k×90° (counter-clockwise) and optionally mirrored left-right."""
        grid = np.rot90(self.grid, k_rot90)
        if flip:
            grid = np.fliplr(grid)
        return WaferMap(np.ascontiguousarray(grid))

    def to_list(self) -> list[list[int]]:
        return self.grid.astype(int).tolist()

    @classmethod
    def from_list(cls, rows: list[list[int]]) -> WaferMap:
        try:
            grid = np.asarray(rows, dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise WaferMapError(f"a wafer map grid is a list of equal-length rows of 0/1/2: {exc}") from exc
        return cls(grid)
