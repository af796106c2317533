"""Benchmark: how well data_tools.image_reader reads rendered wafer maps back, and refuses non-wafer images.

Renders real MixedWM38 maps (default ../shared/data/mixedwm38_dev.npz, `--limit N`) and synthetic
round maps of other grid sizes in every palette, at several resolutions, as PNG and JPEG (dies of
3 px and more), with margins and grid lines; reads them back and prints, per setting, the die
accuracy (share of cells read right) and the exact-grid rate (share of maps read without a single
wrong cell; a refusal counts as all wrong). Then generates non-wafer images (noise, gradients,
photo-like textures, matplotlib charts, text, blank) and prints the share refused.

    python benchmarks/image_reader_accuracy.py --limit 50
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from data_tools.image_reader import NotAWaferMapError, read_wafer_image
from data_tools.render import PALETTES, render

#: Share of dies that must be read right on real maps, in every palette.
TARGET = 0.995

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mixedwm38_dev.npz"

#: (name, render options, formats) — JPEG only where a die spans ≥ 3 px.
SETTINGS: list[tuple[str, dict, tuple[str, ...]]] = [
    ("1px", {}, ("png",)),
    ("size70", {"size": 70}, ("png",)),
    ("size97", {"size": 97}, ("png",)),
    ("3px", {"scale": 3}, ("png", "jpg")),
    ("4px+margin6", {"scale": 4, "margin": 6}, ("png", "jpg")),
    ("size333", {"size": 333}, ("png", "jpg")),
    ("5px+grid", {"scale": 5, "grid_lines": True}, ("png", "jpg")),
    ("size500+margin20+grid", {"size": 500, "margin": 20, "grid_lines": True}, ("png", "jpg")),
    ("size800x600+margin15", {"size": (800, 600), "margin": 15}, ("png", "jpg")),
]


def synthetic_map(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A round wafer of rows × cols dies with a random blob, a scratch and scattered failures."""
    r, c = np.indices((rows, cols))
    cy, cx = (rows - 1) / 2, (cols - 1) / 2
    dist = np.hypot((r - cy) / (rows / 2), (c - cx) / (cols / 2))
    grid = np.where(dist <= 0.98, 1, 0).astype(np.uint8)
    by, bx = rng.uniform(0.3, 0.7) * rows, rng.uniform(0.3, 0.7) * cols
    blob = np.hypot((r - by) / rows, (c - bx) / cols) < rng.uniform(0.05, 0.15)
    t = np.linspace(0, 1, 4 * max(rows, cols))
    sr = (0.2 + 0.6 * t) * rows
    sc = (0.3 + 0.4 * t + 0.1 * np.sin(6 * t)) * cols
    scratch = np.zeros_like(grid, dtype=bool)
    scratch[np.clip(sr.astype(int), 0, rows - 1), np.clip(sc.astype(int), 0, cols - 1)] = True
    noise = rng.random((rows, cols)) < 0.03
    grid[(blob | scratch | noise) & (grid == 1)] = 2
    return grid


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpg":
        image.save(buffer, format="JPEG", quality=85)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def evaluate(maps: list[np.ndarray], label: str) -> dict[str, float]:
    """Print one line per (palette, setting, format); return the die accuracy of each palette over all settings."""
    print(f"\n== {label}: {len(maps)} maps; die accuracy / exact-grid rate / refused / ms per image")
    per_palette: dict[str, float] = {}
    for palette in PALETTES:
        palette_correct = palette_total = 0
        for name, options, formats in SETTINGS:
            for fmt in formats:
                correct = total = exact = refused = 0
                seconds = 0.0  # reading only, not rendering
                for grid in maps:
                    data = encode(render(grid, palette=palette, **options), fmt)
                    total += grid.size
                    start = time.perf_counter()
                    try:
                        got = read_wafer_image(data, expected_shape=grid.shape).grid
                    except NotAWaferMapError:
                        refused += 1
                        continue
                    finally:
                        seconds += time.perf_counter() - start
                    same = int((got == grid).sum()) if got.shape == grid.shape else 0
                    correct += same
                    exact += same == grid.size
                seconds /= len(maps)
                palette_correct += correct
                palette_total += total
                print(
                    f"{palette:9s} {name:24s} {fmt:3s}  die acc {correct / total:7.3%}  "
                    f"exact {exact / len(maps):6.1%}  refused {refused:3d}  {1000 * seconds:6.1f} ms"
                )
        per_palette[palette] = palette_correct / palette_total
    summary = ", ".join(f"{p} {acc:.3%}" for p, acc in per_palette.items())
    verdict = "meets" if min(per_palette.values()) >= TARGET else "MISSES"
    print(f"-- {label}: die accuracy per palette over all settings: {summary} ({verdict} the {TARGET:.1%} target)")
    return per_palette


def non_wafer_images(rng: np.random.Generator) -> list[tuple[str, Image.Image]]:
    """Images that are not wafer maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images: list[tuple[str, Image.Image]] = []
    for size in (64, 300):
        images.append((f"rgb-noise-{size}", Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))))
        binary = (rng.random((size, size)) < 0.5).astype(np.uint8) * 255
        images.append((f"binary-noise-{size}", Image.fromarray(binary).convert("RGB")))
        three = np.array([[255, 255, 255], [128, 128, 128], [0, 0, 0]], dtype=np.uint8)[rng.integers(0, 3, (size, size))]
        images.append((f"3-colour-noise-{size}", Image.fromarray(three)))
        ramp = np.linspace(0, 255, size, dtype=np.uint8)
        grad = np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)), np.full((size, size), 90, np.uint8)], -1)
        images.append((f"gradient-{size}", Image.fromarray(grad)))
        images.append((f"blank-{size}", Image.new("RGB", (size, size), (255, 255, 255))))
        images.append((f"blank-grey-{size}", Image.new("RGB", (size, size), (128, 128, 128))))
        # photo-like textures: smooth random fields, a shaded sphere
        field = rng.normal(size=(size // 8 + 2, size // 8 + 2, 3))
        smooth = Image.fromarray(((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)).resize(
            (size, size), Image.BICUBIC
        )
        images.append((f"smooth-texture-{size}", smooth.filter(ImageFilter.GaussianBlur(2))))
        yy, xx = np.indices((size, size)) / size - 0.5
        shade = np.clip(1 - 4 * (xx**2 + yy**2), 0, 1) * (0.6 + 0.4 * xx)
        sphere = (np.stack([shade * 200, shade * 180, shade * 220], -1) + rng.normal(0, 4, (size, size, 3))).clip(0, 255)
        images.append((f"shaded-disc-photo-{size}", Image.fromarray(sphere.astype(np.uint8))))
    # charts drawn with matplotlib
    for kind in ("line", "bar", "scatter", "pie", "hist", "imshow-heatmap"):
        fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
        x = np.arange(20)
        if kind == "line":
            ax.plot(x, np.cumsum(rng.normal(size=20)))
        elif kind == "bar":
            ax.bar(["a", "b", "c", "d"], rng.uniform(1, 5, 4))
        elif kind == "scatter":
            ax.scatter(rng.normal(size=50), rng.normal(size=50))
        elif kind == "pie":
            ax.pie([60, 40], labels=["good", "bad"], autopct="%1.0f%%")
        elif kind == "hist":
            ax.hist(rng.normal(size=500), bins=20)
        else:
            ax.imshow(rng.random((10, 10)))
        ax.set_title(f"a {kind} chart")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        images.append((f"chart-{kind}", Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    # a screenshot of text
    text = Image.new("RGB", (480, 200), (255, 255, 255))
    draw = ImageDraw.Draw(text)
    for line in range(10):
        draw.text((8, 8 + 18 * line), f"{line:02d} lot W{line:03d} yield 93.{line}% wafer map attached", fill=(0, 0, 0))
    images.append(("text-screenshot", text))
    images.append(("text-screenshot-jpg", Image.open(io.BytesIO(encode(text, "jpg"))).convert("RGB")))
    # a checkerboard (regular lattice, but not a wafer) and a square block
    checker = (np.indices((200, 200)).sum(axis=0) // 10 % 2 * 255).astype(np.uint8)
    images.append(("checkerboard", Image.fromarray(checker).convert("RGB")))
    square = np.full((120, 120, 3), 255, np.uint8)
    square[20:100, 20:100] = (128, 128, 128)
    images.append(("grey-square", Image.fromarray(square)))
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MixedWM38 .npz (arr_0: maps)")
    parser.add_argument("--limit", type=int, default=30, help="real maps to use (random, seed 0)")
    parser.add_argument("--synthetic", type=int, default=4, help="synthetic maps per extra grid size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.limit < 1 or args.synthetic < 1:
        parser.error("--limit and --synthetic must be at least 1 (maps are needed to measure anything)")
    rng = np.random.default_rng(args.seed)

    if args.data.exists():
        maps = np.load(args.data)["arr_0"]
        pick = rng.choice(len(maps), size=min(args.limit, len(maps)), replace=False)
        evaluate([maps[i].astype(np.uint8) for i in pick], f"real MixedWM38 maps from {args.data.name}")
    else:
        print(f"(no real data at {args.data}; skipping real maps)")
    for rows, cols in ((26, 26), (40, 64), (96, 96)):
        evaluate([synthetic_map(rows, cols, rng) for _ in range(args.synthetic)], f"synthetic {rows}x{cols}")

    print("\n== non-wafer images (should be refused)")
    refused = 0
    images = non_wafer_images(rng)
    for name, image in images:
        try:
            wafer = read_wafer_image(encode(image, "png"))
            print(f"  NOT refused: {name} (read as {wafer.shape[0]}x{wafer.shape[1]}, {wafer.dies} dies)")
        except NotAWaferMapError as exc:
            refused += 1
            print(f"  refused {name}: {exc}")
    print(f"refusal rate: {refused}/{len(images)} = {refused / len(images):.1%}")


if __name__ == "__main__":
    main()
