"""Synthetic wafer maps for all 38 MixedWM38 classes, seeded and parametric.

The generator follows how the real MixedWM38 maps look (measured on the development data):
defective maps carry background failing-die noise on about a fifth of the dies, and each base
pattern is painted on top of it — Center blobs, Donut rings, Edge-Loc arcs hugging the rim,
Edge-Ring rims, Loc blobs in the middle zone, long thin Scratch lines in the outer half of the
wafer (which, as in MixedWM38, may spill a die or two past the wafer outline). Normal maps carry
lighter noise only. Near-full and Random maps come, as in MixedWM38, from coarser WM-811K-like
maps enlarged onto the grid, so they look blocky and have their own round layout.

Every geometric choice is a named parameter: pass it to `generate` to fix it, or leave it to be
drawn from its range in `PARAM_RANGES` by the numpy Generator. Lengths are in units of the wafer
radius (so patterns scale to any grid size) except `*_width` depths, which are in dies of a
MixedWM38-sized wafer and scale with the radius too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from data_tools import taxonomy
from data_tools.layout import MIXEDWM38_SHAPE, circular_layout, layout_for, radial_map
from data_tools.loaders import WaferDataset
from data_tools.wafer_map import FAIL, GOOD, OFF, WaferMap

#: Wafer radius (in dies) of the MixedWM38 layout; widths in dies are given for this radius.
REFERENCE_RADIUS = math.sqrt(2061 / math.pi)
#: Grids smaller than this on a side cannot hold recognisable patterns.
MIN_SIDE = 8
#: Largest grid side accepted (keeps a typo from allocating gigabytes).
MAX_SIDE = 1024
#: `generate_dataset` reports progress after at most this many maps.
PROGRESS_EVERY = 100

#: (low, high) of the uniform draw for each parameter left unspecified.
PARAM_RANGES: dict[str, tuple[float, float]] = {
    # background noise: fraction of dies failing at random
    "noise": (0.191, 0.199),  # maps with at least one pattern
    "normal_noise": (0.01, 0.145),  # Normal maps
    # fraction of a pattern's dies that fail (1 = solid); a scratch, a line one or two dies wide, breaks
    # into pieces at the same rate, unlike MixedWM38's, so it has its own
    "density": (0.88, 1.0),
    "scratch_density": (0.96, 1.0),
    # Center: blob radius and offset of its centre from the wafer centre (fractions of the radius)
    "center_radius": (0.12, 0.36),
    "center_offset": (0.0, 0.1),
    # Donut: inner radius, ring width (fractions of the radius), angular extent (degrees)
    "donut_inner": (0.1, 0.36),
    "donut_width": (0.14, 0.32),
    "donut_arc": (250.0, 360.0),
    # Edge-Loc: angular extent (degrees), greatest depth (dies), direction (degrees from top)
    "edge_loc_arc": (45.0, 150.0),
    "edge_loc_width": (2.0, 5.5),
    # Edge-Ring: depth (dies)
    "edge_ring_width": (1.25, 1.75),
    # Loc: blob radius and distance of its centre from the wafer centre (fractions of the radius)
    "loc_radius": (0.14, 0.32),
    "loc_distance": (0.5, 0.88),
    # Scratch: length (fractions of the radius), width (dies), curvature (1/radius), start distance
    "scratch_length": (1.0, 1.9),
    "scratch_width": (1.0, 1.6),
    "scratch_curvature": (-0.6, 0.6),
    "scratch_start": (0.0, 0.75),
    # Near-full / Random: failing fraction, side of the coarser source map (dies), clump size (dies of the
    # source map), grain (share of per-die noise in the texture)
    "near_full_density": (0.72, 0.96),
    "random_density": (0.28, 0.62),
    "coarse_side": (44.0, 52.0),
    "clump": (1.0, 2.0),
    "grain": (0.15, 0.45),
}
#: Angle parameters (degrees, drawn uniformly in [0, 360) when not given).
ANGLE_PARAMS = ("donut_angle", "edge_loc_angle", "loc_angle", "scratch_angle", "scratch_direction", "center_angle")
#: Boolean parameters.
FLAG_PARAMS = ("overflow",)
KNOWN_PARAMS = frozenset(PARAM_RANGES) | frozenset(ANGLE_PARAMS) | frozenset(FLAG_PARAMS)


class SyntheticError(ValueError):
    """Bad arguments to the generator (unknown class, parameter or grid size)."""


# ---------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """A layout and the per-cell measures the painters use."""

    mask: np.ndarray  # bool, die on the wafer
    r: np.ndarray  # distance from the wafer centre / wafer radius
    theta: np.ndarray  # radians clockwise from the top
    depth: np.ndarray  # dies from the wafer outline (1 = outermost die), 0 off the wafer
    y: np.ndarray  # row coordinates
    x: np.ndarray  # column coordinates
    cy: float
    cx: float
    radius: float  # wafer radius in dies

    @property
    def scale(self) -> float:
        """Wafer radius relative to MixedWM38's, for widths given in MixedWM38 dies."""
        return self.radius / REFERENCE_RADIUS


def _geometry_of(mask: np.ndarray) -> Geometry:
    mask = np.asarray(mask, dtype=bool)
    r, theta = radial_map(mask)
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.indices(mask.shape, dtype=np.float64)
    radius = math.sqrt(mask.sum() / math.pi)
    for a in (mask, r, theta, depth, y, x):
        a.setflags(write=False)
    return Geometry(mask, r, theta, depth, y, x, float(y[mask].mean()), float(x[mask].mean()), radius)


@lru_cache(maxsize=32)
def geometry(shape: tuple[int, int]) -> Geometry:
    """The layout of a grid size (MixedWM38's for 52×52, circular otherwise) and its measures."""
    return _geometry_of(layout_for(shape))


@lru_cache(maxsize=64)
def _coarse_geometry(side: int) -> Geometry:
    return _geometry_of(circular_layout(side, side))


# ---------------------------------------------------------------- parameters


#: A fixed generator parameter, or a (low, high) range to draw it from instead of its usual one.
ParamValue = float | tuple[float, float]


class _Params:
    """Parameter lookup: given values win (a (low, high) pair is drawn from that range), the rest are
    drawn from their usual ranges."""

    def __init__(self, given: Mapping[str, ParamValue], rng: np.random.Generator) -> None:
        check_params(given)
        self.given = given
        self.rng = rng

    def __call__(self, name: str) -> float:
        value = self.given.get(name)
        if isinstance(value, tuple):
            return float(self.rng.uniform(*value))
        if value is not None:
            return float(value)
        if name in ANGLE_PARAMS:
            return float(self.rng.uniform(0.0, 360.0))
        lo, hi = PARAM_RANGES[name]
        return float(self.rng.uniform(lo, hi))

    def flag(self, name: str, default: bool) -> bool:
        return bool(self.given.get(name, default))


def check_params(given: Mapping[str, object]) -> None:
    """Refuse unknown parameter names and values that are neither a number nor a (low, high) pair of
    numbers with low ≤ high (flags take any value)."""
    unknown = sorted(set(given) - KNOWN_PARAMS)
    if unknown:
        raise SyntheticError(
            f"unknown generator parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_PARAMS))}"
        )
    numbers = (int, float, np.integer, np.floating)
    for name, value in given.items():
        if name in FLAG_PARAMS:
            continue
        pair = isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, numbers) for v in value)
        if not (isinstance(value, numbers) or (pair and value[0] <= value[1])):
            raise SyntheticError(f"parameter {name} must be a number or a (low, high) range with low ≤ high, "
                                 f"got {value!r}")


def parse_param(text: str) -> tuple[str, ParamValue]:
    """``NAME=VALUE`` or ``NAME=LOW:HIGH`` (a range to draw from) as given on the command line."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    try:
        if not sep or not name:
            raise ValueError
        low, colon, high = raw.partition(":")
        value: ParamValue = (float(low), float(high)) if colon else float(raw)
    except ValueError:
        raise SyntheticError(f"a generator parameter is NAME=VALUE or NAME=LOW:HIGH (e.g. noise=0.05 or "
                             f"noise=0:0.2), got {text!r}") from None
    check_params({name: value})
    return name, value


def _wobble(theta: np.ndarray, rng: np.random.Generator, amplitude: float) -> np.ndarray:
    """A smooth random factor around 1 as a function of angle (irregular outlines)."""
    out = np.ones_like(theta)
    for k in (1, 2, 3):
        out += rng.uniform(0, amplitude / k) * np.cos(k * theta - rng.uniform(0, 2 * np.pi))
    return out


def _angle_diff(theta: np.ndarray, centre_deg: float) -> np.ndarray:
    """Absolute angular distance (radians, in [0, π]) from `centre_deg`."""
    return np.abs((theta - math.radians(centre_deg) + np.pi) % (2 * np.pi) - np.pi)


def _blob(g: Geometry, rng: np.random.Generator, cy: float, cx: float, radius_dies: float) -> np.ndarray:
    """An irregular, possibly elongated blob of about `radius_dies` around (cy, cx)."""
    dy, dx = g.y - cy, g.x - cx
    phi = rng.uniform(0, np.pi)
    stretch = rng.uniform(1.0, 1.6)
    u = (dx * math.cos(phi) + dy * math.sin(phi)) / math.sqrt(stretch)
    v = (-dx * math.sin(phi) + dy * math.cos(phi)) * math.sqrt(stretch)
    dist = np.hypot(u, v)
    local = np.arctan2(v, u)
    return dist <= max(radius_dies, 0.8) * _wobble(local, rng, 0.18)


# ---------------------------------------------------------------- pattern painters


def _center(g: Geometry, p: _Params) -> np.ndarray:
    offset, angle = p("center_offset") * g.radius, math.radians(p("center_angle"))
    cy, cx = g.cy - offset * math.cos(angle), g.cx + offset * math.sin(angle)
    return _blob(g, p.rng, cy, cx, p("center_radius") * g.radius)


def _donut(g: Geometry, p: _Params) -> np.ndarray:
    inner = p("donut_inner")
    outer = inner + p("donut_width")
    wobble_in, wobble_out = _wobble(g.theta, p.rng, 0.12), _wobble(g.theta, p.rng, 0.12)
    ring = (g.r >= inner * wobble_in) & (g.r <= outer * wobble_out)
    arc = p("donut_arc")
    if arc < 360.0:
        gap_centre = p("donut_angle")
        ring &= _angle_diff(g.theta, gap_centre) >= math.radians(360.0 - arc) / 2
    return ring


def _edge_loc(g: Geometry, p: _Params) -> np.ndarray:
    half = math.radians(p("edge_loc_arc")) / 2
    width = p("edge_loc_width") * g.scale
    diff = _angle_diff(g.theta, p("edge_loc_angle"))
    taper = np.sqrt(np.clip(1.0 - (diff / half) ** 2, 0.0, 1.0))
    return g.mask & (diff <= half) & (g.depth <= 0.5 + width * taper * _wobble(g.theta, p.rng, 0.15))


def _edge_ring(g: Geometry, p: _Params) -> np.ndarray:
    width = p("edge_ring_width") * g.scale
    return g.mask & (g.depth <= 0.5 + width * _wobble(g.theta, p.rng, 0.12))


def _loc(g: Geometry, p: _Params) -> np.ndarray:
    distance, angle = p("loc_distance") * g.radius, math.radians(p("loc_angle"))
    cy, cx = g.cy - distance * math.cos(angle), g.cx + distance * math.sin(angle)
    return _blob(g, p.rng, cy, cx, p("loc_radius") * g.radius)


#: A drawn scratch path is kept when this share of it lies on the wafer and the centroid of that part is
#: this far out (fractions of the radius): MixedWM38's scratches are long lines in the outer half of the wafer
#: (measured with `data_tools.locate` on 150 maps per class with a Scratch: the scratch's centroid at 0.6–0.8
#: of the radius and ~70 dies in the median map). Paths whose parameters are all given are kept as they are.
SCRATCH_MIN_ON_WAFER = 0.8
SCRATCH_MIN_RADIUS = 0.55
SCRATCH_TRIES = 50
_SCRATCH_PATH_PARAMS = ("scratch_start", "scratch_angle", "scratch_direction", "scratch_length", "scratch_curvature")


def _scratch_path(g: Geometry, p: _Params) -> np.ndarray:
    """The points (row, col) of one scratch path, 0.4 dies apart."""
    start_r, start_angle = p("scratch_start") * g.radius, math.radians(p("scratch_angle"))
    y, x = g.cy - start_r * math.cos(start_angle), g.cx + start_r * math.sin(start_angle)
    heading = math.radians(p("scratch_direction"))
    length = p("scratch_length") * g.radius
    curvature = p("scratch_curvature") / g.radius
    step = 0.4
    points = []
    for _ in range(max(2, int(length / step))):
        points.append((y, x))
        y -= step * math.cos(heading)
        x += step * math.sin(heading)
        heading += curvature * step
    return np.asarray(points)


def _lies_like_mixedwm38(g: Geometry, pts: np.ndarray) -> bool:
    radius = np.hypot(pts[:, 0] - g.cy, pts[:, 1] - g.cx) / g.radius
    on = radius < 1.0
    return bool(on.mean() >= SCRATCH_MIN_ON_WAFER and np.hypot(
        pts[on, 0].mean() - g.cy, pts[on, 1].mean() - g.cx) / g.radius >= SCRATCH_MIN_RADIUS)


def _scratch(g: Geometry, p: _Params) -> np.ndarray:
    """A thin line or gentle arc: a chain of points stamped with a round brush, not clipped. Drawn paths
    are redrawn until one lies as MixedWM38's do (`_lies_like_mixedwm38`), at most `SCRATCH_TRIES` times."""
    drawn = any(isinstance(p.given.get(name), tuple) or name not in p.given for name in _SCRATCH_PATH_PARAMS)
    pts = _scratch_path(g, p)
    for _ in range(SCRATCH_TRIES - 1 if drawn else 0):
        if _lies_like_mixedwm38(g, pts):
            break
        pts = _scratch_path(g, p)
    half = p("scratch_width") * g.scale / 2
    lo_y, hi_y = int(max(pts[:, 0].min() - half - 1, 0)), int(min(pts[:, 0].max() + half + 2, g.mask.shape[0]))
    lo_x, hi_x = int(max(pts[:, 1].min() - half - 1, 0)), int(min(pts[:, 1].max() + half + 2, g.mask.shape[1]))
    out = np.zeros(g.mask.shape, dtype=bool)
    if lo_y >= hi_y or lo_x >= hi_x:
        return out
    yy, xx = g.y[lo_y:hi_y, lo_x:hi_x], g.x[lo_y:hi_y, lo_x:hi_x]
    d2 = (yy[..., None] - pts[:, 0]) ** 2 + (xx[..., None] - pts[:, 1]) ** 2
    out[lo_y:hi_y, lo_x:hi_x] = d2.min(axis=-1) <= half * half
    return out


PAINTERS: dict[str, Callable[[Geometry, _Params], np.ndarray]] = {
    "Center": _center,
    "Donut": _donut,
    "Edge_Loc": _edge_loc,
    "Edge_Ring": _edge_ring,
    "Loc": _loc,
    "Scratch": _scratch,
}


def _coarse_map(shape: tuple[int, int], p: _Params, density: float, centre_boost: float, rim_drop: float) -> np.ndarray:
    """A blocky WM-811K-like map: clumpy failures on a coarse round wafer, enlarged to `shape`."""
    side = round(p("coarse_side"))
    side = max(MIN_SIDE, min(side, min(shape)))
    g = _coarse_geometry(side)
    field = ndimage.gaussian_filter(p.rng.standard_normal(g.mask.shape), p("clump"))
    field = field / (field[g.mask].std() + 1e-9) + centre_boost * (1.0 - g.r) - rim_drop * (g.depth <= 1.0)
    field = field + p("grain") * p.rng.standard_normal(g.mask.shape)
    on = field[g.mask]
    threshold = np.quantile(on, 1.0 - min(max(density, 0.0), 1.0))
    small = np.where(g.mask, GOOD, OFF).astype(np.uint8)
    small[g.mask & (field > threshold)] = FAIL
    rows = np.minimum((np.arange(shape[0]) * side) // shape[0], side - 1)
    cols = np.minimum((np.arange(shape[1]) * side) // shape[1], side - 1)
    return small[np.ix_(rows, cols)]


# ---------------------------------------------------------------- public API


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in shape)
    except (TypeError, ValueError) as exc:
        raise SyntheticError(f"shape must be (rows, cols), got {shape!r}") from exc
    if not (MIN_SIDE <= rows <= MAX_SIDE and MIN_SIDE <= cols <= MAX_SIDE):
        raise SyntheticError(f"grid sides must be between {MIN_SIDE} and {MAX_SIDE} dies, got {rows}×{cols}")
    return rows, cols


def resolve_class(defect_class: str | taxonomy.DefectClass) -> taxonomy.DefectClass:
    """A DefectClass from a class object or any accepted name (``Center+Scratch``, ``C+EL``, ``Normal``)."""
    if isinstance(defect_class, taxonomy.DefectClass):
        return defect_class
    try:
        return taxonomy.parse_class_name(str(defect_class))
    except ValueError as exc:
        raise SyntheticError(f"cannot generate {defect_class!r}: {exc}") from exc


def generate_grid(
    defect_class: str | taxonomy.DefectClass,
    rng: np.random.Generator,
    shape: tuple[int, int] = MIXEDWM38_SHAPE,
    **params: ParamValue,
) -> np.ndarray:
    """The (rows, cols) uint8 die grid of one synthetic map; see `generate`."""
    cls = resolve_class(defect_class)
    shape = _check_shape(shape)
    p = _Params(params, rng)
    keys = set(cls.patterns)
    if "Near_Full" in keys:
        return _coarse_map(shape, p, p("near_full_density"), centre_boost=0.3, rim_drop=0.6)
    if "Random" in keys:
        return _coarse_map(shape, p, p("random_density"), centre_boost=0.4, rim_drop=0.0)
    g = geometry(shape)
    grid = np.where(g.mask, GOOD, OFF).astype(np.uint8)
    dies = np.flatnonzero(g.mask)
    noise = p("noise") if keys else p("normal_noise")
    count = round(min(max(noise, 0.0), 1.0) * dies.size)
    grid.flat[rng.choice(dies, size=count, replace=False)] = FAIL
    overflow = p.flag("overflow", shape == MIXEDWM38_SHAPE)
    for key in cls.patterns:
        painted = PAINTERS[key](g, p)
        painted &= rng.random(g.mask.shape) < p("scratch_density" if key == "Scratch" else "density")
        if not (key == "Scratch" and overflow):
            painted &= g.mask
        grid[painted] = FAIL
    return grid


def generate(
    defect_class: str | taxonomy.DefectClass,
    rng: np.random.Generator,
    shape: tuple[int, int] = MIXEDWM38_SHAPE,
    **params: ParamValue,
) -> WaferMap:
    """One synthetic wafer map of `defect_class` (a class name such as ``Center+Scratch`` or a DefectClass).

    `params` fix any of `PARAM_RANGES` / `ANGLE_PARAMS` (e.g. ``center_radius=0.3``, ``edge_loc_angle=90``,
    ``noise=0.05``, ``overflow=False``) or give a (low, high) range to draw it from instead of its usual
    one (``noise=(0.0, 0.2)``); the rest are drawn from `rng`.
    """
    return WaferMap(generate_grid(defect_class, rng, shape, **params))


def generate_dataset(
    per_class: int,
    seed: int = 0,
    shape: tuple[int, int] = MIXEDWM38_SHAPE,
    classes: tuple[str, ...] | None = None,
    progress: Callable[[int], None] | None = None,
    params: Mapping[str, ParamValue] | None = None,
) -> WaferDataset:
    """`per_class` maps of each class (all 38 by default), in class order, reproducible from `seed`.

    `progress`, when given, is called with the number of maps just made (for a progress bar).
    `params` fix generator parameters for every map, or give a (low, high) range to draw them from,
    e.g. ``{"noise": 0.0}`` for maps without background noise (see `generate`).
    """
    params = dict(params or {})
    check_params(params)
    if int(per_class) != per_class or per_class < 0:
        raise SyntheticError(f"per_class must be a whole number ≥ 0, got {per_class!r}")
    per_class = int(per_class)
    shape = _check_shape(shape)
    chosen = [resolve_class(c) for c in (classes or taxonomy.CLASS_NAMES)]
    total = per_class * len(chosen)
    grids = np.empty((total, *shape), dtype=np.uint8)
    labels = np.empty((total, taxonomy.NUM_PATTERNS), dtype=np.int32)
    for c, cls in enumerate(chosen):
        # one stream per (seed, class): a class's maps do not depend on which other classes are made
        rng = np.random.default_rng([seed, taxonomy.CLASS_NAMES.index(cls.name)])
        done = 0
        for k in range(per_class):
            grids[c * per_class + k] = generate_grid(cls, rng, shape, **params)
            if progress is not None and (k + 1 - done >= PROGRESS_EVERY or k + 1 == per_class):
                progress(k + 1 - done)
                done = k + 1
        labels[c * per_class : (c + 1) * per_class] = cls.multi_hot
    return WaferDataset(grids, labels, np.arange(total, dtype=np.int64), f"synthetic(seed={seed})")
