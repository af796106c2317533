"""The OpenAI-compatible, stateless API: POST /v1/chat/completions (plain and SSE streaming), GET /v1/models.

The official `openai` client works against it unchanged. Messages are the conversation; the
wafer image comes as an ``image_url`` content part holding a ``data:image/...;base64,`` URL
(the server fetches nothing from the network). The last image sent is the map the answer is
about, and turns before the message that carried it are dropped (they were about another
map). System messages are ignored: the model's prompt is fixed. Generation is greedy, so
``temperature``/``top_p`` have no effect; ``n`` must be 1. ``usage`` is not reported.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from aiohttp import web

from data_tools.phrasing import defined_pattern, language_of
from data_tools.wafer_map import WaferMap
from finetune.yesno import ground_yesno, needs_recognition
from model_server import wire
from model_server.backends.base import GenerationRequest, Turn
from model_server.batching import ModelFailure, QueueFull
from model_server.errors import ApiError, bad_request
from model_server.findings import build_findings, parse_patterns, recognition_question
from model_server.state import REQUEST_ID, STATE, ServerState
from model_server.threads_api import image_to_wafer, own_answer, read_json, run_model

#: The first line of an already-built small-model prompt (finetune.prompting); recomputed here, so dropped.
_FACTS_PREFIX = "[measured]"


@dataclass(frozen=True)
class ChatRequest:
    question: str
    history: tuple[Turn, ...]
    image: bytes | None
    max_new_tokens: int
    stream: bool
    model: str | None


def _parts(content: object, index: int) -> tuple[str, list[str]]:
    """(text, image URLs) of one message's content (a string or a list of parts)."""
    if isinstance(content, str):
        return content, []
    if content is None:
        return "", []
    if not isinstance(content, list):
        raise bad_request(wire.CODE_INVALID_FIELD,
                          f"messages[{index}].content must be a string or a list of parts, got {type(content).__name__}")
    texts, urls = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise bad_request(wire.CODE_INVALID_FIELD, f"messages[{index}].content[{j}].image_url.url is missing")
            urls.append(url)
        else:
            raise bad_request(wire.CODE_INVALID_FIELD,
                              f"messages[{index}].content[{j}] must be a 'text' or 'image_url' part, got {kind!r}")
    return "\n".join(texts), urls


def _strip_facts_line(text: str) -> str:
    if text.startswith(_FACTS_PREFIX):
        _, _, rest = text.partition("\n")
        return rest
    return text


def parse_chat_request(body: object, state: ServerState) -> ChatRequest:
    cfg = state.config
    if not isinstance(body, dict):
        raise bad_request(wire.CODE_INVALID_JSON, f"the body must be a JSON object, got {type(body).__name__}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request(wire.CODE_INVALID_FIELD, "'messages' must be a non-empty list of {role, content}")
    if body.get("n", 1) not in (1, None):
        raise bad_request(wire.CODE_INVALID_FIELD, f"only n=1 is supported, got n={body.get('n')!r}")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is None:
        max_new = cfg.max_new_tokens
    elif isinstance(limit, int) and not isinstance(limit, bool) and limit >= 1:
        max_new = min(limit, cfg.max_new_tokens)
    else:
        raise bad_request(wire.CODE_INVALID_FIELD, f"max_tokens must be a positive integer, got {limit!r}")

    turns: list[tuple[str, str, str | None]] = []  # (role, text, image url)
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request(wire.CODE_INVALID_FIELD, f"messages[{i}] must be an object with a 'role'")
        role = message["role"]
        if role in ("system", "developer"):
            continue
        if role not in ("user", "assistant"):
            raise bad_request(wire.CODE_INVALID_FIELD,
                              f"messages[{i}].role must be system, user or assistant, got {role!r}")
        text, urls = _parts(message.get("content"), i)
        if urls and role != "user":
            raise bad_request(wire.CODE_INVALID_FIELD, f"messages[{i}]: only user messages may carry images")
        if len(text) > cfg.max_text_chars:
            raise bad_request(wire.CODE_TEXT_TOO_LONG,
                              f"messages[{i}] has {len(text)} characters; the limit is {cfg.max_text_chars}")
        turns.append((role, text, urls[-1] if urls else None))
    if not turns or turns[-1][0] != "user":
        raise bad_request(wire.CODE_INVALID_FIELD, "the last message must be the user's question")

    image_at = max((k for k, t in enumerate(turns) if t[2] is not None), default=None)
    image: bytes | None = None
    if image_at is not None:
        url = turns[image_at][2]
        assert url is not None
        if not url.startswith("data:"):
            raise bad_request(wire.CODE_INVALID_FIELD,
                              "image_url must be a data URL (data:image/png;base64,...); the server fetches nothing")
        if len(url) * 3 // 4 > cfg.max_image_bytes + 64:
            raise ApiError(413, wire.INVALID_REQUEST, wire.CODE_IMAGE_TOO_LARGE,
                           f"the image is larger than the limit of {cfg.max_image_bytes} bytes")
        try:
            image = wire.decode_base64_image(url)
        except wire.WireFormatError as exc:
            raise bad_request(wire.CODE_INVALID_BASE64, str(exc)) from exc
        role, text, _ = turns[image_at]
        turns = [(role, _strip_facts_line(text), None), *turns[image_at + 1:]]

    question = turns[-1][1].strip()
    if not question and image is not None and len(turns) == 1:  # an image with no words: what does it show?
        question = recognition_question()
    if not question:
        raise bad_request(wire.CODE_MISSING_TEXT, "the last user message has no text; ask a question")
    history = [Turn(role, text) for role, text, _ in turns[:-1]]  # type: ignore[arg-type]
    keep = state.max_history_turns()
    history = history[-keep:] if keep else []
    while history and history[0].role != "user":
        history.pop(0)
    return ChatRequest(question, tuple(history), image, max_new, bool(body.get("stream", False)), body.get("model"))


def _check_model(state: ServerState, model: object) -> None:
    name = state.info.name
    if model is not None and model not in (name, "default"):
        raise ApiError(404, wire.NOT_FOUND, wire.CODE_MODEL_NOT_FOUND,
                       f"model {model!r} is not served here; this server serves {name!r} (see GET /v1/models)")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await read_json(request)
    chat = parse_chat_request(body, state)
    _check_model(state, chat.model)
    wafer: WaferMap | None = await image_to_wafer(state, chat.image) if chat.image is not None else None
    gen = GenerationRequest(chat.question, wafer, chat.history, chat.max_new_tokens)
    completion_id = f"chatcmpl-{request[REQUEST_ID]}"
    created = int(time.time())
    model = state.info.name
    # as on the thread API: what a pattern's name means, or a request for the map where the model needs one
    # (no findings are kept here, and a "thanks!" is answered by the model)
    own = own_answer(chat.question, defined_pattern(chat.question), False, wafer, None,
                     bool(state.info.details.get("needs_map")))
    if own is not None:
        return _fixed_answer(request, chat.stream, own, completion_id, created, model)
    if not chat.stream:
        answer = (await run_model(state, [gen], request[REQUEST_ID]))[0]
        if wafer is not None and needs_recognition(chat.question, answer):
            # a yes/no answer (about one pattern, or "is this wafer ok?") follows what the model recognises on
            # the map and the caveats of those findings, as on the thread API (finetune/yesno.py)
            ask = GenerationRequest(recognition_question(), wafer, (), chat.max_new_tokens)
            recognised = parse_patterns((await run_model(state, [ask], request[REQUEST_ID]))[0])
            cautions = build_findings(wafer, recognised).caveat_texts(language_of(chat.question))
            answer = ground_yesno(chat.question, answer, wafer, recognised, cautions)
        return _completion(answer, completion_id, created, model)
    return await _stream(request, state, gen, completion_id, created, model)


def _completion(answer: str, completion_id: str, created: int, model: str) -> web.Response:
    return web.json_response({
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
    })


def _chunk(completion_id: str, created: int, model: str, delta: dict, finish: str | None = None) -> bytes:
    data = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _fixed_answer(
    request: web.Request, stream: bool, answer: str, completion_id: str, created: int, model: str
) -> web.Response:
    """`answer` as a completion, or as the body of an event stream of one piece (a short, known text)."""
    if not stream:
        return _completion(answer, completion_id, created, model)
    pieces = (_chunk(completion_id, created, model, {"role": "assistant", "content": ""}),
              _chunk(completion_id, created, model, {"content": answer}),
              _chunk(completion_id, created, model, {}, "stop"), b"data: [DONE]\n\n")
    return web.Response(body=b"".join(pieces), headers={
        "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
        wire.REQUEST_ID_HEADER: request[REQUEST_ID],
    })


async def _stream(
    request: web.Request, state: ServerState, gen: GenerationRequest, completion_id: str, created: int, model: str
) -> web.StreamResponse:
    assert state.batcher is not None
    try:
        handle = state.batcher.open_stream(gen, timeout=state.config.request_timeout_s)
    except QueueFull as exc:
        raise ApiError(429, wire.RATE_LIMIT, wire.CODE_QUEUE_FULL, str(exc),
                       {wire.RETRY_AFTER_HEADER: str(exc.retry_after)}) from exc

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        return _chunk(completion_id, created, model, delta, finish)

    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        wire.REQUEST_ID_HEADER: request[REQUEST_ID],
    })
    try:
        await response.prepare(request)
        await response.write(chunk({"role": "assistant", "content": ""}))
        try:
            async for piece in handle:
                await response.write(chunk({"content": piece}))
            await response.write(chunk({}, "stop"))
        except (ModelFailure, TimeoutError) as exc:
            message = (f"the model failed to answer (request id {request[REQUEST_ID]})"
                       if isinstance(exc, ModelFailure) else "no answer in time; the server is overloaded")
            error = wire.ErrorBody(message, wire.SERVER_ERROR, wire.CODE_MODEL_ERROR).to_json()
            await response.write(f"data: {json.dumps(error)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    finally:
        handle.cancel()
    return response


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    info = state.info
    return web.json_response({
        "object": "list",
        "data": [{"id": info.name, "object": "model", "created": int(state.started_at), "owned_by": "defect-glm",
                  "version": info.version, "backend": info.backend}],
    })


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", list_models)
