"""Tests for data_tools.render: palettes, sizes, grid lines, margins and PNG output."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from data_tools.render import PALETTES, render, render_highlight, render_png, save_image, to_png_bytes
from data_tools.wafer_map import WaferMap


def disc_map(rows: int = 20, cols: int = 20) -> np.ndarray:
    """A round wafer with a failing centre and one failing edge die."""
    r, c = np.indices((rows, cols))
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    dist = np.hypot((r - cy) / (rows / 2), (c - cx) / (cols / 2))
    grid = np.where(dist < 0.95, 1, 0)
    grid[dist < 0.25] = 2
    on = np.argwhere(grid == 1)
    grid[tuple(on[0])] = 2
    return grid.astype(np.uint8)


def test_default_is_one_pixel_per_die_in_grey() -> None:
    grid = disc_map()
    img = render(grid)
    assert img.mode == "RGB" and img.size == (20, 20)
    arr = np.asarray(img)
    pal = PALETTES["grey"]
    for code, colour in ((0, pal.off), (1, pal.good), (2, pal.fail)):
        assert (arr[grid == code] == colour).all()
    assert pal.off == (255, 255, 255) and pal.good == (128, 128, 128) and pal.fail == (0, 0, 0)


def test_viridis_colours_are_matplotlibs() -> None:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    pal = PALETTES["viridis"]
    for value, colour in ((0.0, pal.off), (0.5, pal.good), (1.0, pal.fail)):
        expected = np.round(np.array(cmap(value)[:3]) * 255)
        assert np.abs(expected - np.array(colour)).max() <= 1


@pytest.mark.parametrize("palette", sorted(PALETTES))
@pytest.mark.parametrize("scale", [1, 3, 2.5, 7.3])
def test_integer_and_fractional_scales_sample_every_die(palette: str, scale: float) -> None:
    grid = disc_map(18, 24)
    img = render(WaferMap(grid), palette=palette, scale=scale)
    assert img.size == (round(24 * scale), round(18 * scale))
    arr = np.asarray(img)
    lut = PALETTES[palette].lookup()
    # The pixel at each die's centre has that die's colour.
    ys = ((np.arange(18) + 0.5) * img.size[1] / 18).astype(int)
    xs = ((np.arange(24) + 0.5) * img.size[0] / 24).astype(int)
    assert (arr[ys[:, None], xs[None, :]] == lut[grid]).all()
    # Nearest-neighbour: only palette colours appear.
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) <= 3


def test_target_size_keeps_aspect_and_centres() -> None:
    grid = disc_map(10, 20)  # twice as wide as tall
    img = render(grid, palette="fab", size=(200, 200))
    assert img.size == (200, 200)
    arr = np.asarray(img)
    background = np.array(PALETTES["fab"].background)
    content_rows = np.where((arr != background).any(axis=(1, 2)))[0]
    # 10 rows × 10 px each = 100 rows of content, centred vertically.
    assert content_rows.min() >= 50 and content_rows.max() < 150


def test_margin_and_grid_lines() -> None:
    grid = disc_map()
    img = render(grid, palette="grey", scale=5, grid_lines=True, margin=7)
    assert img.size == (20 * 5 + 1 + 14, 20 * 5 + 1 + 14)
    arr = np.asarray(img)
    pal = PALETTES["grey"]
    assert (arr[:7] == pal.background).all() and (arr[:, -7:] == pal.background).all()
    # Lines every 5 pixels inside the margin, including the frame.
    assert (arr[7:-7, 7] == pal.grid).all() and (arr[7:-7, 7 + 5] == pal.grid).all()
    assert (arr[7 + 100, 7:-7] == pal.grid).all()


def test_highlight_view_shows_failing_dies_in_strong_colour() -> None:
    grid = disc_map()
    img = render_highlight(grid, size=256)
    arr = np.asarray(img)
    assert img.size == (256, 256)
    assert (np.all(arr == PALETTES["highlight"].fail, axis=-1)).sum() > 0


def test_png_bytes_round_trip(tmp_path) -> None:
    grid = disc_map()
    data = to_png_bytes(render(grid, scale=2))
    assert data.startswith(b"\x89PNG")
    back = Image.open(io.BytesIO(data))
    assert back.size == (40, 40)
    assert render_png(grid) == to_png_bytes(render(grid))
    out = save_image(render(grid), tmp_path / "sub" / "map.png")
    assert out.exists() and not list(out.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"palette": "rainbow"}, "unknown palette"),
        ({"scale": 0}, "scale must be a positive"),
        ({"scale": 2, "size": 100}, "either scale"),
        ({"scale": 2, "grid_lines": True}, "at least 3 pixels per die"),
        ({"margin": -1}, "margin must be"),
        ({"size": 10, "margin": 5}, "leaves no room"),
        ({"scale": 10_000}, "render limit"),
    ],
)
def test_bad_arguments_say_what_was_expected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        render(disc_map(), **kwargs)


def test_bad_grid_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="die codes"):
        render(np.full((4, 4), 7))
