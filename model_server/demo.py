"""`defect-glm demo`: run the model server and its web page on this machine until Ctrl-C.

Also home of `LocalServer`, the one way this project starts the server inside a process
(the demo here, `defect-glm chat` without --server, and the tests of both): the same
`model_server.app.create_app` that `defect-glm serve` runs, bound to a real TCP port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from aiohttp import web

from model_server.config import ConfigError, ServerConfig

SAMPLES_DIR = Path(__file__).resolve().parent / "web" / "static" / "samples"
SAMPLES_MANIFEST = SAMPLES_DIR / "samples.json"
DEFAULT_PORT = 7860
#: How long start-up waits for the model to load before giving up.
DEFAULT_READY_TIMEOUT_S = 600.0


def _command_error(message: str) -> Exception:
    """The dispatcher's CommandError (one line, exit status 2), imported lazily to avoid a cycle."""
    from defect_glm import CommandError

    return CommandError(message)


@dataclass
class LocalServer:
    """A model server running on this process's event loop."""

    runner: web.AppRunner
    url: str  # e.g. http://127.0.0.1:7860

    async def wait_ready(self, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> None:
        """Return once the model is loaded; raise RuntimeError when loading failed or took over `timeout_s`."""
        from model_server.state import STATE

        state = self.runner.app[STATE]
        deadline = time.monotonic() + timeout_s
        while not state.ready:
            if state.load_error:
                raise RuntimeError(state.load_error)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the model was not loaded after {timeout_s:g} s")
            await asyncio.sleep(0.1)

    async def stop(self) -> None:
        await self.runner.cleanup()


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, bound before anything is loaded so a busy port fails at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise _command_error(f"cannot resolve --host {host!r}: {exc}") from exc
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise _command_error(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
            "another program may be using the port: stop it or pass another --port"
        ) from exc
    sock.setblocking(False)
    return sock


async def start_server(config: ServerConfig) -> LocalServer:
    """Bind config.host:config.port (0: a free port), then build the app from `config` and serve on it."""
    from model_server.app import create_app
    from model_server.memory import ThreadMemoryError

    sock = _bind(config.host, config.port)
    try:
        app = create_app(config)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
    except ThreadMemoryError as exc:
        sock.close()
        raise _command_error(f"{exc} (pass --db FILE to use another file)") from exc
    except BaseException:
        sock.close()
        raise
    try:
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return LocalServer(runner=runner, url=f"http://{shown}:{port}")


def sample_names() -> list[str]:
    """Class names of the sample maps shipped with the page (empty when the manifest is missing or broken)."""
    try:
        manifest = json.loads(SAMPLES_MANIFEST.read_text(encoding="utf-8"))
        return [str(s["class"]) for s in manifest["samples"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def check_model(config: ServerConfig) -> Path | None:
    """The checkpoint directory `config` will serve, checked before anything loads (None for the openai backend).

    Without --model / DEFECT_GLM_MODEL that is `finetune.checkpoints.serving_model_dir()`: the
    promoted checkpoint, else the committed default model. Raises the one-line CommandError
    that says what is missing and what to do, instead of a load failure deep in transformers.
    """
    if config.backend == "openai":
        return None
    if config.model is not None:
        if not config.model.is_dir():
            raise _command_error(f"--model {config.model}: no such checkpoint directory")
        return config.model
    from finetune.checkpoints import ENV_DEFAULT_MODEL, CheckpointError, serving_info

    try:
        info = serving_info()
    except CheckpointError as exc:
        raise _command_error(f"cannot tell which checkpoint to serve: {exc}") from exc
    path = Path(info["path"])
    if not (path / "config.json").is_file():
        origin = (f"{ENV_DEFAULT_MODEL}={os.environ[ENV_DEFAULT_MODEL]}" if os.environ.get(ENV_DEFAULT_MODEL)
                  else "it is committed in the repository: update your checkout")
        raise _command_error(
            f"no model to serve: the default model {path} is missing or incomplete ({origin}); "
            "pass --model DIR to serve another checkpoint, or train and promote one "
            "(`defect-glm train`, `defect-glm promote`)"
        )
    return path


def demo_config(host: str, port: int, model: Path | None, db: Path | None) -> ServerConfig:
    """Server settings for the demo: the environment's, with the demo's address, model and database."""
    if model is not None and not model.is_dir():
        raise _command_error(f"--model {model}: no such checkpoint directory")
    if not 0 <= port <= 65535:
        raise _command_error(f"--port must be 0-65535, got {port}")
    try:
        config = ServerConfig.from_env(host=host, port=port, model=model, db=db)
    except ConfigError as exc:
        raise _command_error(str(exc)) from exc
    check_model(config)
    if config.web_dir is None or not (config.web_dir / "index.html").is_file():
        raise _command_error(
            f"the demo page is missing: no index.html in {config.web_dir} (check DEFECT_GLM_WEB_DIR)"
        )
    return config


async def serve_until_stopped(config: ServerConfig, out: TextIO = sys.stdout) -> int:
    """Start the server, print where it is, and serve until SIGINT or SIGTERM; then stop cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await start_server(config)
    try:
        print(f"Defect-GLM demo: open {server.url} in a browser (Ctrl-C stops it)", file=out, flush=True)
        samples = sample_names()
        if samples:
            print(f"Sample wafer maps on the page: {', '.join(samples)}", file=out, flush=True)
        print("Loading the model…", file=out, flush=True)
        ready = asyncio.create_task(server.wait_ready())
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if ready in done:
            try:
                ready.result()
            except RuntimeError as exc:
                stopped.cancel()
                raise _command_error(f"the demo cannot start: {exc}") from exc
            print(f"Model ready: {await _model_name(server.url)}", file=out, flush=True)
        else:
            ready.cancel()
        await stopped
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        print("Stopping…", file=out, flush=True)
        await server.stop()
    print("Stopped.", file=out, flush=True)
    return 0


async def _model_name(url: str) -> str:
    from model_server.client import ModelServerClient, ModelServerClientError

    try:
        async with ModelServerClient(url, timeout=10.0) as client:
            status = await client.status()
    except ModelServerClientError as exc:
        return f"(status unavailable: {exc})"
    return f"{status.model} {status.model_version} ({status.backend} backend)".replace("  ", " ")


def run_demo_command(args: argparse.Namespace) -> int:
    """Handler of `defect-glm demo`."""
    config = demo_config(
        host=args.host,
        port=args.port,
        model=Path(args.model).expanduser() if args.model else None,
        db=Path(args.db).expanduser() if args.db else None,
    )
    # The server's INFO log (settings, model loaded) is for operators; the demo prints its own lines.
    level = config.log_level if os.environ.get("DEFECT_GLM_LOG_LEVEL") else "WARNING"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from model_server.backends.registry import use_torch_threads

    use_torch_threads(config)
    return asyncio.run(serve_until_stopped(config))
