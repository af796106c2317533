"""The map a model is shown: the map as sent, or a clean map with a pattern at its training maps' noise.

A model trained on MixedWM38 alone learned its background noise (about a fifth of the dies failing at
random under the patterns) as part of every defect: v13 called 118 of 370 clean synthetic defective
maps normal. With `background_level` in its config, a map whose background (`data_tools.background`)
is under `background_below` and that holds a cluster of failing dies larger than random failures make
(a pattern is there) is shown to the model with its background raised to that level. Maps without
such a cluster are shown as sent: a clean Normal map raised to that noise is read as a Scratch or a
Loc. Numbers and places are slots filled from the map as sent, so they stay exact.

The default model's settings, 0.195 (the generator's MixedWM38 level) under 0.13 (3 of the 31,319 real
maps with a pattern in `../shared/data` measure less, the lowest 0.111, and shown raised all three are
still read right; a bar of 0.14 takes in 14, one of which is then read wrong), are saved in its config like the views (`finetune.views`); a checkpoint without them is shown every
map as sent, as is one trained on maps of every noise level (`defect-glm data build --synthetic-param
noise=0:0.2`), which needs none.
"""

from __future__ import annotations

from data_tools.background import background_rate, has_large_cluster, with_background
from data_tools.wafer_map import WaferMap

LEVEL_ATTRIBUTE = "background_level"
BELOW_ATTRIBUTE = "background_below"


def check_background(level: float | None, below: float) -> None:
    """A ValueError unless `level` is None or a share in (0, 1) and `below` a share in [0, level]."""
    if level is not None and not (0.0 < level < 1.0 and 0.0 <= below <= level):
        raise ValueError(f"background_level must be in (0, 1) and background_below in [0, background_level]; "
                         f"got {level!r} and {below!r}")


def set_background_match(model: object, level: float | None, below: float) -> None:
    """Make `model` be shown clean maps with a pattern at background `level` (None: every map as sent);
    saved in its config when it is saved."""
    check_background(level, below)
    setattr(model.config, LEVEL_ATTRIBUTE, level)  # type: ignore[attr-defined]
    setattr(model.config, BELOW_ATTRIBUTE, below)  # type: ignore[attr-defined]


def shown_wafer(model: object, wafer: WaferMap | None) -> WaferMap | None:
    """The map `model` is shown for `wafer` (see the module docstring); `wafer` itself in most cases."""
    config = getattr(model, "config", None)
    level = getattr(config, LEVEL_ATTRIBUTE, None)
    if wafer is None or level is None:
        return wafer
    now = background_rate(wafer)
    if now < float(getattr(config, BELOW_ATTRIBUTE, 0.0)) and has_large_cluster(wafer.facts()):
        return with_background(wafer, float(level), now)
    return wafer
