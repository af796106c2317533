"""The OpenAI-compatible API with the official `openai` client, and the openai backend chained to our own server."""

from __future__ import annotations

import asyncio
import base64
import threading

import openai
import pytest

from data_tools.answers import definition_answer, normal_answer, yesno_answer
from data_tools.wafer_map import WaferMap
from finetune.generation import generate_answers, stream_answer
from model_server.backends.base import Backend, BackendError, BackendInfo, GenerationRequest
from model_server.backends.hf import HFBackend
from model_server.backends.openai_compat import OpenAIBackend
from model_server.client import ModelServerClient
from model_server.config import ServerConfig
from model_server.findings import recognition_question
from model_server.testing import running_server, wafer_grid, wafer_png
from model_server.threads_api import NEEDS_MAP


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return HFBackend(tiny_model_dir)


def _config(tmp_path, name="a", **kw) -> ServerConfig:
    kw.setdefault("max_new_tokens", 12)
    return ServerConfig(port=0, db=tmp_path / f"{name}.sqlite", **kw)


def _image_message(text: str) -> dict:
    url = "data:image/png;base64," + base64.b64encode(wafer_png("center")).decode()
    return {"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]}


def test_openai_client_plain_and_streaming(tmp_path, backend):
    async def go():
        async with running_server(_config(tmp_path), backend) as server:
            client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
            models = await client.models.list()
            model = models.data[0].id
            plain = await client.chat.completions.create(
                model=model, messages=[_image_message("What defects does this wafer show?")], max_tokens=12)
            stream = await client.chat.completions.create(
                model=model, messages=[_image_message("What defects does this wafer show?")], max_tokens=12,
                stream=True)
            pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
            # no map: a checkpoint trained here answers only from one, so the server asks for it
            no_map = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "良率？"}])
            no_map_stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "What's the yield?"}], stream=True)
            no_map_pieces = [chunk.choices[0].delta.content async for chunk in no_map_stream if chunk.choices]
            meaning = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "什么是边缘环？"}])
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
            with pytest.raises(openai.BadRequestError) as err:
                await client.chat.completions.create(model=model, messages=[
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}])
            assert "data URL" in str(err.value)
            await client.close()
            return model, plain, pieces, no_map, no_map_pieces, meaning

    model, plain, pieces, no_map, no_map_pieces, meaning = asyncio.run(go())
    assert no_map.choices[0].message.content == NEEDS_MAP["zh"]
    assert meaning.choices[0].message.content == definition_answer("Edge_Ring", "zh")  # no map needed
    assert "".join(p for p in no_map_pieces if p) == NEEDS_MAP["en"]
    assert model == backend.info.name
    wafer = WaferMap(wafer_grid(52, "center"))
    expected = generate_answers(backend.model, backend.processor,
                                [GenerationRequest("What defects does this wafer show?", wafer, (), 12)])[0]
    assert plain.choices[0].message.content == expected
    assert plain.choices[0].finish_reason == "stop" and plain.model == model
    direct_pieces = list(stream_answer(backend.model, backend.processor,
                                       GenerationRequest("What defects does this wafer show?", wafer, (), 12)))
    assert [p for p in pieces if p] == direct_pieces  # one SSE event per piece the model streamed
    assert "".join(direct_pieces).strip() == expected


class _GatedStream(Backend):
    """Streams three pieces; the second only after the test has received the first (so buffering would hang)."""

    def __init__(self):
        self.gate = threading.Event()

    @property
    def info(self):
        return BackendInfo("gated", "1", "test")

    def generate(self, requests):
        return ["one two three" for _ in requests]

    def generate_stream(self, request):
        yield "one"
        if not self.gate.wait(10):
            raise BackendError("the client never received the first piece")
        yield " two"
        yield " three"


def test_streaming_is_incremental(tmp_path):
    gated = _GatedStream()

    async def go():
        async with running_server(_config(tmp_path), gated) as server:
            client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
            stream = await client.chat.completions.create(
                model="gated", messages=[{"role": "user", "content": "count"}], stream=True)
            got = []
            async for chunk in stream:
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if piece:
                    got.append(piece)
                    gated.gate.set()  # the first piece arrived while the model was still generating
            await client.close()
            return got

    assert asyncio.run(go()) == ["one", " two", " three"]


def test_openai_backend_chained_to_our_server(tmp_path, backend):
    """Front server (memory, limits, findings) → openai backend → back server (the model)."""
    png = wafer_png("center")

    async def go():
        async with running_server(_config(tmp_path, "back"), backend) as back:
            front_cfg = _config(tmp_path, "front", backend="openai", openai_url=back.url + "/v1")
            front_backend = await asyncio.get_running_loop().run_in_executor(
                None, OpenAIBackend, back.url + "/v1", None, None, 30.0)
            async with running_server(front_cfg, front_backend) as front, ModelServerClient(front.url) as client:
                first = await client.send_message("chain", "What defects does this wafer show?", image=png)
                follow = await client.send_message("chain", "And the yield?")
                status = await client.status()
                oa = openai.AsyncOpenAI(base_url=front.url + "/v1", api_key="x", max_retries=0)
                stream = await oa.chat.completions.create(
                    model=status.model, messages=[_image_message("What defects does this wafer show?")],
                    stream=True, max_tokens=12)
                streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
                await oa.close()
            front_backend.close()
            back_threads = back.state.memory.count()
            return first, follow, status, streamed, back_threads

    first, follow, status, streamed, back_threads = asyncio.run(go())
    wafer = WaferMap(wafer_grid(52, "center"))
    direct = generate_answers(backend.model, backend.processor,
                              [GenerationRequest("What defects does this wafer show?", wafer, (), 12)])[0]
    assert status.backend == "openai" and status.model == backend.info.name
    assert first.answer == direct  # the back server saw the same prompt as a direct call
    assert first.findings.measured == wafer.facts()
    assert follow.findings == first.findings and isinstance(follow.answer, str)
    assert streamed.strip() == direct
    assert back_threads == 0  # memory stays in the front server


class _SlotWriter(Backend):
    """An engine whose model writes number slots (a small checkpoint trained with them, unfilled)."""

    @property
    def info(self):
        return BackendInfo("slots", "1", "test")

    def generate(self, requests):
        return ["<num_failing> of <num_dies> dies fail" for _ in requests]

    def generate_stream(self, request):
        yield from ("<num_fa", "iling> of <num_d", "ies> dies fail")


def test_openai_backend_fills_number_slots_from_the_request_map(tmp_path):
    wafer = WaferMap(wafer_grid(52, "center"))
    expected = f"{wafer.failing} of {wafer.dies} dies fail"

    async def go():
        async with running_server(_config(tmp_path, "engine"), _SlotWriter()) as engine:
            loop = asyncio.get_running_loop()
            front = await loop.run_in_executor(None, OpenAIBackend, engine.url + "/v1", None, None, 30.0)
            request = GenerationRequest("How many dies fail?", wafer, (), 12)
            plain = await loop.run_in_executor(None, front.generate, [request, GenerationRequest("hi", None, (), 12)])
            streamed = await loop.run_in_executor(None, lambda: "".join(front.generate_stream(request)))
            front.close()
            return plain, streamed

    plain, streamed = asyncio.run(go())
    assert plain == [expected, "<num_failing> of <num_dies> dies fail"]  # no map: nothing to fill from
    assert streamed == expected


class _WrongYesNo(Backend):
    """Recognises a Center on any map; says yes to every other question, pieces streamed as written."""

    def __init__(self):
        self.questions: list[str] = []

    @property
    def info(self):
        return BackendInfo("wrong-yes-no", "1", "test")

    def generate(self, requests):
        self.questions += [r.question for r in requests]
        return ["The wafer shows a Center pattern." if r.question == recognition_question()
                else "Yes, there is a Scratch pattern." for r in requests]

    def generate_stream(self, request):
        yield from ("Yes, there is ", "a Scratch pattern.")


def test_chat_completion_yes_no_answer_follows_the_recognition_unless_streamed(tmp_path):
    backend = _WrongYesNo()

    async def go():
        async with running_server(_config(tmp_path), backend) as server:
            client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
            plain = await client.chat.completions.create(model="wrong-yes-no", messages=[_image_message("Is there a scratch?")])
            whole = await client.chat.completions.create(model="wrong-yes-no", messages=[_image_message("is this wafer ok")])
            no_map = await client.chat.completions.create(
                model="wrong-yes-no", messages=[{"role": "user", "content": "Is there a scratch?"}])
            stream = await client.chat.completions.create(
                model="wrong-yes-no", messages=[_image_message("Is there a scratch?")], stream=True)
            pieces = [chunk.choices[0].delta.content async for chunk in stream if chunk.choices]
            await client.close()
            return plain, whole, no_map, pieces

    plain, whole, no_map, pieces = asyncio.run(go())
    assert plain.choices[0].message.content == yesno_answer("Scratch", ("Center",), "en")
    # "is this wafer ok" is about the wafer as a whole: answered from the recognition, not with "yes, a Scratch"
    assert whole.choices[0].message.content == normal_answer(("Center",), "en")
    assert backend.questions == ["Is there a scratch?", recognition_question(), "is this wafer ok", recognition_question(),
                                 "Is there a scratch?"]
    assert no_map.choices[0].message.content == "Yes, there is a Scratch pattern."  # no map: nothing to check against
    assert "".join(p for p in pieces if p) == "Yes, there is a Scratch pattern."  # streamed as generated


class _SeesNothing(_WrongYesNo):
    """Recognises no pattern on any map, and says the wafer is fine when asked."""

    def generate(self, requests):
        self.questions += [r.question for r in requests]
        return ["No defect pattern detected; this wafer is normal." if r.question == recognition_question()
                else "Yes, it looks normal." for r in requests]


def test_chat_completion_is_this_wafer_ok_gives_the_caveat_of_a_cluster_the_model_missed(tmp_path):
    async def go():
        async with running_server(_config(tmp_path), _SeesNothing()) as server:
            client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
            done = await client.chat.completions.create(model="wrong-yes-no", messages=[_image_message("Is this wafer ok?")])
            await client.close()
            return done.choices[0].message.content

    answer = asyncio.run(go())  # the map has a solid centre blob the model did not name
    assert answer.startswith("I can't call it normal. The model found no defect pattern, but ")
