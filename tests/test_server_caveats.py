"""Caveats in findings: a large failing cluster on a map the model calls normal, or a map read as
Near-full with under half its dies failing, is flagged, in the wire format, on a real server (stored
with the thread), in the Slack blocks and in `defect-glm chat`."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from bot.blocks import answer_blocks, answer_text
from data_tools.background import LARGE_CLUSTER_MIN_DIES, LARGE_CLUSTER_MIN_SHARE
from data_tools.wafer_map import FAIL, GOOD, WaferMap
from model_server import wire
from model_server.backends.base import Backend, BackendInfo
from model_server.chat_cli import format_findings
from model_server.client import ModelServerClient
from model_server.config import ServerConfig
from model_server.findings import (
    CAVEAT_CLUSTER_WITHOUT_PATTERN,
    CAVEAT_SPARSE_NEAR_FULL,
    NEAR_FULL_CAVEAT_MAX_SHARE,
    build_findings,
)
from model_server.testing import running_server, wafer_grid, wafer_png


def _disc_with_block(size: int, block: tuple[int, int], noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """A round wafer of `size`×`size` cells with one rectangular block of failing dies at its centre and
    `noise` of the other dies failing at random."""
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2.0
    grid = np.where(np.hypot(yy - c, xx - c) <= size / 2.0 - 0.5, GOOD, 0).astype(np.uint8)
    on = grid == GOOD
    grid[on & (np.random.default_rng(seed).random(grid.shape) < noise)] = FAIL
    h, w = block
    top, left = size // 2 - h // 2, size // 2 - w // 2
    grid[top : top + h, left : left + w] = FAIL
    return grid


def test_a_large_cluster_on_a_map_called_normal_gets_a_caveat_in_both_languages():
    findings = build_findings(WaferMap(wafer_grid(52, "center")), ())
    largest = findings.measured["clusters"]["largest"]["size"]
    assert [c.code for c in findings.caveats] == [CAVEAT_CLUSTER_WITHOUT_PATTERN]
    assert f"{largest} failing dies" in findings.caveat_texts("en")[0]
    assert f"{largest} 颗失效芯片" in findings.caveat_texts("zh")[0]


@pytest.mark.parametrize("patterns", [("Center",), None], ids=["pattern named", "answer unreadable"])
def test_no_caveat_when_the_model_named_a_pattern_or_could_not_be_read(patterns):
    assert build_findings(WaferMap(wafer_grid(52, "center")), patterns).caveats == []


def test_random_failures_alone_get_no_caveat():
    # MixedWM38's Normal maps carry up to 14.5 % random failures; their clusters stay small
    grid = _disc_with_block(52, (0, 0), noise=0.145, seed=3)
    findings = build_findings(WaferMap(grid), ())
    assert findings.measured["failing"] > 250
    assert findings.caveats == []


def test_the_threshold_is_a_share_of_the_wafer_with_a_floor():
    block = (5, 5)  # 25 dies: over the floor of 20
    big = build_findings(WaferMap(_disc_with_block(52, block)), ())  # 2,032 dies: 1.5 % is ~30
    small = build_findings(WaferMap(_disc_with_block(26, block)), ())  # ~500 dies: 1.5 % is ~8, the floor 20
    assert big.measured["clusters"]["largest"]["size"] == small.measured["clusters"]["largest"]["size"] == 25
    assert LARGE_CLUSTER_MIN_SHARE * small.measured["dies"] < LARGE_CLUSTER_MIN_DIES <= 25
    assert LARGE_CLUSTER_MIN_SHARE * big.measured["dies"] > 25
    assert big.caveats == []
    assert [c.code for c in small.caveats] == [CAVEAT_CLUSTER_WITHOUT_PATTERN]
    tiny_block = build_findings(WaferMap(_disc_with_block(26, (4, 4))), ())  # 16 dies: under the floor
    assert tiny_block.caveats == []


def test_near_full_with_under_half_the_dies_failing_gets_a_caveat_in_both_languages():
    ring = build_findings(WaferMap(wafer_grid(52, "edge")), ("Near_Full",))  # a clean Edge-Ring read as Near-full
    share = ring.measured["failing"] / ring.measured["dies"]
    assert share < NEAR_FULL_CAVEAT_MAX_SHARE
    assert [c.code for c in ring.caveats] == [CAVEAT_SPARSE_NEAR_FULL]
    assert f"only {100 * share:.0f} % of its dies fail" in ring.caveat_texts("en")[0]
    assert f"只有 {100 * share:.0f}% 的芯片失效" in ring.caveat_texts("zh")[0]
    assert build_findings(WaferMap(wafer_grid(52, "edge")), ("Edge_Ring",)).caveats == []
    full = build_findings(WaferMap(_disc_with_block(52, (40, 40))), ("Near_Full",))
    assert full.measured["failing"] / full.measured["dies"] > NEAR_FULL_CAVEAT_MAX_SHARE
    assert full.caveats == []


def test_findings_without_caveats_read_as_none_and_bad_caveats_are_refused():
    stored = build_findings(WaferMap(wafer_grid(52, "center")), ()).to_json()
    assert wire.Findings.from_json(stored) == wire.Findings.from_json(stored)
    assert wire.Findings.from_json(stored).caveats[0].text["en"] == stored["caveats"][0]["text"]["en"]
    older = {k: v for k, v in stored.items() if k != "caveats"}  # findings stored before caveats existed
    assert wire.Findings.from_json(older).caveats == []
    with pytest.raises(wire.WireFormatError, match="caveats"):
        wire.Findings.from_json(dict(stored, caveats="check it"))
    with pytest.raises(wire.WireFormatError, match="caveat"):
        wire.Findings.from_json(dict(stored, caveats=[{"text": {"en": "no code"}}]))


class _SaysNormal(Backend):
    """A model that calls every map normal."""

    @property
    def info(self):
        return BackendInfo("says-normal", "1", "test")

    def generate(self, requests):
        return ["Yes, it is normal." if r.question.lower().startswith("is this wafer ok")
                else "The wafer looks normal: no defect pattern." if r.question.isascii() else "晶圆正常，没有缺陷模式。"
                for r in requests]


def test_the_server_returns_and_stores_the_caveat_with_the_thread(tmp_path):
    async def go():
        cfg = ServerConfig(port=0, db=tmp_path / "threads.sqlite", max_new_tokens=8)
        async with running_server(cfg, _SaysNormal()) as server, ModelServerClient(server.url) as client:
            first = await client.send_message("C1:1700000000.0001", "What is wrong with this wafer?",
                                              image=wafer_png("center"))
            follow = await client.send_message("C1:1700000000.0001", "这片晶圆有什么问题？")
            view = await client.get_thread("C1:1700000000.0001")
            fine = await client.send_message("C1:1700000000.0001", "is this wafer ok")
            clean = await client.send_message("C1:1700000000.0002", "Anything wrong?", image=wafer_png("none"))
            clean_fine = await client.send_message("C1:1700000000.0002", "Is this wafer ok?")
            return first, follow, view, clean, fine, clean_fine

    first, follow, view, clean, fine, clean_fine = asyncio.run(go())
    # "is this wafer ok?" is not answered yes while the findings ask to check a cluster; it is on a clean map
    assert fine.answer == "I can't call it normal. " + first.findings.caveat_texts("en")[0]
    assert clean_fine.answer == "Yes, it is normal."
    assert first.findings.class_name == "Normal"
    assert [c.code for c in first.findings.caveats] == [CAVEAT_CLUSTER_WITHOUT_PATTERN]
    assert follow.findings.caveats == first.findings.caveats == view.findings.caveats  # kept with the thread
    assert clean.findings.caveats == []


def _reply(answer: str, findings: wire.Findings) -> wire.ThreadReply:
    return wire.ThreadReply("C1:1.2", answer, findings, "defect-glm-small", 42.0)


def test_the_slack_answer_shows_the_caveat_in_the_answers_language():
    findings = build_findings(WaferMap(wafer_grid(52, "center")), ())
    english = answer_blocks(_reply("The wafer looks normal.", findings), "a1")
    texts = [b["text"]["text"] for b in english if b["type"] == "section"]
    assert any(t.startswith("⚠️ The model found no defect pattern") for t in texts)
    assert texts.index(next(t for t in texts if t.startswith("⚠️"))) == 1  # right after the facts
    chinese = answer_blocks(_reply("晶圆正常。", findings), "a1")
    assert any(b["type"] == "section" and b["text"]["text"].startswith("⚠️ 模型未识别出缺陷模式") for b in chinese)
    assert "⚠️ The model found no defect pattern" in answer_text(_reply("The wafer looks normal.", findings))
    plain = build_findings(WaferMap(wafer_grid(52, "center")), ("Center",))
    assert not any("⚠️" in b.get("text", {}).get("text", "") for b in answer_blocks(_reply("Center.", plain), "a1"))
    assert "⚠️" not in answer_text(_reply("Center.", plain))


def test_defect_glm_chat_prints_the_caveat():
    findings = build_findings(WaferMap(wafer_grid(52, "center")), ())
    assert "\n  ! The model found no defect pattern" in format_findings(findings, "en")
    assert "\n  ! 模型未识别出缺陷模式" in format_findings(findings, "zh")
    assert "!" not in format_findings(build_findings(WaferMap(wafer_grid(52, "center")), ("Center",)), "en")
