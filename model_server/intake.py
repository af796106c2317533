"""Checking what users send before the model sees it: question text, image size, pixels, format.

Every refusal is an `ApiError` with a 4xx status that says what was expected and what was
found: text too long (400), image too large (413), too many pixels (413, decompression
bombs), unsupported or unreadable format (415/400), not a wafer map (422).
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from data_tools.wafer_map import WaferMap
from model_server import wire
from model_server.errors import ApiError, bad_request


def check_text(text: object, max_chars: int, *, allow_empty: bool = False) -> str:
    """The question, stripped; refuses non-strings, empty text (unless allowed) and text over `max_chars`."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise bad_request(wire.CODE_INVALID_FIELD, f"'text' must be a string, got {type(text).__name__}")
    text = text.strip()
    if not text and not allow_empty:
        raise bad_request(wire.CODE_MISSING_TEXT, "'text' is empty: send a question (or an image of a wafer map)")
    if len(text) > max_chars:
        raise bad_request(
            wire.CODE_TEXT_TOO_LONG, f"'text' has {len(text)} characters; the limit is {max_chars}"
        )
    return text


def check_image_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ApiError(
            413, wire.INVALID_REQUEST, wire.CODE_IMAGE_TOO_LARGE,
            f"the image is {size} bytes; the limit is {max_bytes} bytes ({max_bytes / 1_048_576:.1f} MiB)",
        )


def open_image(data: bytes, *, max_bytes: int, max_pixels: int, formats: tuple[str, ...]) -> Image.Image:
    """Decode an image within the limits; animated images give their first frame. Returns RGB."""
    check_image_size(len(data), max_bytes)
    if not data:
        raise bad_request(wire.CODE_UNREADABLE_IMAGE, "the image is empty (0 bytes)")
    accepted = ", ".join(formats)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(413, wire.INVALID_REQUEST, wire.CODE_IMAGE_TOO_MANY_PIXELS,
                       f"the image has too many pixels ({exc}); the limit is {max_pixels}") from exc
    except UnidentifiedImageError as exc:
        raise ApiError(415, wire.INVALID_REQUEST, wire.CODE_UNSUPPORTED_IMAGE_FORMAT,
                       f"the file is not an image in a supported format; send one of {accepted}") from exc
    fmt = (image.format or "").upper()
    if fmt not in formats:
        raise ApiError(415, wire.INVALID_REQUEST, wire.CODE_UNSUPPORTED_IMAGE_FORMAT,
                       f"{fmt or 'this'} images are not accepted; send one of {accepted}")
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(413, wire.INVALID_REQUEST, wire.CODE_IMAGE_TOO_MANY_PIXELS,
                       f"the image is {width}×{height} = {width * height} pixels; the limit is {max_pixels}")
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
        return _to_rgb(image)
    except (OSError, ValueError, SyntaxError) as exc:
        raise bad_request(wire.CODE_UNREADABLE_IMAGE, f"the {fmt} image could not be decoded: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy; transparent areas become white (the off-wafer colour of most renderings)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read_wafer(image: Image.Image, max_pixels: int) -> WaferMap:
    """The die grid in a user's image; 422 with the reader's reason when it is not a wafer map."""
    from data_tools.image_reader import ImageTooLargeError, NotAWaferMapError, read_wafer_image

    try:
        return read_wafer_image(image, max_pixels=max_pixels)
    except ImageTooLargeError as exc:
        raise ApiError(413, wire.INVALID_REQUEST, wire.CODE_IMAGE_TOO_MANY_PIXELS, str(exc)) from exc
    except NotAWaferMapError as exc:
        raise ApiError(422, wire.NOT_A_WAFER_MAP, wire.CODE_NOT_A_WAFER_MAP,
                       f"this image does not look like a wafer map: {exc}") from exc


def read_upload(data: bytes, max_bytes: int, max_pixels: int, formats: tuple[str, ...]) -> WaferMap:
    """An uploaded image checked against the limits and read into a die grid, with the wafer's zones
    and clusters measured (the findings need them); what `model_server.image_readers` runs in its
    worker processes."""
    wafer = read_wafer(open_image(data, max_bytes=max_bytes, max_pixels=max_pixels, formats=formats), max_pixels)
    wafer.facts()
    return wafer
