"""`defect-glm data feedback-export`: votes stored by the bot become corpus records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fake_slack.maps import center_map, disc
from PIL import Image

from bot.feedback import FeedbackExportError, export_feedback
from bot.store import BotStore
from data_tools.wafer_map import WaferMap

ROOT = Path(__file__).resolve().parents[1]


def findings(grid: np.ndarray, patterns: list[str]) -> dict:
    return {"patterns": patterns, "pattern_names": {"en": patterns, "zh": []}, "class": "+".join(patterns) or "Normal",
            "measured": WaferMap(grid).facts(), "grid": grid.tolist()}


def fill(db: Path) -> dict[str, str]:
    store = BotStore(db)
    sha = store.put_image(b"png-bytes", "w.png", "image/png")
    job = store.enqueue(team="T1", channel="C1", thread_ts="1.0", message_ts="1.0", user="U1", question="What defects?",
                        image_sha256=sha, keep_trying_s=60)
    grid = center_map()
    ids = {}
    ids["first"] = store.record_answer(thread_id=job.thread_id, channel="C1", message_ts="1.1", user="U1",
                                       question="What defects?", answer="A Center pattern.",
                                       findings=findings(grid, ["Center"]), image_sha256=sha, model="m1")
    ids["follow"] = store.record_answer(thread_id=job.thread_id, channel="C1", message_ts="1.2", user="U1",
                                        question="那良率呢？", answer="良率 95%。", findings=findings(grid, ["Center"]),
                                        image_sha256=sha, model="m1")
    ids["bad"] = store.record_answer(thread_id="T1:C1:2.0", channel="C1", message_ts="2.1", user="U2",
                                     question="What defects?", answer="A scratch.", findings=findings(disc(), []),
                                     image_sha256=None, model="m1")
    ids["tie"] = store.record_answer(thread_id="T1:C1:3.0", channel="C1", message_ts="3.1", user="U2", question="q",
                                     answer="a", findings=findings(disc(), []), image_sha256=None, model="m1")
    ids["text"] = store.record_answer(thread_id="T1:C1:4.0", channel="C1", message_ts="4.1", user="U2", question="hi",
                                      answer="hello", findings={}, image_sha256=None, model="m1")
    store.record_vote(ids["follow"], "U1", "up")
    store.record_vote(ids["follow"], "U3", "up")
    store.record_vote(ids["bad"], "U1", "down")
    store.record_vote(ids["tie"], "U1", "down")
    store.record_vote(ids["tie"], "U2", "up")
    store.record_vote(ids["text"], "U1", "up")
    store.close()
    return ids


def test_cli_exports_helpful_and_unhelpful_answers(tmp_path: Path) -> None:
    db, out = tmp_path / "bot.sqlite3", tmp_path / "export"
    ids = fill(db)
    done = subprocess.run([sys.executable, "-c", "import sys, defect_glm; sys.exit(defect_glm.main())", "data",
                           "feedback-export", "--db", str(db), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "1 helpful, 1 unhelpful" in done.stdout and "1 no_map" in done.stdout and "1 tie" in done.stdout
    (train,) = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    wafer = WaferMap(center_map())
    assert train["source"] == f"slack-feedback:{ids['follow']}"
    assert (train["split"], train["class"], train["patterns"], train["language"]) == ("train", "Center", ["Center"], "zh")
    assert train["map_hash"] == wafer.content_hash and train["facts"] == wafer.facts()
    # the earlier turn about the same map comes first, then the voted one
    assert [m["content"] for m in train["messages"]] == ["What defects?", "A Center pattern.", "那良率呢？", "良率 95%。"]
    assert train["feedback"] == {"up": 2, "down": 0, "model": "m1"}
    image = np.asarray(Image.open(out / train["image"]).convert("L"))
    assert image.shape == (52, 52)  # 1 pixel per die, grey palette
    assert (image < 64).sum() == wafer.failing
    (rejected,) = [json.loads(line) for line in (out / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rejected["class"] == "Normal" and rejected["feedback"]["down"] == 1
    maps = np.load(out / "maps.npz")
    assert maps["grids"].shape == (2, 52, 52) and maps["labels"].shape == (2, 8)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["helpful"] == 1 and stats["skipped"] == {"tie": 1, "no_map": 1}


def test_helpful_only_and_refusals(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    fill(db)
    result = export_feedback(db, tmp_path / "only", include_unhelpful=False)
    assert (result.helpful, result.unhelpful) == (1, 0)
    assert (tmp_path / "only" / "rejected.jsonl").read_text() == ""
    with pytest.raises(FeedbackExportError, match="not an empty folder"):
        export_feedback(db, tmp_path / "only")
    with pytest.raises(FeedbackExportError, match="no bot database"):
        export_feedback(tmp_path / "missing.sqlite3", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
