"""Answering from several views of the map: a vote among the answers about its rotations and mirror images.

A wafer's defect patterns do not change when the map is rotated by 90° or mirrored, and the
small model is trained on maps under all 8 such transforms. With `answer_views` set to 4 (the four
rotations) or 8 (rotations and their mirror images), generation (`finetune.generation`) asks the
model about each view at once (one batch row each: the view's image and facts line, the same
question and history) and answers with the one whose patterns (`finetune.answer_parser`) most
views agree on, the map as sent first among equals. The model writes numbers and places as
slots, filled afterwards from the map as sent, so an answer written about a rotated view reads
right for the original. More compute per answer, fewer recognition mistakes.

With `answer_views_below` set, the model is first asked about the map as sent alone, and about the
other views only when that answer is unsure: a token after its first (which picks among
equivalent wordings) had a probability under the setting (`SurenessRecorder`), and it names a
pattern set (a yield or a count has nothing to vote on). The first answer stands for the map as
sent in the vote. That keeps most of the gain at little more than one view's cost; the server
asks the other views beside its next batch (`finetune.generation.answer_round`).

Both settings are saved in the checkpoint's config (absent: one view; every view whenever more
are asked) so the server and the evaluator answer the same way; `defect-glm eval --views
--views-below` and the server's `DEFECT_GLM_VIEWS` and `DEFECT_GLM_VIEWS_BELOW` override them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from data_tools.wafer_map import WaferMap
from finetune.answer_parser import parse_answer

VIEWS_ATTRIBUTE = "answer_views"
BELOW_ATTRIBUTE = "answer_views_below"
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


def views_below(model: object) -> float | None:
    """The sureness under which `model` asks the other views (its config's `answer_views_below`);
    None (absent): it always asks them."""
    value = getattr(getattr(model, "config", None), BELOW_ATTRIBUTE, None)
    return None if value is None else float(value)


def check_below(below: float | None) -> float | None:
    """`below` when it is None or a probability in (0, 1]; otherwise a ValueError saying so."""
    if below is not None and not 0 < below <= 1:
        raise ValueError(f"the sureness under which other views are asked must be in (0, 1], got {below!r}")
    return below


def set_views_below(model: object, below: float | None) -> None:
    """Make `model` ask the other views only for answers less sure than `below` (None, 1: always)."""
    below = check_below(below)
    setattr(model.config, BELOW_ATTRIBUTE, None if below is None or below >= 1 else below)  # type: ignore[attr-defined]


def view_count(wafer: WaferMap | None, views: int, others_only: bool = False) -> int:
    """How many views a request about `wafer` is asked in: `views` (less the map as sent with
    `others_only`), or 1 when there is no map."""
    return 1 if wafer is None else views - others_only


def view_wafers(wafer: WaferMap | None, views: int, others_only: bool = False) -> list[WaferMap | None]:
    """The maps of each view of `wafer`, the map itself first unless `others_only` (one entry, `wafer`,
    when there is no map)."""
    if wafer is None:
        return [None]
    transforms = VIEW_TRANSFORMS[views][1 if others_only else 0 :]
    return [wafer.transformed(k, flip) if (k, flip) != (0, False) else wafer for k, flip in transforms]


def consensus(answers: Sequence[str]) -> int:
    """Index of the first of `answers` (one per view, the map as sent first, slots filled) that names the
    pattern set most of them name (answers that name none count as one more choice)."""
    if not answers:
        raise ValueError("no answers to choose from")
    readings = [None if (keys := parse_answer(answer)) is None else frozenset(keys) for answer in answers]
    votes = Counter(readings)
    return next(i for i, reading in enumerate(readings) if votes[reading] == max(votes.values()))


class SurenessRecorder:
    """Logits processor that changes nothing and records, at each step, each row's highest next-token probability."""

    def __init__(self) -> None:
        self.steps: list = []

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self.steps.append(scores.float().softmax(dim=-1).amax(dim=-1))
        return scores

    def least_sure(self, new_tokens: Any, pad_token_id: int | None) -> list[float]:
        """Per row of `new_tokens` (the generated tokens, padded), the lowest probability of a token it
        wrote after its first (the first picks among equivalent wordings; 1.0 for shorter answers)."""
        import torch

        if len(self.steps) < 2 or new_tokens.shape[1] < 2:
            return [1.0] * len(new_tokens)
        sureness = torch.stack(self.steps, dim=1)[:, 1 : new_tokens.shape[1]]
        written = (new_tokens[:, 1 : 1 + sureness.shape[1]] != pad_token_id).to(sureness.device)
        return sureness.masked_fill(~written, 1.0).amin(dim=1).tolist()
