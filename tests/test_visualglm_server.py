"""The `visualglm` backend behind the real thread API (127.0.0.1, ephemeral port), on the converted tiny SAT checkpoint.

The server is started exactly as `defect-glm serve --backend visualglm --model DIR` would build it
(`create_backend` from the config, the model in a process of its own); a thread message with a wafer image is posted over HTTP, a
follow-up comes from memory, and the answers are checked against the model run directly on the
VisualGLM prompt the backend is documented to build.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from data_tools.wafer_map import WaferMap
from finetune.visualglm.convert_sat import convert_sat_checkpoint
from model_server.backends.base import GenerationRequest, Turn
from model_server.backends.visualglm import VisualGLMBackend
from model_server.client import ModelServerClient
from model_server.config import ServerConfig
from model_server.model_process import ModelProcess
from model_server.testing import running_server, wafer_grid, wafer_png

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "visualglm"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vg-serve") / "checkpoint-WaferGLM-tiny"
    convert_sat_checkpoint(FIXTURES / "sat_tiny" / "sat_checkpoint", out, tokenizer=FIXTURES / "tiny_ice_text.model")
    return out


@pytest.fixture(scope="module")
def backend(checkpoint: Path) -> VisualGLMBackend:
    return VisualGLMBackend(checkpoint)


def _direct_answer(backend: VisualGLMBackend, text: str, wafer: WaferMap | None, max_new_tokens: int) -> str:
    """The model run by hand on a literal prompt: processor -> generate -> decode."""
    from finetune.prompting import model_image

    images = [model_image(wafer)] if wafer is not None else None
    inputs = backend.processor(text=[text], images=images)
    out = backend.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=backend.config.eos_token_id, pad_token_id=backend.config.pad_token_id)
    return backend.processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:].tolist(), skip_special_tokens=True).strip()


def test_prompt_is_visualglms_format_with_history_reserialised(backend):
    wafer = WaferMap(wafer_grid(52, "edge"))
    request = GenerationRequest("How many dies fail?", wafer,
                                history=(Turn("user", "What defects?"), Turn("assistant", "Edge-Ring.")))
    text, images = backend.prompt(request)
    # the question that came with the map reads as the recognition question (data_tools.phrasing.opening_question)
    assert text == ("<img><image></img>问：What defects does this wafer show?\n答：Edge-Ring.\n问：How many dies fail?\n"
                    "答：[gMASK]<sop>")
    assert len(images) == 1 and images[0].size == (52, 52)
    ids = backend.processor(text=[text], images=images)["input_ids"][0].tolist()
    assert ids.count(backend.config.pad_token_id) == backend.config.image_length == 4
    assert ids[-2:] == [backend.config.gmask_token_id, backend.config.bos_token_id]
    assert backend.info.backend == "visualglm" and backend.info.details["measured_facts"] is False


def test_long_history_is_trimmed_to_the_context(backend):
    long_turns = tuple(Turn("user" if i % 2 == 0 else "assistant", "wafer edge ring " * 30) for i in range(8))
    text, _ = backend.prompt(GenerationRequest("Why?", WaferMap(wafer_grid(52, "center")), history=long_turns))
    assert text.endswith("问：Why?\n答：[gMASK]<sop>") and text.count("问：") < 5
    assert len(backend.processor.encode_prompt(text, True)) + 256 <= backend.config.max_sequence_length


def test_batched_answers_equal_single_answers_and_stream(backend):
    wafer = WaferMap(wafer_grid(52, "scratch"))
    requests = [GenerationRequest("What defects does this wafer show?", wafer, max_new_tokens=6),
                GenerationRequest("这张晶圆有什么缺陷？", WaferMap(wafer_grid(52, "random")), max_new_tokens=6),
                GenerationRequest("Check the chuck?", None, max_new_tokens=4)]
    batched = backend.generate(requests)
    singles = [backend.generate([r])[0] for r in requests]
    assert batched == singles and all(batched)
    assert "".join(backend.generate_stream(requests[0])) == singles[0]


def test_server_answers_a_thread_with_a_wafer_image(tmp_path, checkpoint, backend):
    config = ServerConfig(port=0, db=tmp_path / "threads.sqlite", backend="visualglm", model=checkpoint,
                          dtype="float32", max_new_tokens=6, max_wait_ms=0)

    async def go():
        async with running_server(config) as server, ModelServerClient(server.url) as client:
            assert server.state.load_error is None
            first = await client.send_message("C9:1700000000.0001", "What defects does this wafer show?",
                                              image=wafer_png("center"))
            follow = await client.send_message("C9:1700000000.0001", "Where are they?")
            status = await client.status()
            return first, follow, status, server.state.backend

    first, follow, status, served = asyncio.run(go())
    # built by the registry from --backend visualglm, in a model process of its own (closed by now)
    assert isinstance(served, ModelProcess) and served.info.backend == "visualglm"
    wafer = WaferMap(wafer_grid(52, "center"))
    assert first.findings is not None and first.findings.measured == wafer.facts()
    assert first.model == served.info.name == "checkpoint-WaferGLM-tiny"
    with torch.no_grad():
        expected = _direct_answer(backend, "<img><image></img>问：What defects does this wafer show?\n答：[gMASK]<sop>",
                                  wafer, 6)
    assert first.answer == expected and first.answer
    follow_prompt = (f"<img><image></img>问：What defects does this wafer show?\n答：{first.answer}\n"
                     "问：Where are they?\n答：[gMASK]<sop>")
    with torch.no_grad():
        assert follow.answer == _direct_answer(backend, follow_prompt, wafer, 6)
    assert status.backend == "visualglm" and status.ready and status.model == "checkpoint-WaferGLM-tiny"
