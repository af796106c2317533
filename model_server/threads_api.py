"""The thread API (the bot's path): messages with per-thread memory, reading and forgetting a thread.

POST /v1/threads/{thread_id}/messages takes multipart (``text``, optional ``image`` file) or
JSON (``text``, optional base64 ``image``). Work on one thread is serialised in arrival order
(the lock is taken before the body is read); different threads run concurrently and are
batched together by the model worker.

Idempotency: a message may carry an ``Idempotency-Key`` header. Its reply is stored with the
turns (`ThreadMemory.record_exchange`); a later message on the same thread with the same key
gets that stored reply (``Idempotent-Replayed: true``) and is neither asked nor stored again.
Because work on a thread is serialised, a repeat that arrives while the first request is still
being answered waits behind it and then finds its reply; if the first failed (nothing stored),
the repeat is answered afresh. A key reused for a different question is a 422.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from aiohttp import BodyPartReader, web

from data_tools.answers import definition_answer, location_sentence
from data_tools.locate import locate
from data_tools.phrasing import defined_pattern, is_acknowledgement, language_of, opening_question
from data_tools.wafer_map import WaferMap
from finetune.yesno import ground_answer
from model_server import intake, wire
from model_server.backends.base import GenerationRequest, Turn
from model_server.batching import ModelFailure, QueueFull
from model_server.errors import ApiError, bad_request
from model_server.findings import build_findings, parse_patterns, recognised_patterns, recognition_question
from model_server.memory import StoredImage, StoredReply
from model_server.state import REQUEST_ID, STATE, ServerState

#: Size of the pieces a multipart body is read in.
_CHUNK = 64 * 1024


def thread_id_of(request: web.Request) -> str:
    thread_id = request.match_info["thread_id"]
    if not wire.valid_thread_id(thread_id):
        raise bad_request(
            wire.CODE_INVALID_THREAD_ID,
            f"thread id {thread_id[:140]!r} is not valid: use 1-128 characters from letters, digits and . _ : @ -",
        )
    return thread_id


def idempotency_key_of(request: web.Request) -> str | None:
    """The request's ``Idempotency-Key`` header (None without one); 400 when it is malformed."""
    values = request.headers.getall(wire.IDEMPOTENCY_KEY_HEADER, [])
    if not values:
        return None
    if len(values) > 1:
        raise bad_request(wire.CODE_INVALID_IDEMPOTENCY_KEY,
                          f"send one {wire.IDEMPOTENCY_KEY_HEADER} header, not {len(values)}")
    key = values[0]
    if not wire.valid_idempotency_key(key):
        raise bad_request(
            wire.CODE_INVALID_IDEMPOTENCY_KEY,
            f"the {wire.IDEMPOTENCY_KEY_HEADER} header {key[:60]!r}{'…' if len(key) > 60 else ''} is not valid "
            f"({len(key)} characters): use 1-{wire.MAX_IDEMPOTENCY_KEY_CHARS} visible ASCII characters, "
            "no spaces or control characters (e.g. a UUID)",
        )
    return key


def replayed_reply(thread_id: str, stored: StoredReply, question: str, started: float) -> web.Response:
    """The stored reply to an earlier message with the same idempotency key; 422 if it was another question."""
    if not stored.same_question(question):
        raise ApiError(
            422, wire.INVALID_REQUEST, wire.CODE_IDEMPOTENCY_KEY_REUSED,
            f"the {wire.IDEMPOTENCY_KEY_HEADER} {stored.key!r} was already used on thread {thread_id!r} for a "
            "different question; send a new key with each new message",
        )
    reply = wire.ThreadReply(
        thread_id=thread_id,
        answer=stored.answer,
        findings=None if stored.findings is None else wire.Findings.from_json(stored.findings),
        model=stored.model or "",
        latency_ms=(time.perf_counter() - started) * 1000.0,
    )
    return web.json_response(reply.to_json(), headers={wire.IDEMPOTENT_REPLAYED_HEADER: "true"}, dumps=wire.dumps)


async def _read_part(part: BodyPartReader, limit: int, too_big: ApiError) -> bytes:
    data = bytearray()
    while True:
        chunk = await part.read_chunk(_CHUNK)
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > limit:
            raise too_big


async def read_message(request: web.Request, state: ServerState) -> tuple[str, bytes | None]:
    """(text, image bytes or None) from a multipart or JSON body, within the configured limits."""
    cfg = state.config
    text_limit_bytes = cfg.max_text_chars * 4 + 64  # UTF-8 needs at most 4 bytes a character
    image_too_big = ApiError(
        413, wire.INVALID_REQUEST, wire.CODE_IMAGE_TOO_LARGE,
        f"the image is larger than the limit of {cfg.max_image_bytes} bytes",
    )
    if request.content_type == "multipart/form-data":
        text: object = None
        image: bytes | None = None
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise bad_request(wire.CODE_INVALID_FIELD, "nested multipart bodies are not accepted")
            if part.name == wire.FIELD_TEXT:
                raw = await _read_part(part, text_limit_bytes, bad_request(
                    wire.CODE_TEXT_TOO_LONG, f"'text' is longer than the limit of {cfg.max_text_chars} characters"))
                text = raw.decode(part.get_charset(default="utf-8"), errors="replace")
            elif part.name == wire.FIELD_IMAGE:
                image = await _read_part(part, cfg.max_image_bytes, image_too_big)
            else:
                raise bad_request(wire.CODE_INVALID_FIELD,
                                  f"unexpected form field {part.name!r}; send 'text' and optionally 'image'")
        return intake.check_text(text, cfg.max_text_chars, allow_empty=image is not None), image
    if request.content_type == "application/json":
        body = await read_json(request)
        if not isinstance(body, dict):
            raise bad_request(wire.CODE_INVALID_JSON, f"the body must be a JSON object, got {type(body).__name__}")
        unknown = sorted(set(body) - {wire.FIELD_TEXT, wire.FIELD_IMAGE})
        if unknown:
            raise bad_request(wire.CODE_INVALID_FIELD, f"unexpected fields {unknown}; send 'text' and optionally 'image'")
        raw_image = body.get(wire.FIELD_IMAGE)
        image = None
        if raw_image is not None:
            if not isinstance(raw_image, str):
                raise bad_request(wire.CODE_INVALID_FIELD,
                                  f"'image' must be a base64 string, got {type(raw_image).__name__}")
            if len(raw_image) * 3 // 4 > cfg.max_image_bytes + 3:
                raise image_too_big
            try:
                image = wire.decode_base64_image(raw_image)
            except wire.WireFormatError as exc:
                raise bad_request(wire.CODE_INVALID_BASE64, str(exc)) from exc
        text = intake.check_text(body.get(wire.FIELD_TEXT), cfg.max_text_chars, allow_empty=image is not None)
        return text, image
    raise ApiError(415, wire.INVALID_REQUEST, wire.CODE_INVALID_FIELD,
                   f"send multipart/form-data or application/json, not {request.content_type or 'an empty body'}")


async def read_json(request: web.Request) -> object:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, wire.INVALID_REQUEST, wire.CODE_REQUEST_TOO_LARGE,
                       f"the request body is larger than the limit of {request.app._client_max_size} bytes") from exc
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(wire.CODE_INVALID_JSON, f"the body is not valid JSON: {exc}") from exc


async def image_to_wafer(state: ServerState, data: bytes) -> WaferMap:
    """Check the image against the limits and read its die grid, in the server's image-reader processes
    (off the event loop and off the model worker's cores)."""
    cfg = state.config
    assert state.image_reader is not None
    return await state.image_reader.read(
        data, max_bytes=cfg.max_image_bytes, max_pixels=cfg.max_image_pixels, formats=cfg.image_formats
    )


#: What a user reads when the model wrote nothing (it ended its answer at once, or wrote only tokens that
#: are not text): an empty message would look like a lost reply.
NO_ANSWER = {
    "en": "The model wrote no answer to this question. Try asking it another way, e.g. \"What defects does this "
          "wafer show?\"",
    "zh": "模型没有回答这个问题。请换个问法，例如“这片晶圆有哪些缺陷？”",
}


#: The reply to a message in a thread that only acknowledges an answer ("thanks!", "ok got it", "好的，谢谢",
#: `data_tools.phrasing.is_acknowledgement`), instead of another answer from the model.
ACKNOWLEDGED = {
    "en": "You're welcome. Ask me anything else about it in this thread.",
    "zh": "不客气。还有其他问题可以在这个帖子里继续问我。",
}


#: The reply to a question in a thread without a map when the model answers only from one (a checkpoint
#: trained on the corpus, whose every conversation has a map: `needs_map` in its backend's details); asked
#: without a map, the small model wrote nonsense with unfilled number slots.
NEEDS_MAP = {
    "en": "There is no wafer map in this thread yet, and I answer from one. Send the map (a PNG or JPEG image of "
          "it) with your question.",
    "zh": "这个帖子里还没有晶圆图，我需要根据晶圆图回答。请把晶圆图（PNG 或 JPEG 图片）和问题一起发给我。",
}


def own_answer(question: str, defined: str | None, follow_up: bool, wafer: WaferMap | None,
               recognised: tuple[str, ...] | None, needs_map: bool) -> str | None:
    """The server's own answer to `question`, or None when the model answers it: `ACKNOWLEDGED` to a
    follow-up that only acknowledges, what pattern `defined` means ("what does Edge-Loc mean?",
    `data_tools.phrasing.defined_pattern`; whether this wafer shows it when the `recognised` patterns are
    known, and where it sits when it does), map or not, or `NEEDS_MAP` where the model answers only from a map
    and there is none."""
    language = language_of(question)
    if follow_up and is_acknowledgement(question):  # "thanks!" asks nothing
        return ACKNOWLEDGED[language]
    if defined is not None:
        shown = None if recognised is None else defined in recognised
        place = place_on(wafer, recognised or (), defined, language) if shown else None
        return definition_answer(defined, language, shown, place)
    if wafer is None and needs_map:
        return NEEDS_MAP[language]
    return None


def place_on(wafer: WaferMap | None, recognised: Iterable[str], key: str, language: str) -> str | None:
    """Where pattern `key`, one of the `recognised` patterns, sits on `wafer`, in one sentence measured from
    its die grid (`data_tools.locate`); None without a map."""
    if wafer is None:
        return None
    facts = wafer.facts()
    return next((location_sentence(loc, facts, language) for loc in locate(wafer, recognised) if loc.key == key), None)


def without_acknowledgements(turns: Iterable[Turn]) -> tuple[Turn, ...]:
    """`turns` less each "thanks!" and the `ACKNOWLEDGED` reply to it: they stay in the thread's memory
    but the model, trained on conversations without them, is not shown them."""
    kept: list[Turn] = []
    for turn in turns:
        if (turn.role == "assistant" and turn.text in ACKNOWLEDGED.values() and kept and kept[-1].role == "user"
                and is_acknowledgement(kept[-1].text)):
            kept.pop()
        else:
            kept.append(turn)
    return tuple(kept)


async def run_model(state: ServerState, requests: list[GenerationRequest], request_id: str) -> list[str]:
    """Answers from the batcher (`NO_ANSWER` for an empty one), with model trouble turned into the API's errors."""
    state.backend  # noqa: B018  (503 while not ready)
    assert state.batcher is not None
    try:
        answers = await state.batcher.generate(requests, timeout=state.config.request_timeout_s)
        return [answer if answer.strip() else NO_ANSWER[language_of(r.question)] for r, answer in zip(requests, answers)]
    except QueueFull as exc:
        raise ApiError(429, wire.RATE_LIMIT, wire.CODE_QUEUE_FULL, str(exc),
                       {wire.RETRY_AFTER_HEADER: str(exc.retry_after)}) from exc
    except ModelFailure as exc:
        raise ApiError(500, wire.SERVER_ERROR, wire.CODE_MODEL_ERROR,
                       f"the model failed to answer (request id {request_id}); the server is still serving, "
                       "try again or report the request id") from exc
    except TimeoutError as exc:
        raise ApiError(503, wire.UNAVAILABLE, wire.CODE_NOT_READY,
                       f"no answer within {state.config.request_timeout_s:g} s; the server is overloaded",
                       {wire.RETRY_AFTER_HEADER: str(state.batcher.retry_after())}) from exc


async def post_message(request: web.Request) -> web.Response:
    state = request.app[STATE]
    thread_id = thread_id_of(request)
    key = idempotency_key_of(request)
    started = time.perf_counter()
    async with state.thread_lock(thread_id):
        text, image_bytes = await read_message(request, state)
        if key is not None:
            # a repeat waited on the thread lock for the request with its key; that one's reply is stored now
            stored = state.memory.replay(thread_id, key)
            if stored is not None:
                return replayed_reply(thread_id, stored, text or recognition_question(), started)
        state.backend  # noqa: B018  (503 before reading images while the model loads)
        new_image: StoredImage | None = None
        wafer: WaferMap | None = None
        if image_bytes is not None:
            wafer = await image_to_wafer(state, image_bytes)
            new_image = StoredImage.from_bytes(image_bytes, wafer)
        ctx = state.memory.context(thread_id, state.max_history_turns())
        if new_image is not None and ctx.image_sha256 == new_image.sha256:
            new_image = None  # the same image again: keep the thread's findings and history
        question = text or recognition_question()
        max_new = state.config.max_new_tokens
        findings_json = ctx.findings
        defined = defined_pattern(question)
        if new_image is not None:
            assert wafer is not None
            recognition = recognition_question()
            asks = [] if defined is not None else [GenerationRequest(question, wafer, (), max_new)]
            if defined is not None or opening_question(question) != opening_question(recognition):  # as read
                asks.append(GenerationRequest(recognition, wafer, (), max_new))
            answers = await run_model(state, asks, request[REQUEST_ID])
            findings_json = build_findings(wafer, parse_patterns(answers[-1])).to_json()
        else:
            wafer = ctx.wafer
        findings = None if findings_json is None else wire.Findings.from_json(findings_json)
        recognised = recognised_patterns(findings)
        follow_up = new_image is None and bool(ctx.history)
        own = own_answer(question, defined, follow_up, wafer, recognised, bool(state.info.details.get("needs_map")))
        if own is None and new_image is None:
            history = without_acknowledgements(Turn(t.role, t.text) for t in ctx.history)  # type: ignore[arg-type]
            answers = await run_model(state, [GenerationRequest(question, wafer, history, max_new)], request[REQUEST_ID])
        cautions = findings.caveat_texts(language_of(question)) if findings is not None else []
        answer = own if own is not None else ground_answer(question, answers[0], wafer, recognised, cautions)
        model = state.info.name
        state.memory.record_exchange(thread_id, question, answer, image=new_image,
                                     findings=findings_json if new_image is not None else None, model=model,
                                     idempotency_key=key)
    reply = wire.ThreadReply(
        thread_id=thread_id,
        answer=answer,
        findings=findings,
        model=model,
        latency_ms=(time.perf_counter() - started) * 1000.0,
    )
    return web.json_response(reply.to_json(), dumps=wire.dumps)


def thread_view(state: ServerState, thread_id: str) -> wire.ThreadView:
    thread = state.memory.get(thread_id)
    if thread is None:
        raise ApiError(404, wire.NOT_FOUND, wire.CODE_THREAD_NOT_FOUND,
                       f"no thread {thread_id!r} (never started, deleted, or expired)")
    return wire.ThreadView(
        thread_id=thread.thread_id,
        created_at=thread.created_at,
        updated_at=thread.updated_at,
        image_sha256=thread.image_sha256,
        findings=None if thread.findings is None else wire.Findings.from_json(thread.findings),
        turns=[wire.TurnView(t.role, t.text, t.created_at, t.image_sha256 is not None) for t in thread.turns],
    )


async def get_thread(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(thread_view(state, thread_id_of(request)).to_json(), dumps=wire.dumps)


async def delete_thread(request: web.Request) -> web.Response:
    state = request.app[STATE]
    thread_id = thread_id_of(request)
    async with state.thread_lock(thread_id):
        existed = state.memory.delete(thread_id)
    if not existed:
        raise ApiError(404, wire.NOT_FOUND, wire.CODE_THREAD_NOT_FOUND, f"no thread {thread_id!r} to delete")
    return web.json_response({"thread_id": thread_id, "deleted": True})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/threads/{thread_id}/messages", post_message)
    app.router.add_get("/v1/threads/{thread_id}", get_thread)
    app.router.add_delete("/v1/threads/{thread_id}", delete_thread)
