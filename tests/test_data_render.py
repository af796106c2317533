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


# ------------------------------------------------------------------ `defect-glm data render`


def _npz(tmp_path):
    from data_tools.loaders import save_mixedwm38
    from data_tools.taxonomy import to_multi_hot

    grids = np.stack([disc_map(), np.where(disc_map() > 0, 1, 0).astype(np.uint8)])
    labels = np.stack([to_multi_hot(["Center"]), to_multi_hot([])])
    return save_mixedwm38(tmp_path / "maps.npz", grids, labels), grids


def _render_cli(capsys, *args: str) -> tuple[int, str, str]:
    from defect_glm import main

    code = main(["data", "render", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_render_draws_the_chosen_map(tmp_path, capsys) -> None:
    from data_tools.image_reader import read_wafer_image

    path, grids = _npz(tmp_path)
    out = tmp_path / "map.png"
    code, stdout, err = _render_cli(capsys, str(path), "--out", str(out), "--palette", "fab", "--scale", "6",
                                    "--grid-lines", "--margin", "4")
    assert code == 0, err
    assert "map 0 (Center)" in stdout
    image = Image.open(out)
    assert image.size == (20 * 6 + 1 + 8, 20 * 6 + 1 + 8)
    assert tuple(np.asarray(image.convert("RGB"))[0, 0]) == PALETTES["fab"].background
    assert np.array_equal(read_wafer_image(out, expected_shape=(20, 20)).grid, grids[0])

    jpg = tmp_path / "normal.jpg"
    code, stdout, err = _render_cli(capsys, str(path), "--index", "1", "--size", "300x200", "--out", str(jpg))
    assert code == 0, err
    assert "map 1 (Normal)" in stdout and Image.open(jpg).format == "JPEG" and Image.open(jpg).size == (300, 200)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--index", "2"], "past the end"),
        (["--palette", "rainbow"], "unknown palette 'rainbow'"),
        (["--size", "big"], "--size is a number of pixels"),
        (["--scale", "1", "--grid-lines"], "at least 3 pixels per die"),
    ],
)
def test_cli_render_refuses_bad_requests_and_writes_nothing(tmp_path, capsys, args, message) -> None:
    path, _ = _npz(tmp_path)
    code, _, err = _render_cli(capsys, str(path), "--out", str(tmp_path / "x.png"), *args)
    assert code == 2 and message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.npz"]


def test_cli_render_keeps_an_existing_file(tmp_path, capsys) -> None:
    path, _ = _npz(tmp_path)
    out = tmp_path / "x.png"
    out.write_bytes(b"keep")
    code, _, err = _render_cli(capsys, str(path), "--out", str(out))
    assert code == 2 and "--overwrite" in err and out.read_bytes() == b"keep"
    assert _render_cli(capsys, str(path), "--out", str(out), "--overwrite")[0] == 0
    assert out.read_bytes().startswith(b"\x89PNG")
