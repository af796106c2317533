"""An async HTTP client for the server's thread API, used by the Slack bot and `defect-glm chat`.

    async with ModelServerClient("http://127.0.0.1:8080", timeout=60) as client:
        reply = await client.send_message("C1:1700000000.0001", "What defects?", image=png_bytes)
        print(reply.answer, reply.findings.patterns)

A reply from the server with an error status raises `ModelServerError` (status, type, code,
message, retry_after, request_id); a server that cannot be reached or does not answer within
the timeout raises `ModelServerUnavailable`. Both derive from `ModelServerClientError`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import aiohttp

from model_server import wire


class ModelServerClientError(Exception):
    """Base of every error this client raises."""


class ModelServerUnavailable(ModelServerClientError):
    """The server could not be reached, or did not answer within the timeout."""


class ModelServerError(ModelServerClientError):
    """The server answered with an error (``{"error": {"message", "type", "code"}}``)."""

    def __init__(
        self,
        status: int,
        type: str,
        code: str,
        message: str,
        retry_after: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"model server {status} {type}/{code}: {message}")
        self.status = status
        self.type = type
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.request_id = request_id

    @property
    def retryable(self) -> bool:
        """Worth trying again later: queue full (429), model not ready or reloading (503), gateway errors."""
        return self.status in (429, 502, 503, 504)


def _retry_after(headers: Any) -> float | None:
    raw = headers.get(wire.RETRY_AFTER_HEADER)
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


class ModelServerClient:
    """Talks to one model server; reuse one instance (it keeps a connection pool)."""

    def __init__(self, base_url: str, timeout: float = 120.0, session: aiohttp.ClientSession | None = None) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout}")
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> ModelServerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None if self._own_session else self._session

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
            self._own_session = True
        return self._session

    @staticmethod
    def _thread_path(thread_id: str) -> str:
        if not wire.valid_thread_id(thread_id):
            raise ValueError(
                f"thread id {thread_id!r} is not valid: use 1-128 characters from letters, digits and . _ : @ -"
            )
        return f"/v1/threads/{quote(thread_id, safe='')}"

    async def _request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any, Any]:
        url = self.base_url + path
        try:
            async with self._get_session().request(
                method, url, timeout=aiohttp.ClientTimeout(total=self.timeout), **kwargs
            ) as resp:
                raw = await resp.read()
                status, headers = resp.status, resp.headers
        except TimeoutError as exc:
            raise ModelServerUnavailable(f"model server at {self.base_url} did not answer within {self.timeout:g} s") from exc
        except aiohttp.ClientError as exc:
            raise ModelServerUnavailable(f"model server at {self.base_url} is unreachable: {exc}") from exc
        try:
            data = wire.loads(raw) if raw else None
        except ValueError:
            data = None
        if status >= 400:
            request_id = headers.get(wire.REQUEST_ID_HEADER)
            try:
                err = wire.ErrorBody.from_json(data)
            except wire.WireFormatError:
                err = wire.ErrorBody(
                    message=raw[:300].decode("utf-8", "replace") or f"HTTP {status}",
                    type=wire.SERVER_ERROR if status >= 500 else wire.INVALID_REQUEST,
                    code="http_error",
                )
            raise ModelServerError(status, err.type, err.code, err.message, _retry_after(headers), request_id)
        if data is None and raw:
            raise ModelServerError(status, wire.SERVER_ERROR, "invalid_response", f"not JSON: {raw[:200]!r}")
        return status, data, headers

    # ------------------------------------------------------------------ thread API
    async def send_message(
        self,
        thread_id: str,
        text: str,
        image: bytes | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
    ) -> wire.ThreadReply:
        """Add a user message (and optionally the wafer image) to a thread and get the answer.

        `idempotency_key` (sent as the ``Idempotency-Key`` header) names this one message: send
        the same key again when retrying after a time-out and the server answers from the first
        request (waiting for it if still running) instead of storing the question twice.
        """
        path = self._thread_path(thread_id) + "/messages"
        headers: dict[str, str] = {}
        if idempotency_key is not None:
            if not wire.valid_idempotency_key(idempotency_key):
                raise ValueError(
                    f"idempotency key {idempotency_key[:300]!r} is not valid: use 1-{wire.MAX_IDEMPOTENCY_KEY_CHARS} "
                    "visible ASCII characters (no spaces)"
                )
            headers[wire.IDEMPOTENCY_KEY_HEADER] = idempotency_key
        if image is None:
            _, data, _ = await self._request("POST", path, json=wire.MessageRequest(text).to_json(), headers=headers)
        else:
            form = aiohttp.FormData()
            form.add_field(wire.FIELD_TEXT, text)
            form.add_field(wire.FIELD_IMAGE, image, filename=filename or "wafer.png",
                           content_type="application/octet-stream")
            _, data, _ = await self._request("POST", path, data=form, headers=headers)
        try:
            return wire.ThreadReply.from_json(data)
        except wire.WireFormatError as exc:
            raise ModelServerError(200, wire.SERVER_ERROR, "invalid_response", str(exc)) from exc

    async def get_thread(self, thread_id: str) -> wire.ThreadView:
        """The stored conversation; raises ModelServerError(404, code='thread_not_found') if unknown."""
        _, data, _ = await self._request("GET", self._thread_path(thread_id))
        return wire.ThreadView.from_json(data)

    async def delete_thread(self, thread_id: str) -> bool:
        """Forget a thread and its image. True if it existed."""
        try:
            _, data, _ = await self._request("DELETE", self._thread_path(thread_id))
        except ModelServerError as exc:
            if exc.status == 404:
                return False
            raise
        return bool(data.get("deleted", True)) if isinstance(data, dict) else True

    # ------------------------------------------------------------------ service
    async def health(self) -> bool:
        """True if the server process answers /healthz (False when unreachable)."""
        try:
            await self._request("GET", "/healthz")
        except ModelServerClientError:
            return False
        return True

    async def ready(self) -> bool:
        """True if the model is loaded and requests will be answered (False when unreachable or loading)."""
        try:
            await self._request("GET", "/readyz")
        except ModelServerClientError:
            return False
        return True

    async def status(self) -> wire.ServerStatus:
        """Model name and version, queue depth, uptime (raises when unreachable)."""
        _, data, _ = await self._request("GET", "/v1/status")
        return wire.ServerStatus.from_json(data)
