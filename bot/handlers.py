"""What the bot does with each kind of Slack request: messages, 👍/👎 clicks and `/wafer`.

`WaferBot.on_message` turns a message event into a queued question (a map upload is queued with its
file list; the worker downloads and checks the image, so a restart mid-download loses nothing),
reacting at once and posting the placeholder the answer will replace. Nothing slow happens
before Slack is acknowledged: Bolt acknowledges events before running these handlers, and the
slash command answers from local state plus one short status call.
"""

from __future__ import annotations

import asyncio
import logging
import time

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot import blocks, slack_io
from bot.config import BotConfig
from bot.events import Incoming, parse_event, question_of
from bot.store import BotStore
from bot.worker import QueueWorker
from data_tools.phrasing import is_acknowledgement
from model_server.client import ModelServerClient, ModelServerClientError

log = logging.getLogger("defect_glm.bot")

STATUS_TIMEOUT_S = 2.0
HINT = (
    "Send me a wafer-map image (upload it here, or mention me with it) and I will read it. "
    "Text with the image is your question. `/wafer help` for more."
)


class WaferBot:
    """The bot's behaviour, independent of how events arrive (Socket Mode or HTTP)."""

    def __init__(
        self,
        config: BotConfig,
        store: BotStore,
        slack: AsyncWebClient,
        model: ModelServerClient,
        worker: QueueWorker,
    ) -> None:
        self.config = config
        self.store = store
        self.slack = slack
        self.model = model
        self.worker = worker
        self.started_at = time.time()
        self.bot_user_id: str | None = None
        self.bot_id: str | None = None

    async def identify(self) -> None:
        """Learn the bot's own user id (auth.test) so its own messages are ignored."""
        auth = await self.slack.auth_test()
        self.bot_user_id = auth.get("user_id")
        self.bot_id = auth.get("bot_id")
        log.info("connected to Slack as %s (team %s)", auth.get("user"), auth.get("team_id"))

    # ------------------------------------------------------------ messages
    async def on_message(self, body: dict, event: dict) -> None:
        incoming = parse_event(body, event, self.bot_user_id, self.bot_id)
        if incoming is None or not self.config.allows_channel(incoming.channel, incoming.channel_type):
            return
        if incoming.files:
            action = "analyse"
        elif incoming.in_thread and await self._takes_part_in(incoming):
            # "thanks!" asks nothing: a reaction says it was seen, without another answer in the thread
            said = question_of(incoming, self.config.max_question_chars)
            action = "acknowledged" if is_acknowledgement(said) else "followup"
        elif incoming.mentioned or incoming.is_dm:
            action = "hint"
        else:
            return
        # Slack's retries share the event id; a mention arrives both as message and app_mention.
        if not self.store.first_time(*incoming.dedupe_keys):
            log.info("ignoring a repeat of %s (retry or second event for the same message)", incoming.dedupe_keys[-1])
            return
        try:
            if action == "hint":
                await slack_io.post_in_thread(self.slack, incoming.channel, incoming.thread_ts, HINT)
            elif action == "acknowledged":
                await slack_io.react(self.slack, incoming.channel, incoming.ts, slack_io.ACKNOWLEDGED)
            elif action == "analyse":
                await self._analyse(incoming)
            else:
                await self._queue(incoming, blocks.FOLLOWUP_PLACEHOLDER_TEXT)
        except SlackApiError as exc:
            log.error("could not reply to %s: %s", incoming.dedupe_keys[-1], exc.response.get("error"))

    async def _takes_part_in(self, incoming: Incoming) -> bool:
        """Whether the bot answers in this thread: known locally, or (after a lost database) it posted there."""
        if self.store.knows_thread(incoming.team, incoming.channel, incoming.thread_ts):
            return True
        try:
            resp = await self.slack.conversations_replies(channel=incoming.channel, ts=incoming.thread_ts, limit=50)
        except SlackApiError as exc:
            log.info("conversations.replies failed: %s", exc.response.get("error"))
            return False
        mine = any(
            (self.bot_user_id and m.get("user") == self.bot_user_id) or (self.bot_id and m.get("bot_id") == self.bot_id)
            for m in resp.get("messages") or []
        )
        if mine:
            self.store.touch_thread(incoming.team, incoming.channel, incoming.thread_ts)
        return mine

    async def _analyse(self, incoming: Incoming) -> None:
        # The upload is queued with its file list before anything is downloaded: the worker fetches the
        # image, so a crash or a restart mid-download loses nothing (Slack does not resend an acked event).
        await self._queue(incoming, blocks.PLACEHOLDER_TEXT, files=incoming.files)

    async def _queue(self, incoming: Incoming, placeholder: str, files: list[dict] | tuple[dict, ...] = ()) -> None:
        await slack_io.react(self.slack, incoming.channel, incoming.ts, slack_io.WORKING)
        placeholder_ts = await slack_io.post_in_thread(
            self.slack, incoming.channel, incoming.thread_ts, placeholder,
            blocks.notice_blocks(placeholder, ":hourglass:"),
        )
        question = question_of(incoming, self.config.max_question_chars)
        if not question:
            question = "Please continue."
        job = self.store.enqueue(
            team=incoming.team, channel=incoming.channel, thread_ts=incoming.thread_ts, message_ts=incoming.ts,
            user=incoming.user, question=question, image_sha256=None, keep_trying_s=self.config.retry_for_s,
            files=files,
        )
        self.store.set_placeholder(job.id, placeholder_ts)
        self.worker.wake()

    # ------------------------------------------------------------ feedback buttons
    async def on_feedback(self, body: dict) -> None:
        action = (body.get("actions") or [{}])[0]
        vote = "up" if action.get("action_id") == blocks.FEEDBACK_UP else "down"
        user = (body.get("user") or {}).get("id", "")
        answer_id = str(action.get("value") or "")
        channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
        message = body.get("message") or {}
        stored = bool(user and answer_id) and self.store.record_vote(answer_id, user, vote)
        text = blocks.feedback_thanks(vote) if stored else "Sorry, I no longer have that answer, so I could not record your vote."
        if channel and user:
            try:
                await self.slack.chat_postEphemeral(
                    channel=channel, user=user, text=text, thread_ts=message.get("thread_ts") or message.get("ts")
                )
            except SlackApiError as exc:
                log.warning("chat.postEphemeral failed: %s", exc.response.get("error"))

    # ------------------------------------------------------------ /wafer
    async def on_command(self, text: str) -> str:
        word = (text or "").strip().split(" ", 1)[0].lower()
        if word in ("", "help"):
            return blocks.help_text()
        if word == "status":
            return await self.status_text()
        return f"Unknown `/wafer {blocks.escape(word)}`. Try `/wafer help` or `/wafer status`."

    async def status_text(self) -> str:
        counts = self.store.queue_counts()
        lines = [
            f"*Bot uptime:* {_duration(time.time() - self.started_at)}",
            f"*Queue:* {counts['pending']} waiting, {counts['running']} in progress, "
            f"{counts['done']} answered, {counts['failed']} failed",
        ]
        try:
            status = await asyncio.wait_for(self.model.status(), STATUS_TIMEOUT_S)
        except (ModelServerClientError, TimeoutError) as exc:
            lines.insert(0, f"*Model server:* not reachable ({blocks.escape(type(exc).__name__)}) — "
                            "questions are queued until it is back")
        else:
            lines.insert(0, f"*Model:* {blocks.escape(status.model)} version {blocks.escape(status.model_version)} "
                            f"({blocks.escape(status.backend)}), {'ready' if status.ready else 'loading'}")
            lines.insert(1, f"*Model server:* up {_duration(status.uptime_s)}, "
                            f"{status.queue_depth}/{status.max_queue} requests waiting")
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s"
