"""Limits of a real server (127.0.0.1, ephemeral port) that tests/test_server_api.py does not cover.

Each accepted image format is read; a configured format list is enforced; a decompression bomb
(few bytes, huge canvas) is refused before it is decoded; the OpenAI route applies the same
image limits; a full queue answers 429 with Retry-After (and the queued requests still finish);
a request that waits past `request_timeout_s` gets 503; and the server binds 127.0.0.1 by default.
Model-free cases use `_Gated`, a small Backend implementation whose answers wait on an event.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading

import aiohttp
import openai
import pytest
from PIL import Image

from data_tools.render import render
from data_tools.wafer_map import WaferMap
from model_server import wire
from model_server.app import serve
from model_server.backends.base import Backend, BackendInfo, GenerationRequest
from model_server.client import ModelServerClient, ModelServerError
from model_server.config import ServerConfig
from model_server.testing import running_server, wafer_grid


class _Gated(Backend):
    """Answers "done: <question>" once `gate` is set; counts the batches it was given."""

    def __init__(self, open_gate: bool = False) -> None:
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.batches: list[int] = []

    @property
    def info(self) -> BackendInfo:
        return BackendInfo("gated", "1", "test")

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        self.batches.append(len(requests))
        if not self.gate.wait(30):
            raise RuntimeError("gate never opened")
        return [f"done: {r.question}" for r in requests]


def _config(tmp_path, **kw) -> ServerConfig:
    return ServerConfig(port=0, db=tmp_path / "t.sqlite", **kw)


def _wafer_image(fmt: str) -> bytes:
    image = render(WaferMap(wafer_grid(52, "center")), palette="grey", scale=4)
    buffer = io.BytesIO()
    save_kw = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    image.save(buffer, format=fmt, **save_kw)
    return buffer.getvalue()


def _bomb_png(side: int) -> bytes:
    """A 1-bit PNG of side×side pixels: a few kB on disk, side² pixels once decoded."""
    buffer = io.BytesIO()
    Image.new("1", (side, side), 1).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_every_supported_format_is_read_and_the_format_list_is_enforced(tmp_path):
    expected = WaferMap(wafer_grid(52, "center")).facts()

    async def go():
        results = {}
        async with running_server(_config(tmp_path), _Gated(open_gate=True)) as server, \
                ModelServerClient(server.url) as client:
            for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP"):
                reply = await client.send_message(f"fmt-{fmt}", "What defects?", image=_wafer_image(fmt))
                results[fmt] = reply.findings.measured if reply.findings else None
        only_png = _config(tmp_path, image_formats=("PNG",))
        async with running_server(only_png, _Gated(open_gate=True)) as server, \
                ModelServerClient(server.url) as client:
            with pytest.raises(ModelServerError) as err:
                await client.send_message("jpeg", "What defects?", image=_wafer_image("JPEG"))
            results["refused"] = (err.value.status, err.value.code, err.value.message)
            results["png_ok"] = (await client.send_message("png", "q", image=_wafer_image("PNG"))).answer
        return results

    results = asyncio.run(go())
    for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP"):
        assert results[fmt] == expected, fmt
    status, code, message = results["refused"]
    assert (status, code) == (415, wire.CODE_UNSUPPORTED_IMAGE_FORMAT) and "PNG" in message
    assert results["png_ok"] == "done: q"


def test_decompression_bomb_is_refused_without_decoding(tmp_path):
    bomb = _bomb_png(6000)  # 36 million pixels
    assert len(bomb) < 100_000

    async def go():
        async with running_server(_config(tmp_path), _Gated(open_gate=True)) as server, \
                ModelServerClient(server.url) as client:
            with pytest.raises(ModelServerError) as err:
                await client.send_message("bomb", "q", image=bomb)
            return err.value, server.state.memory.count()

    err, threads = asyncio.run(go())
    assert (err.status, err.code) == (413, wire.CODE_IMAGE_TOO_MANY_PIXELS)
    assert "25000000" in err.message and "36000000" in err.message
    assert threads == 0


def test_openai_route_applies_the_image_limits(tmp_path):
    def message(data: bytes, mime: str = "image/png") -> dict:
        url = f"data:{mime};base64," + base64.b64encode(data).decode()
        return {"role": "user", "content": [{"type": "text", "text": "What defects?"},
                                            {"type": "image_url", "image_url": {"url": url}}]}

    blank = io.BytesIO()
    Image.new("RGB", (120, 120), (255, 255, 255)).save(blank, format="PNG")

    async def go():
        cfg = _config(tmp_path, max_image_bytes=50_000, max_text_chars=100)
        async with running_server(cfg, _Gated(open_gate=True)) as server:
            client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
            errors = {}
            for name, msg in [
                ("not_a_wafer", message(blank.getvalue())),
                ("bomb", message(_bomb_png(6000))),
                ("too_large", message(b"\x89PNG" + bytes(60_000))),
                ("text", {"role": "user", "content": "x" * 101}),
            ]:
                with pytest.raises(openai.APIStatusError) as err:
                    await client.chat.completions.create(model="gated", messages=[msg])
                errors[name] = (err.value.status_code, err.value.body.get("code") if isinstance(err.value.body, dict)
                                else None)
            ok = await client.chat.completions.create(model="gated", messages=[message(_wafer_image("PNG"))])
            await client.close()
            return errors, ok.choices[0].message.content

    errors, ok = asyncio.run(go())
    assert errors["not_a_wafer"] == (422, wire.CODE_NOT_A_WAFER_MAP)
    assert errors["bomb"] == (413, wire.CODE_IMAGE_TOO_MANY_PIXELS)
    assert errors["too_large"] == (413, wire.CODE_IMAGE_TOO_LARGE)
    assert errors["text"] == (400, wire.CODE_TEXT_TOO_LONG)
    assert ok == "done: What defects?"


def test_full_queue_is_429_with_retry_after_and_queued_requests_finish(tmp_path):
    gated = _Gated()

    async def go():
        cfg = _config(tmp_path, max_batch_size=1, max_wait_ms=0, max_queue=2)
        async with running_server(cfg, gated) as server, ModelServerClient(server.url) as client, \
                aiohttp.ClientSession() as http:
            batcher = server.state.batcher
            assert batcher is not None
            first = asyncio.create_task(client.send_message("t0", "q0"))
            while batcher.in_flight != 1:  # the first request is with the model
                await asyncio.sleep(0.01)
            queued = [asyncio.create_task(client.send_message(f"t{i}", f"q{i}")) for i in (1, 2)]
            while batcher.depth != 2:
                await asyncio.sleep(0.01)
            async with http.post(server.url + "/v1/threads/t3/messages", json={"text": "q3"}) as r:
                refused = (r.status, dict(r.headers), await r.json())
            async with http.get(server.url + "/metrics") as r:
                metrics_text = await r.text()
            gated.gate.set()
            answers = [(await t).answer for t in (first, *queued)]
            return refused, metrics_text, answers, server.state.memory.get("t3")

    (status, headers, body), metrics_text, answers, t3 = asyncio.run(go())
    assert status == 429
    assert int(headers[wire.RETRY_AFTER_HEADER]) >= 1
    assert body["error"]["type"] == wire.RATE_LIMIT and body["error"]["code"] == wire.CODE_QUEUE_FULL
    assert "defect_glm_queue_depth 2" in metrics_text
    latency = 'defect_glm_request_latency_seconds_bucket{route="/v1/threads/{thread_id}/messages",le="+Inf"} 1'
    assert latency in metrics_text  # the refused request was timed
    assert 'defect_glm_rejected_total{reason="queue_full"} 1' in metrics_text
    assert answers == ["done: q0", "done: q1", "done: q2"]
    assert t3 is None  # the refused request left nothing behind


def test_request_waiting_past_the_timeout_is_503_and_the_server_recovers(tmp_path):
    gated = _Gated()

    async def go():
        cfg = _config(tmp_path, request_timeout_s=0.3, max_wait_ms=0)
        async with running_server(cfg, gated) as server, ModelServerClient(server.url) as client:
            with pytest.raises(ModelServerError) as err:
                await client.send_message("slow", "q")
            gated.gate.set()
            later = await client.send_message("slow", "again")
            return err.value, later, await client.get_thread("slow")

    err, later, view = asyncio.run(go())
    assert err.status == 503 and err.retry_after is not None
    assert later.answer == "done: again"
    assert [t.text for t in view.turns] == ["again", "done: again"]  # the timed-out question was not stored


def test_binds_127_0_0_1_by_default(tmp_path, capsys):
    assert ServerConfig().host == "127.0.0.1"

    async def go():
        stop = asyncio.Event()
        task = asyncio.create_task(serve(_config(tmp_path), _Gated(open_gate=True), stop=stop))
        url = ""
        for _ in range(500):
            await asyncio.sleep(0.01)
            out = capsys.readouterr().out
            if "listening on " in out:
                url = out.split("listening on ", 1)[1].split()[0]
                break
        try:
            async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as r:
                return url, r.status
        finally:
            stop.set()
            await task

    url, status = asyncio.run(go())
    assert url.startswith("http://127.0.0.1:") and status == 200
