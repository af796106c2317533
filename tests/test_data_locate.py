"""Where patterns sit, measured from hand-made die grids (with and without background noise)."""

from __future__ import annotations

import numpy as np
import pytest

from data_tools.locate import PatternLocation, locate
from data_tools.wafer_map import FAIL, GOOD, WaferMap

SIZE, RADIUS = 52, 25.0


def disc() -> np.ndarray:
    rows, cols = np.indices((SIZE, SIZE))
    r = np.hypot(rows - 25.5, cols - 25.5)
    return np.where(r <= RADIUS, GOOD, 0).astype(np.uint8)


def polar_mask(r_lo: float, r_hi: float, a_lo: float = 0.0, a_hi: float = 360.0) -> np.ndarray:
    """Cells between radius fractions r_lo..r_hi and angles a_lo..a_hi (degrees clockwise from the top)."""
    rows, cols = np.indices((SIZE, SIZE))
    r = np.hypot(rows - 25.5, cols - 25.5) / RADIUS
    a = (np.degrees(np.arctan2(cols - 25.5, -(rows - 25.5))) + 360) % 360
    inside = (a >= a_lo) & (a < a_hi) if a_lo <= a_hi else (a >= a_lo) | (a < a_hi)
    return (r >= r_lo) & (r < r_hi) & inside


def with_noise(grid: np.ndarray, rate: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = grid.copy()
    out[(grid == GOOD) & (rng.random(grid.shape) < rate)] = FAIL
    return out


def fail(grid: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = grid.copy()
    out[mask & (grid > 0)] = FAIL
    return out


def line(grid: np.ndarray, r0: int, c0: int, r1: int, c1: int) -> np.ndarray:
    out = grid.copy()
    for t in np.linspace(0.0, 1.0, 60):
        out[round(r0 + t * (r1 - r0)), round(c0 + t * (c1 - c0))] = FAIL
    return out


def blob(grid: np.ndarray, row: int, col: int, radius: float) -> np.ndarray:
    rows, cols = np.indices(grid.shape)
    return fail(grid, np.hypot(rows - row, cols - col) <= radius)


def only(locations: list[PatternLocation], key: str) -> PatternLocation:
    (loc,) = [x for x in locations if x.key == key]
    return loc


@pytest.mark.parametrize("noise", [0.0, 0.12])
def test_edge_loc_sector_is_where_the_edge_failures_concentrate(noise):
    grid = with_noise(fail(disc(), polar_mask(0.8, 1.1, 80, 100)), noise)  # right-hand edge
    loc = only(locate(WaferMap(grid), ["Edge_Loc"]), "Edge_Loc")
    assert loc.spread == "edge_local" and loc.zone == "edge"
    assert loc.sectors[0] == "E"


@pytest.mark.parametrize("noise", [0.0, 0.12])
def test_loc_is_the_largest_blob_away_from_centre_and_edge(noise):
    grid = with_noise(blob(disc(), 13, 14, 4), noise)  # upper left, mid radius
    loc = only(locate(WaferMap(grid), ["Loc"]), "Loc")
    assert (loc.spread, loc.zone, loc.sectors) == ("local", "middle", ("NW",))


def test_loc_is_told_apart_from_a_touching_centre_blob():
    grid = blob(disc(), 25, 25, 8)  # centre
    grid = blob(grid, 25, 38, 4.5)  # touching it, on the right
    locations = locate(WaferMap(with_noise(grid, 0.1, seed=3)), ["Center", "Loc"])
    assert only(locations, "Center").zone == "center"
    assert only(locations, "Loc").sectors == ("E",)


def test_loc_ignores_edge_failures_when_an_edge_pattern_is_present():
    grid = fail(disc(), polar_mask(0.8, 1.1))  # full edge ring, far bigger than the blob
    grid = blob(grid, 36, 36, 3.5)  # lower right
    loc = only(locate(WaferMap(grid), ["Edge_Ring", "Loc"]), "Loc")
    assert loc.sectors == ("SE",)


def test_loc_touching_a_donut_ring_is_found_outside_the_ring():
    grid = fail(disc(), polar_mask(0.35, 0.55))  # the ring
    grid = blob(grid, 25, 6, 4.5)  # left, touching the ring from outside
    locations = locate(WaferMap(with_noise(grid, 0.08, seed=4)), ["Donut", "Loc"])
    assert only(locations, "Loc").sectors == ("W",)
    assert only(locations, "Donut").zone == "middle"


def test_an_arc_left_of_the_centre_blob_is_not_taken_for_loc():
    grid = blob(disc(), 25, 25, 12)  # centre blob reaching past the centre zone: leaves a hollow rim
    grid = blob(grid, 40, 14, 3.5)  # lower left
    loc = only(locate(WaferMap(grid), ["Center", "Loc"]), "Loc")
    assert loc.sectors == ("SW",)


@pytest.mark.parametrize(
    ("ends", "orientation"),
    [
        ((30, 8, 30, 30), "horizontal"),
        ((8, 20, 30, 20), "vertical"),
        ((35, 10, 15, 30), "rising"),
        ((12, 12, 32, 32), "falling"),
    ],
)
def test_scratch_orientation(ends, orientation):
    grid = with_noise(line(disc(), *ends), 0.1, seed=1)
    loc = only(locate(WaferMap(grid), ["Scratch"]), "Scratch")
    assert loc.spread == "line" and loc.orientation == orientation


def test_scratch_is_found_next_to_a_centre_blob():
    grid = blob(disc(), 25, 25, 7)
    grid = line(grid, 36, 6, 44, 30)  # lower part, nearly horizontal
    loc = only(locate(WaferMap(with_noise(grid, 0.08, seed=2)), ["Center", "Scratch"]), "Scratch")
    assert loc.orientation in ("horizontal", "rising") and loc.sectors and loc.sectors[0] in ("S", "SW")


def test_whole_wafer_and_radial_patterns_and_normal():
    wafer = WaferMap(with_noise(disc(), 0.2))
    spreads = {x.key: (x.spread, x.zone) for x in locate(wafer, ["Center", "Edge_Ring"])}
    assert spreads == {"Center": ("centred", "center"), "Edge_Ring": ("all_around", "edge")}
    assert locate(wafer, ["Near_Full"])[0].spread == "whole"
    assert locate(wafer, ["Random"])[0].spread == "scattered"
    assert locate(wafer, ["Donut"])[0].zone == "middle"
    assert locate(wafer, []) == []


def test_missing_shapes_fall_back_without_crashing():
    wafer = WaferMap(disc())  # nothing fails
    loc = only(locate(wafer, ["Scratch", "Loc"]), "Scratch")
    assert loc.orientation is None
    fallback = only(locate(wafer, ["Loc"]), "Loc")
    assert fallback.sectors == () and fallback.zone is None
    assert only(locate(wafer, ["Edge_Loc"]), "Edge_Loc").sectors == ()


def test_group_shapes_agree_with_the_principal_axes_of_their_cells():
    """`_groups` measures every group from sums in one pass; each group's elongation and orientation
    are those of its cells' covariance matrix, as an eigen-decomposition gives them."""
    from data_tools.locate import _groups, _orientation

    wafer = WaferMap(with_noise(disc(), 0.25, seed=5))
    groups = _groups(wafer, wafer.grid == FAIL, 3)
    assert len(groups) > 10
    for group in groups:
        rows, cols = np.nonzero(group.mask)
        assert group.size == rows.size
        values, vectors = np.linalg.eigh(np.cov(np.stack([cols - cols.mean(), -(rows - rows.mean())])))
        minor, major = max(values[0], 1e-6), max(values[1], 1e-6)
        assert group.elongation == pytest.approx(np.sqrt(major / minor), rel=1e-6)
        if major / minor > 1.01:  # a round group has no axis to compare
            angle = np.degrees(np.arctan2(vectors[1, 1], vectors[0, 1]))
            assert group.orientation == _orientation(angle)
