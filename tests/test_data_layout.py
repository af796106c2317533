"""Die layouts: the MixedWM38 52×52 layout (checked against real maps when present) and circular layouts."""

from __future__ import annotations

import numpy as np
import pytest

from data_tools.layout import (
    MIXEDWM38_DIES,
    LayoutError,
    circular_layout,
    layout_for,
    mixedwm38_layout,
    radial_map,
)
from data_tools.taxonomy import PATTERN_KEYS
from data_tools.wafer_map import WaferMap


def test_mixedwm38_layout_shape_and_die_count():
    mask = mixedwm38_layout()
    assert mask.shape == (52, 52) and mask.dtype == bool
    assert int(mask.sum()) == MIXEDWM38_DIES == 2061
    assert not mask[0].any() and not mask[:, 0].any()  # row 0 and column 0 are empty


def test_mixedwm38_layout_is_round_and_symmetric():
    mask = mixedwm38_layout()[1:, 1:]  # dies sit in rows/cols 1…51, centred on 26
    assert np.array_equal(mask, mask[::-1]) and np.array_equal(mask, mask[:, ::-1])
    assert np.array_equal(mask, mask.T)
    for row in mask:  # every row is one contiguous run
        cols = np.flatnonzero(row)
        assert cols.size and np.all(np.diff(cols) == 1)
    widths = mask.sum(axis=1)
    assert widths[25] == 51 and widths[0] == 11  # widest through the middle, narrow at the top


def test_mixedwm38_layout_is_a_fresh_copy():
    a = mixedwm38_layout()
    a[:] = False
    assert mixedwm38_layout().sum() == 2061


@pytest.fixture(scope="module")
def real_grids(real_mixedwm38):
    with np.load(real_mixedwm38) as archive:
        return archive["arr_0"], archive["arr_1"]


def test_layout_matches_real_mixedwm38(real_grids):
    grids, labels = real_grids
    on = grids > 0
    same = (on == mixedwm38_layout()).all(axis=(1, 2))
    near_full_or_random = (labels[:, PATTERN_KEYS.index("Near_Full")] == 1) | (
        labels[:, PATTERN_KEYS.index("Random")] == 1
    )
    scratch = labels[:, PATTERN_KEYS.index("Scratch")] == 1
    # every map except Near-full, Random and Scratch ones uses exactly this layout
    assert same[~near_full_or_random & ~scratch].all()
    # Near-full and Random maps were resampled from WM-811K and have other layouts
    assert not same[near_full_or_random].any()
    # Scratch maps share it too, except where the scratch ran past the wafer outline: there the
    # only difference is a few failing dies outside the layout
    odd = ~same & scratch
    extra = on[odd] & ~mixedwm38_layout()
    missing = ~on[odd] & mixedwm38_layout()
    assert not missing.any()
    assert (grids[odd][extra] == 2).all()
    assert extra.sum(axis=(1, 2)).max() <= 12


@pytest.mark.parametrize("rows,cols", [(26, 26), (25, 27), (40, 32), (52, 52), (101, 101)])
def test_circular_layout_sizes(rows, cols):
    mask = circular_layout(rows, cols)
    assert mask.shape == (rows, cols)
    area = np.pi * rows * cols / 4
    assert abs(mask.sum() - area) / area < 0.08
    assert np.array_equal(mask, mask[::-1]) and np.array_equal(mask, mask[:, ::-1])
    assert mask[rows // 2].all()  # the middle row spans the grid
    assert not mask[0, 0] and not mask[-1, -1]


def test_circular_layout_margin_shrinks_the_wafer():
    assert circular_layout(30, 30, margin=2).sum() < circular_layout(30, 30).sum()
    assert not circular_layout(30, 30, margin=2)[15, 0]


@pytest.mark.parametrize("args", [(2, 10), (10, 0), (10.5, 10)])
def test_circular_layout_refuses_bad_sizes(args):
    with pytest.raises(LayoutError, match="at least 3×3"):
        circular_layout(*args)


def test_circular_layout_refuses_a_margin_that_leaves_nothing():
    with pytest.raises(LayoutError, match="margin"):
        circular_layout(10, 10, margin=5)


def test_layout_for_picks_mixedwm38_for_52_by_52():
    assert np.array_equal(layout_for((52, 52)), mixedwm38_layout())
    assert np.array_equal(layout_for((30, 34)), circular_layout(30, 34))


def test_radial_map_agrees_with_wafer_map():
    mask = mixedwm38_layout()
    r, theta = radial_map(mask)
    wafer = WaferMap(mask.astype(np.uint8))
    assert np.allclose(r, wafer.radial_position())
    assert np.allclose(np.degrees(theta), wafer.angle())
    assert r[mask].max() == pytest.approx(1.0, abs=0.1)


def test_radial_map_refuses_an_empty_layout():
    with pytest.raises(LayoutError, match="at least one die"):
        radial_map(np.zeros((5, 5), dtype=bool))
