"""WaferMap: validation and the facts measured from a die grid."""

from __future__ import annotations

import numpy as np
import pytest

from data_tools.wafer_map import FAIL, GOOD, OFF, WaferMap, WaferMapError


def disc(size: int = 41) -> np.ndarray:
    rows, cols = np.indices((size, size))
    c = (size - 1) / 2
    return np.where(np.hypot(rows - c, cols - c) <= size / 2 - 0.5, GOOD, OFF).astype(np.uint8)


def test_counts_and_yield():
    grid = disc()
    grid[20, 20] = FAIL
    grid[20, 21] = FAIL
    w = WaferMap(grid)
    assert w.dies == int((grid > 0).sum())
    assert w.failing == 2
    assert w.good == w.dies - 2
    assert w.yield_percent == pytest.approx(100 * (w.dies - 2) / w.dies)


def test_center_failures_sit_in_center_zone():
    grid = disc()
    grid[18:23, 18:23] = FAIL
    w = WaferMap(grid)
    assert w.zones["center"].failing == 25
    assert w.zones["edge"].failing == 0
    assert w.dominant_zone() == "center"
    assert len(w.clusters) == 1 and w.clusters[0].size == 25 and w.clusters[0].zone == "center"


def test_edge_cluster_sector_follows_compass():
    grid = disc()
    on = grid > 0
    rows, cols = np.indices(grid.shape)
    # failing dies on the right-hand rim (east)
    rim = on & (np.hypot(rows - 20, cols - 20) > 17) & (cols > 30) & (abs(rows - 20) < 5)
    grid[rim] = FAIL
    w = WaferMap(grid)
    assert w.clusters[0].zone == "edge"
    assert w.clusters[0].sector == "E"
    assert w.dominant_sectors() == ["E"]
    facts = w.facts()
    assert facts["failing"] == int(rim.sum()) and facts["clusters"]["largest"]["sector"] == "E"


def test_transforms_keep_counts_and_move_clusters():
    grid = disc()
    grid[2:5, 18:23] = FAIL  # top (north) rim
    w = WaferMap(grid)
    assert w.clusters[0].sector == "N"
    rotated = w.transformed(k_rot90=1)  # counter-clockwise: north → west
    assert rotated.failing == w.failing and rotated.dies == w.dies
    assert rotated.clusters[0].sector == "W"


def test_content_hash_identifies_duplicates():
    a = WaferMap(disc())
    b = WaferMap(disc())
    g = disc()
    g[20, 20] = FAIL
    assert a.content_hash == b.content_hash
    assert WaferMap(g).content_hash != a.content_hash


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (np.zeros((3, 3, 3)), "2-D die grid"),
        (np.full((4, 4), 7), "die codes must be 0"),
        (np.zeros((5, 5)), "no dies"),
        (np.zeros((0, 0)), "at least one die"),
    ],
)
def test_bad_grids_are_refused(grid, message):
    with pytest.raises(WaferMapError, match=message):
        WaferMap(grid)


def test_list_round_trip_and_bad_rows():
    w = WaferMap(disc(9))
    assert WaferMap.from_list(w.to_list()).content_hash == w.content_hash
    with pytest.raises(WaferMapError, match="equal-length rows"):
        WaferMap.from_list([[1, 1], [1]])


def test_real_maps_share_the_mixedwm38_layout(real_mixedwm38):
    data = np.load(real_mixedwm38)
    w = WaferMap(data["arr_0"][0])
    assert w.dies == 2061


def test_quadrants_split_dies_and_failures_around_the_centre():
    grid = disc()
    grid[5:9, 28:32] = FAIL  # upper right
    grid[30:33, 8:10] = FAIL  # lower left
    w = WaferMap(grid)
    quadrants = w.quadrants
    assert list(quadrants) == ["NE", "SE", "SW", "NW"]
    assert sum(q.dies for q in quadrants.values()) == w.dies
    assert {name: q.failing for name, q in quadrants.items()} == {"NE": 16, "SE": 0, "SW": 6, "NW": 0}
    # a round wafer: the quadrants hold about a quarter of the dies each
    assert all(abs(q.dies - w.dies / 4) <= 0.03 * w.dies for q in quadrants.values())
    assert w.transformed(k_rot90=1).quadrants["NW"].failing == 16  # NE turns to NW counter-clockwise


def test_clusters_are_separate_and_sized_largest_first():
    grid = disc()
    grid[18:21, 18:21] = FAIL  # 9 dies in the centre
    grid[5, 15:20] = FAIL  # a 5-die line near the top
    grid[30, 30] = FAIL  # a single die
    grid[31, 31] = FAIL  # diagonal neighbour: joins it (8-connectivity)
    w = WaferMap(grid)
    assert [c.size for c in w.clusters] == [9, 5, 2]
    assert w.facts()["clusters"]["sizes"] == [9, 5, 2] and w.facts()["clusters"]["count"] == 3
    assert w.clusters[0].zone == "center" and w.clusters[1].sector == "N"
