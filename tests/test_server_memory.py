"""Thread memory (model_server.memory) on a real SQLite file, and the server's prompt trimming.

Covers: WAL mode and one file; images stored once by content hash; timestamps; reopening the
file; the history handed to the model (only turns about the current map, the last N, starting
with a user turn); TTL expiry and least-recently-used eviction beyond `max_threads`; stored-turn
bounds; orphaned images deleted; and, on a running server, `max_history_turns` limiting what the
model sees and long conversations trimmed to fit the model's context instead of failing.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from data_tools.wafer_map import WaferMap
from model_server.backends.base import GenerationRequest, Turn
from model_server.backends.hf import HFBackend
from model_server.client import ModelServerClient
from model_server.config import ServerConfig
from model_server.memory import StoredImage, ThreadMemory
from model_server.testing import running_server, wafer_grid, wafer_png


class Clock:
    """A settable clock for TTL tests."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _image(kind: str = "center") -> StoredImage:
    return StoredImage.from_bytes(wafer_png(kind), WaferMap(wafer_grid(52, kind)))


def _rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_one_wal_file_image_once_and_reopen(tmp_path):
    db = tmp_path / "mem.sqlite"
    clock = Clock()
    memory = ThreadMemory(db, clock=clock)
    image = _image("center")
    memory.record_exchange("a", "what?", "a center blob", image=image, findings={"class": "Center"}, model="m")
    clock.now += 5
    memory.record_exchange("b", "and here?", "also center", image=image, findings={"class": "Center"}, model="m")
    clock.now += 5
    memory.record_exchange("a", "yield?", "93%")
    memory.close()

    assert _rows(db, "PRAGMA journal_mode")[0][0] == "wal"
    assert _rows(db, "SELECT count(*) FROM images") == [(1,)]  # two threads, one stored image
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == ["mem.sqlite"]

    reopened = ThreadMemory(db, clock=clock)
    thread = reopened.get("a")
    assert thread is not None
    assert [(t.role, t.text) for t in thread.turns] == [
        ("user", "what?"), ("assistant", "a center blob"), ("user", "yield?"), ("assistant", "93%")]
    assert thread.turns[0].image_sha256 == image.sha256 and thread.turns[2].image_sha256 is None
    assert thread.created_at == 1_700_000_000.0 and thread.updated_at == 1_700_000_010.0
    assert [t.created_at for t in thread.turns] == [1_700_000_000.0] * 2 + [1_700_000_010.0] * 2
    assert thread.findings == {"class": "Center"} and thread.image_sha256 == image.sha256
    stored = reopened.image(image.sha256)
    assert stored is not None and stored.data == image.data
    assert (stored.grid == image.grid).all()
    assert reopened.integrity_ok()
    reopened.close()


def test_context_is_about_the_current_map_and_trimmed(tmp_path):
    memory = ThreadMemory(tmp_path / "mem.sqlite")
    memory.record_exchange("t", "q0", "a0", image=_image("center"), findings={"n": 0})
    memory.record_exchange("t", "q1", "a1")
    edge = _image("edge")
    memory.record_exchange("t", "q2", "a2", image=edge, findings={"n": 2})  # a new map: earlier turns are about another
    for i in range(3, 7):
        memory.record_exchange("t", f"q{i}", f"a{i}")

    full = memory.context("t", 100)
    assert full.exists and full.image_sha256 == edge.sha256
    assert full.wafer is not None and (full.wafer.grid == edge.grid).all()
    assert full.findings == {"n": 2}
    assert [t.text for t in full.history] == [x for i in range(2, 7) for x in (f"q{i}", f"a{i}")]

    # an odd limit never starts the history with an answer
    three = memory.context("t", 3)
    assert [t.text for t in three.history] == ["q6", "a6"]
    four = memory.context("t", 4)
    assert [t.text for t in four.history] == ["q5", "a5", "q6", "a6"]
    assert memory.context("t", 0).history == ()
    assert not memory.context("nobody", 8).exists
    memory.close()


def test_context_when_the_turn_that_brought_the_map_was_trimmed(tmp_path):
    memory = ThreadMemory(tmp_path / "mem.sqlite", max_stored_turns=4)
    image = _image("center")
    memory.record_exchange("t", "q0", "a0", image=image, findings={"n": 0})
    for i in range(1, 4):
        memory.record_exchange("t", f"q{i}", f"a{i}")
    context = memory.context("t", 100)  # the stored turns are all about the thread's map
    assert context.image_sha256 == image.sha256 and context.findings == {"n": 0}
    assert [t.text for t in context.history] == ["q2", "a2", "q3", "a3"]
    memory.close()


def test_die_grids_are_decoded_once_and_forgotten_with_their_image(tmp_path):
    db = tmp_path / "mem.sqlite"
    memory = ThreadMemory(db, wafer_cache_size=1)
    center, edge = _image("center"), _image("edge")
    memory.record_exchange("a", "q", "a", image=center)
    memory.record_exchange("b", "q", "a", image=edge)
    first = memory.context("a", 2).wafer
    assert first is not None and (first.grid == center.grid).all()
    assert memory.context("a", 2).wafer is first  # from memory, not parsed again
    assert memory.wafer(edge.sha256) is not None  # the cache holds one grid: center's is dropped
    assert memory.context("a", 2).wafer is not first and (memory.wafer(center.sha256).grid == center.grid).all()

    # a grid in memory goes with its image: a deleted thread's map is not answered from memory
    memory.delete("a")
    assert memory.wafer(center.sha256) is None
    assert _rows(db, "SELECT count(*) FROM images") == [(1,)]
    with pytest.raises(ValueError, match="wafer_cache_size"):
        ThreadMemory(tmp_path / "other.sqlite", wafer_cache_size=-1)
    memory.close()


def test_stored_turns_are_bounded(tmp_path):
    memory = ThreadMemory(tmp_path / "mem.sqlite", max_stored_turns=4)
    for i in range(5):
        memory.record_exchange("t", f"q{i}", f"a{i}")
    thread = memory.get("t")
    assert thread is not None
    assert [t.text for t in thread.turns] == ["q3", "a3", "q4", "a4"]
    memory.close()


def test_ttl_forgets_idle_threads_and_their_images(tmp_path):
    clock = Clock()
    memory = ThreadMemory(tmp_path / "mem.sqlite", ttl_s=60, clock=clock)
    memory.record_exchange("old", "q", "a", image=_image("center"))
    clock.now += 50
    memory.record_exchange("fresh", "q", "a", image=_image("edge"))
    clock.now += 20  # "old" is now 70 s idle, "fresh" 20 s
    assert memory.get("old") is None and memory.get("fresh") is not None
    assert not memory.context("old", 8).exists
    assert memory.evict() == 1
    assert memory.count() == 1
    assert _rows(memory.path, "SELECT count(*) FROM images") == [(1,)]  # the old thread's image went with it
    # an expired id starts afresh rather than resurrecting the old turns
    memory.record_exchange("fresh", "q2", "a2")
    clock.now += 61
    memory.record_exchange("fresh", "new start", "ok")
    thread = memory.get("fresh")
    assert thread is not None and [t.text for t in thread.turns] == ["new start", "ok"]
    memory.close()


def test_max_threads_evicts_the_least_recently_used(tmp_path):
    clock = Clock()
    memory = ThreadMemory(tmp_path / "mem.sqlite", max_threads=3, ttl_s=0, clock=clock)
    for name in ("a", "b", "c"):
        memory.record_exchange(name, "q", "a")
        clock.now += 1
    memory.record_exchange("a", "again", "x")  # "a" is now the most recently used
    clock.now += 1
    memory.record_exchange("d", "q", "a")  # a fourth thread: "b" (least recently used) goes
    assert memory.count() == 3
    assert memory.get("b") is None
    assert all(memory.get(name) is not None for name in ("a", "c", "d"))
    memory.close()


def test_memory_refuses_bad_limits_and_unusable_files(tmp_path):
    with pytest.raises(ValueError):
        ThreadMemory(tmp_path / "m.sqlite", max_threads=0)
    not_a_db = tmp_path / "garbage.sqlite"
    not_a_db.write_bytes(b"this is not an sqlite file at all" * 100)
    from model_server.memory import ThreadMemoryError

    with pytest.raises(ThreadMemoryError) as err:
        ThreadMemory(not_a_db)
    assert str(not_a_db) in str(err.value)


class _Recording(HFBackend):
    """The real tiny model; also keeps every request it was asked (to see the prompt the server built)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[GenerationRequest] = []

    def generate_round(self, requests: list[GenerationRequest], unfinished: list) -> tuple[list, list[str]]:
        self.seen.extend(requests)  # what the server's batcher calls
        return super().generate_round(requests, unfinished)


def test_server_puts_at_most_max_history_turns_in_the_prompt(tmp_path, tiny_model_dir):
    backend = _Recording(tiny_model_dir)
    cfg = ServerConfig(port=0, db=tmp_path / "t.sqlite", max_new_tokens=4, max_history_turns=4)

    async def go():
        async with running_server(cfg, backend) as server, ModelServerClient(server.url) as client:
            replies = [await client.send_message("h", "What defects does this wafer show?", image=wafer_png())]
            for i in range(4):
                replies.append(await client.send_message("h", f"follow-up {i}"))
            return replies, await client.get_thread("h")

    replies, view = asyncio.run(go())
    last = backend.seen[-1]
    assert last.question == "follow-up 3"
    assert last.history == (Turn("user", "follow-up 1"), Turn("assistant", replies[2].answer),
                            Turn("user", "follow-up 2"), Turn("assistant", replies[3].answer))
    assert len(view.turns) == 10  # everything is stored; only the prompt is trimmed


def test_long_conversation_is_trimmed_to_the_model_context(tmp_path, tiny_model_dir):
    """Follow-ups whose history cannot fit the tiny model's 2048-token context still get answers."""
    backend = _Recording(tiny_model_dir)
    cfg = ServerConfig(port=0, db=tmp_path / "t.sqlite", max_new_tokens=4, max_history_turns=50)
    long_text = "the failing dies near the edge " * 40  # ~1200 characters

    async def go():
        async with running_server(cfg, backend) as server, ModelServerClient(server.url, timeout=120) as client:
            await client.send_message("long", "What defects does this wafer show?", image=wafer_png("edge"))
            return [await client.send_message("long", f"{i}: {long_text}") for i in range(4)]

    replies = asyncio.run(go())
    assert len(replies) == 4 and all(isinstance(r.answer, str) for r in replies)
    # the server handed the full history; the prompt builder dropped the oldest turns to fit
    from finetune.generation import context_limit, prepare_prompt

    last = backend.seen[-1]
    assert len(last.history) == 8
    text, encoded = prepare_prompt(backend.model, backend.processor, last)
    tokens = encoded["input_ids"].shape[1]
    assert tokens + last.max_new_tokens <= context_limit(backend.model)
    assert "0: the failing" not in text  # the oldest follow-up was trimmed away
    assert "3: the failing" in text
