"""Tests for data_tools.image_reader: reading rendered wafer maps back, and refusing non-wafer images."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from data_tools.image_reader import (
    ImageTooLargeError,
    NotAWaferMapError,
    read_wafer_image,
    read_wafer_image_details,
)
from data_tools.render import PALETTES, Palette, render
from data_tools.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]


def wafer(rows: int = 52, cols: int = 52, seed: int = 0) -> np.ndarray:
    """A round wafer with one off-wafer ring, a failing blob, a scratch line and scattered failures."""
    rng = np.random.default_rng(seed)
    r, c = np.indices((rows, cols))
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    dist = np.hypot((r - cy) / (rows / 2 - 1), (c - cx) / (cols / 2 - 1))
    grid = np.where(dist <= 1.0, 1, 0).astype(np.uint8)
    blob = np.hypot(r - rows * 0.35, c - cols * 0.6) < min(rows, cols) * 0.1
    scratch = np.abs((r - rows * 0.3) - 0.8 * (c - cols * 0.2)) < 0.6
    scattered = rng.random((rows, cols)) < 0.04
    grid[(blob | scratch | scattered) & (grid == 1)] = 2
    return grid


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# ------------------------------------------------------------------ reading


@pytest.mark.parametrize("palette", sorted(PALETTES))
@pytest.mark.parametrize(
    "options",
    [{}, {"size": 70}, {"size": 97}, {"scale": 3}, {"size": 333}, {"scale": 5, "grid_lines": True}],
    ids=["1px", "size70", "size97", "3px", "size333", "5px-grid"],
)
def test_png_round_trip_is_exact(palette: str, options: dict) -> None:
    grid = wafer()
    got = read_wafer_image(encode(render(grid, palette=palette, **options)), expected_shape=grid.shape)
    assert np.array_equal(got.grid, grid)


@pytest.mark.parametrize("palette", sorted(PALETTES))
@pytest.mark.parametrize(
    "options",
    [{"scale": 3}, {"scale": 4, "margin": 6}, {"size": 500, "margin": 20, "grid_lines": True}],
    ids=["3px", "4px-margin", "size500-grid"],
)
def test_jpeg_screenshots_read_at_least_99_5_percent(palette: str, options: dict) -> None:
    grid = wafer(seed=1)
    data = encode(render(grid, palette=palette, **options), "JPEG", quality=80)
    got = read_wafer_image(data, expected_shape=grid.shape)
    assert (got.grid == grid).mean() >= 0.995


@pytest.mark.parametrize(("rows", "cols"), [(26, 26), (40, 64), (96, 80)])
def test_other_grid_sizes_are_inferred(rows: int, cols: int) -> None:
    grid = wafer(rows, cols, seed=2)
    for image, fmt in ((render(grid, "fab", scale=2.5), "PNG"), (render(grid, "viridis", scale=4), "JPEG")):
        details = read_wafer_image_details(encode(image, fmt, **({"quality": 85} if fmt == "JPEG" else {})))
        assert details.wafer.shape == (rows, cols)
        assert (details.wafer.grid == grid).mean() >= 0.995


def test_margin_in_off_colour_without_expected_shape_keeps_the_dies() -> None:
    grid = wafer()
    got = read_wafer_image(encode(render(grid, "grey", scale=4, margin=2)))
    # 2 px of margin are less than a die: the grid is the same as drawn
    assert np.array_equal(got.grid, grid)
    wide = read_wafer_image(encode(render(grid, "grey", scale=4, margin=9)))
    # 9 px of white margin look like two more off-wafer rows/columns each side; the dies are unchanged
    assert wide.shape == (56, 56) and np.array_equal(wide.grid[2:-2, 2:-2], grid)
    centred = read_wafer_image(encode(render(grid, "grey", scale=4, margin=9)), expected_shape=(52, 52))
    assert np.array_equal(centred.grid, grid)


def test_distinct_margin_colour_and_unknown_palette() -> None:
    grid = wafer(seed=3)
    odd = Palette("odd", off=(255, 255, 255), good=(70, 110, 220), fail=(255, 140, 0), grid=(0, 0, 0),
                  background=(30, 30, 30))
    details = read_wafer_image_details(encode(render(grid, odd, scale=6, margin=12)))
    assert details.palette is None
    assert np.array_equal(details.wafer.grid, grid)
    assert details.colours["good"] == (70, 110, 220) and details.colours["failing"] == (255, 140, 0)


def test_inputs_path_pil_alpha_and_animation(tmp_path: Path) -> None:
    grid = wafer(seed=4)
    image = render(grid, "fab", scale=3)
    path = tmp_path / "map.png"
    image.save(path)
    assert np.array_equal(read_wafer_image(path).grid, grid)
    assert np.array_equal(read_wafer_image(str(path)).grid, grid)
    assert np.array_equal(read_wafer_image(image).grid, grid)
    rgba = image.convert("RGBA")
    assert np.array_equal(read_wafer_image(encode(rgba)).grid, grid)
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (156, 156, 3), dtype=np.uint8))
    gif = io.BytesIO()
    image.save(gif, format="GIF", save_all=True, append_images=[noise], duration=100)
    assert np.array_equal(read_wafer_image(gif.getvalue()).grid, grid)


def test_details_report_how_it_was_read() -> None:
    details = read_wafer_image_details(encode(render(wafer(), "viridis", size=70)))
    assert details.method == "exact" and details.palette == "viridis"
    assert details.pitch == pytest.approx((70 / 52, 70 / 52), abs=1e-6)


# ------------------------------------------------------------------ refusing


def _chart() -> Image.Image:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2), dpi=80)
    ax.bar(["a", "b", "c"], [3, 1, 2])
    ax.set_title("yield by lot")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _text() -> Image.Image:
    image = Image.new("RGB", (360, 120), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for line in range(6):
        draw.text((6, 6 + 18 * line), f"lot {line}: yield 9{line}.5% see attached map", fill=(0, 0, 0))
    return image


def _photo(size: int = 240) -> Image.Image:
    """A photo-like picture: a softly lit round object (a round thing, like a wafer) with sensor noise."""
    rng = np.random.default_rng(5)
    yy, xx = np.indices((size, size)) / size - 0.5
    shade = np.clip(1 - 4 * (xx**2 + yy**2), 0, 1) * (0.6 + 0.4 * xx)
    pixels = np.stack([shade * 200, shade * 180, shade * 220], -1) + rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _texture(size: int = 240) -> Image.Image:
    """A smooth random colour field, like an out-of-focus photo."""
    field = np.random.default_rng(6).normal(size=(size // 8 + 2, size // 8 + 2, 3))
    small = Image.fromarray(((field - field.min()) / np.ptp(field) * 255).astype(np.uint8))
    return small.resize((size, size), Image.BICUBIC).filter(ImageFilter.GaussianBlur(2))


NON_WAFERS = {
    "photo": _photo,
    "photo-jpeg": lambda: Image.open(io.BytesIO(encode(_photo(), "JPEG", quality=85))).convert("RGB"),
    "texture": _texture,
    "noise": lambda: Image.fromarray(np.random.default_rng(1).integers(0, 256, (120, 120, 3), dtype=np.uint8)),
    "binary-noise": lambda: Image.fromarray(
        (np.random.default_rng(2).random((120, 120)) < 0.5).astype(np.uint8) * 255
    ).convert("RGB"),
    "gradient": lambda: Image.fromarray(np.tile(np.linspace(0, 255, 200, dtype=np.uint8), (80, 1))).convert("RGB"),
    "blank": lambda: Image.new("RGB", (200, 200), (255, 255, 255)),
    "text": _text,
    "chart": _chart,
    "checkerboard": lambda: Image.fromarray((np.indices((160, 160)).sum(0) // 8 % 2 * 255).astype(np.uint8)),
    "square": lambda: render(np.pad(np.ones((20, 20), np.uint8), 2), "grey", scale=4),
}


@pytest.mark.parametrize("name", sorted(NON_WAFERS))
def test_non_wafer_images_are_refused_with_a_reason(name: str) -> None:
    with pytest.raises(NotAWaferMapError) as info:
        read_wafer_image(encode(NON_WAFERS[name]()))
    assert len(str(info.value)) > 20 and str(info.value) == info.value.reason


def test_not_an_image_at_all(tmp_path: Path) -> None:
    with pytest.raises(NotAWaferMapError, match="not an image"):
        read_wafer_image(b"hello, this is text")
    with pytest.raises(NotAWaferMapError, match="could not open"):
        read_wafer_image(tmp_path / "missing.png")
    truncated = encode(render(wafer(), scale=4))[:200]
    with pytest.raises(NotAWaferMapError):
        read_wafer_image(truncated)


def test_pixel_limit_is_enforced_before_decoding() -> None:
    data = encode(render(wafer(), scale=10))  # 520 × 520
    with pytest.raises(ImageTooLargeError, match="over the limit of 100,000"):
        read_wafer_image(data, max_pixels=100_000)
    assert issubclass(ImageTooLargeError, NotAWaferMapError) and issubclass(NotAWaferMapError, ValueError)


def test_expected_shape_smaller_than_image_grid_is_an_error() -> None:
    with pytest.raises(NotAWaferMapError, match="more than the expected"):
        read_wafer_image(encode(render(wafer(), scale=3)), expected_shape=(30, 30))


# ------------------------------------------------------------------ CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "defect_glm.py"), "data", "read", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


def test_cli_read_json_and_text(tmp_path: Path) -> None:
    grid = wafer()
    path = tmp_path / "map.jpg"
    render(grid, "fab", scale=5).save(path, quality=90)
    out = _cli(str(path), "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["grid"] == grid.tolist()
    assert payload["dies"] == int((grid > 0).sum()) and payload["failing"] == int((grid == 2).sum())
    assert payload["yield"] == pytest.approx(100 * (grid == 1).sum() / (grid > 0).sum(), abs=0.01)
    assert payload["facts"]["rows"] == 52
    text = _cli(str(path))
    assert text.returncode == 0 and "yield" in text.stdout and "X" in text.stdout


def test_cli_refusal_exits_2_with_reason(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    NON_WAFERS["noise"]().save(path)
    out = _cli(str(path), "--json")
    assert out.returncode == 2 and "not a wafer map" in out.stderr and "colours" in out.stderr


# ------------------------------------------------------------------ real maps


def test_real_maps_in_every_palette(real_mixedwm38: Path) -> None:
    maps = np.load(real_mixedwm38)["arr_0"]
    pick = np.random.default_rng(0).choice(len(maps), 4, replace=False)
    for i in pick:
        grid = maps[i].astype(np.uint8)
        for palette in PALETTES:
            png = read_wafer_image(encode(render(grid, palette, size=97)), expected_shape=(52, 52))
            assert np.array_equal(png.grid, grid)
            jpg = read_wafer_image(encode(render(grid, palette, scale=4), "JPEG", quality=85), expected_shape=(52, 52))
            assert (jpg.grid == grid).mean() >= 0.995


def _lone_good_dies(seed: int = 3) -> np.ndarray:
    """`wafer()` with a failing patch holding good dies that have only failing neighbours (as on Random maps)."""
    grid = wafer(seed=seed)
    grid[30:44, 12:26] = 2
    grid[31:43:3, 13:25:3] = 1
    return grid


@pytest.mark.parametrize("palette", ["fab", "highlight"])
def test_small_jpeg_dies_keep_lone_good_dies_and_pale_good_dies_apart_from_the_background(palette: str) -> None:
    # 3 px per die in JPEG smears a lone good die towards its failing neighbours, and the highlight
    # palette's pale good dies towards its near-white background (both once misread or refused)
    grid = _lone_good_dies()
    got = read_wafer_image(encode(render(grid, palette=palette, scale=3), "JPEG", quality=85), expected_shape=grid.shape)
    lone = np.zeros_like(grid, dtype=bool)
    lone[31:43:3, 13:25:3] = True
    assert np.array_equal(got.grid[lone], grid[lone])
    assert (got.grid == grid).mean() >= 0.999


#: A 26×26 map whose 800×600 grey rendering once crashed the lattice search (ValueError from numpy).
_CRASH_MAP = (
    "00000000000111100000000000/00000000111111111100000000/00000011111111111111000000/00000111111111121111100000/"
    "00001111111111111111110000/00011112221111111111111000/00111111122111111111111100/00111111112211111111111100/"
    "01111111111121111111112110/01121111111112111111111110/01211111122222111111111110/11111111222222211111111111/"
    "11111112222222111111111111/11111112222222111111111111/11111111222222111111111111/01111111222221111111111110/"
    "01112111112222111111111110/01111111111112111111111120/00111111111112211111111100/00121111111211122111111100/"
    "00011111121111112211111000/00001111211111111111110000/00000111111111111111100000/00000011111111111111000000/"
    "00000000111111111100000000/00000000000111100000000000"
)


def test_a_map_whose_lattice_search_once_crashed_is_read_exactly() -> None:
    grid = np.array([[int(c) for c in row] for row in _CRASH_MAP.split("/")], dtype=np.uint8)
    got = read_wafer_image(encode(render(grid, palette="grey", size=(800, 600), margin=15)), expected_shape=grid.shape)
    assert np.array_equal(got.grid, grid)


@pytest.mark.parametrize("palette", sorted(PALETTES))
def test_generated_maps_as_3px_jpeg_are_read_in_every_palette(palette: str) -> None:
    # the highlight palette's pale good dies once merged with its white background here (all refused)
    for i, defect_class in enumerate(["Random", "Edge_Ring", "Loc", "Center+Edge_Loc+Scratch"]):
        grid = generate(defect_class, np.random.default_rng(i)).grid
        data = encode(render(grid, palette=palette, scale=3), "JPEG", quality=85)
        got = read_wafer_image(data, expected_shape=grid.shape)
        assert (got.grid == grid).mean() >= 0.999, defect_class
