"""Downloading the uploaded image safely: size and type checked first, token only to trusted hosts, HTML refused."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from fake_slack import FakeSlack
from fake_slack.maps import wafer_png

from bot.config import BotConfig
from bot.files import FileRejected, SlackFile, download_image


async def _download(fake: FakeSlack, meta: dict, **overrides) -> bytes:
    config = BotConfig.from_env(fake.env(), **overrides)
    async with aiohttp.ClientSession() as session:
        return await download_image(session, SlackFile.from_event(meta), config)


def run(coro):
    return asyncio.run(coro)


def test_a_wafer_png_downloads_with_the_token() -> None:
    async def go() -> None:
        async with FakeSlack() as fake:
            png = wafer_png()
            assert await _download(fake, fake.add_file(png)) == png
            assert fake.file_requests[-1][1] == f"Bearer {fake.bot_token}"

    run(go())


@pytest.mark.parametrize(
    ("kwargs", "reason", "words"),
    [
        ({"content": b"%PDF-1.4 report", "name": "report.pdf", "mimetype": "application/pdf"}, "not_image", "not an image"),
        ({"size": 50_000_001}, "too_large", "largest image I accept is 10.0 MB"),
        ({"html_instead": True}, "html_page", "files:read"),
        ({"content": b"\x89PNG\r\n\x1a\n garbage", "name": "broken.png"}, "unreadable", "could not be opened"),
    ],
)
def test_bad_files_are_refused_with_their_own_message(kwargs: dict, reason: str, words: str) -> None:
    async def go() -> None:
        async with FakeSlack() as fake:
            content = kwargs.pop("content", wafer_png())
            meta = fake.add_file(content, **kwargs)
            with pytest.raises(FileRejected) as info:
                await _download(fake, meta)
            assert info.value.reason == reason and words in str(info.value)
            if reason in ("not_image", "too_large"):
                assert fake.file_requests == []  # decided from files[] metadata, nothing downloaded

    run(go())


def test_size_limit_is_also_enforced_while_reading() -> None:
    async def go() -> None:
        async with FakeSlack() as fake:
            meta = fake.add_file(wafer_png(), size=10)  # metadata lies: says 10 bytes
            with pytest.raises(FileRejected) as info:
                await _download(fake, meta, max_image_bytes=1000)
            assert info.value.reason == "too_large"

    run(go())


def test_token_never_goes_to_an_untrusted_host() -> None:
    async def go() -> None:
        async with FakeSlack() as fake:
            meta = fake.add_file(wafer_png(), host="localhost")  # same server, host not in SLACK_FILE_HOSTS
            with pytest.raises(FileRejected) as info:
                await _download(fake, meta)
            assert info.value.reason == "host"
            assert fake.file_requests == []

    run(go())


def test_a_redirect_to_an_untrusted_host_is_not_followed_with_the_token() -> None:
    async def go() -> None:
        async with FakeSlack() as fake:
            # the target is the same fake server under a name outside SLACK_FILE_HOSTS
            target = fake.add_file(wafer_png(), host="localhost")["url_private"]
            meta = fake.add_file(wafer_png(), redirect_to=target)
            with pytest.raises(FileRejected) as info:
                await _download(fake, meta)
            assert info.value.reason == "host"
            assert [path for path, _ in fake.file_requests] == [meta["url_private_download"].split("?")[0][len(fake.base_url):]]

    run(go())


def test_a_redirect_within_the_trusted_hosts_is_followed() -> None:
    async def go() -> None:
        async with FakeSlack() as fake:
            png = wafer_png()
            target = fake.add_file(png)["url_private"]
            meta = fake.add_file(b"", redirect_to=target, size=len(png))
            assert await _download(fake, meta) == png
            assert len(fake.file_requests) == 2
            assert all(auth == f"Bearer {fake.bot_token}" for _, auth in fake.file_requests)

    run(go())
