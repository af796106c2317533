"""Slack 429s are retried after Retry-After; secrets never reach the logs."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from fake_slack import FakeSlack
from slack_sdk.errors import SlackApiError

from bot import redact
from bot.config import BotConfig
from bot.slack_client import make_web_client


def test_rate_limited_calls_wait_for_retry_after_then_succeed() -> None:
    async def go() -> None:
        async with FakeSlack() as fake:
            client = make_web_client(BotConfig.from_env(fake.env()))
            fake.rate_limit("chat.postMessage", times=2, retry_after=0.3)
            start = time.monotonic()
            resp = await client.chat_postMessage(channel="C1", text="hello")
            elapsed = time.monotonic() - start
            assert resp["ok"] and len(fake.calls_of("chat.postMessage")) == 3
            assert 0.6 <= elapsed < 3.0
            assert fake.messages[-1]["text"] == "hello"

    asyncio.run(go())


def test_retries_are_bounded() -> None:
    async def go() -> None:
        async with FakeSlack() as fake:
            config = BotConfig.from_env(fake.env(), slack_429_retries=1, slack_max_retry_after_s=0.05)
            client = make_web_client(config)
            fake.rate_limit("reactions.add", times=5, retry_after=30)  # capped at 0.05 s
            start = time.monotonic()
            with pytest.raises(SlackApiError) as info:
                await client.reactions_add(channel="C1", timestamp="1.0", name="eyes")
            assert info.value.response.status_code == 429
            assert len(fake.calls_of("reactions.add")) == 2 and time.monotonic() - start < 2

    asyncio.run(go())


def test_secret_filter_masks_tokens_in_any_log_line(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.redact")
    flt = redact.SecretFilter(["xoxb-very-secret", "signing-secret-value"])
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token %s and %s and xapp-1-A2-3b",
                               ("xoxb-very-secret", "signing-secret-value"), None)
    flt.filter(record)
    text = record.getMessage()
    assert "xoxb-very-secret" not in text and "signing-secret-value" not in text and "xapp-1-A2-3b" not in text
    assert "[redacted]" in text
    assert logger  # the filter works on records, independent of handlers
