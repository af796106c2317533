"""Small, failure-tolerant wrappers for the Slack calls the bot makes about one thread.

A failed reaction must never stop an answer, so reactions swallow Slack errors (logged);
posting and updating raise `SlackApiError` to the caller, who decides.
"""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

log = logging.getLogger("defect_glm.bot.slack")

WORKING = "eyes"
SUCCESS = "white_check_mark"
FAILURE = "x"
DELAYED = "hourglass_flowing_sand"
#: On a reply in a thread that only acknowledges an answer ("thanks!", "ok got it"), instead of an answer.
ACKNOWLEDGED = "+1"


async def react(client: AsyncWebClient, channel: str, ts: str, name: str) -> None:
    try:
        await client.reactions_add(channel=channel, timestamp=ts, name=name)
    except SlackApiError as exc:
        if exc.response.get("error") != "already_reacted":
            log.warning("reactions.add %s failed: %s", name, exc.response.get("error"))


async def unreact(client: AsyncWebClient, channel: str, ts: str, name: str) -> None:
    try:
        await client.reactions_remove(channel=channel, timestamp=ts, name=name)
    except SlackApiError as exc:
        if exc.response.get("error") != "no_reaction":
            log.warning("reactions.remove %s failed: %s", name, exc.response.get("error"))


async def finish_reactions(client: AsyncWebClient, channel: str, ts: str, ok: bool, delayed: bool = False) -> None:
    """Replace the working reaction (and the delay marker) with the final success or failure one."""
    await unreact(client, channel, ts, WORKING)
    if delayed:
        await unreact(client, channel, ts, DELAYED)
    await react(client, channel, ts, SUCCESS if ok else FAILURE)


async def post_in_thread(
    client: AsyncWebClient, channel: str, thread_ts: str, text: str, blocks: list[dict[str, Any]] | None = None
) -> str:
    """Post a reply in the thread; returns its ts."""
    resp = await client.chat_postMessage(channel=channel, thread_ts=thread_ts, text=text, blocks=blocks)
    return str(resp["ts"])


async def update_or_post(
    client: AsyncWebClient,
    channel: str,
    thread_ts: str,
    ts: str | None,
    text: str,
    blocks: list[dict[str, Any]] | None = None,
) -> str:
    """Update the placeholder `ts` in place; post a new reply when there is none or it is gone."""
    if ts:
        try:
            await client.chat_update(channel=channel, ts=ts, text=text, blocks=blocks or [])
            return ts
        except SlackApiError as exc:
            if exc.response.get("error") not in ("message_not_found", "cant_update_message", "edit_window_closed"):
                raise
            log.info("placeholder %s could not be updated (%s); posting a new reply", ts, exc.response.get("error"))
    return await post_in_thread(client, channel, thread_ts, text, blocks)
