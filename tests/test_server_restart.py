"""`defect-glm serve` as a real subprocess: memory survives a restart and a `kill -9` in the middle of requests;
Ctrl-C stops the server and its child processes quietly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from model_server.client import ModelServerClient, ModelServerClientError, ModelServerError
from model_server.memory import ThreadMemory
from model_server.testing import wafer_png

REPO = Path(__file__).resolve().parents[1]
#: `defect-glm` as the console script runs it (``python -m defect_glm`` would load the module twice).
CLI = [sys.executable, "-c", "import sys, defect_glm; sys.exit(defect_glm.main())"]


def _stat(pid: int | str) -> list[str]:
    """The fields of /proc/PID/stat after the command name: state, parent pid, … (OSError once gone)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid`."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if int(_stat(entry.name)[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = _stat(pid)[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status is left for a parent to collect


def _wait_until_gone(pids: list[int], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _running(p)]
        time.sleep(0.1)
    assert not alive, f"processes {alive} outlived the killed server"


class ServerProcess:
    """`python -m defect_glm serve` on an ephemeral port; the URL is read from its first stdout line."""

    def __init__(self, model: Path, db: Path, *extra: str, own_session: bool = False) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DEFECT_GLM_LOG_LEVEL": "WARNING"}
        self.proc = subprocess.Popen(
            [*CLI, "serve", "--model", str(model), "--db", str(db), "--port", "0", *extra],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=own_session,  # a process group of its own, as a terminal gives a command
        )
        self.url: str | None = None
        found = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith("listening on "):
                    self.url = line.split()[-1]
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(120) or self.url is None:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(30)


def test_memory_survives_restart_and_kill_9_mid_request(tmp_path, tiny_model_dir):
    db = tmp_path / "threads.sqlite"
    png = wafer_png("center")

    # life 1: a conversation, then a clean shutdown (SIGTERM)
    async def first_life(url: str):
        async with ModelServerClient(url) as client:
            reply = await client.send_message("keep", "What defects does this wafer show?", image=png)
            return reply, await client.get_thread("keep")

    server = ServerProcess(tiny_model_dir, db, "--max-new-tokens", "96", "--max-batch-size", "4")
    try:
        kept, view_before = asyncio.run(first_life(server.url))
    finally:
        assert server.stop() == 0

    # life 2: memory intact after the restart; then SIGKILL while requests are being answered
    async def second_life(url: str):
        async with ModelServerClient(url, timeout=60) as client:
            view = await client.get_thread("keep")
            follow = await client.send_message("keep", "How many failing dies?")
            tasks = [asyncio.create_task(client.send_message(f"flood{i}", "Describe it", image=png if i % 2 else None))
                     for i in range(10)]
            _done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=60)
            assert pending, "every request finished before the kill; the test needs some in flight"
            children.extend(_children(server.proc.pid))  # the image reader and the model process
            server.proc.kill()  # SIGKILL with requests in flight
            results = await asyncio.gather(*tasks, return_exceptions=True)
            return view, follow, results

    children: list[int] = []
    server = ServerProcess(tiny_model_dir, db, "--max-new-tokens", "96", "--max-batch-size", "4")
    try:
        view_after, follow, results = asyncio.run(second_life(server.url))
    finally:
        server.proc.kill()
        server.proc.wait(30)
    assert len(children) >= 2, "the server had not started both an image reader and a model process"
    _wait_until_gone(children)  # workers end with the server, even one killed with -9
    assert view_after == view_before
    assert follow.findings == kept.findings  # the map came from memory after the restart
    assert any(isinstance(r, ModelServerClientError) for r in results)  # some requests died with the server

    memory = ThreadMemory(db)
    assert memory.integrity_ok()
    for i in range(10):
        thread = memory.get(f"flood{i}")
        if thread is not None:  # each answered request is whole: its question and its answer
            assert [t.role for t in thread.turns] == ["user", "assistant"]
    memory.close()

    # life 3: the earlier conversation, with the follow-up written before the kill, is all there
    async def third_life(url: str):
        async with ModelServerClient(url) as client:
            view = await client.get_thread("keep")
            with pytest.raises(ModelServerError):
                await client.get_thread("never-started")
            return view

    server = ServerProcess(tiny_model_dir, db, "--max-new-tokens", "8")
    try:
        view = asyncio.run(third_life(server.url))
    finally:
        server.stop()
    assert [t.text for t in view.turns] == [
        "What defects does this wafer show?", kept.answer, "How many failing dies?", follow.answer]


def test_ctrl_c_stops_the_server_and_its_children_without_a_traceback(tmp_path, tiny_model_dir):
    server = ServerProcess(tiny_model_dir, tmp_path / "threads.sqlite", own_session=True)
    try:
        async def upload(url: str) -> None:  # starts the image reader beside the model process
            async with ModelServerClient(url) as client:
                await client.send_message("c", "What defects does this wafer show?", image=wafer_png("center"))

        asyncio.run(upload(server.url))
        children = _children(server.proc.pid)
        assert len(children) >= 2, "expected an image reader and a model process"
        os.killpg(server.proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
        assert server.proc.wait(30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
    _wait_until_gone(children)
    assert server.proc.stderr is not None
    assert "Traceback" not in server.proc.stderr.read()


def test_bad_settings_exit_2_with_a_message(tmp_path):
    proc = subprocess.run(
        [*CLI, "serve", "--model", str(tmp_path / "missing"), "--port", "0",
         "--db", str(tmp_path / "t.sqlite")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2 and "missing" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*CLI, "serve", "--max-batch-size", "zero"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "max_batch_size" in proc.stderr
