"""Per-class statistics and the `defect-glm data synth` / `data stats` commands (run as real subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_tools.loaders import WaferDataset, load_mixedwm38, save_mixedwm38
from data_tools.stats import dataset_stats, format_table, per_map_measures, stats_json, summarise
from data_tools.synthetic import generate_dataset
from data_tools.taxonomy import CLASS_NAMES, to_multi_hot
from data_tools.wafer_map import WaferMap

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys, defect_glm; sys.exit(defect_glm.main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


def test_per_map_measures_agree_with_wafer_map():
    data = generate_dataset(2, seed=4, shape=(40, 36))
    measures = per_map_measures(data.grids)
    for i in range(len(data)):
        wafer = data.wafer(i)
        assert measures["dies"][i] == wafer.dies and measures["failing"][i] == wafer.failing
        for zone, count in wafer.zones.items():
            assert measures[f"failing_{zone}"][i] == count.failing, (i, zone)


def test_summarise_by_hand():
    grid = np.zeros((2, 10, 10), dtype=np.uint8)
    grid[:, 1:9, 1:9] = 1
    grid[0, 1, 1] = 2  # one failing die in a corner: the edge zone
    grid[1, 4:6, 4:6] = 2  # four in the middle of the wafer: the centre zone
    s = summarise(per_map_measures(grid))
    assert s.count == 2 and s.dies_mean == 64
    assert s.fail_fraction_mean == pytest.approx((1 / 64 + 4 / 64) / 2)
    assert s.zone_share == {"center": 0.5, "middle": 0.0, "edge": 0.5}
    assert summarise(per_map_measures(grid), np.array([False, False])).count == 0


def test_dataset_stats_keys_are_class_names_in_taxonomy_order():
    data = generate_dataset(3, seed=1, classes=("Loc+Scratch", "Normal", "Center+Edge_Loc+Scratch"))
    stats = dataset_stats(data)
    assert list(stats) == ["Normal", "Loc+Scratch", "Center+Edge_Loc+Scratch"]
    assert all(s.count == 3 for s in stats.values())
    unlabelled = dataset_stats(WaferDataset(data.grids, None, data.index))
    assert list(unlabelled) == ["unlabelled"] and unlabelled["unlabelled"].count == 9
    table = format_table(data)
    assert "Center+Edge_Loc+Scratch" in table and "9 maps of 52×52" in table


def test_stats_json_shape():
    grids = np.stack([WaferMap(np.ones((20, 20), np.uint8)).grid] * 2)
    grids[1, 3, 3] = 2
    data = WaferDataset(grids, np.stack([to_multi_hot([]), to_multi_hot(["Loc"])]), np.arange(2), "x.npz")
    out = stats_json(data)
    assert out["maps"] == 2 and out["shape"] == [20, 20] and out["file"] == "x.npz"
    assert out["classes"]["Normal"]["fail_fraction_mean"] == 0.0
    assert out["classes"]["Loc"]["fail_fraction_mean"] == pytest.approx(1 / 400, abs=1e-4)
    json.dumps(out)


def test_cli_synth_then_stats(tmp_path):
    out = tmp_path / "syn.npz"
    done = _cli("data", "synth", "--per-class", "2", "--out", str(out), "--seed", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "76 maps" in done.stdout and "synth" in done.stderr  # the tqdm bar goes to stderr
    with np.load(out) as archive:
        assert archive["arr_0"].dtype == np.int32 and archive["arr_0"].shape == (76, 52, 52)
        assert archive["arr_1"].dtype == np.int32 and archive["index"].tolist() == list(range(76))
    assert np.array_equal(load_mixedwm38(out).grids, generate_dataset(2, seed=3).grids)

    shown = _cli("data", "stats", str(out), "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert list(report["classes"]) == list(CLASS_NAMES) and report["maps"] == 76
    assert all(c["count"] == 2 for c in report["classes"].values())
    assert 0.7 < report["classes"]["Near_Full"]["fail_fraction_mean"] < 1.0

    table = _cli("data", "stats", str(out), cwd=tmp_path)
    assert table.returncode == 0 and "Edge_Ring+Loc+Scratch" in table.stdout and "fail %" in table.stdout


def test_cli_synth_other_size_and_chosen_classes(tmp_path):
    out = tmp_path / "small.npz"
    done = _cli("data", "synth", "--per-class", "3", "--out", str(out), "--rows", "30", "--cols", "34",
                "--classes", "Center, EL+S", "--no-progress", "--compress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = load_mixedwm38(out)
    assert data.shape == (30, 34) and data.class_names() == ["Center"] * 3 + ["Edge_Loc+Scratch"] * 3


def test_cli_synth_parameters_apply_to_every_map(tmp_path):
    out = tmp_path / "clean.npz"
    done = _cli("data", "synth", "--per-class", "2", "--classes", "Normal,Center", "--param", "noise=0",
                "--param", "normal_noise=0", "--out", str(out), "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = load_mixedwm38(out)
    assert (data.grids[:2] != 2).all() and all(len(WaferMap(g).clusters) == 1 for g in data.grids[2:])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--per-class", "2", "--classes", "Center+Donut"], "Center and Donut never occur together"),
        (["--per-class", "0"], "at least 1"),
        (["--per-class", "1", "--param", "noise=lots"], "NAME=VALUE or NAME=LOW:HIGH"),
        (["--per-class", "1000", "--max-maps", "500"], "more than --max-maps 500"),
        (["--per-class", "1", "--rows", "3"], "between 8 and 1024"),
    ],
)
def test_cli_synth_refuses_bad_requests_and_writes_nothing(tmp_path, args, message):
    done = _cli("data", "synth", "--out", str(tmp_path / "x.npz"), *args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_synth_will_not_overwrite_by_default(tmp_path):
    out = tmp_path / "x.npz"
    out.write_bytes(b"keep me")
    done = _cli("data", "synth", "--per-class", "1", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 2 and "--overwrite" in done.stderr and out.read_bytes() == b"keep me"


def test_cli_stats_on_a_wrong_file(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, arr_0=np.ones((2, 5, 5), np.int32), arr_1=np.zeros((2, 7), np.int32))
    done = _cli("data", "stats", str(bad), cwd=tmp_path)
    assert done.returncode == 2
    assert "expected arr_1" in done.stderr and "found shape (2, 7)" in done.stderr and "Traceback" not in done.stderr


def test_stats_of_saved_real_subset(real_mixedwm38, tmp_path):
    data = load_mixedwm38(real_mixedwm38, limit=2000)
    path = save_mixedwm38(tmp_path / "real_subset.npz", data.grids, data.labels, data.index)
    stats = dataset_stats(load_mixedwm38(path))
    assert sum(s.count for s in stats.values()) == 2000
    assert all(0.0 < s.fail_fraction_mean < 1.0 for s in stats.values())
