"""Backends behind the server: hf (dtype and its auto default, LoRA adapter, quantization refusal, default checkpoint) and openai.

The hf cases load the tiny random checkpoint; the openai cases chain two of our own servers on
127.0.0.1 (front: memory, limits, findings; back: the model), with small Backend
implementations as the back server's model where the model's output does not matter.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import torch

from data_tools.wafer_map import WaferMap
from finetune.loading import ModelLoadError
from finetune.precision import bf16_is_native, resolve_dtype
from model_server import wire
from model_server.backends.base import Backend, BackendError, BackendInfo, GenerationRequest
from model_server.backends.hf import HFBackend
from model_server.backends.openai_compat import OpenAIBackend
from model_server.backends.registry import load_backend, model_dir
from model_server.client import ModelServerClient, ModelServerError
from model_server.config import ServerConfig
from model_server.testing import running_server, wafer_grid, wafer_png


class _Echo(Backend):
    """Answers "echo: <question> (<n> earlier turns)"; a question containing BOOM makes the batch fail."""

    def __init__(self, name: str = "echo-model") -> None:
        self.name = name
        self.seen: list[GenerationRequest] = []

    @property
    def info(self) -> BackendInfo:
        return BackendInfo(self.name, "7", "test")

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        if any("BOOM" in r.question for r in requests):
            raise BackendError("simulated engine failure")
        self.seen.extend(requests)
        return [f"echo: {r.question} ({len(r.history)} earlier turns)" for r in requests]


def _config(tmp_path: Path, name: str, **kw) -> ServerConfig:
    kw.setdefault("max_new_tokens", 8)
    return ServerConfig(port=0, db=tmp_path / f"{name}.sqlite", **kw)


# ------------------------------------------------------------------ hf
def test_hf_bfloat16_answers_through_the_server(tmp_path, tiny_model_dir):
    backend = load_backend(_config(tmp_path, "cfg", model=tiny_model_dir, dtype="bfloat16", device="cpu"))
    assert isinstance(backend, HFBackend)
    assert next(backend.model.parameters()).dtype == torch.bfloat16
    assert backend.info.details["dtype"] == "bfloat16"

    async def go():
        async with running_server(_config(tmp_path, "bf16"), backend) as server, \
                ModelServerClient(server.url) as client:
            return await client.send_message("b", "What defects does this wafer show?", image=wafer_png())

    reply = asyncio.run(go())
    assert isinstance(reply.answer, str) and reply.findings is not None
    backend.close()


def test_hf_answers_from_the_configured_views_through_the_server(tmp_path, tiny_model_dir):
    backend = load_backend(_config(tmp_path, "cfg", model=tiny_model_dir, dtype="float32", device="cpu", views=4))
    assert backend.info.details["views"] == 4

    async def go():
        async with running_server(_config(tmp_path, "views"), backend) as server, \
                ModelServerClient(server.url) as client:
            return await client.send_message("v", "What defects does this wafer show?", image=wafer_png())

    reply = asyncio.run(go())
    assert isinstance(reply.answer, str) and reply.findings is not None
    backend.close()


def test_the_default_dtype_is_bfloat16_only_where_the_cpu_runs_it_natively(tmp_path, tiny_model_dir):
    config = _config(tmp_path, "auto", model=tiny_model_dir, device="cpu")
    assert config.dtype == "auto"
    backend = load_backend(config)
    expected = torch.bfloat16 if bf16_is_native("cpu") else torch.float32
    assert next(backend.model.parameters()).dtype == expected
    assert backend.info.details["dtype"] == str(expected).removeprefix("torch.")
    backend.close()


def test_auto_dtype_follows_the_cpus_bf16_units(monkeypatch):
    for flag in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, flag, lambda: False, raising=False)
    assert resolve_dtype("auto", "cpu") == "float32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert resolve_dtype("auto", "cpu") == "bfloat16"
    assert resolve_dtype("float32", "cpu") == "float32"  # a setting other than auto is kept as given
    assert resolve_dtype("float16", "meta") == "float16"
    if not torch.cuda.is_available():
        assert resolve_dtype("auto", "cuda") == "float16"  # no bf16 on this (absent) GPU: half precision


def test_hf_with_a_lora_adapter(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)

    plain = HFBackend(tiny_model_dir)
    tuned = load_backend(_config(tmp_path, "cfg", model=tiny_model_dir, adapter=adapter))
    assert isinstance(tuned, HFBackend)
    assert tuned.info.name == f"{tiny_model_dir.name}+adapter"
    assert tuned.info.details["adapter_dir"] == str(adapter)
    assert tuned.info.version != plain.info.version  # the served version names the adapter too
    assert type(tuned.model).__name__ == "PeftModelForCausalLM" or hasattr(tuned.model, "peft_config")

    async def go():
        async with running_server(_config(tmp_path, "lora"), tuned) as server, \
                ModelServerClient(server.url) as client:
            status = await client.status()
            reply = await client.send_message("l", "What defects does this wafer show?", image=wafer_png())
            return status, reply

    status, reply = asyncio.run(go())
    assert status.model == tuned.info.name and status.model_version == tuned.info.version
    assert isinstance(reply.answer, str)
    tuned.close()
    plain.close()


def test_a_subclass_that_overrides_generate_alone_is_served_by_it(tmp_path, tiny_model_dir):
    class Prefixed(HFBackend):
        def generate(self, requests):
            return [f"checked: {answer}" for answer in super().generate(requests)]

    backend = Prefixed(tiny_model_dir, views=4, views_below=0.999999)  # a random model is never that sure

    async def go():
        async with running_server(_config(tmp_path, "prefixed"), backend) as server, \
                ModelServerClient(server.url) as client:
            return await client.send_message("p", "What defects does this wafer show?", image=wafer_png())

    try:
        assert asyncio.run(go()).answer.startswith("checked: ")
    finally:
        backend.close()


@pytest.mark.parametrize(("views", "below", "rows"), [(1, None, 1), (4, None, 4), (4, 0.9, 1)])
def test_the_prompts_a_request_puts_in_a_generate_call(tiny_model_dir, views, below, rows):
    """What the batcher counts against max_batch_size: a map asked in every view takes one prompt per view;
    asked the other views only when unsure, one (they come back as an unfinished answer counting its own)."""
    backend = HFBackend(tiny_model_dir, views=views, views_below=below)
    try:
        wafer = WaferMap(wafer_grid(kind="center", seed=1))
        assert backend.prompt_rows(GenerationRequest("What defects does this wafer show?", wafer)) == rows
        assert backend.prompt_rows(GenerationRequest("hello", None)) == 1
    finally:
        backend.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantization_without_cuda_is_refused_clearly(tmp_path, tiny_model_dir, quantization):
    with pytest.raises(ModelLoadError) as err:
        load_backend(_config(tmp_path, "q", model=tiny_model_dir, quantization=quantization))
    message = str(err.value)
    assert quantization in message and "CUDA" in message


def test_default_model_is_the_promoted_or_committed_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFECT_GLM_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DEFECT_GLM_DEFAULT_MODEL", raising=False)
    committed = Path(__file__).resolve().parents[1] / "finetune" / "default_model"
    assert model_dir(ServerConfig()) == committed
    promoted = tmp_path / "promoted"
    promoted.mkdir()
    (promoted / "config.json").write_text("{}")
    (tmp_path / "home" / "serving.json").parent.mkdir(parents=True)
    (tmp_path / "home" / "serving.json").write_text(json.dumps({"path": str(promoted), "version": "v3"}))
    assert model_dir(ServerConfig()) == promoted
    assert model_dir(ServerConfig(model=tmp_path / "explicit")) == tmp_path / "explicit"


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError) as err:
        load_backend(_config(tmp_path, "m", model=tmp_path / "nowhere"))
    assert "nowhere" in str(err.value) and "does not exist" in str(err.value)


# ------------------------------------------------------------------ openai (two of our servers chained)
def test_openai_backend_keeps_memory_in_front_and_reports_engine_failures(tmp_path):
    echo = _Echo()

    async def go():
        async with running_server(_config(tmp_path, "back"), echo) as back:
            loop = asyncio.get_running_loop()
            remote = await loop.run_in_executor(None, OpenAIBackend, back.url + "/v1", "echo-model", None, 10.0)
            async with running_server(_config(tmp_path, "front", backend="openai", openai_url=back.url + "/v1"),
                                      remote) as front, ModelServerClient(front.url) as client:
                first = await client.send_message("x", "What defects does this wafer show?", image=wafer_png())
                second = await client.send_message("x", "which zone?")
                with pytest.raises(ModelServerError) as err:
                    await client.send_message("x", "BOOM")
                third = await client.send_message("x", "still there?")
                status = await client.status()
                view = await client.get_thread("x")
            remote.close()
            return first, second, err.value, third, status, view, back.state.memory.count()

    first, second, failure, third, status, view, back_threads = asyncio.run(go())
    assert first.answer == "echo: What defects does this wafer show? (0 earlier turns)"
    # the history travelled in the messages; the question in the form the small model reads it (capitalised)
    assert second.answer == "echo: Which zone? (2 earlier turns)"
    assert (failure.status, failure.code) == (500, wire.CODE_MODEL_ERROR) and failure.request_id
    assert third.answer == "echo: Still there? (4 earlier turns)"  # the failed turn was not stored
    assert status.backend == "openai" and status.model == "echo-model"
    assert len(view.turns) == 6 and back_threads == 0
    # the back server got the front's prompt: the wafer image came through as a data URL and was re-read
    assert echo.seen[1].wafer is not None and echo.seen[1].question == "Which zone?"


def test_openai_backend_refuses_unreachable_or_wrong_engines(tmp_path):
    with pytest.raises(BackendError) as err:
        OpenAIBackend("http://127.0.0.1:9/v1", timeout=2)
    assert "127.0.0.1:9" in str(err.value) and "unreachable" in str(err.value)

    async def go():
        async with running_server(_config(tmp_path, "back"), _Echo()) as back:
            loop = asyncio.get_running_loop()
            with pytest.raises(BackendError) as wrong:
                await loop.run_in_executor(None, OpenAIBackend, back.url + "/v1", "gpt-4o", None, 5.0)
            return str(wrong.value)

    message = asyncio.run(go())
    assert "gpt-4o" in message and "echo-model" in message
