"""The durable queue worker: sends queued questions to model_server and posts the answers in their threads.

Each job is one question in one Slack thread, stored in SQLite before the worker sees it.
The worker answers jobs of different threads concurrently (DEFECT_GLM_BOT_WORKERS) and the
jobs of one thread strictly in order. When model_server is down, times out or is
overloaded, the job stays queued: the user is told once that the answer is delayed, the
worker retries with exponential backoff (DEFECT_GLM_BOT_RETRY_INITIAL_S … _MAX_S), answers
in the same placeholder message when the server returns, and after
DEFECT_GLM_BOT_RETRY_FOR_S apologises instead. A restarted bot resumes every pending job.

Every attempt of a job sends the same idempotency key (`idempotency_key`), so a retry after a
time-out while the server was still answering gets that answer back instead of putting the
question into the thread's memory a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot import blocks, slack_io
from bot.config import BotConfig
from bot.files import FileRejected, download_image, pick_image_file
from bot.store import BotStore, Job
from model_server import wire
from model_server.client import ModelServerClient, ModelServerError, ModelServerUnavailable

log = logging.getLogger("defect_glm.bot.worker")

#: Plain messages for the server's refusals, by wire error code (the server's own message follows).
REFUSALS = {
    wire.CODE_NOT_A_WAFER_MAP: "This image does not look like a wafer map, so I did not analyse it.",
    wire.CODE_IMAGE_TOO_LARGE: "The image is larger than the model server accepts.",
    wire.CODE_IMAGE_TOO_MANY_PIXELS: "The image has more pixels than the model server accepts.",
    wire.CODE_UNSUPPORTED_IMAGE_FORMAT: "The model server cannot read this image format; please use PNG or JPEG.",
    wire.CODE_UNREADABLE_IMAGE: "The image could not be read.",
    wire.CODE_TEXT_TOO_LONG: "Your question is longer than the model accepts; please shorten it.",
}

MapUploader = Callable[[AsyncWebClient, Job, wire.ThreadReply], Awaitable[None]]


def idempotency_key(job: Job) -> str:
    """The key every attempt of `job` sends: the job id plus the Slack message it answers.

    The message timestamp keeps keys unique within a thread even when a bot with a new,
    empty database numbers its jobs from 1 again.
    """
    return f"job-{job.id}-{job.message_ts}"


class QueueWorker:
    """Runs until `stop()`: claims due jobs and answers them."""

    def __init__(
        self,
        config: BotConfig,
        store: BotStore,
        slack: AsyncWebClient,
        model: ModelServerClient,
        http: aiohttp.ClientSession,
        upload_map: MapUploader | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.slack = slack
        self.model = model
        self.upload_map = upload_map
        self.http = http  # downloads the images of queued map uploads
        self._wake = asyncio.Event()
        self._running: dict[asyncio.Task, str] = {}  # task → thread id (a thread is never worked on twice at once)
        self._loop_task: asyncio.Task | None = None
        self._last_cleanup = 0.0

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        resumed = self.store.resume_interrupted()
        if resumed:
            log.info("resuming %d question(s) interrupted by the last shutdown", resumed)
        self._loop_task = asyncio.create_task(self._loop(), name="defect-glm-bot-queue")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace_s: float = 3.0) -> None:
        """Stop claiming jobs, give the ones in flight `grace_s` to finish, then cancel the rest."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._running and grace_s > 0:
            await asyncio.wait(list(self._running), timeout=grace_s)
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        # Jobs cut off mid-flight are still 'running'; they are resumed on the next start.

    @property
    def busy(self) -> int:
        return len(self._running)

    # ------------------------------------------------------------ loop
    async def _loop(self) -> None:
        while True:
            try:
                self._cleanup()
                free = self.config.workers - len(self._running)
                if free > 0:
                    busy = frozenset(self._running.values())
                    for job in self.store.claim_due(limit=free, busy_threads=busy):
                        task = asyncio.create_task(self._run_job(job), name=f"defect-glm-job-{job.id}")
                        self._running[task] = job.thread_id
                        task.add_done_callback(self._job_done)
            except Exception:  # the loop must survive anything, e.g. a locked database
                log.exception("queue loop error; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            due = self.store.next_due_at()
            timeout = 30.0 if due is None else min(30.0, max(0.01, due - time.time()))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _job_done(self, task: asyncio.Task) -> None:
        self._running.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("job task crashed: %r", task.exception())
        self._wake.set()

    def _cleanup(self) -> None:
        now = time.time()
        if now - self._last_cleanup > 600:
            self._last_cleanup = now
            self.store.forget_seen_before(now - self.config.dedupe_ttl_s)

    # ------------------------------------------------------------ one job
    async def _run_job(self, job: Job) -> None:
        if job.files and job.image_sha256 is None:
            try:
                job = await self._fetch_image(job)
            except FileRejected as exc:
                log.info("job %d: refused the uploaded file (%s): %s", job.id, exc.reason, exc)
                await self._fail(job, str(exc), error=f"file {exc.reason}")
                return
        try:
            reply = await self._ask(job)
        except (ModelServerUnavailable, ModelServerError) as exc:
            if isinstance(exc, ModelServerUnavailable) or exc.retryable:
                await self._delay_or_give_up(job, exc)
            else:
                await self._refuse(job, exc)
            return
        except Exception as exc:
            log.exception("job %d failed unexpectedly", job.id)
            await self._fail(job, f"Something went wrong while answering ({type(exc).__name__}); please try again.")
            return
        try:
            await self._deliver(job, reply)
        except SlackApiError as exc:
            log.error("job %d: could not post the answer: %s", job.id, exc.response.get("error"))
            self.store.finish(job.id, "failed", f"slack: {exc.response.get('error')}")

    async def _fetch_image(self, job: Job) -> Job:
        """Download the image of a queued map upload into the store; the job with its image."""
        file = await pick_image_file(self.slack, list(job.files), self.config)
        data = await download_image(self.http, file, self.config)
        sha = self.store.put_image(data, file.name, file.mimetype or f"image/{file.filetype}")
        return self.store.set_job_image(job.id, sha)

    async def _ask(self, job: Job) -> wire.ThreadReply:
        image = self.store.image(job.image_sha256)
        if image is None:
            # A follow-up. If the server has forgotten the thread (restart, expiry) but we still hold its
            # map, send the map again so the follow-up is answered about it rather than without it.
            thread_image = self.store.image(self.store.thread_image(job.thread_id))
            if thread_image is not None:
                try:
                    await self.model.get_thread(job.thread_id)
                except ModelServerError as exc:
                    if exc.status != 404:
                        raise
                    image = thread_image
        return await self.model.send_message(
            job.thread_id,
            job.question,
            image=None if image is None else image.data,
            filename=None if image is None else image.name,
            idempotency_key=idempotency_key(job),
        )

    async def _deliver(self, job: Job, reply: wire.ThreadReply) -> None:
        target_ts = job.placeholder_ts
        if target_ts is None:
            target_ts = await slack_io.post_in_thread(self.slack, job.channel, job.thread_ts, blocks.PLACEHOLDER_TEXT)
        answer_id = self.store.record_answer(
            thread_id=job.thread_id,
            channel=job.channel,
            message_ts=target_ts,
            user=job.user,
            question=job.question,
            answer=reply.answer,
            findings=reply.findings.to_json() if reply.findings else {},
            image_sha256=job.image_sha256 or self.store.thread_image(job.thread_id),
            model=reply.model,
        )
        await slack_io.update_or_post(
            self.slack, job.channel, job.thread_ts, target_ts, blocks.answer_text(reply),
            blocks.answer_blocks(reply, answer_id),
        )
        self.store.finish(job.id, "done")
        await slack_io.finish_reactions(self.slack, job.channel, job.message_ts, ok=True, delayed=job.delayed_notice)
        if self.upload_map is not None and reply.findings is not None and job.image_sha256:
            try:
                await self.upload_map(self.slack, job, reply)
            except Exception as exc:  # the answer is already out; the picture is a bonus
                log.warning("job %d: uploading the map as read failed: %s", job.id, exc)

    async def _delay_or_give_up(self, job: Job, exc: Exception) -> None:
        now = time.time()
        reason = str(exc)
        if now >= job.deadline:
            log.warning("job %d: giving up after %d attempts: %s", job.id, job.attempts + 1, reason)
            minutes = self.config.retry_for_s / 60
            await self._fail(
                job,
                f"Sorry — the model server did not come back within {minutes:.0f} min, so I cannot answer this "
                "question. Please ask again later.",
                error=reason,
            )
            return
        delay = min(self.config.retry_max_s, self.config.retry_initial_s * (2 ** min(job.attempts, 30)))
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            delay = max(delay, min(float(retry_after), self.config.retry_max_s))
        at = min(now + delay, max(job.deadline, now))
        first = not job.delayed_notice
        self.store.retry_later(job.id, at, reason, delayed_notice=True)
        log.info("job %d: model server unavailable (%s); retry %d in %.1f s", job.id, reason, job.attempts + 1, delay)
        if first:
            minutes = max(1, round(self.config.retry_for_s / 60))
            text = (
                "The model server is not answering right now. Your question is queued and I will answer here "
                f"as soon as it is back (I keep trying for up to {minutes} min)."
            )
            try:
                ts = await slack_io.update_or_post(
                    self.slack, job.channel, job.thread_ts, job.placeholder_ts, text,
                    blocks.notice_blocks(text, ":hourglass_flowing_sand:"),
                )
                if ts != job.placeholder_ts:
                    self.store.set_placeholder(job.id, ts)
                await slack_io.react(self.slack, job.channel, job.message_ts, slack_io.DELAYED)
            except SlackApiError as slack_exc:
                log.warning("job %d: could not post the delay notice: %s", job.id, slack_exc.response.get("error"))

    async def _refuse(self, job: Job, exc: ModelServerError) -> None:
        lead = REFUSALS.get(exc.code)
        if lead is None:
            lead = "The model could not answer this question" + (
                f" (request id {exc.request_id})." if exc.request_id else "."
            )
        detail = blocks.escape(exc.message.strip())
        await self._fail(job, f"{lead}\n>{detail}" if detail else lead, error=f"{exc.status} {exc.code}")

    async def _fail(self, job: Job, text: str, error: str | None = None) -> None:
        self.store.finish(job.id, "failed", error or text)
        try:
            await slack_io.update_or_post(
                self.slack, job.channel, job.thread_ts, job.placeholder_ts, text, blocks.notice_blocks(text, ":x:")
            )
        except SlackApiError as exc:
            log.error("job %d: could not post the failure notice: %s", job.id, exc.response.get("error"))
        await slack_io.finish_reactions(self.slack, job.channel, job.message_ts, ok=False, delayed=job.delayed_notice)
