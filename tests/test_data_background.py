"""Background noise measured on a map and raised (data_tools.background), and the map a model is shown
(finetune.background_match): a clean map with a pattern at the training maps' noise, anything else as sent."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from data_tools.background import background_rate, has_large_cluster, looks_clean, with_background
from data_tools.synthetic import generate_grid
from data_tools.wafer_map import FAIL, GOOD, WaferMap
from finetune.background_match import set_background_match, shown_wafer


def _map(cls: str, noise: float, seed: int = 0) -> WaferMap:
    params = {"noise": noise} if cls != "Normal" else {"normal_noise": noise}
    return WaferMap(generate_grid(cls, np.random.default_rng(seed), **params))


@pytest.mark.parametrize(("noise", "low", "high"), [(0.0, 0.0, 0.02), (0.05, 0.02, 0.1), (0.195, 0.15, 0.26)])
@pytest.mark.parametrize("cls", ["Center", "Edge_Ring", "Loc+Scratch", "Donut+Edge_Loc"])
def test_the_background_is_the_noise_between_the_patterns(cls, noise, low, high):
    # patterns over part of the blocks lift the median a little: MixedWM38's maps measure 0.111 or more
    assert low <= background_rate(_map(cls, noise)) <= high


def test_a_near_full_map_has_a_high_background():
    assert background_rate(_map("Near_Full", 0.0)) > 0.5


def test_a_clean_map_whose_patterns_cover_most_blocks_measures_its_dies_away_from_them():
    # a clean Donut+Edge_Ring+Loc+Scratch: most 6x6 blocks hold part of a pattern (their median is 0.31), but
    # no die fails away from the patterns
    clean = _map("Donut+Edge_Ring+Loc+Scratch", 0.0)
    assert looks_clean(clean) and background_rate(clean) == 0.0
    assert background_rate(with_background(clean, 0.195)) > 0.15  # raised, it reads as noisy again
    noisy = _map("Donut+Edge_Ring+Loc+Scratch", 0.02)
    assert not looks_clean(noisy) and background_rate(noisy) > 0.1  # random failures leave lone failing dies
    for as_measured in (_map("Near_Full", 0.0), _map("Random", 0.0)):
        assert not looks_clean(as_measured)  # failures that all touch, little away from clusters to measure
    assert looks_clean(_map("Normal", 0.0)) and not looks_clean(_map("Normal", 0.05))


def test_raising_the_background_fails_good_dies_only_the_same_for_the_same_map():
    clean = _map("Center+Scratch", 0.0)
    raised = with_background(clean, 0.195)
    assert background_rate(raised) == pytest.approx(0.195, abs=0.03)
    assert ((raised.grid == clean.grid) | ((clean.grid == GOOD) & (raised.grid == FAIL))).all()  # good → failing only
    assert (raised.grid == with_background(clean, 0.195).grid).all()  # seeded by the map's content
    assert with_background(raised, 0.15) is raised  # already there: as it is
    noisy = _map("Center", 0.195)
    assert with_background(noisy, 0.1) is noisy
    with pytest.raises(ValueError, match="share of dies"):
        with_background(clean, 1.0)


def test_a_large_cluster_is_what_random_failures_do_not_make():
    assert has_large_cluster(_map("Center", 0.0).facts())
    assert not has_large_cluster(_map("Normal", 0.1).facts())
    assert not has_large_cluster(_map("Normal", 0.0).facts())


def _model(level, below=0.13):
    model = SimpleNamespace(config=SimpleNamespace())
    if level is not None:
        set_background_match(model, level, below)
    return model


def test_a_model_is_shown_a_clean_map_with_a_pattern_at_its_training_noise():
    model = _model(0.195)
    clean = _map("Loc", 0.0)
    shown = shown_wafer(model, clean)
    assert shown is not clean and background_rate(shown) == pytest.approx(0.195, abs=0.03)
    covered = _map("Donut+Edge_Ring+Loc+Scratch", 0.0)  # patterns over most blocks: raised all the same
    assert shown_wafer(model, covered) is not covered
    for as_sent in (_map("Loc", 0.195), _map("Normal", 0.0), _map("Normal", 0.1)):  # noisy; no pattern
        assert shown_wafer(model, as_sent) is as_sent
    assert shown_wafer(model, None) is None
    assert shown_wafer(_model(None), clean) is clean  # a checkpoint without the setting: as sent
    assert shown_wafer(SimpleNamespace(), clean) is clean
    with pytest.raises(ValueError, match="background_level"):
        set_background_match(_model(None), 0.1, 0.2)
