"""JSON text of the wire format (`wire.dumps` / `wire.loads`, orjson with the standard library behind it).

Covers: Chinese text written as UTF-8 and read back by any JSON reader; numpy numbers; values orjson
refuses still written; NaN written as null; NaN from rows stored by earlier versions (Python's json) still read;
invalid text refused with ValueError; a thread's stored findings read back through memory.
"""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pytest

from data_tools.wafer_map import WaferMap
from model_server import wire
from model_server.memory import StoredImage, ThreadMemory
from model_server.testing import wafer_grid, wafer_png


def test_dumps_is_compact_utf8_json_any_reader_reads():
    reply = {"answer": "晶圆中心有缺陷。", "findings": {"grid": [[0, 1], [2, 1]], "measured": {"yield": 0.925}}}
    text = wire.dumps(reply)
    assert "晶圆" in text and ": " not in text
    assert json.loads(text) == reply
    assert wire.loads(text) == reply and wire.loads(text.encode()) == reply


def test_dumps_writes_numpy_numbers_and_falls_back_for_what_orjson_refuses():
    assert json.loads(wire.dumps({"failing": np.int64(7), "yield": np.float64(0.5), 3: "x"})) == {
        "failing": 7, "yield": 0.5, "3": "x"}
    assert json.loads(wire.dumps({"big": 2**70})) == {"big": 2**70}
    assert wire.dumps({"yield": float("nan")}) == '{"yield":null}'  # strict JSON, unlike Python's NaN


def test_loads_reads_nan_written_by_pythons_json_and_refuses_non_json():
    value = wire.loads(json.dumps({"yield": float("nan")}))
    assert math.isnan(value["yield"])
    for bad in ("{not json", b"\xff\xfe", ""):
        with pytest.raises(ValueError):
            wire.loads(bad)


def test_findings_stored_by_an_earlier_version_are_read(tmp_path):
    db = tmp_path / "mem.sqlite"
    memory = ThreadMemory(db)
    image = StoredImage.from_bytes(wafer_png("center"), WaferMap(wafer_grid(52, "center")))
    memory.record_exchange("t", "what?", "center", image=image, findings={"class": "Center"})
    old = {"class": "Center", "measured": {"yield": float("nan"), "note": "中心"}}
    conn = sqlite3.connect(str(db))
    with conn:
        conn.execute("UPDATE threads SET findings = ? WHERE thread_id = 't'", [json.dumps(old)])
    conn.close()
    findings = memory.context("t", 2).findings
    assert findings is not None and findings["measured"]["note"] == "中心"
    assert math.isnan(findings["measured"]["yield"])
    memory.close()
