"""The model in a process of its own (model_server.model_process), the default for hf and visualglm.

One child process with the tiny random checkpoint serves the module. Its answers are the same as
the in-process backend's, also through a real server on 127.0.0.1 and when streamed (also to the
official openai client over SSE); a model error is reported and the child keeps serving; a stream
closed early leaves the pipe in step; a child killed with -9, or one that hangs for
`request_timeout_s` (it is then killed), costs the batch it was answering and the next batch
starts a new one; a checkpoint that cannot be loaded fails at construction with the loader's
message; close() ends the child, and so does SIGTERM, cleanly; `model_process=False` loads the model in
the server's process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

from data_tools.wafer_map import WaferMap
from model_server.backends.base import BackendError, GenerationRequest
from model_server.backends.hf import HFBackend
from model_server.backends.registry import create_backend
from model_server.client import ModelServerClient
from model_server.config import ServerConfig
from model_server.model_process import ModelProcess
from model_server.testing import running_server, wafer_grid, wafer_png

QUESTION = "What defects does this wafer show?"


def _config(tmp_path, model, **kw) -> ServerConfig:
    return ServerConfig(port=0, db=tmp_path / "threads.sqlite", model=model, dtype="float32", device="cpu",
                        max_new_tokens=12, **kw)


@pytest.fixture(scope="module")
def in_process(tiny_model_dir):
    backend = HFBackend(tiny_model_dir)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def child(tmp_path_factory, tiny_model_dir):
    backend = create_backend(_config(tmp_path_factory.mktemp("model-process"), tiny_model_dir))
    assert isinstance(backend, ModelProcess)
    yield backend
    backend.close()


def _requests() -> list[GenerationRequest]:
    wafer = WaferMap(wafer_grid(kind="center", seed=3))
    return [GenerationRequest(QUESTION, wafer, max_new_tokens=12),
            GenerationRequest("How many dies fail?", wafer, max_new_tokens=12),
            GenerationRequest("hello", None, max_new_tokens=12)]


def test_the_child_answers_as_the_model_in_this_process(child, in_process):
    assert child.info.details["model_process"] != os.getpid()
    assert child.info.name == in_process.info.name and child.info.version == in_process.info.version
    assert child.max_history_turns() == in_process.max_history_turns()
    assert child.generate(_requests()) == in_process.generate(_requests())
    request = _requests()[0]
    assert "".join(child.generate_stream(request)) == in_process.generate([request])[0]


def test_a_round_with_unsure_answers_to_finish_goes_through_the_child(tmp_path, tiny_model_dir):
    from finetune.generation import UnsureAnswer

    child = create_backend(_config(tmp_path, tiny_model_dir, views=4, views_below=0.5))
    here = HFBackend(tiny_model_dir, views=4, views_below=0.5)
    unsure = [UnsureAnswer(_requests()[0], "Center.")]  # the first answer about the map as sent, as if unsure
    try:
        answers, finished = child.generate_round(_requests(), unsure)
        assert (answers, finished) == here.generate_round(_requests(), unsure)
        # one prompt per request, the other views of an unsure map come back to ask (what the batcher counts)
        assert [child.prompt_rows(r) for r in _requests()] == [here.prompt_rows(r) for r in _requests()] == [1] * 3
        assert len(answers) == 3 and len(finished) == 1 and all(isinstance(a, str) for a in answers + finished)
    finally:
        child.close()
        here.close()


def test_a_stream_closed_early_and_a_model_error_leave_the_child_serving(child, in_process):
    pieces = child.generate_stream(_requests()[0])
    next(pieces)
    pieces.close()  # the consumer went away after one piece
    with pytest.raises(BackendError, match="max_new_tokens"):
        child.generate([GenerationRequest(QUESTION, None, max_new_tokens=0)])
    assert child.generate(_requests()[:1]) == in_process.generate(_requests()[:1])


def test_through_a_real_server(tmp_path, child, in_process):
    async def ask(backend):
        async with running_server(_config(tmp_path / str(id(backend)), None), backend) as server, \
                ModelServerClient(server.url) as client:
            reply = await client.send_message("t", QUESTION, image=wafer_png("center"))
            async with aiohttp.ClientSession() as http, http.get(server.url + "/metrics") as response:
                return reply, await response.text()

    (tmp_path / str(id(child))).mkdir()
    (tmp_path / str(id(in_process))).mkdir()
    (served, metrics), (reference, _) = asyncio.run(ask(child)), asyncio.run(ask(in_process))
    assert served.answer == reference.answer and served.findings == reference.findings
    assert "\ndefect_glm_model_process_restarts 0\n" in metrics


def test_the_openai_client_streams_from_the_child(tmp_path, child, in_process):
    import base64

    import openai

    url = "data:image/png;base64," + base64.b64encode(wafer_png("center")).decode()
    message = {"role": "user", "content": [{"type": "text", "text": QUESTION}, {"type": "image_url", "image_url": {"url": url}}]}

    async def stream(backend, name):
        (tmp_path / name).mkdir()
        async with running_server(_config(tmp_path / name, None), backend) as server:
            client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
            chunks = await client.chat.completions.create(model=backend.info.name, messages=[message],
                                                          max_tokens=12, stream=True)
            pieces = [chunk.choices[0].delta.content async for chunk in chunks if chunk.choices]
            await client.close()
            return [piece for piece in pieces if piece]

    served, reference = asyncio.run(stream(child, "child")), asyncio.run(stream(in_process, "here"))
    assert served == reference and served


def test_a_killed_child_fails_its_batch_the_next_batch_starts_a_new_one_and_close_ends_it(
    tmp_path, tiny_model_dir, in_process
):
    backend = create_backend(_config(tmp_path, tiny_model_dir))
    try:
        first = backend.info.details["model_process"]
        os.kill(first, signal.SIGKILL)
        time.sleep(0.2)
        with pytest.raises(BackendError, match="ended while answering"):
            backend.generate(_requests())
        assert backend.restarts == 0
        assert backend.generate(_requests()) == in_process.generate(_requests())
        assert backend.restarts == 1
        second = backend.info.details["model_process"]
        assert second != first
    finally:
        backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.generate(_requests())  # a closed backend starts no new child
    for pid in (first, second):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_child_that_hangs_is_killed_after_the_request_timeout_and_replaced(tmp_path, tiny_model_dir, in_process):
    backend = create_backend(_config(tmp_path, tiny_model_dir, request_timeout_s=1.0))
    try:
        hung = backend.info.details["model_process"]
        os.kill(hung, signal.SIGSTOP)  # alive but silent, as a deadlocked model would be
        started = time.monotonic()
        with pytest.raises(BackendError, match="no answer within 1 s"):
            backend.generate(_requests())
        assert 1.0 <= time.monotonic() - started < 10
        with pytest.raises(ProcessLookupError):
            os.kill(hung, 0)  # killed, not left stopped
        assert backend.generate(_requests()) == in_process.generate(_requests())
    finally:
        backend.close()


def test_a_child_ended_with_sigterm_exits_as_python_does(tmp_path, tiny_model_dir):
    # a server stopped while the model loads cannot send "close": multiprocessing ends its daemon child with
    # SIGTERM at exit. Killed by the signal, the child left the loader's multiprocessing lock behind (the
    # resource tracker then warned of a leaked semaphore); it now exits with SystemExit, as Python does.
    backend = create_backend(_config(tmp_path, tiny_model_dir))
    try:
        process = backend._process
        process.terminate()
        process.join(10)
        assert process.exitcode == 0  # not -SIGTERM
    finally:
        backend.close()


def test_a_checkpoint_that_cannot_be_loaded_fails_at_once_with_the_loaders_message(tmp_path):
    with pytest.raises(BackendError, match=r"nowhere.*does not exist"):
        create_backend(_config(tmp_path, tmp_path / "nowhere"))


def test_model_process_no_keeps_the_model_in_this_process(tmp_path, tiny_model_dir):
    here = create_backend(_config(tmp_path, tiny_model_dir, model_process=False))
    assert isinstance(here, HFBackend)
    here.close()
