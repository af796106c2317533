"""The bot's retries carry one idempotency key per job, so a slow model server stores each question once.

The real bot (slack-bolt, Socket Mode) talks to the fake Slack and to a real model server whose
backend (`_Held`, a small Backend) holds its answers until the test lets them go. The bot's
first attempt times out while the server is still generating; its retries send the same key,
wait on the server for the first request and get its answer: the thread's memory holds the
question once and the user sees the first generation's answer.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from fake_slack import FakeSlack
from fake_slack.harness import bot_config
from fake_slack.maps import wafer_png

from bot.app import BotRuntime
from bot.store import Job, thread_id_of
from bot.worker import idempotency_key
from model_server import wire
from model_server.backends.base import Backend, BackendInfo, GenerationRequest
from model_server.config import ServerConfig
from model_server.testing import running_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
CHANNEL = "C0GENERAL"


class _Held(Backend):
    """Answers "#<n>: <question>" (n counts every request) once `gate` is open."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.asked: list[str] = []

    @property
    def info(self) -> BackendInfo:
        return BackendInfo("held", "1", "test")

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        self.started.set()
        if not self.gate.wait(120):
            raise RuntimeError("gate never opened")
        answers = []
        for r in requests:
            self.asked.append(r.question)
            answers.append(f"#{len(self.asked)}: {r.question}")
        return answers


def test_a_retry_after_a_time_out_is_not_stored_twice(tmp_path: Path) -> None:
    backend = _Held()

    async def go() -> None:
        server_config = ServerConfig(port=0, db=tmp_path / "server.sqlite3", max_wait_ms=0, web_dir=None)
        async with FakeSlack() as fake, running_server(server_config, backend) as server:
            config = bot_config(fake, server.url, tmp_path / "bot.sqlite3", server_timeout_s=0.5,
                                retry_initial_s=0.2, retry_max_s=0.5, retry_for_s=120)
            try:
                async with BotRuntime(config) as runtime:
                    await fake.wait_for_socket()
                    event = fake.user_message(CHANNEL, "where are the defects?", files=[fake.add_file(wafer_png())])
                    await fake.send_socket(event)
                    # the first attempt timed out while the model was generating (reading the map comes first)
                    await fake.wait_for(lambda: "hourglass_flowing_sand" in fake.reactions_on(CHANNEL, event["ts"]),
                                        what="the delay marker after the time-out")
                    await fake.wait_for(backend.started.is_set, what="the model working on the question")
                    assert backend.asked == []
                    assert runtime.worker is not None
                    await asyncio.sleep(1.5)  # more attempts time out and wait behind the first on the server
                    runtime.worker.model.timeout = 120.0  # the next attempt may wait for the model
                    backend.gate.set()
                    (answer,) = await fake.wait_for(
                        lambda: [m for m in fake.bot_replies(CHANNEL, event["ts"])
                                 if any(b["type"] == "actions" for b in m.get("blocks", []))],
                        what="the answer")
            finally:
                backend.gate.set()  # never leave the model worker blocked at shutdown
            thread_id = thread_id_of(fake.team, CHANNEL, event["ts"])
            stored = server.state.memory.get(thread_id)
            assert stored is not None, f"no thread {thread_id} on the server"
            # the question and the recognition question of the new map, asked once
            assert backend.asked == ["where are the defects?", "What defects does this wafer show?"]
            assert [(t.role, t.text) for t in stored.turns] == [("user", "where are the defects?"),
                                                                ("assistant", "#1: where are the defects?")]
            assert "#1: where are the defects?" in answer["text"]  # the first generation's answer, not a retry's
            assert len(fake.bot_replies(CHANNEL, event["ts"])) == 1

    asyncio.run(asyncio.wait_for(go(), 270))


def test_every_attempt_of_a_job_uses_one_valid_key() -> None:
    job = Job(id=7, thread_id="T1:C1:1700000000.000100", team="T1", channel="C1", thread_ts="1700000000.000100",
              message_ts="1700000001.000200", user="U1", question="q", image_sha256=None, placeholder_ts=None,
              status="running", attempts=0, next_attempt_at=0.0, deadline=1.0, delayed_notice=False,
              last_error=None, created_at=0.0)
    retried = Job(**{**job.__dict__, "attempts": 3, "delayed_notice": True, "placeholder_ts": "1700000002.0"})
    renumbered = Job(**{**job.__dict__, "message_ts": "1700000009.000300"})  # job 7 of a bot with a fresh database
    assert idempotency_key(job) == idempotency_key(retried)
    assert idempotency_key(job) != idempotency_key(renumbered)
    assert wire.valid_idempotency_key(idempotency_key(job))
