"""The wire format of the thread API: the one definition of every JSON shape clients and server exchange.

The Slack bot, `defect-glm chat`, the web page and the server all import these shapes
from here, so a field is named in exactly one place.

Thread API::

    POST   /v1/threads/{thread_id}/messages   multipart (text, optional image file)
                                              or JSON {"text", "image": base64}   -> ThreadReply
    GET    /v1/threads/{thread_id}                                                 -> ThreadView
    DELETE /v1/threads/{thread_id}                                                 -> {"thread_id", "deleted"}
    GET    /v1/status                                                              -> ServerStatus
    GET    /healthz, /readyz                                                       -> {"status", ...}

Every error, on every route, is ``{"error": {"message", "type", "code"}}`` (see `ErrorBody`);
the ``type`` and ``code`` values are the constants below. Responses carry the request id in the
``X-Request-Id`` header; 429 and 503 carry ``Retry-After``.

A message POST may carry an ``Idempotency-Key`` header (`IDEMPOTENCY_KEY_HEADER`): a repeat of
the same key on the same thread is answered with the stored reply of the first request (waiting
for it if it is still being answered) instead of being asked and stored again; such a reply
carries ``Idempotent-Replayed: true``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

import orjson


# ------------------------------------------------------------------ JSON text
def dumps(data: Any) -> str:
    """`data` as compact UTF-8 JSON text, through orjson (every reply carries a die grid: thousands of numbers).

    NaN and infinities are written as null, so the text is JSON any client reads."""
    try:
        return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # what orjson refuses (e.g. an int over 64 bits) the standard library may still write
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def loads(raw: str | bytes) -> Any:
    """The value of JSON text; ValueError if it is not JSON. Accepts the NaN and Infinity that
    Python's json module writes, as in rows stored by earlier versions."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


# ------------------------------------------------------------------ request fields and headers
FIELD_TEXT = "text"
FIELD_IMAGE = "image"
REQUEST_ID_HEADER = "X-Request-Id"
RETRY_AFTER_HEADER = "Retry-After"
#: A client's key for one logical message: a retry with the same key is answered once, from memory.
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
#: Set to "true" on a reply that was replayed from an earlier request with the same idempotency key.
IDEMPOTENT_REPLAYED_HEADER = "Idempotent-Replayed"
#: The longest accepted idempotency key, in characters.
MAX_IDEMPOTENCY_KEY_CHARS = 255

#: Thread ids: Slack's "C0123:1700000000.000100" style, UUIDs, anything URL-safe up to 128 chars.
THREAD_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
#: Idempotency keys: 1-255 visible ASCII characters (no spaces or control characters), e.g. a UUID.
IDEMPOTENCY_KEY_PATTERN = re.compile(rf"^[\x21-\x7e]{{1,{MAX_IDEMPOTENCY_KEY_CHARS}}}$")

# ------------------------------------------------------------------ error types (the "type" field)
INVALID_REQUEST = "invalid_request_error"  # 400, 413, 415: the request is malformed or over a limit
NOT_A_WAFER_MAP = "not_a_wafer_map_error"  # 422: the image is readable but is not a wafer map
NOT_FOUND = "not_found_error"  # 404
AUTHENTICATION = "authentication_error"  # 401: missing or wrong admin token
RATE_LIMIT = "rate_limit_error"  # 429: queue full, retry after Retry-After seconds
SERVER_ERROR = "server_error"  # 500: the model failed; the message carries the request id
UNAVAILABLE = "service_unavailable_error"  # 503: model not loaded yet / reloading failed

# ------------------------------------------------------------------ error codes (the "code" field)
CODE_INVALID_JSON = "invalid_json"
CODE_INVALID_FIELD = "invalid_field"
CODE_MISSING_TEXT = "missing_text"
CODE_TEXT_TOO_LONG = "text_too_long"
CODE_INVALID_THREAD_ID = "invalid_thread_id"
CODE_INVALID_IDEMPOTENCY_KEY = "invalid_idempotency_key"  # 400: the Idempotency-Key header is malformed
CODE_IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"  # 422: the key was used for a different question
CODE_INVALID_BASE64 = "invalid_base64"
CODE_IMAGE_TOO_LARGE = "image_too_large"
CODE_IMAGE_TOO_MANY_PIXELS = "image_too_many_pixels"
CODE_UNSUPPORTED_IMAGE_FORMAT = "unsupported_image_format"
CODE_UNREADABLE_IMAGE = "unreadable_image"
CODE_REQUEST_TOO_LARGE = "request_too_large"
CODE_NOT_A_WAFER_MAP = "not_a_wafer_map"
CODE_THREAD_NOT_FOUND = "thread_not_found"
CODE_ROUTE_NOT_FOUND = "route_not_found"
CODE_METHOD_NOT_ALLOWED = "method_not_allowed"
CODE_MODEL_NOT_FOUND = "model_not_found"
CODE_UNAUTHORIZED = "unauthorized"
CODE_QUEUE_FULL = "queue_full"
CODE_MODEL_ERROR = "model_error"
CODE_IMAGE_READER_CRASHED = "image_reader_crashed"  # 500: reading the image stopped the reader process twice
CODE_INTERNAL = "internal_error"
CODE_NOT_READY = "not_ready"
CODE_RELOAD_FAILED = "reload_failed"
CODE_RELOAD_IN_PROGRESS = "reload_in_progress"


class WireFormatError(ValueError):
    """A JSON document that does not have the expected shape."""


def _require(data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, dict):
        raise WireFormatError(f"{where}: expected a JSON object, got {type(data).__name__}")
    if key not in data:
        raise WireFormatError(f"{where}: missing field {key!r} (fields present: {sorted(data)})")
    value = data[key]
    if not isinstance(value, kind):
        raise WireFormatError(f"{where}: field {key!r} should be {kind}, got {type(value).__name__}")
    return value


def valid_thread_id(thread_id: str) -> bool:
    return bool(THREAD_ID_PATTERN.match(thread_id))


def valid_idempotency_key(key: str) -> bool:
    """1-255 visible ASCII characters (``\\x21``-``\\x7e``): no spaces, control or non-ASCII characters."""
    return bool(IDEMPOTENCY_KEY_PATTERN.fullmatch(key))


# ------------------------------------------------------------------ errors
@dataclass(frozen=True)
class ErrorBody:
    """``{"error": {"message", "type", "code"}}``."""

    message: str
    type: str
    code: str

    def to_json(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}

    @classmethod
    def from_json(cls, data: Any) -> ErrorBody:
        err = _require(data, "error", dict, "error response")
        return cls(
            message=str(err.get("message", "")),
            type=str(err.get("type", "")),
            code=str(err.get("code", "")),
        )


# ------------------------------------------------------------------ thread messages
@dataclass(frozen=True)
class MessageRequest:
    """A new user message for a thread: text and, usually on the first message, the wafer image."""

    text: str
    image: bytes | None = None
    filename: str | None = None

    def to_json(self) -> dict:
        """The JSON request body (image as base64); multipart uses the same field names."""
        body: dict[str, Any] = {FIELD_TEXT: self.text}
        if self.image is not None:
            body[FIELD_IMAGE] = base64.b64encode(self.image).decode("ascii")
        return body

    @classmethod
    def from_json(cls, data: Any) -> MessageRequest:
        text = _require(data, FIELD_TEXT, str, "message request")
        raw = data.get(FIELD_IMAGE)
        image = None
        if raw is not None:
            if not isinstance(raw, str):
                raise WireFormatError(
                    f"message request: field 'image' should be a base64 string, got {type(raw).__name__}"
                )
            image = decode_base64_image(raw)
        return cls(text=text, image=image)


def decode_base64_image(raw: str) -> bytes:
    """Decode base64 image bytes; accepts a bare base64 string or a ``data:image/...;base64,`` URL."""
    payload = raw.strip()
    if payload.startswith("data:"):
        header, sep, payload = payload.partition(",")
        if not sep or ";base64" not in header:
            raise WireFormatError("image: a data URL must look like 'data:image/png;base64,<data>'")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise WireFormatError(f"image: not valid base64 ({exc})") from exc


@dataclass(frozen=True)
class Caveat:
    """``{"code", "text": {"en", "zh"}}``: a caution shown beside the findings, e.g. the code
    ``cluster_without_pattern`` when the model found no pattern on a map with a large failing cluster,
    or ``near_full_with_few_failing`` when it read a map as Near-full with under half its dies failing."""

    code: str
    text: dict[str, str]

    def to_json(self) -> dict:
        return {"code": self.code, "text": dict(self.text)}

    @classmethod
    def from_json(cls, data: Any) -> Caveat:
        where = "caveat"
        return cls(code=_require(data, "code", str, where),
                   text={str(k): str(v) for k, v in _require(data, "text", dict, where).items()})


@dataclass(frozen=True)
class Findings:
    """Facts shown beside the prose: recognised patterns and the numbers measured from the map.

    ``patterns`` are canonical taxonomy keys (e.g. ``Edge_Loc``); ``class_name`` is their
    ``+``-joined class name (``Normal`` for none, ``Unknown`` when the model's recognition
    answer could not be read as a pattern set); ``measured`` is `WaferMap.facts()`;
    ``grid`` the die grid (0 off wafer, 1 good, 2 failing) as read from the image; ``caveats``
    what a reader should double-check (absent in findings stored before caveats existed: none).
    """

    patterns: list[str]
    pattern_names: dict[str, list[str]]  # {"en": [...], "zh": [...]}
    class_name: str
    measured: dict
    grid: list[list[int]]
    caveats: list[Caveat] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "patterns": list(self.patterns),
            "pattern_names": {k: list(v) for k, v in self.pattern_names.items()},
            "class": self.class_name,
            "measured": self.measured,
            "grid": self.grid,
            "caveats": [c.to_json() for c in self.caveats],
        }

    @classmethod
    def from_json(cls, data: Any) -> Findings:
        where = "findings"
        caveats = data.get("caveats", []) if isinstance(data, dict) else []
        if not isinstance(caveats, list):
            raise WireFormatError(f"{where}: field 'caveats' should be a list, got {type(caveats).__name__}")
        return cls(
            patterns=[str(p) for p in _require(data, "patterns", list, where)],
            pattern_names={str(k): [str(n) for n in v] for k, v in _require(data, "pattern_names", dict, where).items()},
            class_name=_require(data, "class", str, where),
            measured=_require(data, "measured", dict, where),
            grid=_require(data, "grid", list, where),
            caveats=[Caveat.from_json(c) for c in caveats],
        )

    def caveat_texts(self, language: str) -> list[str]:
        """The caveats in `language` ("en" or "zh"), English where a text lacks it."""
        return [c.text.get(language) or c.text.get("en", "") for c in self.caveats]


@dataclass(frozen=True)
class ThreadReply:
    """``{"thread_id", "answer", "findings", "model", "latency_ms"}``; findings is null for text-only threads."""

    thread_id: str
    answer: str
    findings: Findings | None
    model: str
    latency_ms: float

    def to_json(self) -> dict:
        return {
            "thread_id": self.thread_id,
            "answer": self.answer,
            "findings": None if self.findings is None else self.findings.to_json(),
            "model": self.model,
            "latency_ms": round(float(self.latency_ms), 1),
        }

    @classmethod
    def from_json(cls, data: Any) -> ThreadReply:
        where = "thread reply"
        raw_findings = data.get("findings") if isinstance(data, dict) else None
        return cls(
            thread_id=_require(data, "thread_id", str, where),
            answer=_require(data, "answer", str, where),
            findings=None if raw_findings is None else Findings.from_json(raw_findings),
            model=_require(data, "model", str, where),
            latency_ms=float(_require(data, "latency_ms", (int, float), where)),
        )


# ------------------------------------------------------------------ thread view
@dataclass(frozen=True)
class TurnView:
    """One stored turn of a thread; ``has_image`` marks the user turn that brought the wafer image."""

    role: str  # "user" | "assistant"
    text: str
    created_at: float  # unix seconds
    has_image: bool = False

    def to_json(self) -> dict:
        return {"role": self.role, "text": self.text, "created_at": self.created_at, "has_image": self.has_image}

    @classmethod
    def from_json(cls, data: Any) -> TurnView:
        where = "turn"
        return cls(
            role=_require(data, "role", str, where),
            text=_require(data, "text", str, where),
            created_at=float(_require(data, "created_at", (int, float), where)),
            has_image=bool(data.get("has_image", False)),
        )


@dataclass(frozen=True)
class ThreadView:
    """``GET /v1/threads/{id}``: the conversation, oldest turn first, with the thread's findings."""

    thread_id: str
    created_at: float
    updated_at: float
    image_sha256: str | None
    findings: Findings | None
    turns: list[TurnView] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "thread_id": self.thread_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "image_sha256": self.image_sha256,
            "findings": None if self.findings is None else self.findings.to_json(),
            "turns": [t.to_json() for t in self.turns],
        }

    @classmethod
    def from_json(cls, data: Any) -> ThreadView:
        where = "thread"
        raw_findings = data.get("findings") if isinstance(data, dict) else None
        return cls(
            thread_id=_require(data, "thread_id", str, where),
            created_at=float(_require(data, "created_at", (int, float), where)),
            updated_at=float(_require(data, "updated_at", (int, float), where)),
            image_sha256=data.get("image_sha256"),
            findings=None if raw_findings is None else Findings.from_json(raw_findings),
            turns=[TurnView.from_json(t) for t in _require(data, "turns", list, where)],
        )


# ------------------------------------------------------------------ status
@dataclass(frozen=True)
class ServerStatus:
    """``GET /v1/status``: what the bot's ``/wafer status`` shows."""

    model: str  # model id
    model_version: str
    backend: str  # "hf", "openai", "visualglm"
    ready: bool
    queue_depth: int  # requests waiting for the model now
    max_queue: int
    uptime_s: float
    threads: int  # threads held in memory
    requests_total: int
    server_version: str

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "model_version": self.model_version,
            "backend": self.backend,
            "ready": self.ready,
            "queue_depth": self.queue_depth,
            "max_queue": self.max_queue,
            "uptime_s": round(self.uptime_s, 1),
            "threads": self.threads,
            "requests_total": self.requests_total,
            "server_version": self.server_version,
        }

    @classmethod
    def from_json(cls, data: Any) -> ServerStatus:
        where = "status"
        return cls(
            model=_require(data, "model", str, where),
            model_version=_require(data, "model_version", str, where),
            backend=_require(data, "backend", str, where),
            ready=bool(_require(data, "ready", bool, where)),
            queue_depth=int(_require(data, "queue_depth", int, where)),
            max_queue=int(_require(data, "max_queue", int, where)),
            uptime_s=float(_require(data, "uptime_s", (int, float), where)),
            threads=int(_require(data, "threads", int, where)),
            requests_total=int(_require(data, "requests_total", int, where)),
            server_version=str(data.get("server_version", "")),
        )
