"""Keep secrets out of logs: a logging filter that masks the bot token, app token and signing secret.

Installed on the root logger's handlers by `defect-glm bot`, so even a library's debug
line that echoes a request cannot write a token to the log.
"""

from __future__ import annotations

import logging
import re

_TOKEN_SHAPES = re.compile(r"\bxox[abposr]-[A-Za-z0-9-]+|\bxapp-[A-Za-z0-9-]+")


class SecretFilter(logging.Filter):
    """Replace every known secret (and anything shaped like a Slack token) with a mask."""

    def __init__(self, secrets: list[str | None]) -> None:
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return _TOKEN_SHAPES.sub("[redacted-token]", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def install(secrets: list[str | None], logger: logging.Logger | None = None) -> SecretFilter:
    """Attach a SecretFilter to every handler of `logger` (default: the root logger)."""
    target = logger or logging.getLogger()
    flt = SecretFilter(secrets)
    for handler in target.handlers:
        handler.addFilter(flt)
    return flt
