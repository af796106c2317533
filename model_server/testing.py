"""Running a real server in-process on 127.0.0.1 with an ephemeral port, for tests and benchmarks.

    async with running_server(config) as server:
        async with ModelServerClient(server.url) as client:
            ...

Also `wafer_png`: a simple synthetic wafer map rendered as PNG bytes, for requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
from aiohttp import web

from data_tools.wafer_map import FAIL, GOOD, OFF, WaferMap
from model_server.app import create_app
from model_server.backends.base import Backend
from model_server.config import ServerConfig
from model_server.state import STATE, ServerState


@dataclass
class RunningServer:
    url: str
    port: int
    app: web.Application

    @property
    def state(self) -> ServerState:
        return self.app[STATE]


@contextlib.asynccontextmanager
async def running_server(
    config: ServerConfig,
    backend: Backend | None = None,
    *,
    loader: Callable[[ServerConfig], Backend] | None = None,
    wait_ready: float = 60.0,
) -> AsyncIterator[RunningServer]:
    """Start the app on 127.0.0.1:<free port>; waits until the model is loaded (or `wait_ready` s pass)."""
    app = create_app(config, backend, loader=loader)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        server = RunningServer(f"http://127.0.0.1:{port}", port, app)
        deadline = asyncio.get_running_loop().time() + wait_ready
        while not server.state.ready and server.state.load_error is None:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
        yield server
    finally:
        await runner.cleanup()


def wafer_grid(size: int = 52, kind: str = "center", seed: int = 0) -> np.ndarray:
    """A round wafer with a simple defect: "center" blob, "edge" ring, "scratch" line, "random", "none"."""
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2.0
    r = np.hypot(yy - c, xx - c) / (size / 2.0 - 0.5)
    grid = np.where(r <= 1.0, GOOD, OFF).astype(np.uint8)
    on = grid == GOOD
    if kind == "center":
        grid[on & (r < 0.3)] = FAIL
    elif kind == "edge":
        grid[on & (r > 0.85)] = FAIL
    elif kind == "scratch":
        grid[on & (np.abs(yy - xx) <= 0) & (r < 0.8)] = FAIL
    elif kind == "random":
        rng = np.random.default_rng(seed)
        grid[on & (rng.random(grid.shape) < 0.1)] = FAIL
    elif kind != "none":
        raise ValueError(f"kind must be center, edge, scratch, random or none, got {kind!r}")
    return grid


def wafer_png(kind: str = "center", size: int = 52, scale: int = 4, seed: int = 0) -> bytes:
    """PNG bytes of `wafer_grid(size, kind)` in Defect-GLM's grey palette, `scale` pixels per die."""
    from data_tools.render import render, to_png_bytes

    return to_png_bytes(render(WaferMap(wafer_grid(size, kind, seed)), palette="grey", scale=scale))
