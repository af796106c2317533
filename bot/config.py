"""Every setting of the Slack bot and the environment variable it comes from — the one place they are documented.

`BotConfig.from_env()` reads the environment, checks every value and raises `ConfigError`
with a message that names the variable, what was expected and what was found.

| variable | meaning | default |
| --- | --- | --- |
| `SLACK_BOT_TOKEN` | bot token (`xoxb-…`), required | — |
| `SLACK_APP_TOKEN` | app-level token (`xapp-…`): Socket Mode | — |
| `SLACK_SIGNING_SECRET` | signing secret: HTTP mode (signatures verified) | — |
| `DEFECT_GLM_BOT_MODE` | `socket` or `http` | `socket` when `SLACK_APP_TOKEN` is set, else `http` |
| `PORT` | HTTP mode: port serving `POST /slack/events` (0: any free port) | `3000` |
| `DEFECT_GLM_BOT_HOST` | HTTP mode: interface to listen on | `0.0.0.0` |
| `SLACK_API_URL` | Web API base URL (tests point it at a fake Slack) | `https://slack.com/api/` |
| `SLACK_FILE_HOSTS` | comma-separated hosts the bot token may be sent to for `url_private` downloads | `files.slack.com` |
| `DEFECT_GLM_SERVER_URL` | model_server base URL | `http://127.0.0.1:8080` |
| `DEFECT_GLM_BOT_DB` | SQLite file: durable queue, event dedupe, answers, feedback | `defect_glm_bot.sqlite3` |
| `DEFECT_GLM_BOT_CHANNELS` | comma-separated channel ids the bot answers in (empty: every channel it is in; DMs always) | empty |
| `DEFECT_GLM_BOT_MAX_IMAGE_BYTES` | largest image accepted, checked from `files[].size` before download | `10000000` |
| `DEFECT_GLM_BOT_MAX_QUESTION_CHARS` | longest question passed to the model (longer is cut) | `2000` |
| `DEFECT_GLM_BOT_SERVER_TIMEOUT_S` | seconds to wait for one model_server answer | `60` |
| `DEFECT_GLM_BOT_RETRY_FOR_S` | how long a queued question keeps being retried while the server is down | `3600` |
| `DEFECT_GLM_BOT_RETRY_INITIAL_S` | first retry delay; doubles each attempt | `2` |
| `DEFECT_GLM_BOT_RETRY_MAX_S` | longest delay between two retries | `300` |
| `DEFECT_GLM_BOT_WORKERS` | questions answered concurrently (different threads) | `4` |
| `DEFECT_GLM_BOT_UPLOAD_MAP` | `1`: upload the map as read, failing dies highlighted | `0` |
| `DEFECT_GLM_BOT_SLACK_429_RETRIES` | times one Slack call is retried after a 429 | `5` |
| `DEFECT_GLM_BOT_SLACK_MAX_RETRY_AFTER_S` | longest `Retry-After` honoured (longer waits are capped) | `60` |
| `DEFECT_GLM_BOT_DEDUPE_TTL_S` | how long seen event ids are remembered | `86400` |
| `DEFECT_GLM_BOT_LOG_LEVEL` | logging level | `INFO` |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlparse

from model_server.config import parse_yes_no

DEFAULT_SLACK_API_URL = "https://slack.com/api/"
DEFAULT_FILE_HOSTS = ("files.slack.com",)


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and what it expects."""


@dataclass(frozen=True)
class BotConfig:
    """The bot's settings (see the module docstring for the variables)."""

    bot_token: str = field(repr=False)
    app_token: str | None = field(default=None, repr=False)
    signing_secret: str | None = field(default=None, repr=False)
    mode: str = "socket"
    port: int = 3000
    host: str = "0.0.0.0"
    slack_api_url: str = DEFAULT_SLACK_API_URL
    file_hosts: tuple[str, ...] = DEFAULT_FILE_HOSTS
    server_url: str = "http://127.0.0.1:8080"
    db_path: Path = Path("defect_glm_bot.sqlite3")
    channel_allowlist: frozenset[str] = frozenset()
    max_image_bytes: int = 10_000_000
    max_question_chars: int = 2000
    server_timeout_s: float = 60.0
    retry_for_s: float = 3600.0
    retry_initial_s: float = 2.0
    retry_max_s: float = 300.0
    workers: int = 4
    upload_map: bool = False
    slack_429_retries: int = 5
    slack_max_retry_after_s: float = 60.0
    dedupe_ttl_s: float = 86400.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.mode not in ("socket", "http"):
            raise ConfigError(f"DEFECT_GLM_BOT_MODE must be 'socket' or 'http', got {self.mode!r}")
        if not self.bot_token:
            raise ConfigError("SLACK_BOT_TOKEN is required (the bot token, xoxb-…)")
        if self.mode == "socket" and not self.app_token:
            raise ConfigError(
                "Socket Mode needs SLACK_APP_TOKEN (an app-level token xapp-… with connections:write); "
                "set it, or set DEFECT_GLM_BOT_MODE=http with SLACK_SIGNING_SECRET"
            )
        if self.mode == "http" and not self.signing_secret:
            raise ConfigError("HTTP mode needs SLACK_SIGNING_SECRET (Basic Information → Signing Secret)")
        if not 0 <= self.port < 65536:
            raise ConfigError(f"PORT must be between 0 (any free port) and 65535, got {self.port}")
        if not self.file_hosts:
            raise ConfigError("SLACK_FILE_HOSTS must name at least one host (default files.slack.com)")
        for name in ("max_image_bytes", "max_question_chars", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{_ENV_OF[name]} must be at least 1, got {getattr(self, name)}")
        for name in ("server_timeout_s", "retry_initial_s", "retry_max_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{_ENV_OF[name]} must be a positive number of seconds, got {getattr(self, name)}")
        for name in ("retry_for_s", "slack_max_retry_after_s", "dedupe_ttl_s", "slack_429_retries"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_ENV_OF[name]} must not be negative, got {getattr(self, name)}")

    @property
    def verbose(self) -> dict[str, object]:
        """Settings safe to print or log (tokens and the signing secret are masked)."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("bot_token", "app_token", "signing_secret"):
                value = "set" if value else "unset"
            elif isinstance(value, (frozenset, tuple)):
                value = sorted(value) if isinstance(value, frozenset) else list(value)
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out

    def allows_channel(self, channel: str, channel_type: str | None = None) -> bool:
        """Whether the bot answers in `channel` (DMs are always allowed)."""
        if channel_type == "im" or channel.startswith("D"):
            return True
        return not self.channel_allowlist or channel in self.channel_allowlist

    def may_send_token_to(self, url: str) -> bool:
        """Whether `url` is an https (or, for local tests, http) URL on one of SLACK_FILE_HOSTS."""
        return host_allowed(url, self.file_hosts)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> BotConfig:
        """Read every setting from `environ` (default `os.environ`); keyword overrides win."""
        env = os.environ if environ is None else environ
        app_token = env.get("SLACK_APP_TOKEN") or None
        signing_secret = env.get("SLACK_SIGNING_SECRET") or None
        mode = env.get("DEFECT_GLM_BOT_MODE", "").strip().lower() or ("socket" if app_token else "http")
        values: dict[str, object] = {
            "bot_token": env.get("SLACK_BOT_TOKEN", ""),
            "app_token": app_token,
            "signing_secret": signing_secret,
            "mode": mode,
            "port": _int(env, "PORT", 3000),
            "host": env.get("DEFECT_GLM_BOT_HOST", "0.0.0.0"),
            "slack_api_url": _url(env, "SLACK_API_URL", DEFAULT_SLACK_API_URL, trailing_slash=True),
            "file_hosts": _hosts(env.get("SLACK_FILE_HOSTS")),
            "server_url": _url(env, "DEFECT_GLM_SERVER_URL", "http://127.0.0.1:8080"),
            "db_path": Path(env.get("DEFECT_GLM_BOT_DB", "defect_glm_bot.sqlite3")),
            "channel_allowlist": frozenset(_split(env.get("DEFECT_GLM_BOT_CHANNELS", ""))),
            "max_image_bytes": _int(env, "DEFECT_GLM_BOT_MAX_IMAGE_BYTES", 10_000_000),
            "max_question_chars": _int(env, "DEFECT_GLM_BOT_MAX_QUESTION_CHARS", 2000),
            "server_timeout_s": _float(env, "DEFECT_GLM_BOT_SERVER_TIMEOUT_S", 60.0),
            "retry_for_s": _float(env, "DEFECT_GLM_BOT_RETRY_FOR_S", 3600.0),
            "retry_initial_s": _float(env, "DEFECT_GLM_BOT_RETRY_INITIAL_S", 2.0),
            "retry_max_s": _float(env, "DEFECT_GLM_BOT_RETRY_MAX_S", 300.0),
            "workers": _int(env, "DEFECT_GLM_BOT_WORKERS", 4),
            "upload_map": _bool(env, "DEFECT_GLM_BOT_UPLOAD_MAP", False),
            "slack_429_retries": _int(env, "DEFECT_GLM_BOT_SLACK_429_RETRIES", 5),
            "slack_max_retry_after_s": _float(env, "DEFECT_GLM_BOT_SLACK_MAX_RETRY_AFTER_S", 60.0),
            "dedupe_ttl_s": _float(env, "DEFECT_GLM_BOT_DEDUPE_TTL_S", 86400.0),
            "log_level": env.get("DEFECT_GLM_BOT_LOG_LEVEL", "INFO").upper(),
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


_ENV_OF = {
    "max_image_bytes": "DEFECT_GLM_BOT_MAX_IMAGE_BYTES",
    "max_question_chars": "DEFECT_GLM_BOT_MAX_QUESTION_CHARS",
    "workers": "DEFECT_GLM_BOT_WORKERS",
    "server_timeout_s": "DEFECT_GLM_BOT_SERVER_TIMEOUT_S",
    "retry_for_s": "DEFECT_GLM_BOT_RETRY_FOR_S",
    "retry_initial_s": "DEFECT_GLM_BOT_RETRY_INITIAL_S",
    "retry_max_s": "DEFECT_GLM_BOT_RETRY_MAX_S",
    "slack_429_retries": "DEFECT_GLM_BOT_SLACK_429_RETRIES",
    "slack_max_retry_after_s": "DEFECT_GLM_BOT_SLACK_MAX_RETRY_AFTER_S",
    "dedupe_ttl_s": "DEFECT_GLM_BOT_DEDUPE_TTL_S",
}


def host_allowed(url: str, hosts: tuple[str, ...] | frozenset[str]) -> bool:
    """True when `url` is http(s) and its host (or host:port) is one of `hosts` (case-insensitive)."""
    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError:
        return False
    if parsed.scheme not in ("https", "http") or not parsed.hostname:
        return False
    host = parsed.hostname.lower()
    for allowed in hosts:
        allowed = allowed.lower()
        if ":" in allowed:
            a_host, _, a_port = allowed.rpartition(":")
            if host == a_host and str(port) == a_port:
                return True
        elif host == allowed:
            return True
    return False


def _split(raw: str | None) -> list[str]:
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


def _hosts(raw: str | None) -> tuple[str, ...]:
    if raw is None or not raw.strip():
        return DEFAULT_FILE_HOSTS
    hosts = _split(raw)
    for host in hosts:
        if "/" in host or " " in host:
            raise ConfigError(f"SLACK_FILE_HOSTS takes host names (e.g. files.slack.com), not URLs; found {host!r}")
    return tuple(h.lower() for h in hosts)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    try:
        return parse_yes_no(raw)
    except ValueError:
        raise ConfigError(f"{name} must be 1/0, true/false, yes/no or on/off, got {raw!r}") from None


def _url(env: Mapping[str, str], name: str, default: str, trailing_slash: bool = False) -> str:
    raw = env.get(name, "").strip() or default
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{name} must be an http(s) URL such as {default}, got {raw!r}")
    if trailing_slash and not raw.endswith("/"):
        raw += "/"
    return raw.rstrip("/") + "/" if trailing_slash else raw.rstrip("/")
