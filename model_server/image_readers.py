"""Reading uploaded images into die grids in worker processes, beside the model.

Reading an image (`model_server.intake.read_upload`: decode, check, find the die lattice, measure
the wafer's zones and clusters) is numpy and Python. On a thread it shares Python's lock and the
model's cores with the model worker's token-by-token loop; in its own process it runs on a core
of its own, so under load the model worker is not slowed by the reading of the next uploads.

Workers are started with "spawn" (safe beside the model's threads) on the first upload, not at
startup, and end with the server even when it is killed with -9. A worker that dies (killed, out
of memory on a hostile image, a crash in a decoder) breaks the pool: the pool is replaced and the
read tried once more on a fresh worker, so an upload that merely met a dead worker is read
normally; an image that kills the second worker too is answered with a 500 that says so, and the
server keeps reading other uploads.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from data_tools.wafer_map import WaferMap
from model_server import wire
from model_server.errors import ApiError
from model_server.intake import read_upload

log = logging.getLogger(__name__)


def follow_parent(parent_pid: int, name: str = "image-reader-parent-watch") -> None:
    """Run in a child process of the server (an image reader's initializer, the model process).

    The child ignores Ctrl-C, which a terminal sends to the server's whole process group: the server
    stops its children itself as it shuts down. And the child ends once the server process is gone
    (a server killed with -9 cannot stop its children, and an orphaned child would live on)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name=name, daemon=True).start()


class ImageReaders:
    """A pool of `workers` processes that turn uploaded image bytes into `WaferMap`s."""

    def __init__(self, workers: int, read: Callable[..., WaferMap] = read_upload) -> None:
        if workers < 1:
            raise ValueError(f"image readers must be at least 1, got {workers}")
        self.workers = workers
        self._read = read  # a module-level function: it is sent to the worker processes by name
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self._closed = False

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=follow_parent, initargs=(os.getpid(),))

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken and not self._closed:
                log.warning("an image reader process died; starting a new one")
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()

    async def read(self, data: bytes, *, max_bytes: int, max_pixels: int, formats: tuple[str, ...]) -> WaferMap:
        """The die grid in `data`; the `ApiError` (4xx) of `read` when the image is refused."""
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            pool = self._pool
            try:
                return await loop.run_in_executor(pool, self._read, data, max_bytes, max_pixels, formats)
            except BrokenProcessPool:
                self._replace(pool)
                if attempt == 2:
                    raise ApiError(
                        500, wire.SERVER_ERROR, wire.CODE_IMAGE_READER_CRASHED,
                        "reading this image stopped the image reader process twice (out of memory, or a "
                        "decoder crash); the server is still serving. Send the wafer map as a PNG of a "
                        "few hundred pixels per side",
                    ) from None
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Stop the workers (an unfinished read is cancelled)."""
        with self._lock:
            self._closed = True
            self._pool.shutdown(wait=False, cancel_futures=True)
