"""Rendering a wafer map to an image: palettes, sizes, die grid lines, margins, PNG bytes.

`render()` turns a die grid (0 off wafer, 1 good, 2 failing) into an RGB `PIL.Image`:

- ``grey``: Defect-GLM's palette (white off wafer, grey 128 good, black failing); this is
  what the corpus images use, one pixel per die;
- ``viridis``: the usual matplotlib rendering of WM-811K / MixedWM38 maps (the viridis
  colours at 0, 0.5 and 1: dark purple off, teal good, yellow failing);
- ``fab``: fab-tool style (light background, green good, red failing);
- ``highlight``: the map "as read", for showing users what was understood
  (light off-wafer, pale good dies, failing dies in a strong red).

Sizing is either ``scale`` (pixels per die, may be fractional) or a target ``size`` in
pixels (the map is centred and keeps its aspect ratio); with neither, one pixel per die.
Dies are drawn by nearest-neighbour sampling, so every pixel has exactly a palette colour.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_tools.wafer_map import WaferMap

RGB = tuple[int, int, int]

#: The largest image `render` will produce, in pixels (width × height).
MAX_RENDER_PIXELS = 50_000_000


@dataclass(frozen=True)
class Palette:
    """Colours of one rendering style."""

    name: str
    off: RGB  # off-wafer cells
    good: RGB  # good dies
    fail: RGB  # failing dies
    grid: RGB  # die grid lines
    background: RGB  # margins and the letterbox around a map drawn at a target size
    description: str = ""

    def lookup(self) -> np.ndarray:
        """(3, 3) uint8 table: die code → RGB."""
        return np.array([self.off, self.good, self.fail], dtype=np.uint8)


PALETTES: dict[str, Palette] = {
    "grey": Palette(
        "grey", off=(255, 255, 255), good=(128, 128, 128), fail=(0, 0, 0),
        grid=(200, 200, 200), background=(255, 255, 255),
        description="Defect-GLM: white off wafer, grey good, black failing",
    ),
    "viridis": Palette(
        "viridis", off=(68, 1, 84), good=(33, 145, 140), fail=(253, 231, 37),
        grid=(20, 20, 20), background=(68, 1, 84),
        description="matplotlib viridis (WM-811K style): purple off wafer, teal good, yellow failing",
    ),
    "fab": Palette(
        "fab", off=(242, 242, 242), good=(0, 176, 80), fail=(220, 30, 30),
        grid=(90, 90, 90), background=(242, 242, 242),
        description="fab tool: light background, green good, red failing",
    ),
    "highlight": Palette(
        "highlight", off=(250, 250, 250), good=(205, 215, 225), fail=(230, 0, 60),
        grid=(160, 170, 180), background=(250, 250, 250),
        description="the map as read: pale good dies, failing dies in strong red",
    ),
}


def _as_grid(wafer: WaferMap | np.ndarray) -> np.ndarray:
    if isinstance(wafer, WaferMap):
        return wafer.grid
    return WaferMap(np.asarray(wafer)).grid  # validates shape and codes with a clear error


def _palette(palette: str | Palette) -> Palette:
    if isinstance(palette, Palette):
        return palette
    try:
        return PALETTES[palette]
    except KeyError:
        raise ValueError(f"unknown palette {palette!r}; expected one of {', '.join(PALETTES)}") from None


def _target_size(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        width = height = int(size)
    else:
        try:
            width, height = (int(v) for v in size)
        except (TypeError, ValueError):
            raise ValueError(f"size must be an int or a (width, height) pair, got {size!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {width}×{height}")
    return width, height


def _axis_index(cells: int, pixels: int, phase: float) -> np.ndarray:
    """Cell index of each of `pixels` output pixels when `cells` cells span them (nearest neighbour)."""
    centres = (np.arange(pixels) + phase) * (cells / pixels)
    return np.clip(np.floor(centres).astype(np.int64), 0, cells - 1)


def _content(grid: np.ndarray, pal: Palette, width: int, height: int, grid_lines: bool) -> np.ndarray:
    """The map drawn on exactly width × height pixels (grid lines included when asked)."""
    rows, cols = grid.shape
    lut = pal.lookup()
    if not grid_lines:
        ri = _axis_index(rows, height, 0.5)
        ci = _axis_index(cols, width, 0.5)
        return lut[grid[ri[:, None], ci[None, :]]]
    # One-pixel lines on every die boundary, including the outer frame: the dies fill
    # (width - 1) × (height - 1) pixels and the lines sit at the rounded boundaries.
    ri = _axis_index(rows, height - 1, 0.5)
    ci = _axis_index(cols, width - 1, 0.5)
    out = np.empty((height, width, 3), dtype=np.uint8)
    out[: height - 1, : width - 1] = lut[grid[ri[:, None], ci[None, :]]]
    out[height - 1, :] = pal.grid
    out[:, width - 1] = pal.grid
    row_lines = np.round(np.arange(rows) * (height - 1) / rows).astype(np.int64)
    col_lines = np.round(np.arange(cols) * (width - 1) / cols).astype(np.int64)
    out[row_lines, :] = pal.grid
    out[:, col_lines] = pal.grid
    return out


def render(
    wafer: WaferMap | np.ndarray,
    palette: str | Palette = "grey",
    scale: float | None = None,
    size: int | tuple[int, int] | None = None,
    grid_lines: bool = False,
    margin: int = 0,
) -> Image.Image:
    """Draw a wafer map as an RGB image.

    wafer: a `WaferMap` or an (H, W) array of die codes 0/1/2.
    palette: a name from `PALETTES` (``grey``, ``viridis``, ``fab``, ``highlight``) or a `Palette`.
    scale: pixels per die (fractional allowed); the image is then about W·scale × H·scale
        pixels plus margins. Mutually exclusive with `size`.
    size: target image size in pixels, an int (square) or (width, height); the map is centred,
        keeps its aspect ratio and fills what the margins leave.
    grid_lines: draw one-pixel lines on die boundaries (needs at least 3 pixels per die).
    margin: uniform border in pixels, in the palette's background colour.
    With neither `scale` nor `size`: one pixel per die (the corpus images).
    """
    grid = _as_grid(wafer)
    pal = _palette(palette)
    rows, cols = grid.shape
    margin = int(margin)
    if margin < 0:
        raise ValueError(f"margin must be ≥ 0 pixels, got {margin}")
    if scale is not None and size is not None:
        raise ValueError("give either scale (pixels per die) or size (image pixels), not both")

    if size is None:
        per_die = 1.0 if scale is None else float(scale)
        if not math.isfinite(per_die) or per_die <= 0:
            raise ValueError(f"scale must be a positive number of pixels per die, got {scale!r}")
        width = max(1, round(cols * per_die)) + (1 if grid_lines else 0)
        height = max(1, round(rows * per_die)) + (1 if grid_lines else 0)
        canvas_w, canvas_h = width + 2 * margin, height + 2 * margin
    else:
        canvas_w, canvas_h = _target_size(size)
        avail_w, avail_h = canvas_w - 2 * margin, canvas_h - 2 * margin
        if avail_w < 1 or avail_h < 1:
            raise ValueError(f"a margin of {margin} px leaves no room in a {canvas_w}×{canvas_h} image")
        per_die = min((avail_w - (1 if grid_lines else 0)) / cols, (avail_h - (1 if grid_lines else 0)) / rows)
        width = max(1, round(cols * per_die)) + (1 if grid_lines else 0)
        height = max(1, round(rows * per_die)) + (1 if grid_lines else 0)
        width, height = min(width, avail_w), min(height, avail_h)

    if canvas_w * canvas_h > MAX_RENDER_PIXELS:
        raise ValueError(
            f"a {canvas_w}×{canvas_h} image is over the render limit of {MAX_RENDER_PIXELS:,} pixels; "
            "use a smaller scale or size"
        )
    if grid_lines and per_die < 3:
        raise ValueError(
            f"grid lines need at least 3 pixels per die; this rendering has {per_die:.2f} "
            "(use a larger scale/size or grid_lines=False)"
        )

    content = _content(grid, pal, width, height, grid_lines)
    canvas = np.empty((canvas_h, canvas_w, 3), dtype=np.uint8)
    canvas[:] = pal.background
    top = (canvas_h - height) // 2
    left = (canvas_w - width) // 2
    canvas[top : top + height, left : left + width] = content
    return Image.fromarray(canvas, mode="RGB")


def to_png_bytes(image: Image.Image) -> bytes:
    """The image encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def render_png(wafer: WaferMap | np.ndarray, **options) -> bytes:
    """`render(wafer, **options)` encoded as PNG bytes."""
    return to_png_bytes(render(wafer, **options))


def save_image(image: Image.Image, path: str | Path, format: str | None = None, **save_options) -> Path:
    """Write an image atomically (temporary file in the same folder, then rename); returns the path."""
    path = Path(path)
    fmt = format or Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format from {path.name!r}; use a .png/.jpg name or pass format=")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format=fmt, **save_options)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def render_highlight(wafer: WaferMap | np.ndarray, size: int | tuple[int, int] = 512, margin: int = 8) -> Image.Image:
    """The "map as read" view for users: highlight palette at `size`, grid lines when dies are big enough."""
    grid = _as_grid(wafer)
    width, height = _target_size(size)
    per_die = min((width - 2 * margin - 1) / grid.shape[1], (height - 2 * margin - 1) / grid.shape[0])
    return render(grid, "highlight", size=(width, height), grid_lines=per_die >= 6, margin=margin)
