"""Die layouts: which cells of a die grid lie on the wafer.

`mixedwm38_layout()` is the 2,061-die layout on a 52×52 grid that every MixedWM38 map
shares (except the Near-full and Random maps, which were resampled from WM-811K maps of
other sizes). It is stored compactly as the first and last die column of each row.
`circular_layout(rows, cols)` makes a round (or elliptical, for non-square grids) layout for
any other grid size, such as the many sizes of WM-811K maps.
"""

from __future__ import annotations

import numpy as np

MIXEDWM38_SHAPE = (52, 52)
MIXEDWM38_DIES = 2061

#: (first column, last column) of the dies in each row of the MixedWM38 layout; None = no dies.
#: Row 0 and column 0 are empty; rows 1…51 are symmetric about row 26 and column 26.
_MIXEDWM38_HALF = ((21, 31), (18, 34), (15, 37), (13, 39), (12, 40), (11, 41), (9, 43), (8, 44), (7, 45), (7, 45),
                   (6, 46), (5, 47), (4, 48), (4, 48), (3, 49), (3, 49), (3, 49), (2, 50), (2, 50), (2, 50))
MIXEDWM38_ROW_EXTENTS: tuple[tuple[int, int] | None, ...] = (
    None, *_MIXEDWM38_HALF, *((1, 51),) * 11, *reversed(_MIXEDWM38_HALF)
)


class LayoutError(ValueError):
    """Impossible layout parameters."""


def mixedwm38_layout() -> np.ndarray:
    """The 52×52 boolean mask of the 2,061-die MixedWM38 layout (True = die on the wafer)."""
    mask = np.zeros(MIXEDWM38_SHAPE, dtype=bool)
    for row, extent in enumerate(MIXEDWM38_ROW_EXTENTS):
        if extent is not None:
            mask[row, extent[0] : extent[1] + 1] = True
    return mask


def circular_layout(rows: int, cols: int, margin: float = 0.0) -> np.ndarray:
    """A round layout filling a `rows`×`cols` grid: cells whose centre lies inside the ellipse.

    `margin` (in cells, ≥ 0) shrinks the wafer away from the grid border. Non-square grids give an
    elliptical layout, as wafer maps with non-square dies do.
    """
    if int(rows) != rows or int(cols) != cols or rows < 3 or cols < 3:
        raise LayoutError(f"a layout needs at least 3×3 whole cells; got rows={rows!r}, cols={cols!r}")
    if margin < 0 or 2 * margin >= min(rows, cols) - 2:
        raise LayoutError(f"margin must be ≥ 0 and leave at least 2 cells; got {margin} for a {rows}×{cols} grid")
    rows, cols = int(rows), int(cols)
    ry, rx = rows / 2.0 - margin, cols / 2.0 - margin
    y, x = np.indices((rows, cols), dtype=np.float64)
    dy, dx = (y + 0.5 - rows / 2.0) / ry, (x + 0.5 - cols / 2.0) / rx
    return dy * dy + dx * dx <= 1.0


def layout_for(shape: tuple[int, int]) -> np.ndarray:
    """The MixedWM38 layout for a 52×52 grid, a circular layout for any other size."""
    rows, cols = shape
    if (rows, cols) == MIXEDWM38_SHAPE:
        return mixedwm38_layout()
    return circular_layout(rows, cols)


def radial_map(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell radius (fraction of the wafer radius, as `WaferMap` measures it) and angle in radians.

    The centre is the centroid of the dies and the radius √(dies/π), so zones agree with
    `data_tools.wafer_map.WaferMap.zones`. Angles run clockwise from the top of the map.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise LayoutError(f"a layout is a 2-D mask with at least one die; got shape {mask.shape}")
    y, x = np.indices(mask.shape, dtype=np.float64)
    cy, cx = y[mask].mean(), x[mask].mean()
    radius = max(np.sqrt(mask.sum() / np.pi), 0.5)
    r = np.hypot(y - cy, x - cx) / radius
    theta = np.arctan2(x - cx, -(y - cy)) % (2 * np.pi)
    return r, theta
