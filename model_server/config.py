"""Every setting of the inference server, its environment variable, command-line flag and default.

Settings are read, lowest precedence first, from the defaults below, then the environment,
then `defect-glm serve` flags. Each option is declared once in `OPTIONS`; the table here and
the one in docs/server.md are generated from it (`python -m model_server.config`).

| option | environment variable | flag | default | meaning |
| --- | --- | --- | --- | --- |
| host | DEFECT_GLM_HOST | --host | 127.0.0.1 | interface to bind (127.0.0.1: this machine only) |
| port | DEFECT_GLM_PORT | --port | 8080 | TCP port (0: pick a free one) |
| backend | DEFECT_GLM_BACKEND | --backend | hf | model backend: hf, openai or visualglm |
| model | DEFECT_GLM_MODEL | --model | (served checkpoint) | checkpoint directory (hf/visualglm); default: the promoted checkpoint or the committed default model |
| adapter | DEFECT_GLM_ADAPTER | --adapter | (none) | peft LoRA adapter directory applied on top of the model |
| dtype | DEFECT_GLM_DTYPE | --dtype | auto | weights dtype: auto (bfloat16 where the CPU or GPU runs it natively: AMX, AVX512-BF16, CUDA from Ampere on; else float32, or float16 on an older GPU), float32, bfloat16 or float16 |
| quantization | DEFECT_GLM_QUANTIZATION | --quantization | (none) | 4bit or 8bit through bitsandbytes (CUDA only) |
| device | DEFECT_GLM_DEVICE | --device | (auto) | torch device, e.g. cpu or cuda:0 |
| views | DEFECT_GLM_VIEWS | --views | (checkpoint's) | hf backend: answer from 1, 4 or 8 rotated/mirrored views of the map, with the patterns most of them name: fewer recognition mistakes, more compute (1: the map as sent only); default: the checkpoint's setting (4 for the committed model) |
| views_below | DEFECT_GLM_VIEWS_BELOW | --views-below | (checkpoint's) | hf backend: ask the other views only when the answer about the map as sent is less sure than this (its least likely token after the first): most of the accuracy of all views for little more than the time of one (an answer that names no pattern set is never asked again); 1: always ask them; default: the checkpoint's setting (0.9 for the committed model) |
| openai_url | DEFECT_GLM_OPENAI_URL | --openai-url | (none) | base URL of the OpenAI-compatible engine (openai backend), e.g. http://gpu-host:8000/v1 |
| openai_model | DEFECT_GLM_OPENAI_MODEL | --openai-model | (engine's first model) | model name to request from the engine |
| openai_api_key | DEFECT_GLM_OPENAI_API_KEY | --openai-api-key | (none) | bearer token for the engine |
| openai_timeout_s | DEFECT_GLM_OPENAI_TIMEOUT_S | --openai-timeout-s | 120 | seconds to wait for one answer from the engine |
| db | DEFECT_GLM_DB | --db | $DEFECT_GLM_HOME/server/threads.sqlite | SQLite file holding thread memory |
| admin_token | DEFECT_GLM_ADMIN_TOKEN | --admin-token | (none) | bearer token for POST /admin/reload (unset: reload disabled) |
| max_batch_size | DEFECT_GLM_MAX_BATCH_SIZE | --max-batch-size | 16 | most prompts in one generate call, a map asked in several views counting one per view (1: no batching) |
| max_wait_ms | DEFECT_GLM_MAX_WAIT_MS | --max-wait-ms | 0 | how long the first request of a batch waits for company (0: take what is queued) |
| max_queue | DEFECT_GLM_MAX_QUEUE | --max-queue | 256 | requests waiting for the model before new ones get 429 |
| image_readers | DEFECT_GLM_IMAGE_READERS | --image-readers | 1 | processes reading uploaded images into die grids, beside the model (started on the first upload) |
| torch_threads | DEFECT_GLM_TORCH_THREADS | --torch-threads | 0 | CPU threads of the model (torch.set_num_threads); 0: the cores left after one for the event loop and one per image reader, at least 1 |
| model_process | DEFECT_GLM_MODEL_PROCESS | --model-process | yes | run a model of this machine (hf, visualglm) in a process of its own: generation then never waits for the server's Python lock, and a model process that dies is replaced (no: in the server process) |
| request_timeout_s | DEFECT_GLM_REQUEST_TIMEOUT_S | --request-timeout-s | 300 | longest a request waits for its answer before 503; a model process silent this long is replaced |
| max_image_bytes | DEFECT_GLM_MAX_IMAGE_BYTES | --max-image-bytes | 10485760 | largest accepted image file (413 above) |
| max_image_pixels | DEFECT_GLM_MAX_IMAGE_PIXELS | --max-image-pixels | 25000000 | largest accepted width × height (413 above; decompression bombs) |
| image_formats | DEFECT_GLM_IMAGE_FORMATS | --image-formats | PNG,JPEG,GIF,WEBP,BMP | accepted image formats (415 otherwise); animated images use the first frame |
| max_text_chars | DEFECT_GLM_MAX_TEXT_CHARS | --max-text-chars | 4000 | longest accepted question (400 above) |
| max_new_tokens | DEFECT_GLM_MAX_NEW_TOKENS | --max-new-tokens | 256 | most tokens generated per answer |
| max_history_turns | DEFECT_GLM_MAX_HISTORY_TURNS | --max-history-turns | 8 | earlier turns put in the prompt (oldest trimmed; the model may allow fewer) |
| max_stored_turns | DEFECT_GLM_MAX_STORED_TURNS | --max-stored-turns | 200 | turns kept per thread in the database (oldest deleted) |
| thread_ttl_s | DEFECT_GLM_THREAD_TTL_S | --thread-ttl-s | 2592000 | threads idle this long are forgotten (30 days; 0: never) |
| idempotency_ttl_s | DEFECT_GLM_IDEMPOTENCY_TTL_S | --idempotency-ttl-s | 86400 | how long a message's Idempotency-Key is remembered (1 day; 0: as long as its thread) |
| max_threads | DEFECT_GLM_MAX_THREADS | --max-threads | 10000 | most threads kept; the least recently used are evicted |
| web_dir | DEFECT_GLM_WEB_DIR | --web-dir | model_server/web | folder with index.html and static/ served at / (absent: no page) |
| log_level | DEFECT_GLM_LOG_LEVEL | --log-level | INFO | logging level |
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from finetune.views import check_below, check_views

BACKENDS = ("hf", "openai", "visualglm")
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("4bit", "8bit")
KNOWN_IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_WEB_DIR = Path(__file__).resolve().parent / "web"


class ConfigError(ValueError):
    """A setting with a value the server cannot use; the message names the setting and its source."""


def default_home() -> Path:
    """Defect-GLM's data folder: $DEFECT_GLM_HOME, else ~/.local/share/defect-glm."""
    return Path(os.environ.get("DEFECT_GLM_HOME") or Path.home() / ".local" / "share" / "defect-glm")


def default_db_path() -> Path:
    return default_home() / "server" / "threads.sqlite"


@dataclass(frozen=True)
class ServerConfig:
    """The server's settings (see the module docstring for each one's meaning)."""

    host: str = "127.0.0.1"
    port: int = 8080
    backend: str = "hf"
    model: Path | None = None
    adapter: Path | None = None
    dtype: str = "auto"
    quantization: str | None = None
    device: str | None = None
    views: int | None = None
    views_below: float | None = None
    openai_url: str | None = None
    openai_model: str | None = None
    openai_api_key: str | None = None
    openai_timeout_s: float = 120.0
    db: Path | None = None
    admin_token: str | None = None
    max_batch_size: int = 16
    max_wait_ms: float = 0.0
    max_queue: int = 256
    image_readers: int = 1
    torch_threads: int = 0
    model_process: bool = True
    request_timeout_s: float = 300.0
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 25_000_000
    image_formats: tuple[str, ...] = KNOWN_IMAGE_FORMATS
    max_text_chars: int = 4000
    max_new_tokens: int = 256
    max_history_turns: int = 8
    max_stored_turns: int = 200
    thread_ttl_s: float = 30 * 24 * 3600.0
    idempotency_ttl_s: float = 24 * 3600.0
    max_threads: int = 10_000
    web_dir: Path | None = DEFAULT_WEB_DIR
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        problems = validate(self)
        if problems:
            raise ConfigError("invalid server settings: " + "; ".join(problems))

    @property
    def db_path(self) -> Path:
        return self.db if self.db is not None else default_db_path()

    def with_overrides(self, **changes: Any) -> ServerConfig:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Defaults, then environment variables, then `overrides` (None values are ignored)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for opt in OPTIONS:
            raw = env.get(opt.env)
            if raw is not None and raw.strip() != "":
                values[opt.name] = opt.parse(raw, f"environment variable {opt.env}")
        for name, value in overrides.items():
            if value is not None:
                values[name] = value
        return cls(**values)


def validate(cfg: ServerConfig) -> list[str]:
    """Every problem with a set of values, each naming the option and what was expected."""
    p: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            p.append(message)

    need(0 <= cfg.port <= 65535, f"port must be 0-65535, got {cfg.port}")
    need(cfg.backend in BACKENDS, f"backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
    need(cfg.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    need(
        cfg.quantization is None or cfg.quantization in QUANTIZATIONS,
        f"quantization must be 4bit or 8bit (or unset), got {cfg.quantization!r}",
    )
    for name, check in (("views", check_views), ("views_below", check_below)):
        value = getattr(cfg, name)
        if value is None:
            continue  # the checkpoint's setting
        try:
            check(value)
        except ValueError as exc:
            p.append(f"{name}: {exc}")
        need(cfg.backend == "hf", f"{name} is a setting of the hf backend, not of {cfg.backend}; unset it")
    need(
        cfg.backend != "openai" or bool(cfg.openai_url),
        "the openai backend needs openai_url (DEFECT_GLM_OPENAI_URL / --openai-url), e.g. http://127.0.0.1:8000/v1",
    )
    need(
        cfg.openai_url is None or cfg.openai_url.startswith(("http://", "https://")),
        f"openai_url must start with http:// or https://, got {cfg.openai_url!r}",
    )
    for name in ("max_batch_size", "max_queue", "image_readers", "max_image_bytes", "max_image_pixels", "max_text_chars",
                 "max_new_tokens", "max_stored_turns", "max_threads"):
        need(getattr(cfg, name) >= 1, f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("max_wait_ms", "max_history_turns", "thread_ttl_s", "idempotency_ttl_s", "torch_threads"):
        need(getattr(cfg, name) >= 0, f"{name} must be 0 or more, got {getattr(cfg, name)}")
    for name in ("request_timeout_s", "openai_timeout_s"):
        need(getattr(cfg, name) > 0, f"{name} must be positive seconds, got {getattr(cfg, name)}")
    unknown = [f for f in cfg.image_formats if f not in KNOWN_IMAGE_FORMATS]
    need(not unknown, f"image_formats may only contain {', '.join(KNOWN_IMAGE_FORMATS)}; got {', '.join(unknown)}")
    need(bool(cfg.image_formats), "image_formats must list at least one format")
    need(cfg.log_level in LOG_LEVELS, f"log_level must be one of {', '.join(LOG_LEVELS)}, got {cfg.log_level!r}")
    return p


# ------------------------------------------------------------------ the option table
def _int(raw: str) -> int:
    return int(raw.strip().replace("_", ""))


def _float(raw: str) -> float:
    return float(raw.strip())


def _path(raw: str) -> Path:
    return Path(raw.strip()).expanduser()


def _str(raw: str) -> str:
    return raw.strip()


def parse_yes_no(raw: str) -> bool:
    """A yes/no setting: yes/true/1/on or no/false/0/off, any case (ValueError otherwise)."""
    word = raw.strip().lower()
    if word in ("yes", "true", "1", "on"):
        return True
    if word in ("no", "false", "0", "off"):
        return False
    raise ValueError("expected yes or no")


def _formats(raw: str) -> tuple[str, ...]:
    return tuple(part.strip().upper().replace("JPG", "JPEG") for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Option:
    """One setting: its field name, environment variable, parser, default shown in docs, and meaning."""

    name: str
    env: str
    parser: Callable[[str], Any]
    shown_default: str
    help: str
    choices: tuple[str, ...] | None = None
    secret: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, raw: str, source: str) -> Any:
        try:
            value = self.parser(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: cannot read {raw!r} as {self.name} ({exc})") from exc
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{source}: {self.name} must be one of {', '.join(self.choices)}, got {raw!r}")
        return value


OPTIONS: tuple[Option, ...] = (
    Option("host", "DEFECT_GLM_HOST", _str, "127.0.0.1", "interface to bind (127.0.0.1: this machine only)"),
    Option("port", "DEFECT_GLM_PORT", _int, "8080", "TCP port (0: pick a free one)"),
    Option("backend", "DEFECT_GLM_BACKEND", _str, "hf", "model backend: hf, openai or visualglm", BACKENDS),
    Option("model", "DEFECT_GLM_MODEL", _path, "(served checkpoint)",
           "checkpoint directory (hf/visualglm); default: the promoted checkpoint or the committed default model"),
    Option("adapter", "DEFECT_GLM_ADAPTER", _path, "(none)", "peft LoRA adapter directory applied on top of the model"),
    Option("dtype", "DEFECT_GLM_DTYPE", _str, "auto",
           "weights dtype: auto (bfloat16 where the CPU or GPU runs it natively: AMX, AVX512-BF16, CUDA from Ampere on; "
           "else float32, or float16 on an older GPU), float32, bfloat16 or float16", DTYPES),
    Option("quantization", "DEFECT_GLM_QUANTIZATION", _str, "(none)",
           "4bit or 8bit through bitsandbytes (CUDA only)", QUANTIZATIONS),
    Option("device", "DEFECT_GLM_DEVICE", _str, "(auto)", "torch device, e.g. cpu or cuda:0"),
    Option("views", "DEFECT_GLM_VIEWS", _int, "(checkpoint's)",
           "hf backend: answer from 1, 4 or 8 rotated/mirrored views of the map, with the patterns most of them "
           "name: fewer recognition mistakes, more compute (1: the map as sent only); default: the checkpoint's "
           "setting (4 for the committed model)"),
    Option("views_below", "DEFECT_GLM_VIEWS_BELOW", _float, "(checkpoint's)",
           "hf backend: ask the other views only when the answer about the map as sent is less sure than this "
           "(its least likely token after the first): most of the accuracy of all views for little more than the "
           "time of one (an answer that names no pattern set is never asked again); 1: always ask them; default: "
           "the checkpoint's setting (0.9 for the committed model)"),
    Option("openai_url", "DEFECT_GLM_OPENAI_URL", _str, "(none)",
           "base URL of the OpenAI-compatible engine (openai backend), e.g. http://gpu-host:8000/v1"),
    Option("openai_model", "DEFECT_GLM_OPENAI_MODEL", _str, "(engine's first model)",
           "model name to request from the engine"),
    Option("openai_api_key", "DEFECT_GLM_OPENAI_API_KEY", _str, "(none)", "bearer token for the engine", secret=True),
    Option("openai_timeout_s", "DEFECT_GLM_OPENAI_TIMEOUT_S", _float, "120",
           "seconds to wait for one answer from the engine"),
    Option("db", "DEFECT_GLM_DB", _path, "$DEFECT_GLM_HOME/server/threads.sqlite", "SQLite file holding thread memory"),
    Option("admin_token", "DEFECT_GLM_ADMIN_TOKEN", _str, "(none)",
           "bearer token for POST /admin/reload (unset: reload disabled)", secret=True),
    Option("max_batch_size", "DEFECT_GLM_MAX_BATCH_SIZE", _int, "16", "most prompts in one generate call, a map asked in several views counting one per view (1: no batching)"),
    Option("max_wait_ms", "DEFECT_GLM_MAX_WAIT_MS", _float, "0",
           "how long the first request of a batch waits for company (0: take what is queued)"),
    Option("max_queue", "DEFECT_GLM_MAX_QUEUE", _int, "256", "requests waiting for the model before new ones get 429"),
    Option("image_readers", "DEFECT_GLM_IMAGE_READERS", _int, "1",
           "processes reading uploaded images into die grids, beside the model (started on the first upload)"),
    Option("torch_threads", "DEFECT_GLM_TORCH_THREADS", _int, "0",
           "CPU threads of the model (torch.set_num_threads); 0: the cores left after one for the event loop and "
           "one per image reader, at least 1"),
    Option("model_process", "DEFECT_GLM_MODEL_PROCESS", parse_yes_no, "yes",
           "run a model of this machine (hf, visualglm) in a process of its own: generation then never waits for "
           "the server's Python lock, and a model process that dies is replaced (no: in the server process)"),
    Option("request_timeout_s", "DEFECT_GLM_REQUEST_TIMEOUT_S", _float, "300",
           "longest a request waits for its answer before 503; a model process silent this long is replaced"),
    Option("max_image_bytes", "DEFECT_GLM_MAX_IMAGE_BYTES", _int, "10485760", "largest accepted image file (413 above)"),
    Option("max_image_pixels", "DEFECT_GLM_MAX_IMAGE_PIXELS", _int, "25000000",
           "largest accepted width × height (413 above; decompression bombs)"),
    Option("image_formats", "DEFECT_GLM_IMAGE_FORMATS", _formats, ",".join(KNOWN_IMAGE_FORMATS),
           "accepted image formats (415 otherwise); animated images use the first frame"),
    Option("max_text_chars", "DEFECT_GLM_MAX_TEXT_CHARS", _int, "4000", "longest accepted question (400 above)"),
    Option("max_new_tokens", "DEFECT_GLM_MAX_NEW_TOKENS", _int, "256", "most tokens generated per answer"),
    Option("max_history_turns", "DEFECT_GLM_MAX_HISTORY_TURNS", _int, "8",
           "earlier turns put in the prompt (oldest trimmed; the model may allow fewer)"),
    Option("max_stored_turns", "DEFECT_GLM_MAX_STORED_TURNS", _int, "200",
           "turns kept per thread in the database (oldest deleted)"),
    Option("thread_ttl_s", "DEFECT_GLM_THREAD_TTL_S", _float, "2592000",
           "threads idle this long are forgotten (30 days; 0: never)"),
    Option("idempotency_ttl_s", "DEFECT_GLM_IDEMPOTENCY_TTL_S", _float, "86400",
           "how long a message's Idempotency-Key is remembered (1 day; 0: as long as its thread)"),
    Option("max_threads", "DEFECT_GLM_MAX_THREADS", _int, "10000", "most threads kept; the least recently used are evicted"),
    Option("web_dir", "DEFECT_GLM_WEB_DIR", _path, "model_server/web",
           "folder with index.html and static/ served at / (absent: no page)"),
    Option("log_level", "DEFECT_GLM_LOG_LEVEL", lambda raw: raw.strip().upper(), "INFO", "logging level", LOG_LEVELS),
)

assert {o.name for o in OPTIONS} == {f.name for f in fields(ServerConfig)}, "every ServerConfig field needs an Option"


def options_table() -> str:
    """The Markdown table of every option (the module docstring and docs/server.md hold a copy)."""
    lines = [
        "| option | environment variable | flag | default | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {o.name} | {o.env} | {o.flag} | {o.shown_default} | {o.help} |" for o in OPTIONS]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per option; each defaults to None so the environment and the defaults apply."""
    for opt in OPTIONS:
        env_note = f" [env {opt.env}; default {opt.shown_default}]"
        kwargs: dict[str, Any] = {"default": None, "help": opt.help + env_note, "dest": opt.name}
        if opt.choices:
            kwargs["metavar"] = "{" + ",".join(opt.choices) + "}"
        parser.add_argument(opt.flag, type=str, **kwargs)


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Settings from parsed `add_arguments` flags over the environment over the defaults."""
    overrides = {}
    for opt in OPTIONS:
        raw = getattr(args, opt.name, None)
        if raw is not None:
            overrides[opt.name] = opt.parse(raw, f"flag {opt.flag}")
    return ServerConfig.from_env(environ, **overrides)


def torch_threads_for(cfg: ServerConfig, cores: int | None = None) -> int:
    """The model's CPU threads for `cfg`: `torch_threads`, or with 0 the cores (of this process,
    unless given) left after one for the event loop and one per image reader, at least 1. Idle
    torch threads spin rather than sleep, so on a small CPU a thread more than that takes a core
    from the reading and serving of the next requests."""
    if cfg.torch_threads:
        return cfg.torch_threads
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1 - cfg.image_readers)


def describe(cfg: ServerConfig) -> dict[str, Any]:
    """The settings as a JSON-ready dict with secrets masked (for logs and /v1/status)."""
    out: dict[str, Any] = {}
    for opt in OPTIONS:
        value = getattr(cfg, opt.name)
        if opt.secret and value:
            value = "***"
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[opt.name] = value
    return out


if __name__ == "__main__":
    print(options_table())
