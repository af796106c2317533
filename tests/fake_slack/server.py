"""A fake Slack for tests: Web API, file hosting, Socket Mode websocket and Events API delivery, with state.

It runs on 127.0.0.1 on an ephemeral port and implements what the bot calls — `auth.test`,
`chat.postMessage`, `chat.update`, `chat.postEphemeral`, `reactions.add/remove`,
`conversations.replies`, `files.info`, the three `files_upload_v2` steps and
`apps.connections.open` — plus `url_private` downloads that require the bot token (without it
Slack answers with an HTML login page, which the fake does too) and a websocket endpoint
that delivers Socket Mode envelopes and collects acknowledgements.

Tests drive it: `user_message(...)` makes a message event (and stores the message so
`conversations.replies` sees it), `add_file(...)` hosts a file, `send_socket(...)` /
`send_http(...)` deliver an event (HTTP with a valid — or deliberately wrong — signature and
optional `X-Slack-Retry-Num`), `rate_limit(method, times, retry_after)` makes the next calls
answer 429, and `wait_for(predicate)` waits for the bot to have done something.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

LOGIN_PAGE = b"<!DOCTYPE html><html><head><title>Slack</title></head><body>Sign in to Slack</body></html>"


@dataclass
class HostedFile:
    meta: dict
    content: bytes
    html_instead: bool = False  # answer downloads with a login page even with the token (no files:read)
    redirect_to: str | None = None  # answer downloads with a 302 to this URL


@dataclass
class ApiCall:
    method: str
    params: dict
    token: str | None
    at: float = field(default_factory=time.time)


class FakeSlack:
    """State plus an aiohttp server. Use `async with FakeSlack() as slack:`."""

    def __init__(
        self,
        bot_token: str = "xoxb-fake-bot-token-0001",
        app_token: str = "xapp-1-fake-app-token-0001",
        signing_secret: str = "fake-signing-secret-0001",
        team: str = "T0FAKE",
        bot_user_id: str = "UBOTFAKE",
        bot_id: str = "BBOTFAKE",
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.team = team
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.messages: list[dict] = []
        self.reactions: dict[tuple[str, str], list[str]] = {}
        self.reaction_log: list[tuple[str, str, str, str]] = []  # (op, channel, ts, name)
        self.ephemerals: list[dict] = []
        self.files: dict[str, HostedFile] = {}
        self.uploads: dict[str, dict] = {}
        self.calls: list[ApiCall] = []
        self.file_requests: list[tuple[str, str | None]] = []  # (path, Authorization header)
        self.download_gate: asyncio.Event | None = None  # set: downloads wait until it opens (a slow download)
        self.upload_requests: list[tuple[str, str | None]] = []  # files_upload_v2 step 2: (path, Authorization)
        self.rate_limits: dict[str, list[float]] = {}
        self.acks: dict[str, dict] = {}
        self._ack_events: dict[str, asyncio.Event] = {}
        self._sockets: list[web.WebSocketResponse] = []
        self._socket_connected = asyncio.Event()
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> FakeSlack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application(client_max_size=50 * 1024 * 1024)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_get("/api/{method}", self._api)
        app.router.add_get("/files/{file_id}/{name}", self._download)
        app.router.add_post("/upload/{upload_id}", self._upload)
        app.router.add_get("/ws", self._websocket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """What the bot's SLACK_API_URL should be."""
        return f"{self.base_url}/api/"

    @property
    def file_host(self) -> str:
        """What the bot's SLACK_FILE_HOSTS should be."""
        return "127.0.0.1"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a bot talking to this fake (Socket Mode unless overridden)."""
        env = {
            "SLACK_BOT_TOKEN": self.bot_token,
            "SLACK_APP_TOKEN": self.app_token,
            "SLACK_SIGNING_SECRET": self.signing_secret,
            "SLACK_API_URL": self.api_url,
            "SLACK_FILE_HOSTS": self.file_host,
        }
        env.update(extra)
        return env

    # ------------------------------------------------------------------ test-side helpers
    def next_ts(self) -> str:
        return f"{1_700_000_000 + next(self._ts)}.{next(self._ids):06d}"

    def add_file(
        self,
        content: bytes,
        name: str = "wafer.png",
        mimetype: str = "image/png",
        filetype: str | None = None,
        size: int | None = None,
        html_instead: bool = False,
        host: str | None = None,
        only_id: bool = False,
        redirect_to: str | None = None,
    ) -> dict:
        """Host a file; returns the `files[]` entry a message event carries (only the id if `only_id`).

        `html_instead`: downloads get the login page (a token without files:read); `host`: the
        `url_private` names this host instead of 127.0.0.1; `redirect_to`: downloads answer 302 there.
        """
        file_id = f"F{next(self._ids):08d}"
        base = f"http://{host}:{self.port}" if host else self.base_url
        meta = {
            "id": file_id,
            "name": name,
            "title": name,
            "mimetype": mimetype,
            "filetype": filetype or name.rsplit(".", 1)[-1].lower(),
            "size": len(content) if size is None else size,
            "url_private": f"{base}/files/{file_id}/{name}",
            "url_private_download": f"{base}/files/{file_id}/{name}?download=1",
        }
        self.files[file_id] = HostedFile(meta, content, html_instead, redirect_to)
        return {"id": file_id, "file_access": "check_file_info"} if only_id else dict(meta)

    def user_message(
        self,
        channel: str,
        text: str = "",
        files: list[dict] | None = None,
        thread_ts: str | None = None,
        user: str = "UALICE",
        channel_type: str = "channel",
        mention: bool = False,
        **extra: Any,
    ) -> dict:
        """Store a person's message and return the `message` event Slack would send for it."""
        ts = self.next_ts()
        if mention:
            text = f"<@{self.bot_user_id}> {text}".strip()
        event: dict[str, Any] = {
            "type": "message",
            "channel": channel,
            "channel_type": channel_type,
            "user": user,
            "text": text,
            "ts": ts,
            "event_ts": ts,
            "team": self.team,
        }
        if files:
            event["subtype"] = "file_share"
            event["files"] = files
        if thread_ts:
            event["thread_ts"] = thread_ts
        event.update(extra)
        self.messages.append({k: v for k, v in event.items() if k != "type"})
        return event

    def envelope(self, event: dict, event_id: str | None = None) -> dict:
        """The Events API `event_callback` body for `event`."""
        return {
            "token": "legacy-verification-token",
            "team_id": self.team,
            "api_app_id": "AFAKEAPP",
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(time.time()),
            "authorizations": [
                {"team_id": self.team, "user_id": self.bot_user_id, "is_bot": True, "is_enterprise_install": False}
            ],
        }

    def block_action(self, message: dict, action_id: str, value: str, user: str = "UALICE") -> dict:
        """The `block_actions` payload of a click on a button of `message`."""
        return {
            "type": "block_actions",
            "team": {"id": self.team},
            "user": {"id": user},
            "api_app_id": "AFAKEAPP",
            "container": {"type": "message", "message_ts": message["ts"], "channel_id": message["channel"]},
            "channel": {"id": message["channel"]},
            "message": {k: v for k, v in message.items() if k != "channel"},
            "trigger_id": "1.2.3",
            "actions": [{"type": "button", "action_id": action_id, "block_id": "feedback", "value": value,
                         "action_ts": str(time.time())}],
        }

    def slash_command(self, text: str, command: str = "/wafer", channel: str = "C0GENERAL", user: str = "UALICE") -> dict:
        return {
            "token": "legacy-verification-token", "team_id": self.team, "channel_id": channel, "user_id": user,
            "command": command, "text": text, "api_app_id": "AFAKEAPP", "response_url": f"{self.base_url}/respond",
            "trigger_id": "1.2.3",
        }

    def rate_limit(self, method: str, times: int = 1, retry_after: float = 1) -> None:
        """The next `times` calls of `method` answer 429 with `Retry-After: retry_after`."""
        self.rate_limits.setdefault(method, []).extend([retry_after] * times)

    # ------------------------------------------------------------------ queries
    def thread(self, channel: str, thread_ts: str) -> list[dict]:
        """Every message of a thread (parent first), as Slack would list it."""
        msgs = [m for m in self.messages if m["channel"] == channel and (m["ts"] == thread_ts or m.get("thread_ts") == thread_ts)]
        return sorted(msgs, key=lambda m: float(m["ts"]))

    def bot_replies(self, channel: str, thread_ts: str) -> list[dict]:
        return [m for m in self.thread(channel, thread_ts) if m.get("bot_id") == self.bot_id]

    def reactions_on(self, channel: str, ts: str) -> list[str]:
        return list(self.reactions.get((channel, ts), []))

    def calls_of(self, method: str) -> list[ApiCall]:
        return [c for c in self.calls if c.method == method]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 90.0, what: str = "condition") -> Any:
        """Poll `predicate` until it returns something truthy (returned); AssertionError after `timeout` s.

        The default is generous so a starved CPU (the tests share it with training runs) slows the
        tests down instead of failing them; a passing test never waits for the timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ delivering events
    async def wait_for_socket(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._socket_connected.wait(), timeout)

    async def _send_envelope(self, envelope: dict, timeout: float) -> dict:
        await self.wait_for_socket(timeout)
        env_id = envelope["envelope_id"]
        done = self._ack_events[env_id] = asyncio.Event()
        await self._sockets[-1].send_str(json.dumps(envelope))
        await asyncio.wait_for(done.wait(), timeout)
        return self.acks[env_id]

    async def send_socket(
        self, event: dict, event_id: str | None = None, retry_attempt: int = 0, timeout: float = 10.0
    ) -> tuple[dict, float]:
        """Deliver an event over Socket Mode; returns (the body delivered, seconds until acknowledged)."""
        body = self.envelope(event, event_id)
        envelope = {
            "envelope_id": str(uuid.uuid4()), "type": "events_api", "accepts_response_payload": False,
            "retry_attempt": retry_attempt, "retry_reason": "timeout" if retry_attempt else "", "payload": body,
        }
        start = time.monotonic()
        await self._send_envelope(envelope, timeout)
        return body, time.monotonic() - start

    async def send_socket_interactive(self, payload: dict, timeout: float = 10.0) -> dict:
        envelope = {"envelope_id": str(uuid.uuid4()), "type": "interactive", "accepts_response_payload": True,
                    "payload": payload}
        return await self._send_envelope(envelope, timeout)

    async def send_socket_command(self, command: dict, timeout: float = 10.0) -> dict:
        """A slash command over Socket Mode; returns the ack (its `payload` is the response)."""
        envelope = {"envelope_id": str(uuid.uuid4()), "type": "slash_commands", "accepts_response_payload": True,
                    "payload": command}
        return await self._send_envelope(envelope, timeout)

    def sign(self, body: str, timestamp: int | None = None, secret: str | None = None) -> dict[str, str]:
        timestamp = int(time.time()) if timestamp is None else timestamp
        base = f"v0:{timestamp}:{body}".encode()
        digest = hmac.new((secret or self.signing_secret).encode(), base, hashlib.sha256).hexdigest()
        return {"X-Slack-Request-Timestamp": str(timestamp), "X-Slack-Signature": f"v0={digest}"}

    async def post_http(
        self, url: str, body: str, content_type: str, retry_num: int | None = None, secret: str | None = None
    ) -> tuple[int, str, float]:
        """POST a signed request to the bot's HTTP endpoint; returns (status, body, seconds)."""
        assert self._session is not None
        headers = {"Content-Type": content_type, **self.sign(body, secret=secret)}
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        start = time.monotonic()
        async with self._session.post(url, data=body.encode(), headers=headers) as resp:
            text = await resp.text()
            return resp.status, text, time.monotonic() - start

    async def send_http(
        self, url: str, event: dict, event_id: str | None = None, retry_num: int | None = None,
        secret: str | None = None,
    ) -> tuple[dict, int, float]:
        """Deliver an event with the Events API; returns (body, HTTP status, seconds until answered)."""
        body = self.envelope(event, event_id)
        status, _, elapsed = await self.post_http(url, json.dumps(body), "application/json", retry_num, secret)
        return body, status, elapsed

    async def send_http_interactive(self, url: str, payload: dict) -> tuple[int, str]:
        status, text, _ = await self.post_http(
            url, urlencode({"payload": json.dumps(payload)}), "application/x-www-form-urlencoded"
        )
        return status, text

    async def send_http_command(self, url: str, command: dict) -> tuple[int, str, float]:
        return await self.post_http(url, urlencode(command), "application/x-www-form-urlencoded")

    # ------------------------------------------------------------------ server: Web API
    async def _params(self, request: web.Request) -> dict:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            ctype = request.content_type
            if ctype == "application/json":
                params.update(await request.json())
            else:
                params.update(await request.post())
        return params

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else params.pop("token", None)
        self.calls.append(ApiCall(method, {k: v for k, v in params.items() if k != "token"}, token))
        pending = self.rate_limits.get(method)
        if pending:
            retry_after = pending.pop(0)
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": f"{retry_after:g}"})
        wanted = self.app_token if method == "apps.connections.open" else self.bot_token
        if token != wanted:
            return web.json_response({"ok": False, "error": "invalid_auth" if token else "not_authed"})
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"})
        return web.json_response(await handler(params))

    @staticmethod
    def _json_param(value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    async def _m_auth_test(self, p: dict) -> dict:
        return {"ok": True, "url": f"{self.base_url}/", "team": "Fake Fab", "user": "defect-glm",
                "team_id": self.team, "user_id": self.bot_user_id, "bot_id": self.bot_id, "is_enterprise_install": False}

    async def _m_apps_connections_open(self, p: dict) -> dict:
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/ws"}

    def _find(self, channel: str, ts: str) -> dict | None:
        return next((m for m in self.messages if m["channel"] == channel and m["ts"] == ts), None)

    async def _m_chat_postMessage(self, p: dict) -> dict:
        channel = p.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not p.get("text") and not p.get("blocks"):
            return {"ok": False, "error": "no_text"}
        msg = {"channel": channel, "ts": self.next_ts(), "user": self.bot_user_id, "bot_id": self.bot_id,
               "text": p.get("text", ""), "blocks": self._json_param(p.get("blocks")) or [],
               "updated_at": time.time()}
        if p.get("thread_ts"):
            msg["thread_ts"] = p["thread_ts"]
        self.messages.append(msg)
        return {"ok": True, "channel": channel, "ts": msg["ts"], "message": msg}

    async def _m_chat_update(self, p: dict) -> dict:
        msg = self._find(p.get("channel", ""), p.get("ts", ""))
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        if msg.get("bot_id") != self.bot_id:
            return {"ok": False, "error": "cant_update_message"}
        msg["text"] = p.get("text", msg["text"])
        if "blocks" in p:
            msg["blocks"] = self._json_param(p["blocks"]) or []
        msg["edited"] = msg.get("edited", 0) + 1
        msg["updated_at"] = time.time()
        return {"ok": True, "channel": msg["channel"], "ts": msg["ts"], "text": msg["text"]}

    async def _m_chat_postEphemeral(self, p: dict) -> dict:
        self.ephemerals.append(dict(p))
        return {"ok": True, "message_ts": self.next_ts()}

    async def _m_reactions_add(self, p: dict) -> dict:
        key, name = (p.get("channel", ""), p.get("timestamp", "")), p.get("name", "")
        if self._find(*key) is None:
            return {"ok": False, "error": "message_not_found"}
        names = self.reactions.setdefault(key, [])
        if name in names:
            return {"ok": False, "error": "already_reacted"}
        names.append(name)
        self.reaction_log.append(("add", *key, name))
        return {"ok": True}

    async def _m_reactions_remove(self, p: dict) -> dict:
        key, name = (p.get("channel", ""), p.get("timestamp", "")), p.get("name", "")
        names = self.reactions.get(key, [])
        if name not in names:
            return {"ok": False, "error": "no_reaction"}
        names.remove(name)
        self.reaction_log.append(("remove", *key, name))
        return {"ok": True}

    async def _m_conversations_replies(self, p: dict) -> dict:
        msgs = self.thread(p.get("channel", ""), p.get("ts", ""))
        if not msgs:
            return {"ok": False, "error": "thread_not_found"}
        return {"ok": True, "messages": msgs, "has_more": False}

    async def _m_files_info(self, p: dict) -> dict:
        hosted = self.files.get(p.get("file", ""))
        if hosted is None:
            return {"ok": False, "error": "file_not_found"}
        return {"ok": True, "file": dict(hosted.meta)}

    async def _m_files_getUploadURLExternal(self, p: dict) -> dict:
        if not p.get("filename") or not str(p.get("length", "")).isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        upload_id = uuid.uuid4().hex
        file_id = f"F{next(self._ids):08d}"
        self.uploads[upload_id] = {"file_id": file_id, "filename": p["filename"], "length": int(p["length"]),
                                   "content": None}
        return {"ok": True, "upload_url": f"{self.base_url}/upload/{upload_id}", "file_id": file_id}

    async def _m_files_completeUploadExternal(self, p: dict) -> dict:
        files = self._json_param(p.get("files")) or []
        done = []
        for f in files:
            upload = next((u for u in self.uploads.values() if u["file_id"] == f.get("id")), None)
            if upload is None or upload["content"] is None:
                return {"ok": False, "error": "file_not_found"}
            meta = {"id": upload["file_id"], "name": upload["filename"], "title": f.get("title") or upload["filename"],
                    "mimetype": "image/png", "size": len(upload["content"])}
            self.files[upload["file_id"]] = HostedFile(meta, upload["content"])
            done.append(meta)
        channel = p.get("channel_id") or p.get("channels")
        if channel:
            msg = {"channel": channel, "ts": self.next_ts(), "user": self.bot_user_id, "bot_id": self.bot_id,
                   "text": p.get("initial_comment", ""), "files": done, "subtype": "file_share"}
            if p.get("thread_ts"):
                msg["thread_ts"] = p["thread_ts"]
            self.messages.append(msg)
        return {"ok": True, "files": [{"id": d["id"], "title": d["title"]} for d in done]}

    # ------------------------------------------------------------------ server: files
    async def _download(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        self.file_requests.append((request.path, auth))
        hosted = self.files.get(request.match_info["file_id"])
        if self.download_gate is not None:
            await self.download_gate.wait()
        if auth != f"Bearer {self.bot_token}" or (hosted is not None and hosted.html_instead):
            return web.Response(body=LOGIN_PAGE, content_type="text/html")
        if hosted is None:
            return web.Response(status=404, text="not found")
        if hosted.redirect_to:
            raise web.HTTPFound(hosted.redirect_to)
        return web.Response(body=hosted.content, content_type=hosted.meta["mimetype"])

    async def _upload(self, request: web.Request) -> web.Response:
        self.upload_requests.append((request.path, request.headers.get("Authorization")))
        upload = self.uploads.get(request.match_info["upload_id"])
        if upload is None:
            return web.Response(status=404, text="unknown upload")
        upload["content"] = await request.read()
        return web.Response(text=f"OK - {len(upload['content'])}")

    # ------------------------------------------------------------------ server: Socket Mode
    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_str(json.dumps({"type": "hello", "num_connections": len(self._sockets),
                                      "connection_info": {"app_id": "AFAKEAPP"}}))
        self._socket_connected.set()
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    env_id = data.get("envelope_id")
                    if env_id:
                        self.acks[env_id] = data
                        if env_id in self._ack_events:
                            self._ack_events[env_id].set()
        finally:
            self._sockets.remove(ws)
            if not self._sockets:
                self._socket_connected.clear()
        return ws
