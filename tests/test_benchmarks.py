"""The benchmark scripts run end to end on a tiny checkpoint and print their figures.

Their numbers are only meaningful on the real default model; these runs check that the scripts
(which no other test imports) still work against the code they measure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_model_latency_on_synthetic_maps_prints_its_figures_as_json(tiny_model_dir):
    out = _run("benchmarks/model_latency.py", "--model", str(tiny_model_dir), "--n", "3", "--batch", "2",
               "--threads", "1", "--json")
    figures = json.loads(out[out.index("{"):])
    assert figures["maps"] == 3 and figures["threads"] == 1
    assert figures["batch1_median_ms"] > 0 and figures["batch1_p95_ms"] >= figures["batch1_median_ms"]
    assert figures["batch2_maps_per_s"] > 0


def test_noise_robustness_scores_each_noise_level(tiny_model_dir, tmp_path):
    from model_server.testing import wafer_grid

    # three maps labelled Normal (one with a large cluster the caveat rule flags), one Center, and two
    # labelled Near-full: one nearly all failing, one (a clean ring) that the Near-full caveat flags
    full = wafer_grid(52, "none")
    full[full > 0] = 2
    grids = np.stack([wafer_grid(52, "random", 1), wafer_grid(52, "none"), wafer_grid(52, "center"),
                      wafer_grid(52, "center"), full, wafer_grid(52, "edge")]).astype(np.int32)
    labels = np.zeros((6, 8), dtype=np.int32)
    labels[3, 0] = 1
    labels[4:, 5] = 1
    real = tmp_path / "maps.npz"
    np.savez(real, arr_0=grids, arr_1=labels)
    out = _run("benchmarks/noise_robustness.py", "--model", str(tiny_model_dir), "--per-class", "1",
               "--noise", "0,0.2", "--mixedwm38", str(real), "--json")
    figures = json.loads(out[out.index("{"):])
    assert figures["real_normal_maps"] == {"maps": 3, "largest_cluster_max": 188, "flagged": 1}
    assert figures["real_near_full_maps"]["maps"] == 2 and figures["real_near_full_maps"]["flagged"] == 1
    assert figures["real_near_full_maps"]["failing_share_min"] < 0.5
    assert [r["noise"] for r in figures["rows"]] == [0.0, 0.2]
    assert figures["shown"] == "each map as sent"  # the tiny checkpoint has no background_level
    assert all(r["maps"] == 38 and 0 <= r["exact_match"] <= 1 and len(r["recall"]) == 8 for r in figures["rows"])
    for r in figures["rows"]:  # 37 defective classes and one Normal map per level
        assert 0 <= r["defective_called_normal_with_caveat"] <= r["defective_called_normal"] <= 37
        assert r["normal_called_normal_with_caveat"] in (0, 1)
        assert 0 <= r["wrongly_near_full_with_caveat"] <= r["wrongly_near_full"] <= 38


def test_server_throughput_with_the_clients_in_their_own_process(tmp_path):
    report = tmp_path / "bench.json"
    _run("benchmarks/server_throughput.py", "--tiny", "--concurrency", "2", "--requests", "3", "--max-new-tokens", "4",
         "--mode", "followup", "--only", "on", "--clients-process", "--json", str(report))
    (row,) = json.loads(report.read_text())["rows"]
    assert row["errors"] == 0 and row["requests"] == 3 and 0 < row["model_busy"] <= 1.05


def test_lock_contention_times_a_batch_at_each_duty(tiny_model_dir):
    out = _run("benchmarks/lock_contention.py", "--model", str(tiny_model_dir), "--batch", "2", "--duty", "0,0.5",
               "--repeats", "2", "--max-new-tokens", "4", "--json")
    figures = json.loads(out[out.index("{"):])
    assert [r["duty"] for r in figures["rows"]] == [0.0, 0.5] and figures["batch"] == 2
    assert all(r["batch_ms_median"] > 0 for r in figures["rows"])


def test_server_throughput_smoke_run_reports_both_settings(tmp_path):
    report = tmp_path / "bench.json"
    out = _run("benchmarks/server_throughput.py", "--tiny", "--concurrency", "1,2", "--requests", "2",
               "--max-new-tokens", "4", "--json", str(report))
    assert "batching gives" in out
    rows = json.loads(report.read_text())["rows"]
    assert sorted((r["batching"], r["concurrency"]) for r in rows) == [(False, 1), (False, 2), (True, 1), (True, 2)]
    assert all(r["errors"] == 0 and r["requests"] == 2 and r["throughput_rps"] > 0 for r in rows)
    assert all(0 < r["model_busy"] <= 1.05 for r in rows)  # share of the timed run spent generating


def test_vision_tower_probe_trains_a_padded_tower_and_scores_its_head_on_each_split(tmp_path, tiny_model_dir):
    from defect_glm import main

    corpus = tmp_path / "corpus"
    assert main(["data", "build", "--synthetic", "1", "-k", "1", "--val-fraction", "0.2", "--test-fraction", "0.1",
                 "--out", str(corpus), "--no-progress"]) == 0
    config = '{"image_size": 64, "vision_stem": 8, "vision_channels": [8, 16], "vision_depths": [1, 1]}'
    out = _run("benchmarks/vision_tower_probe.py", "--data", str(corpus), "--steps", "2", "--pad", "2",
               "--batch", "4", "--threads", "1", "--config", config, "--tokenizer", str(tiny_model_dir),
               "--train-maps", "3")
    figures = json.loads(out[out.index("{"):])
    assert figures["steps"] == 2 and figures["pad"] == 2 and figures["config"]["vision_channels"] == [8, 16]
    assert figures["seconds_per_step"] > 0 and figures["tower_parameters"] > 0
    assert figures["val_maps"] > 0 and 0 <= figures["val_exact_match"] <= 1
    assert figures["train_maps"] == 3 and 0 <= figures["train_exact_match"] <= 1


def test_chat_phrasings_scores_each_phrasing_as_the_model_reads_it(tiny_model_dir):
    out = _run("benchmarks/chat_phrasings.py", "--model", str(tiny_model_dir), "--n", "2", "--json")
    figures = json.loads(out[out.index("{"):])
    rows = {r["question"]: r for r in figures["rows"]}
    assert rows["what's wrong with this wafer? thanks!"]["as_the_model_reads_it"] == "What's wrong with this wafer?"
    assert rows["you see anything unusual?"]["as_the_model_reads_it"] == "What defects does this wafer show?"
    assert rows["这片晶圆有什么缺陷"]["as_the_model_reads_it"] == "这片晶圆有哪些缺陷？"  # a bare topic
    assert all(r["maps"] == 2 and 0 <= r["exact_match"] <= 1 for r in rows.values())


def test_plain_cnn_reference_compares_a_cnn_and_the_model_on_the_real_test_maps(tmp_path, tiny_model_dir):
    from defect_glm import main

    real = tmp_path / "mixedwm38.npz"
    assert main(["data", "synth", "--per-class", "1", "--out", str(real), "--no-progress"]) == 0
    corpus = tmp_path / "corpus"
    assert main(["data", "build", "--mixedwm38", str(real), "--synthetic", "1", "-k", "1", "--val-fraction", "0.2",
                 "--test-fraction", "0.3", "--out", str(corpus), "--no-progress"]) == 0
    out = _run("benchmarks/plain_cnn_reference.py", "--data", str(corpus), "--mixedwm38", str(real),
               "--model", str(tiny_model_dir), "--steps", "2", "--width", "4", "--probe-steps", "2",
               "--threads", "1", "--json")
    figures = json.loads(out[out.index("{"):])
    n = figures["test_real_distinct_maps"]
    assert 0 < n < 76  # the real file's test maps only, not the synthetic ones the corpus added
    assert all(0 <= figures[k] <= n for k in ("cnn_one_view", "cnn_eight_views", "model_right",
                                             "frozen_tower_probe_right", "both_wrong", "either_right"))
    assert figures["either_right"] + figures["both_wrong"] == n
