"""Checking and downloading the image a Slack message carries — safely.

Order matters: the file's type and size are checked from the event's `files[]` metadata
(or `files.info`) *before* anything is downloaded; the bot token is only ever sent to a
host in SLACK_FILE_HOSTS; a download answered with an HTML page (what Slack returns when
the token lacks `files:read`) or with bytes that are not an image is refused; the body is
read with a hard byte limit. Each refusal is a `FileRejected` whose message is written for
the engineer in the thread.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import aiohttp
from PIL import Image, UnidentifiedImageError
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from yarl import URL

from bot.config import BotConfig

IMAGE_TYPES = {"png", "jpg", "jpeg", "gif", "bmp", "webp", "tif", "tiff"}


class FileRejected(Exception):
    """A file the bot will not analyse; `str(exc)` is the plain message posted in the thread."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # short machine tag: not_image, too_large, html_page, unreadable, host, download


@dataclass(frozen=True)
class SlackFile:
    """The metadata the bot needs about one shared file."""

    id: str
    name: str
    mimetype: str
    filetype: str
    size: int | None
    url: str | None

    @classmethod
    def from_event(cls, raw: dict) -> SlackFile:
        size = raw.get("size")
        return cls(
            id=str(raw.get("id", "")),
            name=str(raw.get("name") or raw.get("title") or raw.get("id") or "file"),
            mimetype=str(raw.get("mimetype") or ""),
            filetype=str(raw.get("filetype") or "").lower(),
            size=int(size) if isinstance(size, (int, float)) or (isinstance(size, str) and size.isdigit()) else None,
            url=raw.get("url_private_download") or raw.get("url_private"),
        )

    @property
    def complete(self) -> bool:
        """Whether the event carried enough to decide (Slack sometimes sends only the id)."""
        return bool(self.url and (self.mimetype or self.filetype) and self.size is not None)

    @property
    def is_image(self) -> bool:
        return self.mimetype.startswith("image/") or self.filetype in IMAGE_TYPES


def check_metadata(file: SlackFile, config: BotConfig) -> None:
    """Refuse non-images and images over the size limit, before any download."""
    if not file.is_image:
        kind = file.mimetype or file.filetype or "unknown type"
        raise FileRejected(
            f"`{file.name}` is not an image ({kind}). Please upload the wafer map as a PNG or JPEG picture.",
            "not_image",
        )
    if file.size is None:
        raise FileRejected(f"Slack did not say how large `{file.name}` is, so I did not download it.", "download")
    if file.size > config.max_image_bytes:
        raise FileRejected(
            f"`{file.name}` is {_mb(file.size)}; the largest image I accept is {_mb(config.max_image_bytes)}. "
            "Please upload a smaller picture of the wafer map (a screenshot of the map is enough).",
            "too_large",
        )
    if not file.url:
        raise FileRejected(f"Slack gave no download link for `{file.name}`.", "download")
    if not config.may_send_token_to(file.url):
        raise FileRejected(
            f"`{file.name}` is hosted outside the file hosts this bot trusts, so I did not download it "
            "(an admin can extend SLACK_FILE_HOSTS).",
            "host",
        )


async def pick_image_file(slack: AsyncWebClient, raw_files: list[dict], config: BotConfig) -> SlackFile:
    """The first image among a message's files (metadata completed with files.info when needed), checked
    against the limits; raises FileRejected with the message for the user."""
    candidates = []
    for raw in raw_files:
        file = SlackFile.from_event(raw)
        if not file.complete and file.id:
            try:
                info = await slack.files_info(file=file.id)
                file = SlackFile.from_event(info.get("file") or {})
            except SlackApiError as exc:
                raise FileRejected(
                    f"I could not look up the shared file ({exc.response.get('error')}).", "download"
                ) from None
        candidates.append(file)
    if not candidates:
        raise FileRejected("The message has no file I can read.", "unreadable")
    images = [f for f in candidates if f.is_image]
    chosen = images[0] if images else candidates[0]
    check_metadata(chosen, config)
    return chosen


async def download_image(
    session: aiohttp.ClientSession, file: SlackFile, config: BotConfig, timeout_s: float = 30.0
) -> bytes:
    """Download a file already passed by `check_metadata`; returns the verified image bytes."""
    check_metadata(file, config)
    assert file.url is not None
    headers = {"Authorization": f"Bearer {config.bot_token}"}
    try:
        # Redirects are followed by hand so the token is never sent to a host outside SLACK_FILE_HOSTS.
        url = file.url
        for _ in range(5):
            async with session.get(
                url, headers=headers, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                    url = str(resp.url.join(URL(resp.headers["Location"])))
                    if not config.may_send_token_to(url):
                        raise FileRejected(
                            f"Slack redirected the download of `{file.name}` to an untrusted host; I stopped.", "host"
                        )
                    continue
                if resp.status != 200:
                    raise FileRejected(
                        f"I could not download `{file.name}` (Slack answered HTTP {resp.status}).", "download"
                    )
                content_type = resp.headers.get("Content-Type", "").lower()
                body = await _read_limited(resp, config.max_image_bytes, file.name)
                break
        else:
            raise FileRejected(f"Too many redirects while downloading `{file.name}`.", "download")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise FileRejected(f"I could not download `{file.name}` ({type(exc).__name__}).", "download") from None
    if content_type.startswith("text/html") or _looks_like_html(body):
        raise FileRejected(
            f"Slack sent a web page instead of `{file.name}` — the bot is probably missing the `files:read` "
            "permission. Ask an admin to add it and reinstall the app.",
            "html_page",
        )
    verify_image_bytes(body, file.name)
    return body


def verify_image_bytes(body: bytes, name: str) -> None:
    """Refuse bytes that no image decoder recognises."""
    try:
        with Image.open(io.BytesIO(body)) as img:
            img.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FileRejected(f"`{name}` could not be opened as an image ({exc.__class__.__name__}).", "unreadable") from None


async def _read_limited(resp: aiohttp.ClientResponse, limit: int, name: str) -> bytes:
    chunks, total = [], 0
    async for chunk in resp.content.iter_chunked(65536):
        total += len(chunk)
        if total > limit:
            raise FileRejected(
                f"`{name}` turned out larger than {_mb(limit)} while downloading; I stopped.", "too_large"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _looks_like_html(body: bytes) -> bool:
    head = body[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body"))


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{n / 1000:.0f} kB"
