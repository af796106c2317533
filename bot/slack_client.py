"""The Slack Web API client the bot uses: SLACK_API_URL as base, 429s retried after `Retry-After`.

slack_sdk's client accepts retry handlers; ours waits exactly the `Retry-After` Slack sends
(capped by DEFECT_GLM_BOT_SLACK_MAX_RETRY_AFTER_S), up to DEFECT_GLM_BOT_SLACK_429_RETRIES
times per call, and logs the method — never the token. Connection resets are retried once.
"""

from __future__ import annotations

import asyncio
import logging

from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import AsyncConnectionErrorRetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient

from bot.config import BotConfig

log = logging.getLogger("defect_glm.bot.slack")


class RetryAfterHandler(AsyncRetryHandler):
    """Retry a call answered 429 after the number of seconds in its `Retry-After` header."""

    def __init__(self, max_retry_count: int, max_wait_s: float) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait_s = max_wait_s

    async def _can_retry_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        return response is not None and response.status_code == 429

    async def prepare_for_next_attempt_async(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> None:
        wait = 1.0
        if response is not None:
            for name, values in response.headers.items():
                if name.lower() == "retry-after" and values:
                    try:
                        wait = max(0.0, float(values[0]))
                    except ValueError:
                        wait = 1.0
        wait = min(wait, self.max_wait_s)
        method = request.url.rsplit("/", 1)[-1].split("?", 1)[0]
        log.warning("Slack rate-limited %s; retrying in %.1f s (attempt %d)", method, wait, state.current_attempt + 1)
        state.next_attempt_requested = True
        await asyncio.sleep(wait)
        state.increment_current_attempt()


def make_web_client(config: BotConfig) -> AsyncWebClient:
    """An AsyncWebClient for the bot token, pointed at SLACK_API_URL, with the retry handlers."""
    return AsyncWebClient(
        token=config.bot_token,
        base_url=config.slack_api_url,
        timeout=30,
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=1),
            RetryAfterHandler(config.slack_429_retries, config.slack_max_retry_after_s),
        ],
    )
