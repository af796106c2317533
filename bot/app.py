"""Wiring and running the Slack app: slack-bolt `AsyncApp`, Socket Mode or HTTP mode, the queue worker.

`BotRuntime(config)` owns every resource (SQLite store, Slack client, model_server client,
HTTP session for downloads, queue worker) and starts in one of two modes:

* Socket Mode (default, `SLACK_APP_TOKEN`): a websocket to Slack opened with
  `apps.connections.open`; no public URL needed.
* HTTP mode (`SLACK_SIGNING_SECRET`): an aiohttp server with `POST /slack/events` (signatures
  verified by Bolt) and `GET /healthz`, on `PORT` (0: any free port, see `runtime.port`).

`run_bot(config)` runs until interrupted; tests use `async with BotRuntime(config)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.aiohttp import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncAck, AsyncApp

from bot import blocks
from bot.config import BotConfig
from bot.handlers import WaferBot
from bot.map_upload import upload_map_as_read
from bot.slack_client import make_web_client
from bot.store import BotStore
from bot.worker import QueueWorker
from model_server.client import ModelServerClient

log = logging.getLogger("defect_glm.bot")


def build_bolt_app(config: BotConfig, bot: WaferBot) -> AsyncApp:
    """The Bolt app with every listener the manifest subscribes to."""
    app = AsyncApp(
        client=bot.slack,  # carries the bot token and SLACK_API_URL
        signing_secret=config.signing_secret or "",
        # Socket Mode requests are authenticated by the websocket itself; HTTP ones by signature.
        request_verification_enabled=config.mode == "http",
        ignoring_self_events_enabled=True,
        logger=logging.getLogger("defect_glm.bot.bolt"),
    )

    @app.event("message")
    async def on_message(body: dict, event: dict) -> None:
        await bot.on_message(body, event)

    @app.event("app_mention")
    async def on_mention(body: dict, event: dict) -> None:
        await bot.on_message(body, event)

    @app.action(blocks.FEEDBACK_UP)
    @app.action(blocks.FEEDBACK_DOWN)
    async def on_feedback(ack: AsyncAck, body: dict) -> None:
        await ack()
        await bot.on_feedback(body)

    @app.command("/wafer")
    async def on_wafer(ack: AsyncAck, command: dict) -> None:
        text = await bot.on_command(str(command.get("text") or ""))
        await ack(response_type="ephemeral", text=text)

    return app


class BotRuntime:
    """Everything a running bot holds; `start()` / `stop()` or `async with`."""

    def __init__(self, config: BotConfig) -> None:
        self.config = config
        self.store: BotStore | None = None
        self.bot: WaferBot | None = None
        self.worker: QueueWorker | None = None
        self.app: AsyncApp | None = None
        self.port: int | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._model: ModelServerClient | None = None

    async def __aenter__(self) -> BotRuntime:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        cfg = self.config
        self.store = BotStore(cfg.db_path)
        slack = make_web_client(cfg)
        self._http = aiohttp.ClientSession()
        self._model = ModelServerClient(cfg.server_url, timeout=cfg.server_timeout_s)
        self.worker = QueueWorker(
            cfg, self.store, slack, self._model, self._http, upload_map=upload_map_as_read if cfg.upload_map else None
        )
        self.bot = WaferBot(cfg, self.store, slack, self._model, self.worker)
        try:
            await self.bot.identify()
            self.app = build_bolt_app(cfg, self.bot)
            self.worker.start()
            if cfg.mode == "socket":
                self._socket = AsyncSocketModeHandler(self.app, app_token=cfg.app_token, web_client=slack)
                await self._socket.connect_async()
                log.info("Socket Mode connected")
            else:
                self._runner = web.AppRunner(self._http_app(), access_log=None)
                await self._runner.setup()
                site = web.TCPSite(self._runner, cfg.host, cfg.port)
                await site.start()
                self.port = _bound_port(self._runner, cfg.port)
                log.info("HTTP mode: POST http://%s:%d/slack/events", cfg.host, self.port)
        except BaseException:
            await self.stop()
            raise

    def _http_app(self) -> web.Application:
        assert self.app is not None
        bolt = self.app

        async def events(request: web.Request) -> web.Response:
            bolt_request = await to_bolt_request(request)
            return await to_aiohttp_response(await bolt.async_dispatch(bolt_request))

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "queue": self.store.queue_counts() if self.store else {}})

        web_app = web.Application(client_max_size=1024 * 1024)
        web_app.router.add_post("/slack/events", events)
        web_app.router.add_get("/healthz", healthz)
        return web_app

    async def stop(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close_async()
            self._socket = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.worker is not None:
            await self.worker.stop()
        if self._model is not None:
            await self._model.close()
        if self._http is not None:
            await self._http.close()
        if self.bot is not None:
            with contextlib.suppress(Exception):
                await self.bot.slack.session.close() if self.bot.slack.session else None
        if self.store is not None:
            self.store.close()
            self.store = None


def _bound_port(runner: web.AppRunner, configured: int) -> int:
    for site in runner.sites:
        server: Any = getattr(site, "_server", None)
        if server is not None and server.sockets:
            return int(server.sockets[0].getsockname()[1])
    return configured


async def run_bot(config: BotConfig) -> None:
    """Run until SIGINT/SIGTERM; queued questions survive and resume on the next start."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with BotRuntime(config):
        await stop.wait()
    log.info("bot stopped")
