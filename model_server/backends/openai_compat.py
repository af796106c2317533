"""The `openai` backend: generation forwarded to an OpenAI-compatible engine (vLLM, Ray Serve, another of ours).

Memory, limits, findings and the thread API stay in this server; only the model call leaves.
Each request becomes one ``POST {url}/chat/completions`` whose messages are exactly the small
model's prompt (`finetune.prompting.build_messages`, the wafer image as a PNG data URL), so an
engine serving our checkpoint sees what the model was trained on. A batch is sent as
concurrent requests (the engine batches them itself). Streaming uses the engine's SSE stream.
Number slots in an answer (`finetune.number_slots`, from an engine serving a small checkpoint
trained with them) are filled with the numbers measured from the request's map, as the hf
backend does.
Uses only the standard library's HTTP client (runs in the server's model worker thread).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from model_server.backends.base import Backend, BackendError, BackendInfo, GenerationRequest

#: Most requests sent to the engine at once.
MAX_PARALLEL = 32


def _png_data_url(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def openai_messages(request: GenerationRequest) -> list[dict]:
    """The small model's prompt as OpenAI chat messages (image parts become PNG data URLs)."""
    from finetune.prompting import build_messages

    out = []
    for message in build_messages(request.wafer, request.history, request.question):
        parts = []
        for part in message["content"]:
            if part.get("type") == "image":
                parts.append({"type": "image_url", "image_url": {"url": _png_data_url(part["image"])}})
            else:
                parts.append({"type": "text", "text": part["text"]})
        out.append({"role": message["role"], "content": parts})
    return out


class OpenAIBackend(Backend):
    """Answers by calling an OpenAI-compatible chat completions endpoint."""

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        models = self._call("GET", "/models").get("data") or []
        served = [m.get("id") for m in models if isinstance(m, dict)]
        if model is None:
            if not served:
                raise BackendError(f"the engine at {self.base_url} lists no models (GET /models); set openai_model")
            model = str(served[0])
        elif served and model not in served:
            raise BackendError(f"the engine at {self.base_url} does not serve {model!r}; it serves {served}")
        entry = next((m for m in models if isinstance(m, dict) and m.get("id") == model), {})
        self.model = model
        self._info = BackendInfo(
            name=model,
            version=str(entry.get("version") or entry.get("created") or "remote"),
            backend="openai",
            details={"url": self.base_url, "engine_backend": entry.get("backend")},
        )
        self._pool = ThreadPoolExecutor(max_workers=MAX_PARALLEL, thread_name_prefix="openai-backend")

    @property
    def info(self) -> BackendInfo:
        return self._info

    # ------------------------------------------------------------------ HTTP
    def _open(self, method: str, path: str, body: dict | None = None) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            with contextlib.suppress(ValueError, KeyError, TypeError):
                detail = json.loads(detail)["error"]["message"]
            raise BackendError(f"the engine at {self.base_url} answered {exc.code} to {method} {path}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise BackendError(f"the engine at {self.base_url} is unreachable ({method} {path}): {exc}") from exc

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        with self._open(method, path, body) as resp:
            raw = resp.read()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise BackendError(f"the engine at {self.base_url} sent something that is not JSON for {path}") from exc
        if not isinstance(data, dict):
            raise BackendError(f"the engine at {self.base_url} sent an unexpected answer for {path}: {raw[:200]!r}")
        return data

    def _body(self, request: GenerationRequest, stream: bool) -> dict:
        return {
            "model": self.model,
            "messages": openai_messages(request),
            "max_tokens": request.max_new_tokens,
            "temperature": 0.0,
            "stream": stream,
        }

    # ------------------------------------------------------------------ Backend
    def _one(self, request: GenerationRequest) -> str:
        data = self._call("POST", "/chat/completions", self._body(request, stream=False))
        try:
            return str(data["choices"][0]["message"]["content"] or "")
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"the engine's answer has no choices[0].message.content: {str(data)[:200]}") from exc

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        answers = [self._one(requests[0])] if len(requests) == 1 else list(self._pool.map(self._one, requests))
        from finetune.number_slots import fill_from_map

        return [fill_from_map(answer, request.wafer, request.earlier_answers) for request, answer in zip(requests, answers)]

    def generate_stream(self, request: GenerationRequest) -> Iterator[str]:
        pieces = self._stream(request)
        if request.wafer is None:
            yield from pieces
            return
        from finetune.number_slots import fill_stream

        yield from fill_stream(pieces, request.wafer, request.earlier_answers)

    def _stream(self, request: GenerationRequest) -> Iterator[str]:
        with self._open("POST", "/chat/completions", self._body(request, stream=True)) as resp:
            for raw_line in resp:
                line = raw_line.decode("utf-8", "replace").strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                try:
                    event = json.loads(payload)
                except ValueError as exc:
                    raise BackendError(f"the engine sent a malformed stream event: {payload[:200]}") from exc
                if "error" in event:
                    raise BackendError(f"the engine failed while streaming: {event['error'].get('message')}")
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece

    def close(self) -> None:
        self._pool.shutdown(wait=False)
