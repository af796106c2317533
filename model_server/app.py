"""The aiohttp application: routes, JSON errors everywhere, request ids, metrics, reload, the web page.

`create_app(config, backend=None)` builds the app. Given a backend it serves at once; without
one it loads the configured backend in a background thread at startup (GET /healthz answers
meanwhile, GET /readyz says 503 until the model is loaded). The demo helper adds its routes to
the returned app; the page in model_server/web/ (index.html, static/) is served at ``/``.

Routes: thread API (model_server.threads_api), OpenAI-compatible API (model_server.openai_api),
GET /healthz, /readyz, /metrics, /v1/status, POST /admin/reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from model_server import openai_api, threads_api, wire
from model_server.backends.base import Backend
from model_server.batching import Batcher
from model_server.config import ServerConfig, describe
from model_server.errors import ApiError, error_response
from model_server.image_readers import ImageReaders
from model_server.memory import ThreadMemory
from model_server.metrics import ServerMetrics
from model_server.state import REQUEST_ID, STATE, ServerState

log = logging.getLogger("model_server")

SERVER_VERSION = "0.1.0"
_EVICT_EVERY_S = 300.0


def request_body_limit(config: ServerConfig) -> int:
    """Largest request body aiohttp reads into memory: a base64 image at the limit plus text and slack."""
    return config.max_image_bytes * 4 // 3 + config.max_text_chars * 4 + 256 * 1024


_STATUS_TYPES = {
    400: (wire.INVALID_REQUEST, "bad_request"),
    401: (wire.AUTHENTICATION, wire.CODE_UNAUTHORIZED),
    403: (wire.AUTHENTICATION, wire.CODE_UNAUTHORIZED),
    404: (wire.NOT_FOUND, wire.CODE_ROUTE_NOT_FOUND),
    405: (wire.INVALID_REQUEST, wire.CODE_METHOD_NOT_ALLOWED),
    413: (wire.INVALID_REQUEST, wire.CODE_REQUEST_TOO_LARGE),
}


def _route_label(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return "unmatched"
    return resource.canonical


@web.middleware
async def _middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
    """Request id, JSON errors for everything (ours, aiohttp's, crashes), and metrics."""
    incoming = request.headers.get(wire.REQUEST_ID_HEADER, "")
    request_id = incoming if wire.valid_thread_id(incoming) and len(incoming) <= 64 else secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    try:
        response = await handler(request)
    except ApiError as exc:
        response = exc.response(request_id)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind, code = _STATUS_TYPES.get(exc.status, (wire.INVALID_REQUEST, "http_error"))
        message = exc.reason if exc.status != 404 else f"no route {request.method} {request.path}"
        if exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        response = error_response(exc.status, kind, code, message, request_id)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s (request id %s)", request.method, request.path, request_id)
        response = error_response(500, wire.SERVER_ERROR, wire.CODE_INTERNAL,
                                  f"internal error (request id {request_id}); the server is still serving",
                                  request_id)
    if not response.prepared:
        response.headers.setdefault(wire.REQUEST_ID_HEADER, request_id)
    state = request.app[STATE]
    route = _route_label(request)
    state.metrics.requests.inc(route=route, method=request.method, status=str(response.status))
    state.metrics.latency.observe(time.perf_counter() - started, route=route)
    return response


# ------------------------------------------------------------------ service routes
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    info = state.info  # 503 while loading
    return web.json_response({"status": "ready", "model": info.name, "version": info.version, "backend": info.backend})


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.Response(body=state.metrics.render().encode(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    ready = state.ready
    info = state.info if ready else None
    body = wire.ServerStatus(
        model=info.name if info else "",
        model_version=info.version if info else "",
        backend=info.backend if info else state.config.backend,
        ready=ready,
        queue_depth=state.batcher.depth if state.batcher else 0,
        max_queue=state.config.max_queue,
        uptime_s=time.time() - state.started_at,
        threads=state.memory.count(),
        requests_total=int(state.metrics.requests.total()),
        server_version=SERVER_VERSION,
    )
    return web.json_response(body.to_json())


async def admin_reload(request: web.Request) -> web.Response:
    """Load the promoted (or given) checkpoint/adapter and swap it in between batches."""
    state = request.app[STATE]
    token = state.config.admin_token
    if not token:
        raise ApiError(403, wire.AUTHENTICATION, wire.CODE_UNAUTHORIZED,
                       "reload is disabled: start the server with an admin token (DEFECT_GLM_ADMIN_TOKEN)")
    given = request.headers.get("Authorization", "")
    if not given.startswith("Bearer ") or not hmac.compare_digest(given[7:].encode(), token.encode()):
        raise ApiError(401, wire.AUTHENTICATION, wire.CODE_UNAUTHORIZED,
                       "send the admin token as 'Authorization: Bearer <token>'",
                       {"WWW-Authenticate": "Bearer"})
    overrides: dict = {}
    if request.can_read_body:
        body = await threads_api.read_json(request)
        if not isinstance(body, dict) or set(body) - {"model", "adapter"}:
            raise ApiError(400, wire.INVALID_REQUEST, wire.CODE_INVALID_FIELD,
                           "the reload body is optional JSON {\"model\": DIR, \"adapter\": DIR}")
        overrides = {k: Path(v) for k, v in body.items() if isinstance(v, str) and v}
    if state.reload_lock.locked():
        raise ApiError(409, wire.INVALID_REQUEST, wire.CODE_RELOAD_IN_PROGRESS, "a reload is already running")
    async with state.reload_lock:
        config = state.config.with_overrides(**overrides)
        previous = state.info if state.ready else None
        loader = request.app[_LOADER]
        try:
            backend = await asyncio.get_running_loop().run_in_executor(None, loader, config)
        except Exception as exc:
            state.metrics.reloads.inc(result="failed")
            log.exception("reload failed")
            raise ApiError(500, wire.SERVER_ERROR, wire.CODE_RELOAD_FAILED,
                           f"reload failed, still serving the previous model: {type(exc).__name__}: {exc}") from exc
        await _install_backend(request.app, backend)
        if overrides:
            state.config = config
        state.metrics.reloads.inc(result="ok")
    info = backend.info
    return web.json_response({
        "reloaded": True,
        "model": info.name,
        "version": info.version,
        "backend": info.backend,
        "previous": None if previous is None else {"model": previous.name, "version": previous.version},
    })


# ------------------------------------------------------------------ lifecycle
_LOADER: web.AppKey[Callable[[ServerConfig], Backend]] = web.AppKey("defect_glm_loader", object)  # type: ignore[arg-type]


async def _install_backend(app: web.Application, backend: Backend) -> None:
    state = app[STATE]
    info = backend.info
    state.metrics.model_info.replace(1, model=info.name, version=info.version, backend=info.backend)
    if state.batcher is None:
        cfg = state.config
        batcher = Batcher(backend, max_batch_size=cfg.max_batch_size, max_wait_ms=cfg.max_wait_ms,
                          max_queue=cfg.max_queue, metrics=state.metrics)
        await batcher.start()
        state.batcher = batcher
        state.load_error = None
        log.info("serving %s (version %s, backend %s)", info.name, info.version, info.backend)
    else:
        await state.batcher.swap_backend(backend)
        log.info("reloaded: now serving %s (version %s)", info.name, info.version)


async def _load_in_background(app: web.Application) -> None:
    state = app[STATE]
    try:
        backend = await asyncio.get_running_loop().run_in_executor(None, app[_LOADER], state.config)
    except Exception as exc:
        state.load_error = f"loading the model failed: {type(exc).__name__}: {exc}"
        log.exception("loading the model failed")
        return
    await _install_backend(app, backend)


async def _evict_periodically(app: web.Application) -> None:
    state = app[STATE]
    while True:
        await asyncio.sleep(_EVICT_EVERY_S)
        try:
            removed = state.memory.evict()
            if removed:
                log.info("forgot %d expired or surplus threads", removed)
        except Exception:
            log.exception("thread eviction failed")


def create_app(
    config: ServerConfig,
    backend: Backend | None = None,
    *,
    loader: Callable[[ServerConfig], Backend] | None = None,
) -> web.Application:
    """The server application. `loader` builds a backend from settings (startup without `backend`, reloads)."""
    if loader is None:
        from model_server.backends.registry import create_backend

        loader = create_backend
    memory = ThreadMemory(config.db_path, max_threads=config.max_threads, ttl_s=config.thread_ttl_s,
                          max_stored_turns=config.max_stored_turns, idempotency_ttl_s=config.idempotency_ttl_s)
    app = web.Application(middlewares=[_middleware], client_max_size=request_body_limit(config))
    holder: dict[str, ServerState] = {}
    metrics_ = ServerMetrics(
        queue_depth=lambda: holder["state"].batcher.depth if holder["state"].batcher else 0,
        threads=lambda: holder["state"].memory.count(),
        model_restarts=lambda: getattr(holder["state"].batcher.backend, "restarts", 0) if holder["state"].batcher else 0,
    )
    state = ServerState(config=config, memory=memory, metrics=metrics_,
                        image_reader=ImageReaders(config.image_readers))
    holder["state"] = state
    app[STATE] = state
    app[_LOADER] = loader

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/status", status)
    app.router.add_post("/admin/reload", admin_reload)
    threads_api.add_routes(app)
    openai_api.add_routes(app)
    _add_web_page(app, config.web_dir)

    background: list[asyncio.Task] = []

    async def on_startup(app: web.Application) -> None:
        memory.evict()
        if backend is not None:
            await _install_backend(app, backend)
        else:
            background.append(asyncio.create_task(_load_in_background(app)))
        background.append(asyncio.create_task(_evict_periodically(app)))
        log.info("settings: %s", describe(config))

    async def on_cleanup(app: web.Application) -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if state.batcher is not None:
            await state.batcher.stop()
            if state.batcher.backend is not backend:  # the caller's backend is the caller's to close
                with contextlib.suppress(Exception):
                    state.batcher.backend.close()
        memory.close()
        assert state.image_reader is not None
        state.image_reader.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def _add_web_page(app: web.Application, web_dir: Path | None) -> None:
    if web_dir is None:
        return
    index = web_dir / "index.html"
    if index.is_file():
        async def page(request: web.Request) -> web.FileResponse:
            return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

        app.router.add_get("/", page)
    static = web_dir / "static"
    if static.is_dir():
        app.router.add_static("/static/", static, follow_symlinks=False)


async def serve(config: ServerConfig, backend: Backend | None = None, *, stop: asyncio.Event | None = None) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM); prints ``listening on http://HOST:PORT`` once bound."""
    app = create_app(config, backend)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host=config.host, port=config.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else config.port
        print(f"listening on http://{config.host}:{port}", flush=True)
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def run(config: ServerConfig, backend: Backend | None = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM)."""
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(config, backend))
