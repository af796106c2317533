"""The server's error type and its JSON rendering: every failure leaves as ``{"error": {...}}``."""

from __future__ import annotations

from aiohttp import web

from model_server import wire


class ApiError(Exception):
    """A request the server answers with an error status and a JSON body; never a crash."""

    def __init__(
        self, status: int, type: str, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def __reduce__(self) -> tuple:  # rebuilt whole when raised in an image reader process
        return type(self), (self.status, self.type, self.code, self.message, self.headers)

    def response(self, request_id: str | None = None) -> web.Response:
        return error_response(self.status, self.type, self.code, self.message, request_id, self.headers)


def error_response(
    status: int,
    type: str,
    code: str,
    message: str,
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    out = dict(headers or {})
    if request_id:
        out[wire.REQUEST_ID_HEADER] = request_id
    return web.json_response(wire.ErrorBody(message, type, code).to_json(), status=status, headers=out)


def bad_request(code: str, message: str) -> ApiError:
    return ApiError(400, wire.INVALID_REQUEST, code, message)
