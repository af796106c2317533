"""Running the real pieces together for end-to-end tests and the latency benchmark.

`ModelServer` runs the real model_server (`model_server.app.create_app`) on 127.0.0.1 in the
current event loop and can be stopped and started again on the same port (to test the bot's
queue while the server is down). `bot_config(...)` builds the bot's settings for a fake Slack.
`Delivery` sends events, clicks and commands the way the bot's mode receives them (Socket Mode
websocket or signed HTTP), so one test body runs in both modes.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

from aiohttp import web

from bot.config import BotConfig
from fake_slack.server import FakeSlack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ModelServer:
    """The real model server in this event loop; `url` stays the same across stop/start."""

    def __init__(self, model_dir: Path, db: Path, **overrides: object) -> None:
        self.model_dir = Path(model_dir)
        self.db = Path(db)
        self.overrides = overrides
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, ready_timeout: float = 120.0) -> None:
        from model_server.app import create_app
        from model_server.client import ModelServerClient
        from model_server.config import ServerConfig

        # The model in the server's own process: these tests are about the bot (the model process has its own).
        options = {"host": "127.0.0.1", "port": self.port, "model": self.model_dir, "db": self.db, "web_dir": None,
                   "max_new_tokens": 24, "log_level": "WARNING", "model_process": False}
        options.update(self.overrides)
        config = ServerConfig(**options)  # type: ignore[arg-type]
        self._runner = web.AppRunner(create_app(config), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        async with ModelServerClient(self.url, timeout=5) as client:
            deadline = time.monotonic() + ready_timeout
            while not await client.ready():
                if time.monotonic() > deadline:
                    raise AssertionError(f"model server did not become ready within {ready_timeout:g} s")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ModelServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def bot_config(fake: FakeSlack, server_url: str, db: Path, mode: str = "socket", **overrides: object) -> BotConfig:
    """Bot settings pointing at the fake Slack and a model server; fast retries for tests."""
    env = fake.env(DEFECT_GLM_SERVER_URL=server_url, DEFECT_GLM_BOT_DB=str(db), DEFECT_GLM_BOT_MODE=mode)
    if mode == "http":
        env["PORT"] = "0"
        env["DEFECT_GLM_BOT_HOST"] = "127.0.0.1"
    # A long server time-out: a starved CPU must not turn a slow answer into a time-out and a retry.
    values: dict[str, object] = {"retry_initial_s": 0.2, "retry_max_s": 0.5, "server_timeout_s": 120.0}
    values.update(overrides)
    return BotConfig.from_env(env, **values)


class Delivery:
    """Deliver events, button clicks and slash commands to a running bot the way its mode receives them.

    Socket Mode: envelopes over the fake's websocket (acknowledged by the bot). HTTP mode: signed
    POSTs to the bot's `/slack/events`. Each method returns what the tests need in both modes.
    """

    def __init__(self, fake: FakeSlack, mode: str, port: int | None = None) -> None:
        self.fake = fake
        self.mode = mode
        self.url = f"http://127.0.0.1:{port}/slack/events" if mode == "http" else ""

    async def ready(self) -> None:
        if self.mode == "socket":
            await self.fake.wait_for_socket()

    async def event(self, event: dict, event_id: str | None = None, retry: int = 0) -> tuple[dict, float]:
        """(the Events API body delivered, seconds until Slack had its acknowledgement)."""
        if self.mode == "socket":
            return await self.fake.send_socket(event, event_id=event_id, retry_attempt=retry)
        body, status, seconds = await self.fake.send_http(self.url, event, event_id, retry or None)
        assert status == 200, f"the bot answered HTTP {status} to an event"
        return body, seconds

    async def action(self, payload: dict) -> None:
        if self.mode == "socket":
            await self.fake.send_socket_interactive(payload)
        else:
            status, _ = await self.fake.send_http_interactive(self.url, payload)
            assert status == 200, f"the bot answered HTTP {status} to a button click"

    async def command(self, text: str) -> tuple[str, float]:
        """(the `/wafer` response text, seconds until it came back)."""
        start = time.monotonic()
        if self.mode == "socket":
            ack = await self.fake.send_socket_command(self.fake.slash_command(text))
            return str(ack["payload"]["text"]), time.monotonic() - start
        status, body, seconds = await self.fake.send_http_command(self.url, self.fake.slash_command(text))
        assert status == 200, f"the bot answered HTTP {status} to /wafer {text}"
        return str(json.loads(body)["text"]), seconds
