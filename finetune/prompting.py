"""The one place the small model's prompt is built: chat messages with the map image and measured facts.

Training, evaluation and the server's hf backend all call `build_messages`, so the model sees
exactly the same thing everywhere. The first user turn carries the wafer image (as rendered by
`model_image`) and, for checkpoints trained with it (`uses_measured_facts`: the `measured_facts`
setting in their config, on unless a run said `--measured-facts no`), one line of facts measured
from the die grid (dies, failing, yield, where failures sit). Pattern recognition comes from the
image; numbers and places in answers of slot-trained checkpoints are filled from the grid either
way. Messages use the content-list form that `processor.apply_chat_template` expects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from PIL import Image

from data_tools.phrasing import opening_question, question_as_written
from data_tools.wafer_map import WaferMap
from model_server.backends.base import Turn

FACTS_PREFIX = "[measured]"
#: The config attribute (saved in config.json) saying whether a checkpoint's prompts carry the facts line.
MEASURED_FACTS_ATTRIBUTE = "measured_facts"
Prompt = TypeVar("Prompt")
#: Palette of the image the model sees (Defect-GLM's: white off wafer, grey good, black failing).
MODEL_PALETTE = "grey"


def model_image(wafer: WaferMap) -> Image.Image:
    """The canonical RGB rendering the model sees: 1 pixel per die, grey palette.

    A non-square grid is centred on a square canvas (aspect kept) so the processor's resize to a
    square never distorts it; grids of any size work (the processor resizes to its image size).
    """
    from data_tools.render import render  # lazy: rendering is only needed when a map is present

    rows, cols = wafer.shape
    if rows == cols:
        return render(wafer, palette=MODEL_PALETTE, scale=1)
    return render(wafer, palette=MODEL_PALETTE, size=max(rows, cols))


def facts_line(wafer: WaferMap) -> str:
    """One short line of numbers measured from the grid, in a fixed language-neutral format."""
    facts = wafer.facts()
    zones = facts["zones"]
    zone_text = ", ".join(f"{name} {z['failing']}/{z['dies']}" for name, z in zones.items())
    parts = [
        f"dies {facts['dies']}, failing {facts['failing']}, good {facts['good']}, yield {facts['yield']:.2f}%",
        f"zones failing/dies: {zone_text}",
    ]
    if facts["failing"]:
        sectors = " ".join(facts["dominant_sectors"]) or "-"
        parts.append(f"most failures: {facts['dominant_zone']}, {sectors}")
        largest = facts["clusters"]["largest"]
        parts.append(
            f"clusters {facts['clusters']['count']}, largest {largest['size']} at {largest['zone']} {largest['sector']}"
        )
    return f"{FACTS_PREFIX} " + "; ".join(parts)


def uses_measured_facts(model: object) -> bool:
    """Whether `model` was trained with the facts line in its prompts (its config's `measured_facts`).

    Checkpoints from before the setting existed, and models trained elsewhere, say nothing: they
    get the facts line, as they always did.
    """
    return bool(getattr(getattr(model, "config", None), MEASURED_FACTS_ATTRIBUTE, True))


def set_measured_facts(model: object, facts: bool) -> None:
    """Record in `model`'s config (saved with it) whether its prompts carry the facts line."""
    setattr(model.config, MEASURED_FACTS_ATTRIBUTE, bool(facts))  # type: ignore[attr-defined]


def _text(text: str) -> dict:
    return {"type": "text", "text": text}


def build_messages(wafer: WaferMap | None, history: Sequence[Turn], question: str, facts: bool = True) -> list[dict]:
    """Chat messages for `processor.apply_chat_template`: earlier turns, then the new question.

    The first user turn gets the image part (``{"type": "image", "image": PIL.Image}``) and, with
    `facts` (models trained here), the facts line when a wafer is given. Every message's content is
    a list of parts. User turns are put in the form the corpus writes questions
    (`data_tools.phrasing.question_as_written`); the one that comes with the map is asked as what the map
    shows when it asks about nothing more (`data_tools.phrasing.opening_question`).
    """
    if not isinstance(question, str) or not question.strip():
        raise ValueError("a question is needed: got an empty question")
    turns = [*history, Turn("user", question)]
    messages: list[dict] = []
    image_placed = wafer is None
    for turn in turns:
        if turn.role not in ("user", "assistant"):
            raise ValueError(f"a turn's role must be 'user' or 'assistant', got {turn.role!r}")
        if turn.role == "user" and not image_placed:
            assert wafer is not None
            said = opening_question(turn.text)
            text = f"{facts_line(wafer)}\n{said}" if facts else said
            content = [{"type": "image", "image": model_image(wafer)}, _text(text)]
            image_placed = True
        else:
            content = [_text(question_as_written(turn.text) if turn.role == "user" else turn.text)]
        messages.append({"role": turn.role, "content": content})
    return messages


def images_of(messages: Sequence[dict]) -> list[Image.Image]:
    """The images carried by `messages`, in order (what the processor gets with the rendered text)."""
    return [
        part["image"]
        for message in messages
        if isinstance(message["content"], list)
        for part in message["content"]
        if part.get("type") == "image"
    ]



class PromptTooLong(ValueError):
    """Even without earlier turns, the question and its answer do not fit the model's context."""


def fit_history(
    history: Sequence[Turn],
    max_new_tokens: int,
    limit: int,
    encode: Callable[[tuple[Turn, ...]], tuple[int, Prompt]],
) -> Prompt:
    """The prompt `encode(turns)` returns (as (its length in tokens, the prompt)) for the longest tail of
    `history` that leaves room for `max_new_tokens` within `limit`: the oldest turns are dropped in pairs.

    Raises PromptTooLong when even the question alone does not fit.
    """
    turns = tuple(history)
    while True:
        length, prompt = encode(turns)
        if length + max_new_tokens <= limit:
            return prompt
        if not turns:
            raise PromptTooLong(
                f"the question needs {length} prompt tokens + {max_new_tokens} new tokens, more than the model's "
                f"context of {limit}; ask a shorter question or lower max_new_tokens"
            )
        turns = turns[2:]
