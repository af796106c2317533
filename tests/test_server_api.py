"""The thread API on a real server (tiny hf model, 127.0.0.1, ephemeral port): memory, errors, concurrency."""

from __future__ import annotations

import asyncio
import base64
import io

import aiohttp
import numpy as np
import pytest
from PIL import Image

from data_tools.answers import definition_answer, yesno_answer
from data_tools.dialogue import MapContext
from data_tools.wafer_map import WaferMap
from finetune.generation import generate_answers
from model_server import wire
from model_server.backends.base import Backend, BackendInfo, GenerationRequest, Turn
from model_server.backends.hf import HFBackend
from model_server.client import ModelServerClient, ModelServerError, ModelServerUnavailable
from model_server.config import ServerConfig
from model_server.findings import build_findings, recognised_patterns
from model_server.testing import running_server, wafer_grid, wafer_png
from model_server.threads_api import ACKNOWLEDGED, NEEDS_MAP, NO_ANSWER


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return HFBackend(tiny_model_dir)


def config(tmp_path, **kw) -> ServerConfig:
    kw.setdefault("max_new_tokens", 8)
    return ServerConfig(port=0, db=tmp_path / "threads.sqlite", **kw)


class _Recording(HFBackend):
    """The real tiny model; also keeps every request it was asked, to check what the server put in the prompt."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[GenerationRequest] = []

    def generate_round(self, requests, unfinished):  # what the server's batcher calls
        self.seen.extend(requests)
        return super().generate_round(requests, unfinished)


def test_conversation_with_follow_up_from_memory(tmp_path, tiny_model_dir):
    png = wafer_png("center")
    backend = _Recording(tiny_model_dir)

    async def go():
        async with running_server(config(tmp_path), backend) as server, ModelServerClient(server.url) as client:
            first = await client.send_message("C1:1700000000.0001", "Where are the defects?", image=png)
            follow = await client.send_message("C1:1700000000.0001", "How many dies fail?")
            view = await client.get_thread("C1:1700000000.0001")
            return first, follow, view

    first, follow, view = asyncio.run(go())
    wafer = WaferMap(wafer_grid(52, "center"))
    # findings: numbers measured from the map as read from the image, kept for the follow-up
    assert first.findings is not None and follow.findings == first.findings
    assert first.findings.measured == wafer.facts()
    assert first.findings.grid == wafer.to_list()
    assert first.model == backend.info.name and first.latency_ms > 0
    # first message: the user's question and the recognition question, in one batch
    assert [r.question for r in backend.seen[:2]] == ["Where are the defects?", "What defects does this wafer show?"]
    # the follow-up carried no image: the map and the earlier turns came from memory
    asked = backend.seen[-1]
    assert asked.question == "How many dies fail?"
    assert asked.wafer is not None and np.array_equal(asked.wafer.grid, wafer.grid)
    assert asked.history == (Turn("user", "Where are the defects?"), Turn("assistant", first.answer))
    # and its answer is exactly what the model generates for that prompt
    expected = generate_answers(backend.model, backend.processor, [asked])[0]
    assert follow.answer == expected
    assert [(t.role, t.has_image) for t in view.turns] == [("user", True), ("assistant", False),
                                                           ("user", False), ("assistant", False)]
    assert view.turns[2].text == "How many dies fail?" and view.turns[3].text == follow.answer


def test_threads_never_see_each_other(tmp_path, backend):
    async def go():
        async with running_server(config(tmp_path), backend) as server, ModelServerClient(server.url) as client:
            await client.send_message("a", "first question", image=wafer_png("center"))
            await client.send_message("b", "other question", image=wafer_png("edge"))
            await client.send_message("a", "follow up a")
            return await client.get_thread("a"), await client.get_thread("b")

    a, b = asyncio.run(go())
    assert [t.text for t in a.turns if t.role == "user"] == ["first question", "follow up a"]
    assert [t.text for t in b.turns if t.role == "user"] == ["other question"]
    assert a.findings.measured != b.findings.measured


def test_same_thread_answered_in_order(tmp_path, backend):
    async def go():
        async with running_server(config(tmp_path), backend) as server, ModelServerClient(server.url) as client:
            await asyncio.gather(*(client.send_message("t", f"question {i}") for i in range(6)))
            return await client.get_thread("t")

    view = asyncio.run(go())
    users = [t.text for t in view.turns if t.role == "user"]
    assert users == [f"question {i}" for i in range(6)]
    assert [t.role for t in view.turns] == ["user", "assistant"] * 6


def test_json_body_multipart_and_delete(tmp_path, backend):
    png = wafer_png("edge")

    async def go():
        async with running_server(config(tmp_path), backend) as server, aiohttp.ClientSession() as http:
            body = {"text": "What is wrong?", "image": base64.b64encode(png).decode()}
            async with http.post(f"{server.url}/v1/threads/j1/messages", json=body) as r:
                assert r.status == 200, await r.text()
                data = await r.json()
                assert set(data) == {"thread_id", "answer", "findings", "model", "latency_ms"}
                assert set(data["findings"]) == {"patterns", "pattern_names", "class", "measured", "grid", "caveats"}
                assert r.headers[wire.REQUEST_ID_HEADER]
            form = aiohttp.FormData()
            form.add_field("text", "")
            form.add_field("image", png, filename="w.png", content_type="image/png")
            async with http.post(f"{server.url}/v1/threads/j2/messages", data=form) as r:
                assert r.status == 200, await r.text()  # image only: the recognition question is asked
            async with ModelServerClient(server.url) as client:
                view = await client.get_thread("j2")
                assert view.turns[0].text == "What defects does this wafer show?"
                assert await client.delete_thread("j1") is True
                assert await client.delete_thread("j1") is False
                with pytest.raises(ModelServerError) as err:
                    await client.get_thread("j1")
                assert err.value.status == 404 and err.value.code == wire.CODE_THREAD_NOT_FOUND
                assert server.state.memory.image(view.image_sha256) is not None
                await client.delete_thread("j2")
                assert server.state.memory.image(view.image_sha256) is None  # the image went with its thread

    asyncio.run(go())


def _gif_two_frames() -> bytes:
    from data_tools.render import render

    first = render(WaferMap(wafer_grid(52, "center")), palette="grey", scale=4)
    second = Image.new("RGB", first.size, (255, 0, 0))
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=[second])
    return buffer.getvalue()


def _png(size: tuple[int, int], colour=(255, 255, 255)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_every_limit_answers_a_clear_4xx(tmp_path, backend):
    rng = np.random.default_rng(0)
    noise = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(noise, format="PNG")
    tiff = io.BytesIO()
    Image.open(io.BytesIO(wafer_png())).save(tiff, format="TIFF")
    cfg = config(tmp_path, max_image_bytes=200_000, max_image_pixels=400 * 400, max_text_chars=50)

    cases = [
        ("text too long", "x" * 51, None, 400, wire.CODE_TEXT_TOO_LONG),
        ("no text, no image", "  ", None, 400, wire.CODE_MISSING_TEXT),
        ("image too large", "q", b"\x89PNG" + bytes(200_001), 413, wire.CODE_IMAGE_TOO_LARGE),
        ("too many pixels", "q", _png((401, 400)), 413, wire.CODE_IMAGE_TOO_MANY_PIXELS),
        ("format not accepted", "q", tiff.getvalue(), 415, wire.CODE_UNSUPPORTED_IMAGE_FORMAT),
        ("not an image", "q", b"hello, this is text", 415, wire.CODE_UNSUPPORTED_IMAGE_FORMAT),
        ("not a wafer map", "q", noise.getvalue(), 422, wire.CODE_NOT_A_WAFER_MAP),
        ("blank image", "q", _png((200, 200)), 422, wire.CODE_NOT_A_WAFER_MAP),
    ]

    async def go():
        async with running_server(cfg, backend) as server, ModelServerClient(server.url) as client:
            for name, text, image, status, code in cases:
                with pytest.raises(ModelServerError) as err:
                    await client.send_message(f"lim{status}", text, image=image)
                assert (err.value.status, err.value.code) == (status, code), name
                assert err.value.message, name
            # an animated GIF is read from its first frame
            reply = await client.send_message("gif", "what?", image=_gif_two_frames())
            assert reply.findings.measured == WaferMap(wafer_grid(52, "center")).facts()
            # JSON errors for bad JSON, bad thread ids, unknown routes and methods
            async with aiohttp.ClientSession() as http:
                for method, path, kwargs, status in [
                    ("POST", "/v1/threads/x/messages", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
                    ("POST", "/v1/threads/x/messages", {"json": {"text": "q", "extra": 1}}, 400),
                    ("POST", "/v1/threads/x/messages", {"json": {"text": "q", "image": "***"}}, 400),
                    ("POST", "/v1/threads/x/messages", {"data": b"text=q", "headers": {"Content-Type": "text/plain"}}, 415),
                    ("POST", "/v1/threads/bad%20id/messages", {"json": {"text": "q"}}, 400),
                    ("GET", "/nope", {}, 404),
                    ("PUT", "/v1/threads/x", {}, 405),
                ]:
                    async with http.request(method, server.url + path, **kwargs) as r:
                        body = await r.json()
                        assert r.status == status, (path, body)
                        assert set(body["error"]) == {"message", "type", "code"}
                # a JSON body over the size limit
                big = {"text": "q", "image": "A" * (cfg.max_image_bytes * 2)}
                async with http.post(server.url + "/v1/threads/x/messages", json=big) as r:
                    assert r.status == 413 and (await r.json())["error"]["code"] in (
                        wire.CODE_REQUEST_TOO_LARGE, wire.CODE_IMAGE_TOO_LARGE)
            # nothing of the refused requests was remembered
            assert server.state.memory.count() == 1

    asyncio.run(go())


class _FailingOn(HFBackend):
    """The real tiny model, except that a question containing BOOM makes the server's generate call raise."""

    def generate_round(self, requests, unfinished):
        if any("BOOM" in r.question for r in requests):
            raise RuntimeError("simulated CUDA out of memory")
        return super().generate_round(requests, unfinished)


def test_model_error_is_500_with_request_id_and_server_keeps_serving(tmp_path, tiny_model_dir):
    async def go():
        failing = _FailingOn(tiny_model_dir)
        async with running_server(config(tmp_path, max_wait_ms=0), failing) as server, \
                ModelServerClient(server.url) as client:
            with pytest.raises(ModelServerError) as err:
                await client.send_message("t", "BOOM", image=wafer_png("center"))
            assert err.value.status == 500 and err.value.code == wire.CODE_MODEL_ERROR
            assert err.value.request_id and err.value.request_id in err.value.message
            ok = await client.send_message("t", "fine now?", image=wafer_png("center"))
            assert ok.answer is not None
            view = await client.get_thread("t")
            assert [t.text for t in view.turns if t.role == "user"] == ["fine now?"]
            async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as r:
                text = await r.text()
            assert "defect_glm_model_errors_total 1" in text

    asyncio.run(go())


def test_concurrency_no_5xx_and_batches_form(tmp_path, backend):
    pngs = wafer_png("scratch"), wafer_png("center")

    async def go():
        cfg = config(tmp_path, max_batch_size=8, max_wait_ms=20)
        async with running_server(cfg, backend) as server, ModelServerClient(server.url, timeout=120) as client:
            replies = await asyncio.gather(*(
                client.send_message(f"c{i}", "What defects does this wafer show?", image=pngs[i % 2])
                for i in range(32)
            ))
            async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as r:
                text = await r.text()
            return replies, text, server.state.metrics

    replies, text, metrics = asyncio.run(go())
    assert len(replies) == 32 and all(isinstance(r.answer, str) for r in replies)
    assert 'status="500"' not in text and 'status="503"' not in text
    assert "defect_glm_batch_size_bucket" in text and "defect_glm_queue_depth" in text
    # concurrent requests were grouped: fewer generate calls than requests, every request in one of them
    assert metrics.batch_size.count() < 32 and metrics.batch_size.sum() == 32


def test_service_routes(tmp_path, backend):
    async def go():
        async with running_server(config(tmp_path), backend) as server, ModelServerClient(server.url) as client:
            assert await client.health() and await client.ready()
            status = await client.status()
            assert status.ready and status.model == backend.info.name and status.backend == "hf"
            assert status.queue_depth == 0 and status.uptime_s >= 0
            async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as r:
                assert r.headers["Content-Type"].startswith("text/plain")
                text = await r.text()
            assert 'defect_glm_model_info{model="' in text
            assert 'defect_glm_requests_total{route="/healthz",method="GET",status="200"} 1' in text
        async with ModelServerClient(server.url, timeout=2) as client:
            assert not await client.health()
            with pytest.raises(ModelServerUnavailable):
                await client.status()

    asyncio.run(go())


def test_readyz_is_503_while_loading_and_healthz_is_ok(tmp_path, tiny_model_dir):
    import threading

    gate = threading.Event()

    def slow_loader(cfg):
        gate.wait(10)
        return HFBackend(tiny_model_dir)

    async def go():
        async with running_server(config(tmp_path), loader=slow_loader, wait_ready=0) as server, \
                ModelServerClient(server.url) as client:
            assert await client.health()
            assert not await client.ready()
            with pytest.raises(ModelServerError) as err:
                await client.send_message("t", "hello")
            assert err.value.status == 503 and err.value.retry_after is not None
            gate.set()
            for _ in range(200):
                if await client.ready():
                    break
                await asyncio.sleep(0.02)
            assert await client.ready()
            assert (await client.send_message("t", "hello")).answer is not None

    asyncio.run(go())


class _WrongYesNo(Backend):
    """A model that recognises a Center but answers every yes/no question the wrong way round."""

    @property
    def info(self):
        return BackendInfo("wrong-yes-no", "1", "test")

    def generate(self, requests):
        answers = []
        for r in requests:
            if r.question == "What defects does this wafer show?":
                answers.append("The wafer shows a Center pattern.")
            elif "center" in r.question.lower() or "中心" in r.question:
                answers.append("No, there is no Center pattern." if "center" in r.question.lower() else "没有，不存在中心缺陷。")
            else:
                answers.append("Yes, there is a Scratch pattern.")
        return answers


def test_yes_no_answers_follow_the_threads_recognised_patterns(tmp_path):
    png = wafer_png("center")
    wafer = WaferMap(wafer_grid(52, "center"))

    async def go():
        async with running_server(config(tmp_path), _WrongYesNo()) as server, ModelServerClient(server.url) as client:
            first = await client.send_message("C1:1700000000.0042", "Is there a scratch?", image=png)
            follow = await client.send_message("C1:1700000000.0042", "有中心缺陷吗？")
            view = await client.get_thread("C1:1700000000.0042")
            return first, follow, view

    first, follow, view = asyncio.run(go())
    assert first.findings is not None and first.findings.patterns == ["Center"]
    context = MapContext.of(wafer, ("Center",))
    assert first.answer == yesno_answer("Scratch", ("Center",), "en")  # from the recognition asked in the same batch
    assert follow.answer == yesno_answer("Center", ("Center",), "zh", context.locations[0], context.facts)
    assert follow.answer.startswith("是的")  # from the findings stored with the thread
    assert [t.text for t in view.turns if t.role == "assistant"] == [first.answer, follow.answer]  # memory keeps them


class _Silent(Backend):
    """A model that recognises a Center and writes nothing for any other question."""

    @property
    def info(self):
        return BackendInfo("silent", "1", "test")

    def generate(self, requests):
        return ["The wafer shows a Center pattern." if r.question == "What defects does this wafer show?" else " "
                for r in requests]


def test_an_empty_answer_reads_as_one_in_the_questions_language(tmp_path):
    async def go():
        async with running_server(config(tmp_path), _Silent()) as server, ModelServerClient(server.url) as client:
            first = await client.send_message("t", "And the yield?", image=wafer_png("center"))
            follow = await client.send_message("t", "良率呢？")
            view = await client.get_thread("t")
            async with aiohttp.ClientSession() as http, http.post(
                    server.url + "/v1/chat/completions",
                    json={"messages": [{"role": "user", "content": "hello"}]}) as response:
                completion = await response.json()
            return first, follow, view, completion

    first, follow, view, completion = asyncio.run(go())
    assert first.answer == NO_ANSWER["en"] and follow.answer == NO_ANSWER["zh"]
    assert first.findings is not None and first.findings.patterns == ["Center"]  # the map was still read
    assert [t.text for t in view.turns if t.role == "assistant"] == [NO_ANSWER["en"], NO_ANSWER["zh"]]
    assert completion["choices"][0]["message"]["content"] == NO_ANSWER["en"]


class _CenterEverywhere(Backend):
    """Recognises a Center on any map and records the questions it was asked."""

    def __init__(self):
        self.questions: list[str] = []
        self.histories: list[tuple[Turn, ...]] = []

    @property
    def info(self):
        return BackendInfo("recording", "1", "test")

    def generate(self, requests):
        self.questions += [r.question for r in requests]
        self.histories += [r.history for r in requests]
        return ["The wafer shows a Center pattern." for _ in requests]


def test_a_question_the_model_reads_as_the_recognition_question_is_asked_once(tmp_path):
    backend = _CenterEverywhere()

    async def go():
        async with running_server(config(tmp_path), backend) as server, ModelServerClient(server.url) as client:
            odd = await client.send_message("a", "anything odd here?", image=wafer_png("center"))
            where = await client.send_message("b", "where is the damage?", image=wafer_png("center"))
            return odd, where

    odd, where = asyncio.run(go())
    # "anything odd here?" with a map reads as "What defects does this wafer show?" (opening_question)
    assert backend.questions == ["anything odd here?", "where is the damage?", "What defects does this wafer show?"]
    assert odd.findings is not None and odd.findings.patterns == ["Center"]
    assert where.findings is not None and where.findings.patterns == ["Center"]


def test_a_reply_that_only_acknowledges_gets_a_short_answer_without_the_model(tmp_path):
    backend = _CenterEverywhere()

    async def go():
        async with running_server(config(tmp_path), backend) as server, ModelServerClient(server.url) as client:
            await client.send_message("t", "where is the damage?", image=wafer_png("center"))
            thanks = await client.send_message("t", "thanks! :pray:")
            zh = await client.send_message("t", "好的，谢谢")
            more = await client.send_message("t", "thanks, and the yield?")
            view = await client.get_thread("t")
            return thanks, zh, more, view

    thanks, zh, more, view = asyncio.run(go())
    assert thanks.answer == ACKNOWLEDGED["en"] and zh.answer == ACKNOWLEDGED["zh"]
    assert thanks.findings is not None and thanks.findings.patterns == ["Center"]  # the thread's findings, as ever
    assert more.answer == "The wafer shows a Center pattern."  # it asks something: the model answers
    assert backend.questions == ["where is the damage?", "What defects does this wafer show?", "thanks, and the yield?"]
    # the model is not shown the thanks and the replies to them
    assert backend.histories[-1] == (Turn("user", "where is the damage?"), Turn("assistant", "The wafer shows a Center pattern."))
    assert [t.text for t in view.turns if t.role == "user"] == [
        "where is the damage?", "thanks! :pray:", "好的，谢谢", "thanks, and the yield?"]  # remembered all the same


def test_what_a_patterns_name_means_is_answered_from_the_taxonomy_with_or_without_a_map(tmp_path):
    backend = _CenterEverywhere()

    async def go():
        async with running_server(config(tmp_path), backend) as server, ModelServerClient(server.url) as client:
            unmapped = await client.send_message("u", "What does Edge-Loc mean?")
            await client.send_message("t", "what is wrong?", image=wafer_png("center"))
            center = await client.send_message("t", "what's a center pattern?")
            scratch = await client.send_message("t", "划痕是什么意思？")
            more = await client.send_message("t", "介绍一下中心缺陷")
            with_map = await client.send_message("w", "what does EL stand for?", image=wafer_png("center"))
            return unmapped, center, scratch, more, with_map

    unmapped, center, scratch, more, with_map = asyncio.run(go())
    # sent with a map: the map is recognised (its findings), the question answered from the taxonomy
    assert with_map.answer == definition_answer("Edge_Loc", "en", shown=False)
    assert with_map.findings is not None and with_map.findings.patterns == ["Center"]
    assert unmapped.answer == definition_answer("Edge_Loc", "en") and unmapped.findings is None
    # the thread's findings: a Center, and where it sits, measured on the map
    assert center.answer.startswith(definition_answer("Center", "en", shown=True) + " The Center pattern sits at the wafer centre: ")
    assert center.answer.endswith(" centre-zone dies fail.")
    assert scratch.answer == definition_answer("Scratch", "zh", shown=False)
    assert more.answer.startswith(definition_answer("Center", "zh", shown=True) + "中心缺陷位于晶圆中心：中心区 ")
    # each map's recognition question only, never the questions about names
    assert backend.questions == ["what is wrong?", "What defects does this wafer show?"]


def test_a_question_without_a_map_asks_for_one_when_the_model_answers_only_from_a_map(tmp_path, tiny_model_dir):
    async def go():
        async with running_server(config(tmp_path), HFBackend(tiny_model_dir)) as server, \
                ModelServerClient(server.url) as client:
            assert server.state.info.details["needs_map"] is True  # a checkpoint trained here
            first = await client.send_message("m", "What could cause the defects on this wafer?")
            zh = await client.send_message("m", "良率是多少？")
            mapped = await client.send_message("m", "and now?", image=wafer_png("center"))
            return first, zh, mapped

    first, zh, mapped = asyncio.run(go())
    assert first.answer == NEEDS_MAP["en"] and zh.answer == NEEDS_MAP["zh"] and first.findings is None
    assert mapped.answer not in NEEDS_MAP.values() and mapped.findings is not None  # with the map: the model


def test_recognised_patterns_read_from_findings():
    wafer = WaferMap(wafer_grid(52, "center"))
    assert recognised_patterns(build_findings(wafer, ("Scratch", "Center"))) == ("Center", "Scratch")
    assert recognised_patterns(build_findings(wafer, ())) == ()  # normal: every yes/no is checked
    assert recognised_patterns(build_findings(wafer, None)) is None  # unreadable: nothing is checked
    assert recognised_patterns(None) is None  # a thread without a map
