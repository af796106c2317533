"""Block Kit answers: facts from the grid first, then prose, Slack's size limits respected."""

from __future__ import annotations

from bot import blocks
from model_server import wire


def reply(answer: str = "A Center pattern.", findings: bool = True) -> wire.ThreadReply:
    f = wire.Findings(
        patterns=["Center", "Scratch"],
        pattern_names={"en": ["Center", "Scratch"], "zh": ["中心", "划痕"]},
        class_name="Center+Scratch",
        measured={"dies": 2012, "failing": 345, "yield": 82.85, "dominant_zone": "center",
                  "dominant_sectors": ["N"], "clusters": {"count": 2, "largest": {"size": 300}}},
        grid=[[0, 1], [2, 1]],
    )
    return wire.ThreadReply("T:C:1.0", answer, f if findings else None, "defect-glm-small", 850.0)


def test_answer_leads_with_measured_facts_then_prose_then_buttons() -> None:
    out = blocks.answer_blocks(reply(), "abc123")
    head = out[0]
    assert "Center + Scratch" in head["text"]["text"] and "中心" in head["text"]["text"]
    fields = " | ".join(f["text"] for f in head["fields"])
    for expected in ("*Dies*\n2,012", "*Failing*\n345", "*Yield*\n82.85 %", "centre (N)", "2 (largest 300 dies)"):
        assert expected in fields
    assert out[2]["text"]["text"] == "A Center pattern."
    assert "defect-glm-small · 0.8 s" in out[3]["elements"][0]["text"]
    buttons = out[4]["elements"]
    assert [b["action_id"] for b in buttons] == [blocks.FEEDBACK_UP, blocks.FEEDBACK_DOWN]
    assert {b["value"] for b in buttons} == {"abc123"}
    assert blocks.answer_text(reply()).startswith("Center + Scratch — 345 of 2012 dies failing, yield 82.85 %")


def test_text_only_answer_has_no_facts_and_no_buttons_without_an_id() -> None:
    out = blocks.answer_blocks(reply(findings=False), None)
    assert [b["type"] for b in out] == ["section", "context"]


def test_long_prose_is_split_under_slack_limits_and_escaped() -> None:
    prose = ("Edge <ring> & more. " * 400).strip()
    out = blocks.answer_blocks(reply(prose), "id")
    sections = [b for b in out[2:] if b["type"] == "section"]
    assert len(sections) >= 3
    assert all(len(b["text"]["text"]) <= blocks.SECTION_LIMIT for b in sections)
    assert "&lt;ring&gt; &amp;" in sections[0]["text"]["text"]
    assert len(out) <= 50
    huge = blocks.answer_blocks(reply("word " * 10_000), "id")
    assert sum(len(b["text"]["text"]) for b in huge if b["type"] == "section" and "fields" not in b) <= 13_000


def test_normal_map_says_so() -> None:
    r = reply()
    normal = wire.ThreadReply(r.thread_id, "ok", wire.Findings([], {"en": [], "zh": []}, "Normal", {"dies": 10,
                              "failing": 0, "yield": 100.0}, [[1]]), r.model, 1.0)
    assert "no defect pattern (Normal)" in blocks.answer_blocks(normal, None)[0]["text"]["text"]
