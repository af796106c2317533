"""Dynamic batching: concurrent requests are grouped into one `Backend.generate` call.

One collector task takes the first waiting request, waits up to `max_wait_ms` for more (or
takes what is already queued) until the batch holds `max_batch_size` prompts (a request counts the
backend's `prompt_rows`, an answer handed back its `rows`), and runs the batch on the single model
worker thread, so the model is only ever used by one call at a time. A full queue refuses new
work with `QueueFull` (the server answers 429 with Retry-After). Streaming requests run alone
on the same worker, their pieces handed to the event loop as they come.

A batch runs as one `Backend.generate_round`: an answer the backend leaves unfinished (the hf
backend's other views of an unsure map) is handed back with the next batch, formed at once from
what is waiting (or alone when nothing is), so a second pass costs no generate call of its own.

`swap_backend` replaces the model between batches: the batch running keeps the old backend,
the next one uses the new, and the old one is closed after the running batch finishes, so a
reload drops no request (an answer the old one left unfinished is asked afresh of the new).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from model_server.backends.base import Backend, BackendError, GenerationRequest, Unfinished
from model_server.metrics import ServerMetrics

log = logging.getLogger(__name__)

_STREAM_END = object()


class QueueFull(Exception):
    """Too many requests are waiting; try again after `retry_after` seconds."""

    def __init__(self, depth: int, retry_after: int) -> None:
        super().__init__(f"{depth} requests are waiting for the model; try again in {retry_after} s")
        self.depth = depth
        self.retry_after = retry_after


class ModelFailure(Exception):
    """The backend raised while answering; `__cause__` holds the original exception."""


@dataclass
class _Item:
    request: GenerationRequest
    future: asyncio.Future
    stream: asyncio.Queue | None = None  # set for streaming requests
    cancelled: threading.Event = field(default_factory=threading.Event)


class Batcher:
    """Queues generation requests and feeds them to the backend in batches."""

    def __init__(
        self,
        backend: Backend,
        *,
        max_batch_size: int = 16,
        max_wait_ms: float = 0.0,
        max_queue: int = 256,
        metrics: ServerMetrics | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(
                f"batching limits must be positive: max_batch_size={max_batch_size}, "
                f"max_queue={max_queue}, max_wait_ms={max_wait_ms}"
            )
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._seconds_per_batch = 0.5  # running estimate, for Retry-After
        self.in_flight = 0
        self._held: _Item | None = None  # taken from the queue but left for the next batch (a stream, or no room)
        self._unfinished: list[tuple[_Item, Unfinished]] = []  # to finish with the next batch
        self._unfinished_by: Backend | None = None  # the backend that left them unfinished

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        unfinished, self._unfinished = [item for item, _ in self._unfinished], []
        if self._held is not None:
            unfinished.append(self._held)
            self._held = None
        if self._queue is not None:
            while not self._queue.empty():
                unfinished.append(self._queue.get_nowait())
        for item in unfinished:
            if not item.future.done():
                item.future.set_exception(ModelFailure("the server is shutting down"))
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    @property
    def depth(self) -> int:
        """Requests waiting for the model (not counting the batch running now)."""
        return self._queue.qsize() if self._queue is not None else 0

    def retry_after(self) -> int:
        batches_ahead = self.depth / self.max_batch_size + 1
        return max(1, math.ceil(batches_ahead * self._seconds_per_batch))

    async def swap_backend(self, backend: Backend) -> Backend:
        """Use `backend` from the next batch on; the old one is closed once the running batch ends."""
        old, self.backend = self.backend, backend
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, _close_quietly, old)
        return old

    # ------------------------------------------------------------------ submitting
    def _enqueue(self, items: list[_Item]) -> None:
        if self._queue is None:
            raise RuntimeError("Batcher.start() has not been called")
        if self.depth + len(items) > self.max_queue:
            if self.metrics:
                self.metrics.rejected.inc(reason="queue_full")
            raise QueueFull(self.depth, self.retry_after())
        for item in items:
            self._queue.put_nowait(item)

    async def generate(self, requests: list[GenerationRequest], timeout: float | None = None) -> list[str]:
        """Answers for `requests` (queued together, so they usually share a batch).

        Raises QueueFull, ModelFailure, or TimeoutError after `timeout` seconds.
        """
        loop = asyncio.get_running_loop()
        items = [_Item(r, loop.create_future()) for r in requests]
        self._enqueue(items)
        try:
            return list(await asyncio.wait_for(asyncio.gather(*(i.future for i in items)), timeout))
        except BaseException:
            for item in items:
                item.cancelled.set()
                item.future.cancel()
            raise

    def open_stream(self, request: GenerationRequest, timeout: float | None = None) -> StreamHandle:
        """Queue one streaming request now (raises QueueFull at once); iterate the handle for its pieces."""
        loop = asyncio.get_running_loop()
        item = _Item(request, loop.create_future(), stream=asyncio.Queue())
        self._enqueue([item])
        return StreamHandle(item, None if timeout is None else loop.time() + timeout)

    # ------------------------------------------------------------------ the collector
    def _rows(self, item: _Item) -> int:
        """The prompts `item` puts in a generate call."""
        return max(1, self.backend.prompt_rows(item.request))

    def _carried(self) -> int:
        """How many of the unfinished answers the next batch finishes: as many as fit `max_batch_size`
        prompts, in order, and at least one."""
        rows = count = 0
        for _, unfinished in self._unfinished:
            if count and rows + unfinished.rows > self.max_batch_size:
                break
            rows, count = rows + unfinished.rows, count + 1
        return count

    async def _next_batch(self, wait: bool = True, room: int | None = None) -> list[_Item]:
        """The next batch from the queue, of at most `room` prompts (default `max_batch_size`): waits for
        its first request (not when `wait` is False: then only what is queued now, maybe nothing), then up
        to `max_wait_ms` for more. A request that does not fit waits for the next batch at the queue's
        front; alone in a batch of `max_batch_size` it is taken whatever its prompts."""
        assert self._queue is not None
        room = self.max_batch_size if room is None else room
        if not wait and (room < 1 or (self._held is None and self._queue.empty())):
            return []
        if self._held is not None:
            first, self._held = self._held, None
        else:
            first = await self._queue.get()
        if first.stream is not None:
            return [first]
        rows = self._rows(first)
        if rows > room and room < self.max_batch_size:
            self._held = first
            return []
        batch = [first]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.max_wait_s if wait else 0.0)
        while rows < room:
            try:
                if self._queue.empty():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                else:
                    item = self._queue.get_nowait()
            except TimeoutError:
                break
            if item.stream is not None or rows + self._rows(item) > room:
                self._held = item  # streams run alone; a request that does not fit goes first next time
                break
            batch.append(item)
            rows += self._rows(item)
        return batch

    async def _run(self) -> None:
        while True:
            self._unfinished = [(i, u) for i, u in self._unfinished if _live(i)]
            carried = self._carried()
            room = self.max_batch_size - sum(u.rows for _, u in self._unfinished[:carried])
            # with answers to finish, the next batch is what is waiting now, in the room they leave
            batch = [i for i in await self._next_batch(wait=not self._unfinished, room=room) if _live(i)]
            unfinished: list[tuple[_Item, Unfinished]] = []
            if not batch or batch[0].stream is None:
                unfinished, self._unfinished = self._unfinished[:carried], self._unfinished[carried:]
            if not batch and not unfinished:
                continue
            self.in_flight = len(batch) + len(unfinished)
            try:
                if batch and batch[0].stream is not None:
                    await self._run_stream(batch[0])
                else:
                    await self._run_batch(batch, unfinished)
            except asyncio.CancelledError:
                for item in [*batch, *(i for i, _ in unfinished)]:
                    if not item.future.done():
                        item.future.set_exception(ModelFailure("the server is shutting down"))
                raise
            finally:
                self.in_flight = 0

    async def _run_batch(self, batch: list[_Item], unfinished: list[tuple[_Item, Unfinished]]) -> None:
        loop = asyncio.get_running_loop()
        backend = self.backend
        if unfinished and self._unfinished_by is not backend:  # reloaded since: ask the new model afresh
            batch, unfinished = [*(i for i, _ in unfinished), *batch], []
        everyone = [*batch, *(i for i, _ in unfinished)]
        started = time.perf_counter()
        try:
            answers, finished = await loop.run_in_executor(
                self._executor, backend.generate_round, [i.request for i in batch], [u for _, u in unfinished]
            )
            if len(answers) != len(batch) or len(finished) != len(unfinished):
                raise BackendError(f"the backend returned {len(answers)} answers for {len(batch)} requests and "
                                   f"{len(finished)} for {len(unfinished)} unfinished ones")
        except Exception as exc:  # the model failed: every request of the batch gets a 500, the server goes on
            log.exception("generate failed for a batch of %d", len(everyone))
            if self.metrics:
                self.metrics.model_errors.inc()
            for item in everyone:
                if not item.future.done():
                    failure = ModelFailure(f"{type(exc).__name__}: {exc}")
                    failure.__cause__ = exc
                    item.future.set_exception(failure)
            return
        finally:
            elapsed = time.perf_counter() - started
            self._seconds_per_batch = 0.8 * self._seconds_per_batch + 0.2 * elapsed
            if self.metrics:
                self.metrics.batch_size.observe(len(everyone))
                self.metrics.generate_seconds.observe(elapsed)
        for item, answer in zip(batch, answers):
            if isinstance(answer, Unfinished):
                self._unfinished.append((item, answer))
            elif not item.future.done():
                item.future.set_result(answer)
        self._unfinished_by = backend
        for (item, _), answer in zip(unfinished, finished):
            if not item.future.done():
                item.future.set_result(answer)

    async def _run_stream(self, item: _Item) -> None:
        loop = asyncio.get_running_loop()
        backend = self.backend
        assert item.stream is not None
        out = item.stream

        def work() -> None:
            pieces = backend.generate_stream(item.request)
            try:
                for piece in pieces:
                    if item.cancelled.is_set():
                        break
                    loop.call_soon_threadsafe(out.put_nowait, piece)
                loop.call_soon_threadsafe(out.put_nowait, _STREAM_END)
            except Exception as exc:
                log.exception("streaming generate failed")
                if self.metrics:
                    self.metrics.model_errors.inc()
                failure = ModelFailure(f"{type(exc).__name__}: {exc}")
                failure.__cause__ = exc
                loop.call_soon_threadsafe(out.put_nowait, failure)
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()

        started = time.perf_counter()
        await loop.run_in_executor(self._executor, work)
        if self.metrics:
            self.metrics.batch_size.observe(1)
            self.metrics.generate_seconds.observe(time.perf_counter() - started)
        if not item.future.done():
            item.future.set_result("")


class StreamHandle:
    """The pieces of one streaming answer. Raises ModelFailure if the model fails, TimeoutError at the deadline.

    `cancel()` (also called when iteration ends) tells the model worker to stop producing pieces.
    """

    def __init__(self, item: _Item, deadline: float | None) -> None:
        self._item = item
        self._deadline = deadline

    def cancel(self) -> None:
        self._item.cancelled.set()
        if not self._item.future.done():
            self._item.future.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        assert self._item.stream is not None
        try:
            while True:
                remaining = None if self._deadline is None else max(0.0, self._deadline - loop.time())
                piece = await asyncio.wait_for(self._item.stream.get(), remaining)
                if piece is _STREAM_END:
                    break
                if isinstance(piece, BaseException):
                    raise piece
                yield piece
        finally:
            self.cancel()


def _live(item: _Item) -> bool:
    """Whether anyone still waits for `item`'s answer."""
    return not item.cancelled.is_set() and not item.future.done()


def _close_quietly(backend: Backend) -> None:
    try:
        backend.close()
    except Exception:
        log.exception("closing the previous backend failed")
