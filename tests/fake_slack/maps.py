"""Hand-made wafer maps and the images engineers would upload, for the bot's tests and benchmark."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def disc(size: int = 52) -> np.ndarray:
    """A round wafer of good dies (1) on an off-wafer background (0)."""
    r, c = np.indices((size, size))
    centre = (size - 1) / 2
    grid = np.zeros((size, size), dtype=np.uint8)
    grid[np.hypot(r - centre, c - centre) <= size / 2 - 1] = 1
    return grid


def center_map(size: int = 52) -> np.ndarray:
    """A Center pattern: a block of failing dies around the middle."""
    grid = disc(size)
    r, c = np.indices(grid.shape)
    centre = (size - 1) / 2
    grid[(np.hypot(r - centre, c - centre) <= size / 7) & (grid == 1)] = 2
    return grid


def wafer_png(grid: np.ndarray | None = None, scale: int = 6) -> bytes:
    """The map in Defect-GLM's grey palette (data_tools.render) as PNG bytes."""
    from data_tools.render import render_png

    return render_png(center_map() if grid is None else grid, palette="grey", scale=scale)


def photo_png(size: int = 256, seed: int = 0) -> bytes:
    """A readable image that is not a wafer map (smooth noise, like a photo)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
