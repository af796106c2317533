"""`defect-glm chat IMAGE`: a terminal conversation about one wafer map, with thread memory.

The conversation is one thread of the thread API, spoken through `ModelServerClient`: to the
server at --server, or, without it, to the same server started inside this process on a free
local port (so both paths run the same code). The first message carries the image; each line
typed afterwards is a follow-up in the same thread. Ctrl-D (end of input) ends the chat.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TextIO, TypeVar

from data_tools.phrasing import language_of
from model_server import wire
from model_server.client import ModelServerClient, ModelServerError, ModelServerUnavailable
from model_server.findings import UNKNOWN_CLASS

T = TypeVar("T")

DEFAULT_QUESTION = "What defects does this wafer show?"
DEFAULT_QUESTION_ZH = "这片晶圆有哪些缺陷？"
PROMPT = "you> "
ANSWER_PREFIX = "Defect-GLM> "

_ZONES = {"en": {"center": "centre", "middle": "middle", "edge": "edge"},
          "zh": {"center": "中心区", "middle": "中间区", "edge": "边缘区"}}


def _command_error(message: str) -> Exception:
    from defect_glm import CommandError

    return CommandError(message)


def format_findings(findings: wire.Findings, lang: str = "en") -> str:
    """Indented lines: the recognised patterns, the numbers measured from the map, then one per caveat."""
    names = findings.pattern_names.get(lang) or findings.patterns
    m = findings.measured
    zone = m.get("dominant_zone")
    clusters = m.get("clusters") or {}
    largest = clusters.get("largest")
    unknown = findings.class_name == UNKNOWN_CLASS
    if lang == "zh":
        patterns = " + ".join(names) if names else ("未能识别" if unknown else "无（正常）")
        parts = [f"{m.get('dies')} 颗晶粒", f"{m.get('failing')} 颗失效", f"良率 {m.get('yield')}%"]
        if zone:
            parts.append(f"失效最多：{_ZONES['zh'].get(zone, zone)}")
        if largest:
            parts.append(f"{clusters.get('count')} 个失效簇（最大 {largest['size']} 颗）")
        return f"  缺陷模式：{patterns}\n  测量：{'，'.join(parts)}" + _caveats(findings, lang)
    patterns = " + ".join(names) if names else ("not recognised" if unknown else "none (Normal)")
    parts = [f"{m.get('dies')} dies", f"{m.get('failing')} failing", f"yield {m.get('yield')}%"]
    if zone:
        parts.append(f"worst zone: {_ZONES['en'].get(zone, zone)}")
    if largest:
        parts.append(f"{clusters.get('count')} clusters (largest {largest['size']} dies)")
    return f"  patterns: {patterns}  [class {findings.class_name}]\n  measured: {', '.join(parts)}" + _caveats(findings, lang)


def _caveats(findings: wire.Findings, lang: str) -> str:
    return "".join(f"\n  ! {text}" for text in findings.caveat_texts(lang))


def format_reply(reply: wire.ThreadReply, question: str, show_findings: bool) -> str:
    lines = [ANSWER_PREFIX + reply.answer]
    if show_findings and reply.findings is not None:
        lines.append(format_findings(reply.findings, language_of(question)))
    lines.append(f"  ({reply.model}, {reply.latency_ms:.0f} ms)")
    return "\n".join(lines)


class _LoopThread:
    """An event loop on a daemon thread, so the main thread can block on input() meanwhile."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="defect-glm-chat", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()


class ChatSession:
    """One terminal conversation: a client, a thread id and, without --server, an in-process server."""

    def __init__(self, server_url: str | None, model: Path | None, db: Path | None, timeout_s: float,
                 thread_id: str | None = None) -> None:
        if thread_id is not None and not wire.valid_thread_id(thread_id):
            raise _command_error(
                f"--thread {thread_id!r}: use 1-128 characters from letters, digits and . _ : @ -"
            )
        if timeout_s <= 0:
            raise _command_error(f"--timeout must be positive seconds, got {timeout_s:g}")
        self.server_url = server_url
        self.model = model
        self.db = db
        self.timeout_s = timeout_s
        self.thread_id = thread_id or f"cli-{uuid.uuid4().hex[:16]}"
        self._loop = _LoopThread()
        self._local: Any = None  # demo.LocalServer when in-process
        self.client: ModelServerClient | None = None

    def start(self, err: TextIO) -> None:
        if self.server_url:
            client = ModelServerClient(self.server_url, timeout=self.timeout_s)
            if not self._loop.run(client.health()):
                self._loop.run(client.close())
                raise _command_error(
                    f"no Defect-GLM server answers at {self.server_url}: start one with `defect-glm serve` "
                    "or leave out --server to run the model in this process"
                )
            self.client = client
            return
        from model_server.config import ConfigError, ServerConfig
        from model_server.demo import check_model, start_server

        if self.model is not None and not self.model.is_dir():
            raise _command_error(f"--model {self.model}: no such checkpoint directory")
        try:
            config = ServerConfig.from_env(host="127.0.0.1", port=0, model=self.model, db=self.db)
            config = config.with_overrides(web_dir=None)  # no page: from_env ignores None overrides
        except ConfigError as exc:
            raise _command_error(str(exc)) from exc
        check_model(config)
        print("Loading the model in this process…", file=err, flush=True)
        self._local = self._loop.run(start_server(config))
        try:
            self._loop.run(self._local.wait_ready(timeout_s=self.timeout_s))
        except RuntimeError as exc:
            raise _command_error(str(exc)) from exc
        self.client = ModelServerClient(self._local.url, timeout=self.timeout_s)

    def send(self, text: str, image: bytes | None = None, filename: str | None = None) -> wire.ThreadReply:
        assert self.client is not None, "start() first"
        return self._loop.run(self.client.send_message(self.thread_id, text, image=image, filename=filename))

    def close(self) -> None:
        async def shutdown() -> None:
            if self.client is not None:
                await self.client.close()
            if self._local is not None:
                await self._local.stop()

        try:
            self._loop.run(shutdown())
        finally:
            self._loop.close()


def _error_line(exc: ModelServerError) -> str:
    retry = f" (try again in {exc.retry_after:g} s)" if exc.retry_after else ""
    return f"error: {exc.message} [{exc.status} {exc.code}]{retry}"


def chat(
    image_path: Path,
    question: str | None,
    session: ChatSession,
    stdin: TextIO = sys.stdin,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Run the conversation until end of input; return the exit status."""
    try:
        image = image_path.read_bytes()
    except OSError as exc:
        raise _command_error(f"cannot read the image {image_path}: {exc.strerror or exc}") from exc
    if not image:
        raise _command_error(f"the image {image_path} is empty")
    first = (question or "").strip() or DEFAULT_QUESTION
    try:
        session.start(err)
        print(f"Thread {session.thread_id}. Type follow-up questions; Ctrl-D ends.", file=err, flush=True)
        print(PROMPT + first, file=out, flush=True)
        try:
            reply = session.send(first, image=image, filename=image_path.name)
        except ModelServerError as exc:
            raise _command_error(_error_line(exc).removeprefix("error: ")) from exc
        except ModelServerUnavailable as exc:
            raise _command_error(str(exc)) from exc
        print(format_reply(reply, first, show_findings=True), file=out, flush=True)
        while True:
            print(PROMPT, end="", file=out, flush=True)
            line = stdin.readline()
            if not line:  # end of input: Ctrl-D or the end of a pipe
                print(file=out, flush=True)
                break
            text = line.strip()
            if not stdin.isatty():
                print(text, file=out, flush=True)  # echo piped questions so the transcript reads well
            if not text:
                continue
            try:
                reply = session.send(text)
            except ModelServerError as exc:
                print(_error_line(exc), file=err, flush=True)
                continue
            except ModelServerUnavailable as exc:
                raise _command_error(str(exc)) from exc
            print(format_reply(reply, text, show_findings=False), file=out, flush=True)
    finally:
        session.close()
    return 0


def run_chat_command(args: argparse.Namespace) -> int:
    """Handler of `defect-glm chat`."""
    if args.server and (args.model or args.db):
        raise _command_error("--model and --db apply to the in-process model only; leave them out with --server")
    session = ChatSession(
        server_url=args.server,
        model=Path(args.model).expanduser() if args.model else None,
        db=Path(args.db).expanduser() if args.db else None,
        timeout_s=args.timeout,
        thread_id=args.thread,
    )
    return chat(Path(args.image).expanduser(), args.question, session)
