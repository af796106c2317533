"""Answering from several views of the map: a vote among the answers about its rotations and mirror images.

A wafer's defect patterns do not change when the map is rotated by 90° or mirrored, and the
small model is trained on maps under all 8 such transforms. With `answer_views` set to 4 (the four
rotations) or 8 (rotations and their mirror images), generation (`finetune.generation`) asks the
model about each view at once (one batch row each: the view's image and facts line, the same
question and history) and answers with the one whose patterns (`finetune.answer_parser`) most
views agree on, the map as sent first among equals. The model writes numbers and places as
slots, filled afterwards from the map as sent, so an answer written about a rotated view reads
right for the original. More compute per answer, fewer recognition mistakes.

The setting is saved in the checkpoint's config (`answer_views`, absent: 1) so the server and the
evaluator answer the same way; `defect-glm eval --views` and the server's `DEFECT_GLM_VIEWS`
override it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from data_tools.wafer_map import WaferMap
from finetune.answer_parser import parse_answer

VIEWS_ATTRIBUTE = "answer_views"
#: The transforms (k × 90° counter-clockwise, then mirrored left-right) of each view count, identity first.
VIEW_TRANSFORMS: dict[int, tuple[tuple[int, bool], ...]] = {
    1: ((0, False),),
    4: ((0, False), (1, False), (2, False), (3, False)),
    8: tuple((k, flip) for flip in (False, True) for k in range(4)),
}


def check_views(views: int) -> int:
    """`views` when it is a supported count; otherwise a ValueError naming the choices."""
    if views not in VIEW_TRANSFORMS:
        choices = ", ".join(str(n) for n in VIEW_TRANSFORMS)
        raise ValueError(f"answer views must be one of {choices}; got {views!r}")
    return views


def answer_views(model: object) -> int:
    """How many views of the map `model` answers from (its config's `answer_views`; absent: 1)."""
    return int(getattr(getattr(model, "config", None), VIEWS_ATTRIBUTE, 1) or 1)


def set_answer_views(model: object, views: int) -> None:
    """Make `model` answer from `views` views of the map (saved in its config when it is saved)."""
    setattr(model.config, VIEWS_ATTRIBUTE, check_views(views))  # type: ignore[attr-defined]


def view_wafers(wafer: WaferMap | None, views: int) -> list[WaferMap | None]:
    """The maps of each view of `wafer`, the map itself first (one entry, `wafer`, when there is no map)."""
    if wafer is None:
        return [None]
    return [wafer.transformed(k, flip) if (k, flip) != (0, False) else wafer for k, flip in VIEW_TRANSFORMS[views]]


def consensus(answers: Sequence[str]) -> int:
    """Index of the first of `answers` (one per view, the map as sent first, slots filled) that names the
    pattern set most of them name (answers that name none count as one more choice)."""
    if not answers:
        raise ValueError("no answers to choose from")
    readings = [None if (keys := parse_answer(answer)) is None else frozenset(keys) for answer in answers]
    votes = Counter(readings)
    return next(i for i, reading in enumerate(readings) if votes[reading] == max(votes.values()))
