"""Synthetic wafer maps: every class, seeded, parametric, on MixedWM38 and other grids, like the real data."""

from __future__ import annotations

import numpy as np
import pytest

from data_tools import taxonomy
from data_tools.layout import circular_layout, mixedwm38_layout
from data_tools.loaders import load_mixedwm38
from data_tools.stats import dataset_stats
from data_tools.synthetic import (
    PARAM_RANGES,
    SyntheticError,
    generate,
    generate_dataset,
    generate_grid,
    parse_param,
)
from data_tools.wafer_map import WaferMap

LAYOUT = mixedwm38_layout()


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name", taxonomy.CLASS_NAMES)
def test_every_class_on_the_mixedwm38_layout(name):
    rng = _rng(7)
    for _ in range(3):
        wafer = generate(name, rng)
        assert isinstance(wafer, WaferMap) and wafer.shape == (52, 52)
        on = wafer.grid > 0
        keys = taxonomy.parse_class_name(name).patterns
        if "Near_Full" in keys or "Random" in keys:
            assert 1900 < wafer.dies < 2300  # their own, coarser round layout
        elif "Scratch" in keys:
            assert (on | ~LAYOUT).all()  # the layout, plus at most a scratch running past the outline
            assert (wafer.grid[on & ~LAYOUT] == 2).all()
        else:
            assert np.array_equal(on, LAYOUT)
        assert wafer.failing > 0


@pytest.mark.parametrize("shape", [(26, 26), (30, 44), (71, 64)])
def test_other_grid_sizes_use_a_round_layout(shape):
    rng = _rng(1)
    for name in ("Normal", "Center+Edge_Ring+Loc+Scratch", "Donut+Edge_Loc", "Near_Full", "Random"):
        grid = generate_grid(name, rng, shape)
        assert grid.shape == shape
        if name not in ("Near_Full", "Random"):
            assert np.array_equal(grid > 0, circular_layout(*shape))  # no overflow off the 52×52 layout


def test_generate_dataset_is_seeded_and_labelled():
    a = generate_dataset(2, seed=5)
    b = generate_dataset(2, seed=5)
    c = generate_dataset(2, seed=6)
    assert len(a) == 76 and a.grids.dtype == np.uint8 and a.shape == (52, 52)
    assert np.array_equal(a.grids, b.grids) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.grids, c.grids)
    assert a.class_names() == [n for n in taxonomy.CLASS_NAMES for _ in range(2)]
    assert all(taxonomy.is_valid_combination(taxonomy.from_multi_hot(row)) for row in a.labels)
    assert a.index.tolist() == list(range(76)) and a.source == "synthetic(seed=5)"


def test_a_class_does_not_depend_on_which_others_are_made():
    full = generate_dataset(3, seed=2)
    only = generate_dataset(3, seed=2, classes=("Donut+Scratch", "Loc"))
    names = np.asarray(full.class_names())
    assert np.array_equal(only.grids[:3], full.grids[names == "Donut+Scratch"])
    assert np.array_equal(only.grids[3:], full.grids[names == "Loc"])


def test_progress_is_reported_for_every_map():
    seen = []
    generate_dataset(150, seed=0, classes=("Normal", "Center"), progress=seen.append)
    assert sum(seen) == 300 and max(seen) <= 100


def test_fixed_parameters_take_effect():
    quiet = {"noise": 0.0, "density": 1.0, "scratch_density": 1.0}
    assert generate("Normal", _rng(), normal_noise=0.0).failing == 0
    small = generate("Center", _rng(), center_radius=0.15, center_offset=0.0, **quiet)
    large = generate("Center", _rng(), center_radius=0.35, center_offset=0.0, **quiet)
    assert 0 < small.failing < large.failing
    assert large.zones["center"].fail_rate > 0.6 and large.zones["edge"].failing == 0

    east = generate("Edge_Loc", _rng(), edge_loc_angle=90, edge_loc_arc=60, **quiet)
    assert east.dominant_sectors(share=0.5) == ["E"]
    assert east.zones["center"].failing == 0 and east.zones["middle"].failing == 0

    ring = generate("Edge_Ring", _rng(), **quiet)
    assert ring.zones["edge"].fail_rate > 0.3 and ring.zones["center"].failing == ring.zones["middle"].failing == 0
    assert {s for s, z in ring.sectors.items() if z.failing} == set(ring.sectors)  # all the way round

    donut = generate("Donut", _rng(), donut_inner=0.25, donut_width=0.25, donut_arc=360, **quiet)
    r = donut.radial_position()
    assert donut.grid[r < 0.15].max() == 1  # good centre
    assert (donut.grid[(r > 0.33) & (r < 0.42)] == 2).all()

    loc = generate("Loc", _rng(), loc_distance=0.6, loc_angle=180, loc_radius=0.15, **quiet)
    assert loc.dominant_sectors(share=0.5) == ["S"] and len(loc.clusters) == 1

    scratch = generate("Scratch", _rng(), scratch_width=1.2, scratch_length=0.8, scratch_start=0.2,
                       scratch_curvature=0.0, **quiet)
    assert len(scratch.clusters) == 1
    assert 15 <= scratch.failing <= 60  # a thin line: about its length in dies, one or two wide

    assert generate("Near_Full", _rng(), near_full_density=0.9).yield_fraction < 0.2
    assert 0.35 < generate("Random", _rng(), random_density=0.5).yield_fraction < 0.65


def test_dataset_parameters_fix_or_draw_from_a_range_for_every_map():
    clean = generate_dataset(3, seed=1, classes=("Normal", "Center"),
                             params={"noise": 0.0, "normal_noise": 0.0, "density": 1.0})
    assert (clean.grids[:3] != 2).all()  # Normal maps without background noise
    for grid in clean.grids[3:]:  # a Center blob alone
        wafer = WaferMap(grid)
        assert len(wafer.clusters) == 1 and wafer.zones["edge"].failing == 0
    drawn = generate_dataset(20, seed=1, classes=("Normal",), params={"normal_noise": (0.3, 0.4)})
    rates = [WaferMap(g).failing / WaferMap(g).dies for g in drawn.grids]
    assert all(0.29 <= r <= 0.41 for r in rates) and max(rates) - min(rates) > 0.02  # drawn, not fixed


@pytest.mark.parametrize(("text", "expected"), [
    ("noise=0.05", ("noise", 0.05)),
    ("noise=0:0.2", ("noise", (0.0, 0.2))),
    (" density = 1 ", ("density", 1.0)),
])
def test_command_line_parameters_are_parsed(text, expected):
    assert parse_param(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("noise", "NAME=VALUE or NAME=LOW:HIGH"),
    ("=1", "NAME=VALUE or NAME=LOW:HIGH"),
    ("noise=a:b", "NAME=VALUE or NAME=LOW:HIGH"),
    ("nois=1", "unknown generator parameter"),
    ("noise=0.3:0.1", "low ≤ high"),
])
def test_bad_command_line_parameters_are_refused(text, message):
    with pytest.raises(SyntheticError, match=message):
        parse_param(text)


def _failing_centroid_radius(wafer: WaferMap) -> float:
    rows, cols = np.nonzero(wafer.grid == 2)
    r = wafer.radial_position()
    return float(r[rows, cols].mean()) if len(rows) else 0.0


def test_drawn_scratches_are_long_lines_in_the_outer_half_as_in_mixedwm38():
    quiet = {"noise": 0.0, "density": 1.0, "scratch_density": 1.0}
    wafers = [generate("Scratch", _rng(seed), **quiet) for seed in range(40)]
    radii = [_failing_centroid_radius(w) for w in wafers]
    assert min(radii) >= 0.5 and np.median(radii) >= 0.55
    assert np.median([w.failing for w in wafers]) >= 30  # long: ~70 dies in MixedWM38's median map with noise
    # a path given in full is drawn as given, through the centre
    through = generate("Scratch", _rng(), scratch_start=0.3, scratch_angle=180, scratch_direction=0,
                       scratch_length=0.6, scratch_curvature=0.0, **quiet)
    assert _failing_centroid_radius(through) < 0.3


def test_overflow_only_when_asked():
    kwargs = {"scratch_start": 0.7, "scratch_length": 1.5, "scratch_angle": 135, "scratch_direction": 135,
              "scratch_curvature": 0.0, "noise": 0.0}
    spilled = generate("Scratch", _rng(), **kwargs)
    assert (spilled.grid[~LAYOUT] == 2).any()
    clipped = generate("Scratch", _rng(), overflow=False, **kwargs)
    assert np.array_equal(clipped.grid > 0, LAYOUT)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: generate("Center+Donut", _rng()), "Center and Donut never occur together"),
        (lambda: generate("Blob", _rng()), "unknown defect pattern 'Blob'"),
        (lambda: generate("Center", _rng(), center_size=3), "unknown generator parameter"),
        (lambda: generate("Center", _rng(), center_radius="big"), "must be a number"),
        (lambda: generate("Center", _rng(), shape=(4, 52)), "between 8 and 1024"),
        (lambda: generate_dataset(-1), "whole number"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(SyntheticError, match=message):
        call()


def test_aliases_and_class_objects_are_accepted():
    a = generate("C+EL", _rng(3))
    b = generate(taxonomy.CLASS_BY_NAME["Center+Edge_Loc"], _rng(3))
    assert np.array_equal(a.grid, b.grid)


def test_param_ranges_are_ordered():
    assert all(lo <= hi for lo, hi in PARAM_RANGES.values())


# Per-class facts measured on the real MixedWM38 development maps (failing fraction mean;
# share of failing dies in the centre / edge zones) — the generator must stay near them.
REAL = {
    "Normal": (0.079, 0.16, 0.36),
    "Center": (0.236, 0.30, 0.30),
    "Donut": (0.291, 0.30, 0.25),
    "Edge_Loc": (0.242, 0.13, 0.49),
    "Edge_Ring": (0.289, 0.11, 0.57),
    "Loc": (0.241, 0.13, 0.37),
    "Near_Full": (0.831, 0.17, 0.35),
    "Scratch": (0.210, 0.15, 0.37),
    "Random": (0.458, 0.17, 0.38),
}


def test_single_pattern_statistics_resemble_mixedwm38():
    stats = dataset_stats(generate_dataset(60, seed=11, classes=tuple(REAL)))
    for name, (fail, centre, edge) in REAL.items():
        s = stats[name]
        assert abs(s.fail_fraction_mean - fail) < 0.02, (name, s.fail_fraction_mean)
        assert abs(s.zone_share["center"] - centre) < 0.05, (name, s.zone_share)
        assert abs(s.zone_share["edge"] - edge) < 0.05, (name, s.zone_share)


def test_all_classes_resemble_the_real_data(real_mixedwm38):
    real = dataset_stats(load_mixedwm38(real_mixedwm38))
    synth = dataset_stats(generate_dataset(40, seed=3))
    for name in taxonomy.CLASS_NAMES:
        r, s = real[name], synth[name]
        assert abs(r.fail_fraction_mean - s.fail_fraction_mean) < 0.045, name
        for zone in ("center", "middle", "edge"):
            assert abs(r.zone_share[zone] - s.zone_share[zone]) < 0.07, (name, zone)
