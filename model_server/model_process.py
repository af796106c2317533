"""Running the model (the hf or visualglm backend) in a process of its own, beside the server.

Generation is many small torch operations, and after each one the model worker takes Python's
lock back. In the server process that lock is also what the event loop needs for HTTP, SQLite
and findings, so under load every batch waited for it between operations: a batch of 14 maps
took ~1.5× as long beside a thread holding the lock a third of the time
(`benchmarks/lock_contention.py`). In a process of its own the model has a lock to itself (the
server's figures are in docs/server.md).

`ModelProcess` is a `Backend`: the server's model worker thread hands it a batch, it sends the
batch down a pipe to the child, which runs the real backend and sends the answers back. The child
is started with "spawn" (safe beside threads), loads the model before the constructor returns (so
a bad checkpoint fails `defect-glm serve` at once, with the loader's message), ignores the Ctrl-C
meant for the server, and ends with the server, even when the server is killed with -9. If the
child dies (killed, out of memory), or sends nothing for `request_timeout_s` (a hang: nobody waits
for its answer any longer), the requests it was answering get a 500, a hung child is killed, and
the next batch starts a fresh child.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import Any

from model_server.backends.base import Backend, BackendError, BackendInfo, GenerationRequest, Unfinished
from model_server.config import ServerConfig
from model_server.image_readers import follow_parent

log = logging.getLogger(__name__)

# Messages, parent → child: ("generate", [request, ...]), ("round", [request, ...], [unfinished, ...]),
# ("stream", request), ("cancel",) while a stream runs, ("close",). Child → parent: ("ready", info,
# max_history_turns) or ("failed", message) once after loading; then ("answers", [str, ...]), ("round",
# ([str | unfinished, ...], [str, ...])), ("piece", str) ... ("end",), or ("error", message) per call.


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def _child_main(conn: Connection, config: ServerConfig, parent_pid: int) -> None:
    """The model process: load the backend in-process, then answer the parent's calls until told to close.

    A server stopped while the model loads ends this process with SIGTERM (it cannot be sent "close"
    yet); the process then exits as Python does, releasing what it holds (the loaders' progress bars
    hold a multiprocessing lock, which would otherwise be reported as leaked at shutdown)."""
    signal.signal(signal.SIGTERM, _exit_cleanly)
    follow_parent(parent_pid, "model-process-parent-watch")
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s[model]: %(message)s")
    from model_server.backends.registry import load_backend, use_torch_threads

    here = config.with_overrides(model_process=False)  # in this process, the model is in-process
    try:
        use_torch_threads(here)
        backend = load_backend(here)
    except Exception as exc:  # reported to the parent, which raises it where the server is started
        conn.send(("failed", _describe(exc)))
        return
    conn.send(("ready", backend.info, backend.max_history_turns()))
    try:
        while True:
            message = conn.recv()
            if message[0] == "close":
                break
            if message[0] == "generate":
                try:
                    conn.send(("answers", backend.generate(message[1])))
                except Exception as exc:
                    conn.send(("error", _describe(exc)))
            elif message[0] == "round":
                try:
                    conn.send(("round", backend.generate_round(message[1], message[2])))
                except Exception as exc:
                    conn.send(("error", _describe(exc)))
            elif message[0] == "stream":
                _stream(conn, backend, message[1])
            # a ("cancel",) that arrives after its stream ended has nothing left to stop
    except EOFError:  # the server closed its end of the pipe: nothing more will be asked
        pass
    finally:
        backend.close()


def _stream(conn: Connection, backend: Backend, request: GenerationRequest) -> None:
    pieces = backend.generate_stream(request)
    try:
        for piece in pieces:
            conn.send(("piece", piece))
            if conn.poll() and conn.recv()[0] == "cancel":
                break
        conn.send(("end",))
    except Exception as exc:
        conn.send(("error", _describe(exc)))
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


class ModelProcess(Backend):
    """The backend `config` names (hf or visualglm), loaded and run in a child process."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._lock = threading.Lock()  # one call at a time on the pipe
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._conn: Connection | None = None
        self._info: BackendInfo | None = None
        self._max_history_turns: int | None = None
        self._closed = False
        self.restarts = 0  # children started after the first one died or hung (/metrics shows it)
        self._start()

    # ------------------------------------------------------------------ the child
    def _start(self) -> None:
        parent_end, child_end = self._context.Pipe()
        process = self._context.Process(target=_child_main, args=(child_end, self.config, os.getpid()),
                                        name="defect-glm-model", daemon=True)
        process.start()
        child_end.close()
        try:
            message = parent_end.recv()
        except EOFError:
            process.join(5)
            parent_end.close()
            raise BackendError(f"the model process ended while loading (exit code {process.exitcode})") from None
        if message[0] == "failed":
            process.join(5)
            parent_end.close()
            raise BackendError(message[1])
        _, info, self._max_history_turns = message
        self._info = BackendInfo(info.name, info.version, info.backend, {**info.details, "model_process": process.pid})
        self._process, self._conn = process, parent_end
        log.info("model process %d serving %s", process.pid, info.name)

    def _connection(self) -> Connection:
        """The pipe to a live child, starting a new child if the last one died."""
        if self._closed:
            raise BackendError("this model process was closed (the server is stopping or swapped the model)")
        if self._conn is None:
            log.warning("starting a new model process")
            self.restarts += 1
            self._start()
        assert self._conn is not None
        return self._conn

    def _forget(self, hung: bool = False) -> BackendError:
        """The child died, or hung and is killed, mid-call: forget it (the next call starts a new one)
        and say what happened."""
        process, self._process = self._process, None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        code = None
        if process is not None:
            if hung:
                process.kill()
            process.join(5)
            code = process.exitcode
        if hung:
            log.error("the model process sent nothing for %g s; it was killed", self.config.request_timeout_s)
            return BackendError(f"the model gave no answer within {self.config.request_timeout_s:g} s "
                                "(request_timeout_s); its process was stopped and the next request starts a new one")
        log.error("the model process ended unexpectedly (exit code %s)", code)
        return BackendError(f"the model process ended while answering (exit code {code}); "
                            "the next request starts a new one")

    def _receive(self, conn: Connection) -> tuple:
        """The child's next reply; EOFError when it died, TimeoutError when it sent nothing in time."""
        if not conn.poll(self.config.request_timeout_s):
            raise TimeoutError
        return conn.recv()

    def _call(self, message: tuple) -> Any:
        conn = self._connection()
        try:
            conn.send(message)
            reply = self._receive(conn)
        except TimeoutError:
            raise self._forget(hung=True) from None
        except (EOFError, OSError) as exc:
            raise self._forget() from exc
        if reply[0] == "error":
            raise BackendError(reply[1])
        return reply[1]

    # ------------------------------------------------------------------ Backend
    @property
    def info(self) -> BackendInfo:
        assert self._info is not None
        return self._info

    def max_history_turns(self) -> int | None:
        return self._max_history_turns

    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        with self._lock:
            return self._call(("generate", list(requests)))

    def generate_round(
        self, requests: list[GenerationRequest], unfinished: list[Unfinished]
    ) -> tuple[list[str | Unfinished], list[str]]:
        """The child's backend's round (unfinished answers are plain data: a new child finishes them too)."""
        with self._lock:
            answers, finished = self._call(("round", list(requests), list(unfinished)))
            return list(answers), list(finished)

    def generate_stream(self, request: GenerationRequest) -> Iterator[str]:
        with self._lock:
            conn = self._connection()
            finished = False
            try:
                conn.send(("stream", request))
                while True:
                    reply = self._receive(conn)
                    if reply[0] == "piece":
                        yield reply[1]
                        continue
                    finished = True
                    if reply[0] == "error":
                        raise BackendError(reply[1])
                    return
            except TimeoutError:
                finished = True
                raise self._forget(hung=True) from None
            except (EOFError, OSError) as exc:
                finished = True
                raise self._forget() from exc
            finally:
                if not finished:  # the consumer stopped early: stop the child, then read up to its end
                    self._cancel_stream(conn)

    def _cancel_stream(self, conn: Connection) -> None:
        try:
            conn.send(("cancel",))
            while self._receive(conn)[0] == "piece":
                pass
        except TimeoutError:
            self._forget(hung=True)
        except (EOFError, OSError):
            self._forget()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            process, conn = self._process, self._conn
            self._process = self._conn = None
        if conn is not None:
            with contextlib.suppress(OSError):  # a child that died already has nothing to close
                conn.send(("close",))
            conn.close()
        if process is not None:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join(5)
