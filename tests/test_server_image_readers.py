"""The server's image-reader processes: uploads read in a real worker process, refusals carried back
whole, and a worker that dies replaced without failing the uploads that merely met it."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
import time

import pytest

from model_server import wire
from model_server.errors import ApiError
from model_server.image_readers import ImageReaders
from model_server.intake import read_upload
from model_server.testing import wafer_grid, wafer_png

LIMITS = {"max_bytes": 1 << 20, "max_pixels": 1 << 22, "formats": ("PNG",)}
CRASH = b"crash the reader"


def worker_pid(data: bytes, max_bytes: int, max_pixels: int, formats: tuple[str, ...]) -> int:
    """Which process read the upload (runs in the worker)."""
    return os.getpid()


def crash_on_marker(data: bytes, max_bytes: int, max_pixels: int, formats: tuple[str, ...]):
    """Reads like the server, except that the marker upload ends the worker process, as an
    out-of-memory kill would (runs in the worker)."""
    if data == CRASH:
        os._exit(1)
    return read_upload(data, max_bytes, max_pixels, formats)


def _wait_until_gone(pid: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} is still running")


def test_an_upload_is_read_in_a_worker_process_with_its_findings():
    async def go():
        readers = ImageReaders(1)
        try:
            return await readers.read(wafer_png("center"), **LIMITS)
        finally:
            readers.close()

    wafer = asyncio.run(go())
    assert (wafer.grid == wafer_grid(kind="center")).all()
    assert "clusters" in wafer.__dict__  # measured in the worker, not on the model worker later


def test_a_refusal_raised_in_the_worker_arrives_whole():
    async def go():
        readers = ImageReaders(1)
        try:
            await readers.read(b"not an image", **LIMITS)
        finally:
            readers.close()

    with pytest.raises(ApiError) as caught:
        asyncio.run(go())
    assert caught.value.status == 415 and caught.value.code == wire.CODE_UNSUPPORTED_IMAGE_FORMAT
    assert "send one of PNG" in caught.value.message
    copy = pickle.loads(pickle.dumps(ApiError(429, wire.RATE_LIMIT, wire.CODE_QUEUE_FULL, "full", {"Retry-After": "2"})))
    assert (copy.status, copy.code, copy.message, copy.headers) == (429, wire.CODE_QUEUE_FULL, "full", {"Retry-After": "2"})


def test_a_killed_worker_is_replaced_and_the_next_upload_is_read():
    async def go():
        readers = ImageReaders(1, read=worker_pid)
        try:
            first = await readers.read(b"x", **LIMITS)
            os.kill(first, signal.SIGKILL)
            _wait_until_gone(first)
            second = await readers.read(b"x", **LIMITS)
            third = await readers.read(b"x", **LIMITS)
            return first, second, third
        finally:
            readers.close()

    first, second, third = asyncio.run(go())
    assert second != first and third == second


def test_an_upload_that_kills_the_worker_twice_is_a_500_and_others_are_still_read():
    async def go():
        readers = ImageReaders(1, read=crash_on_marker)
        try:
            try:
                await readers.read(CRASH, **LIMITS)
            except ApiError as exc:
                crashed = exc
            else:
                raise AssertionError("the crashing upload was answered")
            return crashed, await readers.read(wafer_png("edge"), **LIMITS)
        finally:
            readers.close()

    crashed, wafer = asyncio.run(go())
    assert crashed.status == 500 and crashed.code == wire.CODE_IMAGE_READER_CRASHED
    assert "still serving" in crashed.message
    assert (wafer.grid == wafer_grid(kind="edge")).all()


def test_at_least_one_reader():
    with pytest.raises(ValueError, match="at least 1"):
        ImageReaders(0)
