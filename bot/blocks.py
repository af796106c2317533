"""Block Kit for every message the bot posts: answers (facts, then prose, then 👍/👎) and plain notices.

Answers lead with what was measured, not generated: the recognised patterns and the
dies / failing / yield numbers from the die grid, then the model's prose, then a
context line (model, latency) and the feedback buttons. Slack's limits (3000 characters
per section, 50 blocks) are respected by splitting and cutting the prose.
"""

from __future__ import annotations

from typing import Any

from data_tools.phrasing import language_of
from model_server import wire

FEEDBACK_UP = "feedback_up"
FEEDBACK_DOWN = "feedback_down"
SECTION_LIMIT = 3000
MAX_PROSE_CHARS = 12_000

PLACEHOLDER_TEXT = "Analysing wafer map…"
FOLLOWUP_PLACEHOLDER_TEXT = "Thinking about your follow-up…"

ZONE_WORDS = {"center": "centre", "middle": "middle ring", "edge": "edge"}


def escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def pattern_line(findings: wire.Findings | None) -> str:
    if findings is None:
        return ""
    names = findings.pattern_names.get("en") or findings.patterns
    return " + ".join(names) if names else "no defect pattern (Normal)"


def facts_fields(findings: wire.Findings) -> list[dict[str, str]]:
    """The measured numbers as Block Kit fields."""
    m = findings.measured
    fields = [
        _field("Dies", f"{int(m.get('dies', 0)):,}"),
        _field("Failing", f"{int(m.get('failing', 0)):,}"),
        _field("Yield", f"{float(m.get('yield', 0.0)):.2f} %"),
    ]
    zone = m.get("dominant_zone")
    if zone:
        sectors = ", ".join(m.get("dominant_sectors") or [])
        fields.append(_field("Failures mostly in", ZONE_WORDS.get(zone, zone) + (f" ({sectors})" if sectors else "")))
    clusters = m.get("clusters") or {}
    if clusters.get("count"):
        largest = (clusters.get("largest") or {}).get("size")
        fields.append(_field("Clusters", f"{clusters['count']}" + (f" (largest {largest} dies)" if largest else "")))
    return fields


def caveat_lines(reply: wire.ThreadReply) -> list[str]:
    """The findings' caveats in the answer's language (what the reader should double-check)."""
    if reply.findings is None:
        return []
    return [f"⚠️ {text}" for text in reply.findings.caveat_texts(language_of(reply.answer))]


def answer_blocks(reply: wire.ThreadReply, answer_id: str | None) -> list[dict[str, Any]]:
    """Facts (if the thread has a map), prose, context and — with an answer id — feedback buttons."""
    blocks: list[dict[str, Any]] = []
    findings = reply.findings
    if findings is not None:
        zh = " / ".join(findings.pattern_names.get("zh") or [])
        line = f"*Patterns:* {escape(pattern_line(findings))}" + (f"  ({escape(zh)})" if zh else "")
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": line}, "fields": facts_fields(findings)})
        for caveat in caveat_lines(reply):
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": escape(caveat)}})
        blocks.append({"type": "divider"})
    for chunk in _chunks(escape(_cut(reply.answer.strip() or "(the model returned an empty answer)"))):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": chunk}})
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": f"{escape(reply.model)} · {reply.latency_ms / 1000:.1f} s"}],
        }
    )
    if answer_id:
        blocks.append(
            {
                "type": "actions",
                "block_id": "feedback",
                "elements": [
                    _button("👍 Helpful", FEEDBACK_UP, answer_id),
                    _button("👎 Not helpful", FEEDBACK_DOWN, answer_id),
                ],
            }
        )
    return blocks


def answer_text(reply: wire.ThreadReply) -> str:
    """The plain-text fallback (notifications, screen readers)."""
    findings = reply.findings
    if findings is None:
        return _cut(reply.answer.strip(), 3000)
    m = findings.measured
    caveats = "".join(f" {line}" for line in caveat_lines(reply))
    return (
        f"{pattern_line(findings)} — {int(m.get('failing', 0))} of {int(m.get('dies', 0))} dies failing, "
        f"yield {float(m.get('yield', 0.0)):.2f} %.{caveats} {_cut(reply.answer.strip(), 2500)}"
    )


def notice_blocks(text: str, emoji: str = "") -> list[dict[str, Any]]:
    """One plain section (for placeholders, refusals, delays and apologies)."""
    return [{"type": "section", "text": {"type": "mrkdwn", "text": (f"{emoji} " if emoji else "") + text}}]


def feedback_thanks(vote: str) -> str:
    return "Thanks — noted as helpful. 👍" if vote == "up" else "Thanks — noted as not helpful; it helps us retrain. 👎"


def help_text() -> str:
    return (
        "*Defect-GLM* reads wafer maps and answers questions about their defect patterns.\n"
        "• Upload a wafer-map image in a channel I am in, mention me with an image, or DM me one. "
        "Text with the upload is your question; without text you get the standard analysis.\n"
        "• Reply in that thread to ask follow-ups (I remember the thread). A new image in the thread is analysed "
        "in the same conversation.\n"
        "• Rate answers with 👍/👎 — feedback is used to improve the model.\n"
        "• `/wafer status` shows the model, its version, the queue and uptime."
    )


def _field(label: str, value: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": f"*{label}*\n{escape(value)}"}


def _button(text: str, action_id: str, value: str) -> dict[str, Any]:
    return {"type": "button", "text": {"type": "plain_text", "text": text, "emoji": True}, "action_id": action_id,
            "value": value}


def _cut(text: str, limit: int = MAX_PROSE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _chunks(text: str, size: int = SECTION_LIMIT) -> list[str]:
    """Split at paragraph or line breaks where possible, never over `size` characters."""
    out: list[str] = []
    while len(text) > size:
        cut = max(text.rfind("\n\n", 0, size), text.rfind("\n", 0, size), text.rfind(" ", 0, size))
        cut = cut if cut > size // 2 else size
        out.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        out.append(text)
    return out
