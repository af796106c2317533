"""Reading a user's wafer-map image back into a die grid, and refusing images that are not wafer maps.

`read_wafer_image(source)` accepts PNG/JPEG/GIF/… bytes, a path or a `PIL.Image` and returns
a `WaferMap` (0 off wafer, 1 good, 2 failing). It needs no knowledge of how the image was made:

1. colours: the image's main colours are found from a colour histogram; an image whose
   pixels are not concentrated on a few colours (photo, gradient, noise) is refused;
2. crop: the colour of the image border is the margin/background; the content box is what
   differs from it (either the whole die grid, or the box of on-wafer dies);
3. die pitch, per axis (dies need not be square, the grid size is inferred):
   - sharp images (every pixel exactly a palette colour, e.g. PNG at 1 px per die and up,
     non-integer scales): the coarsest lattice on which every colour change lies on a die
     boundary, solved exactly for nearest-neighbour sampling;
   - blurred images (JPEG, smoothed screenshots; dies of 3 px and up) and images with die grid
     lines: the lattice whose boundaries carry the colour changes, found from the spectrum of
     the edge energy and checked by how little edge energy falls inside dies;
4. dies: each cell's colour is the mean colour of its central pixels, grouped into a few colours
   (in blurred images, each cell then takes the colour that best explains it once mixed with its
   neighbours' as the image's blur mixes them); the off-wafer colour is the background's (or the
   grid corners'), and good versus failing comes from the known palettes (grey, viridis, fab,
   highlight) or, for other colours, from hue (red/yellow fail, green/blue good) and counts;
5. sanity: the on-wafer region must be one round-ish blob of enough dies, else the image is refused.

Every refusal is a `NotAWaferMapError` whose message says why, in words for users.
"""

from __future__ import annotations

import colorsys
import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from data_tools.render import PALETTES
from data_tools.wafer_map import FAIL, GOOD, OFF, WaferMap


class NotAWaferMapError(ValueError):
    """The image is not a readable wafer map; the message says why (for users)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ImageTooLargeError(NotAWaferMapError):
    """The image has more pixels than the reader's limit (decompression-bomb guard)."""


@dataclass(frozen=True)
class ReaderLimits:
    """The reader's limits; all configurable."""

    max_pixels: int = 40_000_000  # refuse larger images before decoding them
    work_pixels: int = 6_000_000  # larger images are reduced to about this before analysis
    min_cells: int = 8  # fewest dies across the on-wafer region, per axis
    max_cells: int = 512  # most dies across the grid, per axis
    min_dies: int = 30  # fewest on-wafer dies
    min_image_side: int = 8  # pixels
    max_colours: int = 8  # distinct main colours (off, good, failing bins, grid, margin)
    min_colour_coverage: float = 0.9  # share of pixels near a main colour
    min_roundness: float = 0.8  # IoU of the die region with the ellipse in its bounding box
    max_holes: float = 0.03  # off-wafer cells enclosed by dies, as a share of dies


DEFAULT_LIMITS = ReaderLimits()
#: How close two cell colours must be to count as one colour: sharp images; blurred ones, widest first.
_SHARP_RADII = (40.0,)
_BLURRED_RADII = (60.0, 45.0)


@dataclass
class ReadDetails:
    """How an image was read: lattice, colours and the grid (for debugging and the benchmark)."""

    wafer: WaferMap
    method: str  # "exact" (sharp nearest-neighbour image) or "periodic" (blurred / grid lines)
    pitch: tuple[float, float]  # pixels per die (x, y), in the analysed image
    colours: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # role → RGB
    palette: str | None = None  # known palette matched, if any


# ----------------------------------------------------------------------------- loading


def load_image(source: bytes | bytearray | str | Path | Image.Image, max_pixels: int) -> np.ndarray:
    """Decode `source` into an (H, W, 3) uint8 RGB array (first frame; alpha over white)."""
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            handle = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else open(source, "rb")  # noqa: SIM115
        except OSError as exc:
            raise NotAWaferMapError(f"could not open the image file: {exc}") from exc
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(handle)
                image.size  # noqa: B018 - header only, nothing decoded yet
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise NotAWaferMapError(
                "the file is not an image I can decode (expected PNG, JPEG, GIF, BMP or WebP)"
            ) from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageTooLargeError(f"the image is too large to open safely: {exc}") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}×{height} = {width * height:,} pixels, over the limit of {max_pixels:,}; "
            "send a smaller screenshot of the wafer map"
        )
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animated: the first frame
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
        image = ImageOps.exif_transpose(image) if image.format == "JPEG" else image
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            canvas.alpha_composite(rgba)
            image = canvas
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            arr = np.asarray(image, dtype=np.float64)
            span = float(arr.max() - arr.min()) or 1.0
            image = Image.fromarray(((arr - arr.min()) * (255.0 / span)).astype(np.uint8))
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise NotAWaferMapError(f"the image could not be decoded ({exc}); it may be truncated or corrupt") from exc
    return np.ascontiguousarray(rgb)


# ----------------------------------------------------------------------------- colours


def _colour_range(img: np.ndarray) -> int:
    """The widest spread (max - min) of any one RGB channel over the image's pixels."""
    return max(int(channel.max()) - int(channel.min()) for channel in np.moveaxis(img, -1, 0))


def _codes(img: np.ndarray) -> np.ndarray:
    """15-bit colour code (5 bits per channel) of each pixel."""
    q = (img >> 3).astype(np.int32)
    return (q[..., 0] << 10) | (q[..., 1] << 5) | q[..., 2]


_BIN_CENTRES = (
    np.stack(np.meshgrid(np.arange(32), np.arange(32), np.arange(32), indexing="ij"), axis=-1).reshape(-1, 3) * 8.0
    + 3.5
)


#: The 27 offsets of a 3×3×3 window of colour bins.
_WINDOW = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)


def _main_colours(
    img: np.ndarray, max_clusters: int = 12, radius: float = 48.0, weights: np.ndarray | None = None,
    codes: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The main colours (K, 3) float of an image's pixels (…, 3) uint8, and their 15-bit code histogram.

    Repeatedly takes the 3×3×3 window of colour bins with the most pixels, averages the colours
    in it, and removes every bin within `radius` of that average. Only bins next to a colour the
    image holds can win, so the windows are summed there alone (a screenshot has few colours).
    `weights` (one per pixel) counts a pixel that many times: distinct colours with their counts
    give the same result as the pixels themselves. `codes`: the pixels' 15-bit codes, when the
    caller has them already.
    """
    pixels = img.reshape(-1, 3)
    codes = _codes(pixels) if codes is None else codes.reshape(-1)
    hist = np.bincount(codes, weights=weights, minlength=32768).astype(np.float64)
    occupied = np.flatnonzero(hist)
    slot = np.zeros(32768, dtype=np.intp)  # code → its row among the occupied bins
    slot[occupied] = np.arange(occupied.size)
    rows = slot[codes]
    weighted = pixels.T.astype(np.float64) if weights is None else pixels.T * weights  # (3, N): rows contiguous
    sums = np.stack([np.bincount(rows, weights=weighted[ch], minlength=occupied.size) for ch in range(3)], axis=-1)
    occupied_xyz = np.stack(np.unravel_index(occupied, (32, 32, 32)), axis=-1)
    candidates_xyz = (occupied_xyz[:, None, :] + _WINDOW[None]).reshape(-1, 3)
    candidates_xyz = candidates_xyz[((candidates_xyz >= 0) & (candidates_xyz < 32)).all(axis=1)]
    candidates = np.unique(np.ravel_multi_index(candidates_xyz.T, (32, 32, 32)))  # ascending: ties go to the lowest
    candidates_xyz = np.stack(np.unravel_index(candidates, (32, 32, 32)), axis=-1)
    # bin masses in a zero-padded 34³ cube, so every window of a candidate lies inside it
    remaining = np.zeros(34**3)
    occupied_padded = np.ravel_multi_index((occupied_xyz + 1).T, (34, 34, 34))
    remaining[occupied_padded] = hist[occupied]
    windows = np.ravel_multi_index((candidates_xyz[:, None, :] + 1 + _WINDOW[None]).transpose(2, 0, 1), (34, 34, 34))
    occupied_centres = _BIN_CENTRES[occupied]
    centres: list[np.ndarray] = []
    min_mass = max(1.0, 2e-6 * hist.sum())
    for _ in range(max_clusters):
        window_mass = remaining[windows].sum(axis=1)
        best = int(np.argmax(window_mass))
        if window_mass[best] < min_mass:
            break
        block = (np.abs(occupied_xyz - candidates_xyz[best]) <= 1).all(axis=1) & (remaining[occupied_padded] > 0)
        centre = sums[block].sum(axis=0) / hist[occupied[block]].sum()
        centres.append(centre)
        near = np.linalg.norm(occupied_centres - centre, axis=1) <= radius
        remaining[occupied_padded[near]] = 0.0
    return np.array(centres, dtype=np.float64), hist


def _label_lut(centres: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each 15-bit code in `present`: the nearest main colour and the distance to it (other codes:
    label 0, distance infinite; look up only codes of the image the histogram came from)."""
    lut = np.zeros(32768, dtype=np.int16)
    lut_dist = np.full(32768, np.inf)
    dist = np.linalg.norm(_BIN_CENTRES[present][:, None, :] - centres[None, :, :], axis=-1)
    lut[present] = dist.argmin(axis=1)
    lut_dist[present] = dist.min(axis=1)
    return lut, lut_dist


def _hsv(colour: np.ndarray) -> tuple[float, float, float]:
    r, g, b = (float(v) / 255.0 for v in colour)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    return h * 360.0, s, v


def _fail_likeness(colour: np.ndarray) -> float:
    """How much a die colour looks like 'failing' in common wafer-map colour schemes (higher = failing)."""
    hue, sat, val = _hsv(colour)
    if sat < 0.25:  # greys: darker reads as failing (black-on-grey maps)
        return 0.5 - val
    if hue < 25 or hue >= 320:
        return 2.0  # red / magenta
    if hue < 80:
        return 1.5  # orange / yellow (viridis failing)
    if hue < 170:
        return -2.0  # green
    if hue < 260:
        return -1.0  # teal / blue
    return 0.5  # purple


# ----------------------------------------------------------------------------- lattice


@dataclass(frozen=True)
class _Axis:
    """A die lattice along one axis of the cropped image: cell index of each pixel (−1: border, unsampled)."""

    cells: int
    pitch: float
    first_edge: float  # pixel-edge coordinate of the first cell's start, in crop coordinates
    pixel_cell: np.ndarray  # (length,) int: cell sampled by each pixel, −1 where not sampled


def _phase_sweep(xs: np.ndarray, p: float) -> float | None:
    """The phase c in [0, 1) that allows the most changes at positions `xs` for pitch p (interval sweep).

    None when no phase allows any of them (p is far off).
    """
    eps = 1e-9
    starts, ends = [], []
    k_top = np.floor((xs + 1) / p)
    for k in (k_top, k_top - 1):
        d = k * p - xs
        d = d[(d > -1 + eps) & (d < 1 - eps)]
        starts.append(np.where(d >= 0, d, 0.0))
        ends.append(np.where(d >= 0, 1.0, d + 1.0))
    s, e = np.concatenate(starts), np.concatenate(ends)
    if s.size == 0:
        return None
    coords = np.concatenate([s, e])
    deltas = np.concatenate([np.ones_like(s), -np.ones_like(e)])
    order = np.lexsort((deltas, coords))
    running = np.cumsum(deltas[order])
    best = int(np.argmax(running))
    sorted_coords = coords[order]
    nxt = sorted_coords[best + 1] if best + 1 < sorted_coords.size else 1.0
    return float(np.clip((sorted_coords[best] + nxt) / 2, 0.0, 1.0 - 1e-9))


_PROBES = np.linspace(0.0, 1.0, 33)


def _fit_exact(xs: np.ndarray, ks: np.ndarray, length: int, n: int) -> tuple[float, float] | None:
    """(p, c) with x − 1 + c < k·p ≤ x + c for every change x at boundary k (and the crop's ends), or None.

    The spread max(k·p − x) − min(k·p − x) is convex in p; its minimum is found by evaluating it on
    33 evenly spaced pitches at once and keeping the interval around the best, 9 times (the interval
    shrinks 16-fold per round, to ~1e-11 of the start); the lattice exists iff the minimum is below
    one pixel.
    """
    x = np.concatenate([[0.0], xs, [float(length)]])
    k = np.concatenate([[0.0], ks, [float(n)]])

    def spread(p: float) -> float:
        v = k * p - x
        return float(v.max() - v.min())

    lo, hi = max(1.0, (length - 1) / n), (length + 1) / n
    if lo > hi:
        return None
    a, b = lo, hi
    for _ in range(9):
        probes = a + (b - a) * _PROBES
        v = probes[:, None] * k[None, :] - x[None, :]
        best = int(np.argmin(v.max(axis=1) - v.min(axis=1)))
        a, b = probes[max(best - 1, 0)], probes[min(best + 1, 32)]
    p = (a + b) / 2
    g = spread(p)
    if g >= 1 - 1e-7:
        return None
    v = k * p - x
    return p, float(v.max() + (1 - g) / 2)


def _exact_axis(trans: np.ndarray, length: int, n_lo: int, n_hi: int) -> _Axis | None:
    """Coarsest nearest-neighbour lattice putting every colour change on a die boundary.

    trans[x] (x = 1 … length−1) counts colour changes between pixels x−1 and x. Pixel x lies in
    cell floor((x + c) / p) for a pitch p ≥ 1 and a phase c in [0, 1); the crop starts and ends on
    die boundaries. A change at x is allowed iff (x + c) mod p < 1. Candidates n go from the fewest
    cells that can hold the changes upwards; for each, changes are assigned to boundaries and the
    exact (p, c) feasibility is solved.
    """
    xs = np.nonzero(trans)[0].astype(np.float64)
    if xs.size == 0:
        return None
    n_lo = max(n_lo, xs.size + 1)  # n cells have n − 1 inner boundaries
    # The usual drawing: a whole number (≥ 2) of pixels per die. The finest such lattice's pitch is the
    # gcd of the crop length and the change positions. When at least half of its boundaries carry a
    # change, no coarser lattice can hold them (runs of changes one pitch apart pin the pitch), so it
    # is taken without the search (c = 0.5: each change sits half a pixel inside its tolerance).
    pitch = int(np.gcd.reduce(np.append(xs.astype(np.int64), length)))
    whole_cells = length // pitch
    if pitch >= 2 and whole_cells <= n_hi and 2 * xs.size >= whole_cells - 1:
        pixel_cell = np.clip(np.floor((np.arange(length) + 0.5) / pitch).astype(np.int64), 0, whole_cells - 1)
        return _Axis(whole_cells, float(pitch), 0.0, pixel_cell)
    feasible: list[tuple[int, float, float]] = []
    for n in range(n_lo, n_hi + 1):
        fit = _fit_cells(xs, length, n)
        if fit is not None:
            feasible.append((n, *fit))
        # A few boundaries may carry no change (identical neighbouring rows), so a slightly coarser
        # lattice with one stretched die can also fit: look a little further and prefer a whole
        # number of pixels per die, the usual way maps are drawn.
        if feasible and (n >= feasible[0][0] + 4 or n == n_hi):
            break
    if not feasible:
        return None
    whole = [f for f in feasible if abs(length / f[0] - round(length / f[0])) < 1e-9]
    n, p, c = (whole or feasible)[0]
    pixel_cell = np.clip(np.floor((np.arange(length) + c) / p).astype(np.int64), 0, n - 1)
    return _Axis(n, p, 0.5 - c, pixel_cell)


def _fit_cells(xs: np.ndarray, length: int, n: int) -> tuple[float, float] | None:
    """(p, c) of an exact n-cell lattice for the changes at `xs`, or None."""
    if n == xs.size + 1:
        return _fit_exact(xs, np.arange(1, n, dtype=np.float64), length, n)  # every boundary has a change
    for p0 in np.linspace((length - 1) / n, (length + 1) / n, 9):
        if p0 < 1:
            continue
        phase = _phase_sweep(xs, p0)
        if phase is None:
            continue
        p, c = p0, phase
        for _ in range(3):
            ks = np.floor((xs + c) / p)
            if np.any(np.diff(ks) <= 0) or ks[0] < 1 or ks[-1] > n - 1:
                break
            fit = _fit_exact(xs, ks, length, n)
            if fit is None:
                break
            p, c = fit
            if np.array_equal(np.floor((xs + c) / p), ks):
                return fit
    return None


def _periodic_axis(energy: np.ndarray, length: int, n_lo: int, n_hi: int, max_off: float) -> _Axis | None:
    """Lattice whose boundaries carry the edge energy (blurred images, grid lines); dies ≥ 2.5 px.

    Candidates come from the spectrum of the edge-energy profile; each is refined by weighted
    regression of edge positions on boundary index and accepted when at most `max_off` of the
    edge energy lies farther than max(1, p/5) px from a boundary. The coarsest accepted lattice wins.
    """
    total = float(energy.sum())
    if total <= 0:
        return None
    spectrum = np.abs(np.fft.rfft(energy)) / total
    n_hi = min(n_hi, int(length / 2.5))
    if n_hi < n_lo:
        return None
    band = spectrum[n_lo : n_hi + 1]
    threshold = 0.3 * float(band.max())
    xs = np.nonzero(energy)[0].astype(np.float64)
    w = energy[xs.astype(np.int64)].astype(np.float64)
    fft_full = np.fft.rfft(energy)
    for n in range(n_lo, n_hi + 1):
        if spectrum[n] < threshold or spectrum[n] < max(spectrum[n - 1], spectrum[min(n + 1, spectrum.size - 1)]):
            continue
        p = length / n
        x0 = (-np.angle(fft_full[n]) / (2 * np.pi)) * p % p
        for _ in range(3):  # refine pitch and phase by weighted least squares
            k = np.round((xs - x0) / p)
            near = np.abs(xs - (x0 + k * p)) <= max(1.0, p / 4)
            if near.sum() < 3:
                break
            kk, xx, ww = k[near], xs[near], w[near]
            a = np.vstack([np.ones_like(kk), kk]).T * np.sqrt(ww)[:, None]
            sol, *_ = np.linalg.lstsq(a, xx * np.sqrt(ww), rcond=None)
            x0, p = float(sol[0]), float(sol[1])
            if p < 2.0:
                break
        if p < 2.0:
            continue
        reach = max(1.0, p / 5) + 0.25
        dist = np.abs(xs - (x0 + np.round((xs - x0) / p) * p))
        off = float(w[dist > reach].sum()) / total
        if off > max_off:
            continue
        first = x0 + math.floor((0.5 - x0) / p + 0.5) * p  # boundary nearest the crop start
        cells = max(1, round((length - first) / p))
        centres = np.arange(length) + 0.5
        rel = (centres - first) / p
        idx = np.floor(rel).astype(np.int64)
        frac = rel - idx
        margin = min(0.25, 1.0 / p) if p >= 3 else 0.0
        inside = (frac >= margin) & (frac <= 1 - margin) & (idx >= 0) & (idx < cells)
        pixel_cell = np.where(inside, idx, -1)
        missing = np.setdiff1d(np.arange(cells), pixel_cell)
        for cell in missing:  # guarantee one sample per cell: the pixel nearest its centre
            pos = int(np.clip(math.floor(first + (cell + 0.5) * p), 0, length - 1))
            pixel_cell[pos] = cell
        return _Axis(cells, p, first, pixel_cell)
    return None


def _grid_line_label(labels: np.ndarray, k: int) -> int | None:
    """The colour that draws die grid lines (thin, nearly full rows and columns), if any."""
    for g in range(k):
        mask = labels == g
        count = int(mask.sum())
        if count == 0:
            continue
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        line_cols, line_rows = box.mean(axis=0) >= 0.5, box.mean(axis=1) >= 0.5
        in_lines = (box & (line_cols[None, :] | line_rows[:, None])).sum() / count
        if in_lines < 0.8:
            continue
        runs_ok = True
        for lines in (line_cols, line_rows):
            labelled, runs = ndimage.label(lines)
            if runs < 4 or np.bincount(labelled.ravel())[1:].max() > 3 or lines.mean() > 0.5:
                runs_ok = False
        if runs_ok:
            return g
    return None


def _drop_blends(centres: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of main colours that are not mere blends of two bigger ones (edge pixels of blurred images)."""
    mass = np.bincount(labels.ravel(), minlength=len(centres)).astype(np.float64)
    keep = []
    for c in range(len(centres)):
        blend = False
        for a in range(len(centres)):
            for b in range(a + 1, len(centres)):
                if c in (a, b) or mass[c] >= 0.1 * min(mass[a], mass[b]):
                    continue
                ab = centres[b] - centres[a]
                t = float(np.clip(np.dot(centres[c] - centres[a], ab) / max(np.dot(ab, ab), 1e-9), 0, 1))
                if np.linalg.norm(centres[a] + t * ab - centres[c]) <= 30.0:
                    blend = True
        if not blend and mass[c] > 0:
            keep.append(c)
    return np.array(keep, dtype=np.int64)


# ----------------------------------------------------------------------------- reading


def _cell_colours(crop: np.ndarray, row_axis: _Axis, col_axis: _Axis) -> np.ndarray:
    """(rows, cols, 3) mean colour of each cell's sampled (central) pixels."""
    rows_n, cols_n = row_axis.cells, col_axis.cells
    rc, cc = row_axis.pixel_cell, col_axis.pixel_cell
    valid = (rc[:, None] >= 0) & (cc[None, :] >= 0)
    cell_id = (rc[:, None] * cols_n + cc[None, :])[valid]
    count = np.bincount(cell_id, minlength=rows_n * cols_n).astype(np.float64)
    out = np.empty((rows_n * cols_n, 3))
    for ch in range(3):
        out[:, ch] = np.bincount(cell_id, weights=crop[..., ch][valid].astype(np.float64), minlength=rows_n * cols_n)
    return (out / np.maximum(count, 1)[:, None]).reshape(rows_n, cols_n, 3)


def _cluster_cells(cell_colour: np.ndarray, radius: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """Group cell colours: (K, 3) centres (most cells first) and the (rows, cols) label of each cell.

    Colours closer than `radius` share a group (blurred images need a wider radius). The work is
    done on the distinct cell colours, each weighted by how many cells have it (a sharp image has
    a handful).
    """
    flat = np.ascontiguousarray(cell_colour.reshape(-1, 3), dtype=np.float64)
    _, first, inverse, counts = np.unique(
        flat.view(np.dtype((np.void, flat.itemsize * 3))).ravel(),
        return_index=True, return_inverse=True, return_counts=True,
    )
    colours, weight = flat[first], counts.astype(np.float64)
    rounded = np.clip(np.round(colours), 0, 255).astype(np.uint8)
    centres, _ = _main_colours(rounded, max_clusters=16, radius=radius, weights=weight)

    def nearest(centres: np.ndarray) -> np.ndarray:
        return np.linalg.norm(colours[:, None, :] - centres[None, :, :], axis=-1).argmin(axis=1)

    def group_means(label: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray]:
        mass = np.bincount(label, weights=weight, minlength=groups)
        totals = np.stack([np.bincount(label, weights=weight * colours[:, ch], minlength=groups) for ch in range(3)], -1)
        return totals / np.maximum(mass, 1e-12)[:, None], mass

    label = nearest(centres)
    for _ in range(3):  # a few k-means steps from the histogram peaks
        means, mass = group_means(label, len(centres))
        centres = np.where((mass > 0)[:, None], means, centres)
        label = nearest(centres)
    while True:  # merge groups whose centres ended up closer than the radius
        used = np.unique(label)
        gaps = np.linalg.norm(centres[used][:, None] - centres[used][None, :], axis=-1) + np.eye(used.size) * 1e9
        if used.size < 2 or gaps.min() >= radius:
            break
        a, b = np.unravel_index(int(np.argmin(gaps)), gaps.shape)
        label[label == used[b]] = used[a]
        centres[used[a]] = group_means(label, len(centres))[0][used[a]]
    order = used[np.argsort(-np.bincount(label, weights=weight, minlength=len(centres))[used])]
    remap = np.full(len(centres), -1)
    remap[order] = np.arange(order.size)
    return centres[order], remap[label][inverse.ravel()].reshape(cell_colour.shape[:2])


def _resolve_blends(
    cell_colour: np.ndarray, centres: np.ndarray, label: np.ndarray, main_share: float = 0.02
) -> tuple[np.ndarray, np.ndarray]:
    """Blurred images: give cells whose colour is a mix of two main colours one of the two.

    A lone die blurred into its neighbours takes a colour between its own and theirs, so a mixed
    cell gets the main colour its 8 neighbours have least of (its own), or the nearer one when
    the neighbours are mixed too. Rare colours that are not mixes (a few failing dies) are kept.
    """
    counts = np.bincount(label.ravel(), minlength=len(centres))
    main = np.nonzero(counts >= max(3, main_share * label.size))[0]
    if main.size < 2:
        return centres, label
    label = label.copy()
    for j in np.nonzero(counts < max(3, main_share * label.size))[0]:
        best = None
        for ai, a in enumerate(main):
            for b in main[ai + 1 :]:
                ab = centres[b] - centres[a]
                t = float(np.clip(np.dot(centres[j] - centres[a], ab) / max(np.dot(ab, ab), 1e-9), 0, 1))
                gap = float(np.linalg.norm(centres[a] + t * ab - centres[j]))
                if gap <= 40.0 and (best is None or gap < best[0]):
                    best = (gap, int(a), int(b))
        if best is None:
            continue
        _, a, b = best
        for r, c in np.argwhere(label == j):
            around = label[max(0, r - 1) : r + 2, max(0, c - 1) : c + 2]
            na, nb = int((around == a).sum()), int((around == b).sum())
            if na == nb:
                da = np.linalg.norm(cell_colour[r, c] - centres[a])
                db = np.linalg.norm(cell_colour[r, c] - centres[b])
                label[r, c] = a if da <= db else b
            else:
                label[r, c] = a if na < nb else b
    return centres, label


#: RGB → (Y, Cb, Cr) without offsets: JPEG keeps luma sharp and smears chroma, so they are fitted apart.
_YCBCR = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def _unblur_labels(cell_colour: np.ndarray, centres: np.ndarray, label: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Blurred images: relabel each cell by the main colour that, smeared with its neighbours', explains it best.

    JPEG mixes a die's colour with its neighbours' (at 3-4 px per die its chroma most, as chroma is
    stored at half resolution), so a lone good die among failing ones can come out nearer the failing
    colour. In luma and the two chroma channels apart, each cell is modelled as `a * own + (1 - a) *
    mean of its 4 neighbours` (each channel's share `a` fitted on the whole image) and takes the
    main colour whose model is nearest its observed colour, each channel weighted by how well the
    model fits it; repeated a few times, as the neighbours' labels settle.
    """
    main = np.flatnonzero(np.bincount(label.ravel(), minlength=len(centres)))
    seen_colour, main_colour = cell_colour @ _YCBCR.T, centres @ _YCBCR.T
    for _ in range(rounds):
        own = main_colour[label]
        padded = np.pad(own, ((1, 1), (1, 1), (0, 0)), mode="edge")
        around = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]) / 4
        spread, seen = (own - around).reshape(-1, 3), (seen_colour - around).reshape(-1, 3)
        scale = (spread * spread).sum(axis=0)
        if not scale.any():
            break
        share = np.clip((spread * seen).sum(axis=0) / np.maximum(scale, 1e-9), 0.3, 1.0)
        noise = np.maximum(((seen - share * spread) ** 2).mean(axis=0), 1.0)  # per channel, at least 1 level²
        model = share * main_colour[main][None, None] + (1 - share) * around[:, :, None]
        misfit = (((seen_colour[:, :, None] - model) ** 2) / noise).sum(axis=-1)
        relabelled = main[misfit.argmin(axis=-1)]
        if np.array_equal(relabelled, label):
            break
        label = relabelled
    return label


def _reduce_if_huge(img: np.ndarray, work_pixels: int) -> np.ndarray:
    pixels = img.shape[0] * img.shape[1]
    if pixels <= work_pixels:
        return img
    factor = math.ceil(math.sqrt(pixels / work_pixels))
    return np.asarray(Image.fromarray(img).reduce(factor))


def _bbox(mask: np.ndarray, min_count: int) -> tuple[int, int, int, int] | None:
    rows = np.nonzero(mask.sum(axis=1) >= min_count)[0]
    cols = np.nonzero(mask.sum(axis=0) >= min_count)[0]
    if rows.size == 0 or cols.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _palette_match(off: np.ndarray, dies: list[np.ndarray]) -> tuple[str | None, list[int]]:
    """Best known palette for the off colour and die colours: (name, role per die colour: GOOD/FAIL)."""
    best: tuple[float, str | None, list[int]] = (math.inf, None, [])
    for name, pal in PALETTES.items():
        good, fail = np.array(pal.good, float), np.array(pal.fail, float)
        off_d = float(np.linalg.norm(off - np.array(pal.off, float)))
        if off_d > 45.0:  # the off-wafer colour is the most reliable cue: it must match closely
            continue
        roles, worst = [], off_d
        for colour in dies:
            dg, df = np.linalg.norm(colour - good), np.linalg.norm(colour - fail)
            roles.append(GOOD if dg <= df else FAIL)
            worst = max(worst, min(dg, df))
        if worst < best[0]:
            best = (worst, name, roles)
    if best[0] <= 90.0:  # die colours may be blurred towards their neighbours (JPEG)
        return best[1], best[2]
    return None, []


def _assign_roles(off: np.ndarray, dies: list[np.ndarray], counts: list[int]) -> tuple[str | None, list[int]]:
    """GOOD or FAIL for each die colour."""
    name, roles = _palette_match(off, dies)
    if name is not None and (GOOD in roles or len(dies) == 1):
        return name, roles
    if len(dies) == 1:
        return None, [FAIL if _fail_likeness(dies[0]) >= 1.0 else GOOD]
    scores = [_fail_likeness(c) for c in dies]
    # the good colour: least failing-looking; ties go to the most common colour
    good_index = min(range(len(dies)), key=lambda i: (scores[i], -counts[i]))
    if max(scores) - min(scores) < 0.5:
        good_index = int(np.argmax(counts))
    return None, [GOOD if i == good_index else FAIL for i in range(len(dies))]


def _check_shape(grid: np.ndarray, limits: ReaderLimits) -> None:
    on = grid != OFF
    dies = int(on.sum())
    if dies < limits.min_dies:
        raise NotAWaferMapError(
            f"only {dies} dies were found; a wafer map has at least {limits.min_dies} (is this really a wafer map?)"
        )
    labelled, count = ndimage.label(on)
    largest = int(np.bincount(labelled.ravel())[1:].max()) if count else 0
    if largest < 0.95 * dies:
        raise NotAWaferMapError(
            "the die area is not one piece: the coloured cells form "
            f"{count} separate regions, while a wafer map is a single round wafer"
        )
    filled = ndimage.binary_fill_holes(on)
    holes = int(filled.sum()) - dies
    if holes > limits.max_holes * dies:
        raise NotAWaferMapError(
            f"the die area has {holes} background-coloured cells inside it; a wafer map's dies cover the "
            "whole wafer (gaps inside read as failing or good dies, never as background)"
        )
    rows, cols = np.nonzero(filled)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    rr, cc = np.indices((r1 - r0, c1 - c0))
    ellipse = ((rr + 0.5 - (r1 - r0) / 2) / ((r1 - r0) / 2)) ** 2 + ((cc + 0.5 - (c1 - c0) / 2) / ((c1 - c0) / 2)) ** 2 <= 1
    region = filled[r0:r1, c0:c1]
    iou = (region & ellipse).sum() / max(1, (region | ellipse).sum())
    if iou < limits.min_roundness:
        raise NotAWaferMapError(
            f"the die area is not round (it matches a circle/ellipse only {iou:.0%}; a wafer is round, "
            f"≥ {limits.min_roundness:.0%}); this looks like a chart or a picture rather than a wafer map"
        )


def read_wafer_image_details(
    source: bytes | bytearray | str | Path | Image.Image,
    expected_shape: tuple[int, int] | None = None,
    max_pixels: int | None = None,
    limits: ReaderLimits = DEFAULT_LIMITS,
) -> ReadDetails:
    """Like `read_wafer_image`, also returning how the image was read."""
    img = load_image(source, max_pixels if max_pixels is not None else limits.max_pixels)
    height, width = img.shape[:2]
    if min(height, width) < limits.min_image_side:
        raise NotAWaferMapError(
            f"the image is only {width}×{height} pixels; a wafer map needs at least "
            f"{limits.min_image_side} pixels per side"
        )
    img = _reduce_if_huge(img, limits.work_pixels)
    height, width = img.shape[:2]

    codes = _codes(img)
    centres, hist = _main_colours(img, codes=codes)
    present = np.flatnonzero(hist)
    if len(centres) <= 1 or _colour_range(img) < 24:
        raise NotAWaferMapError("the image is a single flat colour (blank); no wafer map is drawn in it")
    lut, lut_dist = _label_lut(centres, present)
    near = lut_dist[codes] <= 40.0
    coverage = float(near.mean())
    if coverage < limits.min_colour_coverage:
        raise NotAWaferMapError(
            f"the image has too many colours for a wafer map (only {coverage:.0%} of pixels are close to its "
            "main colours); it looks like a photo, a gradient or noise. Send the wafer map itself "
            "(a few flat colours: background, good dies, failing dies)"
        )

    # sharp: nearly every pixel is exactly one of a few colours (nearest-neighbour rendering, PNG)
    step = max(1, (height * width) // 400_000)
    packed = img.reshape(-1, 3)[::step].astype(np.int32)
    _, exact_counts = np.unique((packed[:, 0] << 16) | (packed[:, 1] << 8) | packed[:, 2], return_counts=True)
    top = np.sort(exact_counts)[::-1][: limits.max_colours].sum() / exact_counts.sum()
    sharp = bool(top >= 0.999)
    if not sharp:  # blurred: pixels between two colours are edges, not colours of their own
        centres = centres[_drop_blends(centres, lut[codes])]
        lut, lut_dist = _label_lut(centres, present)
    labels = lut[codes].astype(np.int64)
    k = len(centres)

    grid_label = _grid_line_label(labels, k)
    ring = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    ring_counts = np.bincount(ring, minlength=k)
    if grid_label is not None and ring_counts[grid_label] >= 0.9 * ring.size:
        background = grid_label  # lines frame the image: no margin
        box = (0, height, 0, width)
    else:
        if grid_label is not None:
            ring_counts[grid_label] = 0
        background = int(ring_counts.argmax())
        offset = img.astype(np.float32) - centres[background].astype(np.float32)
        differs_squared = np.einsum("hwc,hwc->hw", offset, offset)  # squared distances: no square root per pixel
        mass = np.bincount(labels.ravel(), minlength=k)
        big = [j for j in np.argsort(-mass)[:4] if j != background and mass[j] > 0]
        others = [np.linalg.norm(centres[j] - centres[background]) for j in (big or range(k)) if j != background]
        content = differs_squared > (0.5 * min(others) if sharp else max(40.0, 0.5 * min(others))) ** 2
        box = _bbox(content, 1 if sharp else 2)
    if box is None:
        raise NotAWaferMapError("the image is a single flat colour (blank); no wafer map is drawn in it")
    top_px, bottom_px, left_px, right_px = box
    crop_labels = labels[top_px:bottom_px, left_px:right_px]
    h, w = crop_labels.shape

    method = "exact" if sharp and grid_label is None else "periodic"
    crop = img[top_px:bottom_px, left_px:right_px].astype(np.int32)
    axes: list[_Axis | None] = []
    for axis, length in ((0, h), (1, w)):
        n_hi = min(length, limits.max_cells)
        if method == "exact":
            changes = np.diff(crop_labels, axis=axis) != 0
            trans = np.concatenate([[0], changes.sum(axis=1 - axis)]).astype(np.float64)
            found = _exact_axis(trans, length, 1, n_hi)
        else:
            step = np.abs(np.diff(crop, axis=axis)).sum(axis=-1)  # L1 colour change between neighbours
            step = np.where(step > 48, step, 0)  # ignore compression noise
            energy = np.concatenate([[0], step.sum(axis=1 - axis)]).astype(np.float64)
            found = _periodic_axis(energy, length, 2, n_hi, max_off=0.3)
        axes.append(found)
    if axes[0] is None or axes[1] is None:
        raise NotAWaferMapError(
            "no regular grid of dies was found in the image (colour changes do not line up on a die "
            "lattice); this does not look like a wafer map"
        )
    row_axis, col_axis = axes[0], axes[1]
    assert row_axis is not None and col_axis is not None

    cell_colour = _cell_colours(crop, row_axis, col_axis)
    # Blurred images group cell colours widely (JPEG smears a die towards its neighbours); when that
    # merges two pale colours (a highlight map's good dies and the white background), the read fails
    # its sanity checks and is tried again with a narrower grouping.
    context = _CellContext(centres, background, grid_label, sharp, row_axis, col_axis, (top_px, left_px),
                           (height, width), expected_shape, limits)
    *wider, narrowest = _SHARP_RADII if sharp else _BLURRED_RADII
    dies = None
    for radius in wider:
        try:
            dies = _dies_from_cells(cell_colour, radius, context)
            break
        except NotAWaferMapError:
            pass  # try a narrower grouping
    grid, colours, palette = dies or _dies_from_cells(cell_colour, narrowest, context)
    return ReadDetails(WaferMap(grid), method, (col_axis.pitch, row_axis.pitch), colours, palette)


@dataclass(frozen=True)
class _CellContext:
    """What the cell stage needs from the image stage: its main colours and the die lattice found."""

    centres: np.ndarray  # the image's main colours
    background: int  # index in `centres` of the border colour
    grid_label: int | None  # index in `centres` of the grid-line colour, if lines are drawn
    sharp: bool
    row_axis: _Axis
    col_axis: _Axis
    origin: tuple[int, int]  # pixel (top, left) of the content box
    image_shape: tuple[int, int]
    expected_shape: tuple[int, int] | None
    limits: ReaderLimits


def _dies_from_cells(
    cell_colour: np.ndarray, radius: float, context: _CellContext
) -> tuple[np.ndarray, dict[str, tuple[int, int, int]], str | None]:
    """The die grid from the cells' mean colours (grouped within `radius`), its colours and palette; checked."""
    centres, background, grid_label, limits = context.centres, context.background, context.grid_label, context.limits
    cell_centres, cell_label = _cluster_cells(cell_colour, radius)
    if not context.sharp:
        cell_centres, cell_label = _resolve_blends(cell_colour, cell_centres, cell_label)
        cell_label = _unblur_labels(cell_colour, cell_centres, cell_label)
    if grid_label is not None:  # a cell that reads as the grid-line colour is background
        d_grid = np.linalg.norm(cell_centres - centres[grid_label], axis=1)
        d_bg = np.linalg.norm(cell_centres - centres[background], axis=1) if background != grid_label else None
        for j in np.nonzero(d_grid <= 40)[0]:
            if d_bg is not None:
                cell_label[cell_label == j] = int(np.argmin(d_bg))

    # which colour is off wafer: the background's when it occurs among the cells, else the corners'
    k_cells = len(cell_centres)
    d_back = np.linalg.norm(cell_centres - centres[background], axis=1)
    present = np.unique(cell_label)
    if background != grid_label and d_back[present].min() <= 40:
        off_label = int(present[np.argmin(d_back[present])])
        margin_distinct = False
    else:
        corners = [cell_label[0, 0], cell_label[0, -1], cell_label[-1, 0], cell_label[-1, -1]]
        off_label = int(np.bincount(corners).argmax())
        margin_distinct = True
    die_labels = [int(v) for v in present if v != off_label]
    if not die_labels:
        raise NotAWaferMapError("no dies were found: the image shows only background")
    if len(die_labels) > limits.max_colours - 2:
        raise NotAWaferMapError(
            f"the dies use {len(die_labels)} different colours; a wafer map uses a few (good and failing dies)"
        )
    counts = [int((cell_label == v).sum()) for v in die_labels]
    palette, roles = _assign_roles(cell_centres[off_label], [cell_centres[v] for v in die_labels], counts)
    code_of = np.full(k_cells, OFF, dtype=np.uint8)
    for v, role in zip(die_labels, roles):
        code_of[v] = role
    grid = code_of[cell_label]

    grid = _place(grid, context.row_axis, context.col_axis, context.origin, context.image_shape,
                  context.expected_shape, margin_distinct)
    for axis_cells, name in ((grid.shape[0], "rows"), (grid.shape[1], "columns")):
        if axis_cells > limits.max_cells:
            raise NotAWaferMapError(f"the die grid found has {axis_cells} {name}, over the limit of {limits.max_cells}")
    on = grid != OFF
    span = (int(on.any(axis=1).sum()), int(on.any(axis=0).sum()))
    if min(span) < limits.min_cells:
        raise NotAWaferMapError(
            f"the wafer found is only {span[1]}×{span[0]} dies across; a wafer map has at least "
            f"{limits.min_cells} dies in each direction"
        )
    _check_shape(grid, limits)
    colours = {"off": tuple(int(v) for v in cell_centres[off_label])}
    for v, role in zip(die_labels, roles):
        colours.setdefault("good" if role == GOOD else "failing", tuple(int(x) for x in cell_centres[v]))
    return grid, colours, palette


def _place(
    grid: np.ndarray,
    row_axis: _Axis,
    col_axis: _Axis,
    origin: tuple[int, int],
    image_shape: tuple[int, int],
    expected_shape: tuple[int, int] | None,
    margin_distinct: bool,
) -> np.ndarray:
    """Pad the read cells with off-wafer rows/columns to the full grid.

    When the content box is the box of on-wafer dies (margin drawn in the off-wafer colour), the
    off-wafer cells around it are inferred: with `expected_shape`, the grid is taken to be centred in
    the image (uniform margins); without it, every whole cell that fits between the dies and the
    image border is off wafer.
    """
    pads = []
    for axis, ax in ((0, row_axis), (1, col_axis)):
        start = origin[axis] + ax.first_edge  # pixel coordinate of the first read cell
        end = start + ax.cells * ax.pitch
        extent = image_shape[axis]
        if expected_shape is not None:
            want = int(expected_shape[axis])
            if ax.cells > want:
                raise NotAWaferMapError(
                    f"the image holds {ax.cells} die {'rows' if axis == 0 else 'columns'}, more than the "
                    f"expected {want}"
                )
            grid_start = (extent - want * ax.pitch) / 2
            before = int(np.clip(round((start - grid_start) / ax.pitch), 0, want - ax.cells))
            pads.append((before, want - ax.cells - before))
        elif margin_distinct:
            pads.append((0, 0))
        else:
            before = max(0, math.floor(start / ax.pitch + 0.2))
            after = max(0, math.floor((extent - end) / ax.pitch + 0.2))
            pads.append((before, after))
    return np.pad(grid, pads, constant_values=OFF)


def read_wafer_image(
    source: bytes | bytearray | str | Path | Image.Image,
    expected_shape: tuple[int, int] | None = None,
    max_pixels: int | None = None,
    limits: ReaderLimits = DEFAULT_LIMITS,
) -> WaferMap:
    """Read a wafer-map image into a `WaferMap`, or raise `NotAWaferMapError` saying why it is not one.

    source: image bytes, a file path or a PIL image (animated images: the first frame).
    expected_shape: (rows, cols) of the die grid when known (e.g. (52, 52) for MixedWM38); the
        read dies are placed in a grid of that size, assuming the map is centred in the image.
    max_pixels: refuse images with more pixels than this before decoding (default
        `limits.max_pixels`), as a guard against decompression bombs.
    """
    return read_wafer_image_details(source, expected_shape, max_pixels, limits).wafer
