"""The dynamic batcher (model_server.batching) with small Backend implementations: no model, no HTTP.

Batching off (max batch size 1) runs one request per generate call; on, requests waiting
together share a call up to the maximum and each caller gets its own answer; `max_wait_ms`
lets a lone request wait for company; a failing batch fails only its own requests; a backend
swapped in (reload) serves the next batch while the running one finishes on the old backend,
which is closed afterwards. An answer the backend leaves unfinished is finished in the next
generate call, beside the requests waiting then (or alone), never in a call of its own.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from model_server.backends.base import Backend, BackendError, BackendInfo, GenerationRequest, Unfinished
from model_server.batching import Batcher, ModelFailure, QueueFull


class _Counting(Backend):
    """Answers "<name>: <question>"; records batch sizes; waits for `gate` if given; BOOM fails the batch."""

    def __init__(self, name: str = "a", gate: threading.Event | None = None) -> None:
        self.name = name
        self.gate = gate
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.closed = False

    @property
    def info(self) -> BackendInfo:
        return BackendInfo(self.name, "1", "test")

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        self.batches.append([r.question for r in requests])
        self.started.set()
        if self.gate is not None and not self.gate.wait(10):
            raise RuntimeError("gate never opened")
        if any("BOOM" in r.question for r in requests):
            raise RuntimeError("simulated failure")
        return [f"{self.name}: {r.question}" for r in requests]

    def close(self) -> None:
        self.closed = True


class _Again(Unfinished):
    def __init__(self, question: str) -> None:
        self.question = question


class _TwoPass(_Counting):
    """Like _Counting, but a question with AGAIN is left unfinished in its first round; records each
    round's (questions, unfinished questions)."""

    def __init__(self, name: str = "a", gate: threading.Event | None = None) -> None:
        super().__init__(name, gate)
        self.rounds: list[tuple[list[str], list[str]]] = []

    def generate_round(self, requests, unfinished):
        self.rounds.append(([r.question for r in requests], [u.question for u in unfinished]))
        answers = self.generate(requests) if requests else []
        answers = [_Again(r.question) if "AGAIN" in r.question else a for r, a in zip(requests, answers)]
        return answers, [f"{self.name}: {u.question} (twice)" for u in unfinished]


def _req(question: str) -> GenerationRequest:
    return GenerationRequest(question)


async def _started(backend: _Counting) -> None:
    while not backend.started.is_set():
        await asyncio.sleep(0.005)


@pytest.mark.parametrize(("max_batch", "expected_sizes"), [(1, [1] * 9), (4, [1, 4, 4])])
def test_batching_off_and_on(max_batch, expected_sizes):
    gate = threading.Event()
    backend = _Counting(gate=gate)

    async def go():
        batcher = Batcher(backend, max_batch_size=max_batch, max_wait_ms=0, max_queue=64)
        await batcher.start()
        first = asyncio.create_task(batcher.generate([_req("q0")]))
        await _started(backend)  # q0 occupies the model; the next eight queue up behind it
        rest = [asyncio.create_task(batcher.generate([_req(f"q{i}")])) for i in range(1, 9)]
        while batcher.depth < 8:
            await asyncio.sleep(0.005)
        gate.set()
        answers = [await t for t in (first, *rest)]
        await batcher.stop()
        return answers

    answers = asyncio.run(go())
    assert answers == [[f"a: q{i}"] for i in range(9)]  # every caller got its own answer
    assert [len(b) for b in backend.batches] == expected_sizes
    assert [q for b in backend.batches for q in b] == [f"q{i}" for i in range(9)]  # first come, first served


def test_max_wait_lets_a_lone_request_wait_for_company():
    backend = _Counting()

    async def go():
        batcher = Batcher(backend, max_batch_size=8, max_wait_ms=300, max_queue=64)
        await batcher.start()
        first = asyncio.create_task(batcher.generate([_req("early")]))
        await asyncio.sleep(0.05)  # well inside the wait
        second = asyncio.create_task(batcher.generate([_req("late")]))
        result = [await first, await second]
        await batcher.stop()
        return result

    assert asyncio.run(go()) == [["a: early"], ["a: late"]]
    assert backend.batches == [["early", "late"]]


def test_a_failing_batch_fails_only_its_requests_and_a_full_queue_refuses():
    backend = _Counting()

    async def go():
        batcher = Batcher(backend, max_batch_size=4, max_wait_ms=0, max_queue=2)
        await batcher.start()
        with pytest.raises(ModelFailure) as failure:
            await batcher.generate([_req("BOOM")])
        ok = await batcher.generate([_req("fine")])
        with pytest.raises(QueueFull) as full:
            await batcher.generate([_req("x"), _req("y"), _req("z")])  # more than the queue holds
        await batcher.stop()
        return failure.value, ok, full.value

    failure, ok, full = asyncio.run(go())
    assert "simulated failure" in str(failure) and ok == ["a: fine"]
    assert full.retry_after >= 1 and "try again" in str(full)


def test_swap_backend_between_batches_drops_nothing():
    """Also an answer the old backend left unfinished: the new one is asked it afresh."""
    gate = threading.Event()
    old, new = _TwoPass("old", gate=gate), _TwoPass("new")

    async def go():
        batcher = Batcher(old, max_batch_size=4, max_wait_ms=0, max_queue=64)
        await batcher.start()
        running = asyncio.create_task(batcher.generate([_req("during"), _req("AGAIN q0")]))
        await _started(old)
        swap = asyncio.create_task(batcher.swap_backend(new))
        await asyncio.sleep(0.05)
        closed_while_running = old.closed
        queued = asyncio.create_task(batcher.generate([_req("after")]))
        gate.set()
        await swap
        result = (await running, await queued, closed_while_running, old.closed, new.closed)
        await batcher.stop()
        return result

    during, after, closed_while_running, old_closed, new_closed = asyncio.run(go())
    assert during == ["old: during", "new: AGAIN q0 (twice)"] and after == ["new: after"]
    assert not closed_while_running and old_closed and not new_closed
    assert old.rounds == [(["during", "AGAIN q0"], [])]
    assert new.rounds == [(["AGAIN q0", "after"], []), ([], ["AGAIN q0"])]


async def _while_the_first_runs(batcher: Batcher, backend: _Counting, gate: threading.Event,
                                first: list[str], queued: list[str]) -> list:
    """Ask `first`; while the model holds it (at `gate`), queue `queued`; open the gate. Answers or exceptions."""
    running = asyncio.create_task(batcher.generate([_req(q) for q in first]))
    await _started(backend)
    waiting = asyncio.create_task(batcher.generate([_req(q) for q in queued]))
    while batcher.depth < len(queued):
        await asyncio.sleep(0.005)
    gate.set()
    return await asyncio.gather(running, waiting, return_exceptions=True)


@pytest.mark.parametrize("next_batch", ["q2", "BOOM"])
def test_an_unfinished_answer_is_finished_beside_the_next_batch_and_fails_with_it(next_batch):
    gate = threading.Event()
    backend = _TwoPass(gate=gate)

    async def go():
        batcher = Batcher(backend, max_batch_size=4, max_wait_ms=0, max_queue=64)
        await batcher.start()
        result = await _while_the_first_runs(batcher, backend, gate, ["AGAIN q0", "q1"], [next_batch])
        alone = await batcher.generate([_req("AGAIN q3")])  # nothing else waiting: finished in a call of its own
        await batcher.stop()
        return result, alone

    (first, later), alone = asyncio.run(go())
    assert backend.rounds == [(["AGAIN q0", "q1"], []), ([next_batch], ["AGAIN q0"]), (["AGAIN q3"], []),
                              ([], ["AGAIN q3"])]
    assert alone == ["a: AGAIN q3 (twice)"]  # the server goes on after a failure
    if next_batch == "BOOM":  # the call that was to finish q0 failed: q0's caller gets the failure too
        assert all(isinstance(o, ModelFailure) and "simulated failure" in str(o) for o in (first, later))
    else:
        assert first == ["a: AGAIN q0 (twice)", "a: q1"] and later == ["a: q2"]


class _Wide(_TwoPass):
    """Like _TwoPass, but a question with WIDE takes three prompts and an unfinished answer three more."""

    def prompt_rows(self, request):
        return 3 if "WIDE" in request.question else 1

    def generate_round(self, requests, unfinished):
        answers, finished = super().generate_round(requests, unfinished)
        for answer in answers:
            if isinstance(answer, _Again):
                answer.rows = 3
        return answers, finished


def test_max_batch_size_counts_prompts_not_requests():
    """Each generate call holds at most max_batch_size prompts: unfinished answers in order as they fit, then
    waiting requests in the room left, first come first served (one that does not fit goes first next time)."""
    gate = threading.Event()
    backend = _Wide(gate=gate)

    async def go():
        batcher = Batcher(backend, max_batch_size=4, max_wait_ms=0, max_queue=64)
        await batcher.start()
        result = await _while_the_first_runs(batcher, backend, gate, ["AGAIN q0", "AGAIN q1"],
                                             ["q2", "q3", "WIDE q4", "WIDE q5", "q6"])
        await batcher.stop()
        return result

    first, later = asyncio.run(go())
    assert first == ["a: AGAIN q0 (twice)", "a: AGAIN q1 (twice)"]
    assert later == ["a: q2", "a: q3", "a: WIDE q4", "a: WIDE q5", "a: q6"]
    assert backend.rounds == [(["AGAIN q0", "AGAIN q1"], []), (["q2"], ["AGAIN q0"]), (["q3"], ["AGAIN q1"]),
                              (["WIDE q4"], []), (["WIDE q5", "q6"], [])]


def test_a_backend_that_answers_in_one_pass_refuses_unfinished_answers():
    backend = _Counting()
    assert backend.generate_round([_req("q")], []) == (["a: q"], [])
    with pytest.raises(BackendError, match="leaves no answer unfinished"):
        backend.generate_round([], [_Again("q")])
