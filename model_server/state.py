"""What one running server holds: settings, memory, the batcher around the loaded backend, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from model_server import wire
from model_server.backends.base import Backend, BackendInfo
from model_server.batching import Batcher
from model_server.config import ServerConfig
from model_server.errors import ApiError
from model_server.image_readers import ImageReaders
from model_server.memory import ThreadMemory
from model_server.metrics import ServerMetrics


@dataclass
class ServerState:
    config: ServerConfig
    memory: ThreadMemory
    metrics: ServerMetrics
    batcher: Batcher | None = None  # None until the backend is loaded
    load_error: str | None = None
    started_at: float = field(default_factory=time.time)
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: reads uploads into die grids (`config.image_readers` processes), beside the model worker
    image_reader: ImageReaders | None = None
    _thread_locks: dict[str, tuple[asyncio.Lock, int]] = field(default_factory=dict)

    @property
    def backend(self) -> Backend:
        """The loaded backend; 503 (with Retry-After) while it is still loading or failed to load."""
        if self.batcher is None:
            reason = self.load_error or "the model is still loading"
            raise ApiError(503, wire.UNAVAILABLE, wire.CODE_NOT_READY, f"not ready: {reason}",
                           {wire.RETRY_AFTER_HEADER: "5"})
        return self.batcher.backend

    @property
    def info(self) -> BackendInfo:
        return self.backend.info

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    def max_history_turns(self) -> int:
        limit = self.backend.max_history_turns()
        turns = self.config.max_history_turns
        return turns if limit is None else min(turns, limit)

    @contextlib.asynccontextmanager
    async def thread_lock(self, thread_id: str) -> AsyncIterator[None]:
        """Serialise work on one thread, first come first served; other threads are not blocked."""
        lock, users = self._thread_locks.get(thread_id, (asyncio.Lock(), 0))
        self._thread_locks[thread_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._thread_locks[thread_id]
            if users <= 1:
                del self._thread_locks[thread_id]
            else:
                self._thread_locks[thread_id] = (lock, users - 1)


STATE: web.AppKey[ServerState] = web.AppKey("defect_glm_state", ServerState)
#: The id of the request being handled (echoed in X-Request-Id and in 500 messages).
REQUEST_ID: web.RequestKey[str] = web.RequestKey("defect_glm_request_id", str)
