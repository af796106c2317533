"""POST /admin/reload: a newly promoted checkpoint is swapped in under load without dropping a request."""

from __future__ import annotations

import asyncio
import os
import shutil

import aiohttp
import pytest

from finetune.tiny import build_tiny_checkpoint
from model_server import wire
from model_server.client import ModelServerClient
from model_server.config import ServerConfig
from model_server.testing import running_server, wafer_png

TOKEN = "s3cret-admin-token"


def test_reload_under_load_drops_nothing(tmp_path, tiny_model_dir):
    serving = tmp_path / "serving"
    shutil.copytree(tiny_model_dir, serving)
    newer = build_tiny_checkpoint(tmp_path / "newer", seed=1)
    cfg = ServerConfig(port=0, db=tmp_path / "t.sqlite", model=serving, admin_token=TOKEN, max_new_tokens=8)
    png = wafer_png("edge")

    async def go():
        async with running_server(cfg) as server, ModelServerClient(server.url, timeout=120) as client, \
                aiohttp.ClientSession() as http:
            before = await client.status()
            stop = asyncio.Event()
            statuses: list[int] = []

            async def load(worker: int) -> None:
                n = 0
                while not stop.is_set():
                    reply = await client.send_message(f"w{worker}-{n}", "What defects?", image=png if n % 2 else None)
                    statuses.append(200 if reply.answer is not None else 0)
                    n += 1

            workers = [asyncio.create_task(load(i)) for i in range(6)]
            await asyncio.sleep(0.3)
            # "promote" the newer checkpoint: it takes the serving directory's place
            os.replace(serving, tmp_path / "old")
            os.replace(newer, serving)
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with http.post(server.url + "/admin/reload", headers=headers) as r:
                assert r.status == 200, await r.text()
                reloaded = await r.json()
            await asyncio.sleep(0.3)
            stop.set()
            await asyncio.gather(*workers)  # any failed request would raise here
            after = await client.status()
            return before, reloaded, after, statuses

    before, reloaded, after, statuses = asyncio.run(go())
    assert len(statuses) >= 12 and set(statuses) == {200}
    assert reloaded["reloaded"] is True and reloaded["previous"]["version"] == before.model_version
    assert after.model_version == reloaded["version"] != before.model_version


def test_reload_needs_the_token_and_a_failed_reload_keeps_serving(tmp_path, tiny_model_dir):
    async def go(cfg: ServerConfig):
        async with running_server(cfg) as server, aiohttp.ClientSession() as http:
            results = {}
            for name, headers, body in [
                ("none", {}, None),
                ("wrong", {"Authorization": "Bearer nope"}, None),
                ("bad_dir", {"Authorization": f"Bearer {TOKEN}"}, {"model": str(tmp_path / "missing")}),
                ("bad_body", {"Authorization": f"Bearer {TOKEN}"}, {"model": 1, "other": 2}),
            ]:
                async with http.post(server.url + "/admin/reload", headers=headers, json=body) as r:
                    results[name] = (r.status, (await r.json())["error"])
            async with ModelServerClient(server.url) as client:
                results["still_serving"] = (await client.send_message("t", "hello")).answer is not None
            return results

    cfg = ServerConfig(port=0, db=tmp_path / "t.sqlite", model=tiny_model_dir, admin_token=TOKEN, max_new_tokens=4)
    results = asyncio.run(go(cfg))
    assert results["none"][0] == 401 and results["none"][1]["type"] == wire.AUTHENTICATION
    assert results["wrong"][0] == 401
    assert results["bad_dir"][0] == 500 and results["bad_dir"][1]["code"] == wire.CODE_RELOAD_FAILED
    assert "missing" in results["bad_dir"][1]["message"]
    assert results["bad_body"][0] == 400
    assert results["still_serving"] is True

    disabled = ServerConfig(port=0, db=tmp_path / "u.sqlite", model=tiny_model_dir, max_new_tokens=4,
                            model_process=False)

    async def no_token():
        async with running_server(disabled) as server, aiohttp.ClientSession() as http, \
                http.post(server.url + "/admin/reload", headers={"Authorization": "Bearer x"}) as r:
            return r.status, await r.json()

    status, body = asyncio.run(no_token())
    assert status == 403 and "DEFECT_GLM_ADMIN_TOKEN" in body["error"]["message"]


@pytest.mark.parametrize("header", ["Basic abc", "Bearer", ""])
def test_malformed_authorization_is_401(tmp_path, tiny_model_dir, header):
    cfg = ServerConfig(port=0, db=tmp_path / "t.sqlite", model=tiny_model_dir, admin_token=TOKEN, model_process=False)

    async def go():
        async with running_server(cfg) as server, aiohttp.ClientSession() as http, \
                http.post(server.url + "/admin/reload", headers={"Authorization": header}) as r:
            return r.status

    assert asyncio.run(go()) == 401
