"""The Idempotency-Key header of POST /v1/threads/{id}/messages, on a real server (127.0.0.1, SQLite file).

A repeated key is answered from the stored reply without asking the model or storing the turn
again; a repeat that arrives while the first request is still generating (the bot's retry after
its own time-out) waits for it and gets its reply; keys survive a server restart; different keys
(or no key) are separate messages; a key reused for another question is 422; malformed keys are
400 with the usual error body; and keys are bounded (per thread, by age, forgotten with their thread).
`_Numbered` is a small Backend whose every answer is unique, so a second generation cannot pass
for a replay.
"""

from __future__ import annotations

import asyncio
import threading

import aiohttp
import pytest
from multidict import CIMultiDict

from model_server import wire
from model_server.backends.base import Backend, BackendInfo, GenerationRequest
from model_server.client import ModelServerClient, ModelServerUnavailable
from model_server.config import ServerConfig
from model_server.memory import ThreadMemory
from model_server.testing import running_server, wafer_png


class _Numbered(Backend):
    """Answers "<tag> #<n>: <question>" (n counts every request ever asked) once `gate` is open."""

    def __init__(self, tag: str = "a", open_gate: bool = True) -> None:
        self.tag = tag
        self.gate = threading.Event()
        if open_gate:
            self.gate.set()
        self.asked: list[str] = []
        self.started = threading.Event()  # set when the first batch reached the model

    @property
    def info(self) -> BackendInfo:
        return BackendInfo(f"numbered-{self.tag}", "1", "test")

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        self.started.set()
        if not self.gate.wait(30):
            raise RuntimeError("gate never opened")
        answers = []
        for r in requests:
            self.asked.append(r.question)
            answers.append(f"{self.tag} #{len(self.asked)}: {r.question}")
        return answers


def _config(tmp_path, **kw) -> ServerConfig:
    return ServerConfig(port=0, db=tmp_path / "threads.sqlite", max_wait_ms=0, web_dir=None, **kw)


def _user_turns(server, thread_id: str) -> list[str]:
    thread = server.state.memory.get(thread_id)
    return [] if thread is None else [t.text for t in thread.turns if t.role == "user"]


async def _post(
    http: aiohttp.ClientSession, url: str, text: str, key: str | None
) -> tuple[int, CIMultiDict[str], dict]:
    headers = {} if key is None else {wire.IDEMPOTENCY_KEY_HEADER: key}
    async with http.post(url, json={"text": text}, headers=headers) as r:
        return r.status, CIMultiDict(r.headers), await r.json()


def test_same_key_twice_is_answered_once_and_stored_once(tmp_path):
    backend = _Numbered()
    png = wafer_png("center")

    async def go():
        async with running_server(_config(tmp_path), backend) as server, ModelServerClient(server.url) as client, \
                aiohttp.ClientSession() as http:
            first = await client.send_message("T:1", "How many dies fail?", image=png, idempotency_key="job-1-1700.1")
            # the bot's retry may send the map again: still the same message
            again = await client.send_message("T:1", "How many dies fail?", image=png, idempotency_key="job-1-1700.1")
            asked_after_repeat = list(backend.asked)
            url = f"{server.url}/v1/threads/T:1/messages"
            raw = await _post(http, url, "How many dies fail?", "job-1-1700.1")
            reused = await _post(http, url, "Where is it?", "job-1-1700.1")
            follow = await client.send_message("T:1", "Where is it?", idempotency_key="job-2-1700.2")
            return first, again, asked_after_repeat, raw, reused, follow, _user_turns(server, "T:1")

    first, again, asked_after_repeat, raw, reused, follow, users = asyncio.run(go())
    # one generation (the question plus the recognition question of a new map), not two
    assert asked_after_repeat == ["How many dies fail?", "What defects does this wafer show?"]
    assert first.answer == "a #1: How many dies fail?"
    assert (again.answer, again.findings, again.model) == (first.answer, first.findings, first.model)
    assert again.findings is not None and again.findings.measured["failing"] > 0
    status, headers, body = raw
    assert status == 200 and body["answer"] == first.answer and body["findings"] == first.findings.to_json()
    assert headers[wire.IDEMPOTENT_REPLAYED_HEADER] == "true"
    # the same key for another question is refused, not silently answered with the old reply
    status, _, body = reused
    assert status == 422 and body["error"]["code"] == wire.CODE_IDEMPOTENCY_KEY_REUSED
    assert body["error"]["type"] == wire.INVALID_REQUEST and "job-1-1700.1" in body["error"]["message"]
    # a new key is a new message, answered from the memory of the first
    assert follow.answer == "a #3: Where is it?" and follow.findings == first.findings
    assert users == ["How many dies fail?", "Where is it?"]


def test_repeat_while_the_first_is_still_generating_waits_and_gets_its_reply(tmp_path):
    backend = _Numbered(open_gate=False)

    async def go():
        async with running_server(_config(tmp_path), backend) as server, \
                ModelServerClient(server.url, timeout=0.3) as impatient, ModelServerClient(server.url) as patient:
            # the bot's first attempt times out while the model is still working on it …
            with pytest.raises(ModelServerUnavailable):
                await impatient.send_message("slow", "How many dies fail?", idempotency_key="job-7-1.5")
            while not backend.started.wait(0):  # the first request is with the model
                await asyncio.sleep(0.01)
            assert backend.asked == []
            # … so it sends the question again with the same key
            retry = asyncio.create_task(patient.send_message("slow", "How many dies fail?", idempotency_key="job-7-1.5"))
            try:
                await asyncio.sleep(0.3)
                waited = not retry.done()
            finally:
                backend.gate.set()
            reply = await retry
            return waited, reply, _user_turns(server, "slow"), server.state.memory.get("slow")

    waited, reply, users, thread = asyncio.run(go())
    assert waited  # the repeat did not answer on its own while the first was generating
    assert backend.asked == ["How many dies fail?"]  # generated once
    assert reply.answer == "a #1: How many dies fail?"  # the first request's answer
    assert users == ["How many dies fail?"]
    assert [t.role for t in thread.turns] == ["user", "assistant"] and thread.turns[1].text == reply.answer


def test_a_key_is_remembered_across_a_server_restart(tmp_path):
    before, after = _Numbered("before"), _Numbered("after")

    async def ask(backend: Backend):
        async with running_server(_config(tmp_path), backend) as server, ModelServerClient(server.url) as client:
            reply = await client.send_message("kept", "How many dies fail?", image=wafer_png("edge"), idempotency_key="k-1")
            return reply, _user_turns(server, "kept")

    first, _ = asyncio.run(ask(before))
    replayed, users = asyncio.run(ask(after))  # a new process over the same SQLite file
    assert after.asked == []  # the restarted server never asked its model
    assert replayed.answer == first.answer == "before #1: How many dies fail?"
    assert replayed.findings == first.findings and replayed.model == first.model == "numbered-before"
    assert users == ["How many dies fail?"]


def test_different_keys_or_no_key_are_separate_messages(tmp_path):
    backend = _Numbered()

    async def go():
        async with running_server(_config(tmp_path), backend) as server, ModelServerClient(server.url) as client:
            replies = [await client.send_message("t", "same question", idempotency_key=key) for key in ("k1", "k2")]
            replies += [await client.send_message("t", "same question") for _ in range(2)]
            # keys belong to their thread: k1 on another thread is another message
            other = await client.send_message("u", "same question", idempotency_key="k1")
            return replies, other, _user_turns(server, "t"), _user_turns(server, "u")

    replies, other, users_t, users_u = asyncio.run(go())
    assert [r.answer for r in replies] == [f"a #{n}: same question" for n in (1, 2, 3, 4)]
    assert other.answer == "a #5: same question"
    assert users_t == ["same question"] * 4 and users_u == ["same question"]


@pytest.mark.parametrize(
    ("name", "key"),
    [("space", "job 1"), ("too_long", "k" * (wire.MAX_IDEMPOTENCY_KEY_CHARS + 1)), ("empty", ""), ("tab", "a\tb")],
)
def test_malformed_key_is_a_400_with_the_error_body(tmp_path, name, key):
    backend = _Numbered()

    async def go():
        async with running_server(_config(tmp_path), backend) as server, aiohttp.ClientSession() as http:
            result = await _post(http, f"{server.url}/v1/threads/bad/messages", "hello", key)
            return result, server.state.memory.get("bad")

    (status, headers, body), thread = asyncio.run(go())
    assert status == 400, (name, body)
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code"}
    assert body["error"]["type"] == wire.INVALID_REQUEST
    assert body["error"]["code"] == wire.CODE_INVALID_IDEMPOTENCY_KEY
    assert wire.IDEMPOTENCY_KEY_HEADER in body["error"]["message"]
    assert headers[wire.REQUEST_ID_HEADER]
    assert backend.asked == [] and thread is None  # refused before anything was asked or stored


def test_two_key_headers_are_a_400_and_the_client_refuses_bad_keys(tmp_path):
    async def go():
        async with running_server(_config(tmp_path), _Numbered()) as server, aiohttp.ClientSession() as http, \
                ModelServerClient(server.url) as client:
            headers = [(wire.IDEMPOTENCY_KEY_HEADER, "a"), (wire.IDEMPOTENCY_KEY_HEADER, "b")]
            async with http.post(f"{server.url}/v1/threads/two/messages", json={"text": "hi"}, headers=headers) as r:
                two = r.status, await r.json()
            with pytest.raises(ValueError, match="idempotency key"):
                await client.send_message("two", "hi", idempotency_key="no spaces please")
            return two

    status, body = asyncio.run(go())
    assert status == 400 and body["error"]["code"] == wire.CODE_INVALID_IDEMPOTENCY_KEY


def test_keys_are_bounded_per_thread_by_age_and_go_with_their_thread(tmp_path):
    now = [1000.0]
    memory = ThreadMemory(tmp_path / "m.sqlite", max_stored_turns=4, idempotency_ttl_s=60.0, clock=lambda: now[0])
    try:
        for n in range(3):  # max_stored_turns=4 keeps 2 question-answer pairs, so 2 keys
            memory.record_exchange("t", f"q{n}", f"a{n}", idempotency_key=f"k{n}")
            now[0] += 1
        assert memory.replay("t", "k0") is None
        assert memory.replay("t", "k1").answer == "a1" and memory.replay("t", "k2").answer == "a2"
        assert memory.replay("t", "k2").same_question("q2") and not memory.replay("t", "k2").same_question("q1")
        assert memory.replay("other", "k2") is None
        now[0] += 60  # k1 and k2 are now older than the window
        assert memory.replay("t", "k2") is None
        memory.record_exchange("t", "q3", "a3", idempotency_key="k3")
        memory.evict()
        stored = {r[0] for r in memory.db.execute("SELECT key FROM idempotency_keys").fetchall()}
        assert stored == {"k3"}
        assert memory.delete("t")
        assert memory.db.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0] == 0
    finally:
        memory.close()
