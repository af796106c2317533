"""Deciding what an incoming Slack message event asks of the bot — a pure function, no I/O.

The bot reacts to: a message with files (an upload, in a channel, a DM, or with a mention),
a reply in a thread the bot takes part in (a follow-up), and a mention or DM without an image
(answered with a hint). It ignores its own messages, other bots, edits and deletions
(`message_changed`, `message_deleted`) and every other subtype.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: Message subtypes that carry something a person said; everything else is ignored.
HANDLED_SUBTYPES = {None, "", "file_share", "thread_broadcast"}

DEFAULT_QUESTION = (
    "What defect patterns does this wafer map show? Give the failing dies and yield, "
    "where the failures sit, and the likely process causes."
)


@dataclass(frozen=True)
class Incoming:
    """A message the bot may act on."""

    team: str
    channel: str
    channel_type: str
    user: str
    ts: str
    thread_ts: str  # the thread the answer goes to (the message's own ts for a top-level message)
    in_thread: bool  # the message was itself a reply in an existing thread
    text: str  # the message text without the bot mention
    files: tuple[dict, ...] = field(default_factory=tuple)
    mentioned: bool = False
    event_id: str = ""

    @property
    def is_dm(self) -> bool:
        return self.channel_type == "im"

    @property
    def dedupe_keys(self) -> tuple[str, ...]:
        """The event id (Slack's retries) and the message itself (a mention arrives as two events)."""
        return tuple(k for k in (f"event:{self.event_id}" if self.event_id else "", f"msg:{self.channel}:{self.ts}") if k)


def parse_event(body: dict, event: dict, bot_user_id: str | None, bot_id: str | None = None) -> Incoming | None:
    """An `Incoming` for a message or app_mention event a person sent, else None (ignored)."""
    if event.get("type") not in ("message", "app_mention"):
        return None
    if event.get("subtype") not in HANDLED_SUBTYPES:
        return None
    if event.get("bot_id") or event.get("bot_profile") or (bot_id and event.get("bot_id") == bot_id):
        return None
    user = event.get("user")
    if not user or (bot_user_id and user == bot_user_id):
        return None
    channel, ts = event.get("channel"), event.get("ts")
    if not channel or not ts:
        return None
    raw_text = str(event.get("text") or "")
    mentioned = event.get("type") == "app_mention" or bool(bot_user_id and f"<@{bot_user_id}>" in raw_text)
    text = re.sub(r"<@[A-Z0-9]+(\|[^>]*)?>", "", raw_text).strip() if mentioned else raw_text.strip()
    thread_ts = event.get("thread_ts")
    team = str(body.get("team_id") or event.get("team") or "T0")
    channel_type = str(event.get("channel_type") or ("im" if str(channel).startswith("D") else "channel"))
    return Incoming(
        team=team,
        channel=str(channel),
        channel_type=channel_type,
        user=str(user),
        ts=str(ts),
        thread_ts=str(thread_ts or ts),
        in_thread=bool(thread_ts) and thread_ts != ts,
        text=text,
        files=tuple(f for f in event.get("files") or () if isinstance(f, dict)),
        mentioned=mentioned,
        event_id=str(body.get("event_id") or ""),
    )


def question_of(incoming: Incoming, max_chars: int) -> str:
    """The user's text as the question (the standard analysis when there is none), cut to `max_chars`."""
    text = incoming.text or (DEFAULT_QUESTION if incoming.files else "")
    text = _unslack(text)
    return text if len(text) <= max_chars else text[:max_chars].rstrip()


def _unslack(text: str) -> str:
    """Turn Slack's markup back into plain text: links, channel/user references and HTML entities."""
    text = re.sub(r"<(https?://[^|>]+)\|([^>]+)>", r"\2", text)
    text = re.sub(r"<(https?://[^>]+)>", r"\1", text)
    text = re.sub(r"<[#@!][^|>]*\|([^>]+)>", r"\1", text)
    text = re.sub(r"<[#@!][^>]*>", "", text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").strip()
