"""The one small interface every model backend implements (hf, openai, visualglm).

The server hands a backend a batch of `GenerationRequest`s — each with the wafer map
already read into a die grid, the earlier turns of the thread and the new question —
and gets one answer string per request back, in order (`generate_round`: or an
`Unfinished` answer to finish in the next call). Backends build their own
prompt (their model decides what it needs to see) and render the map the way their
model was trained on. `generate` is synchronous and may be slow; the server calls it
from a worker thread and batches concurrent requests into one call.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from data_tools.wafer_map import WaferMap


@dataclass(frozen=True)
class Turn:
    """One earlier message of a conversation."""

    role: Literal["user", "assistant"]
    text: str


@dataclass(frozen=True)
class GenerationRequest:
    """What a backend needs to answer one question."""

    question: str
    wafer: WaferMap | None = None  # the map the thread is about (None: text-only thread)
    history: tuple[Turn, ...] = field(default_factory=tuple)  # oldest first, already trimmed
    max_new_tokens: int = 256

    @property
    def earlier_answers(self) -> tuple[str, ...]:
        """The thread's answers so far (in the history), oldest first."""
        return tuple(turn.text for turn in self.history if turn.role == "assistant")


@dataclass(frozen=True)
class BackendInfo:
    """Identity of the loaded model, shown by /v1/models, /readyz and the bot's /wafer status."""

    name: str  # model id, e.g. "defect-glm-small"
    version: str  # checkpoint version or content hash
    backend: str  # "hf", "openai", "visualglm"
    details: dict = field(default_factory=dict)


class Unfinished:
    """An answer that needs one more generate call (`Backend.generate_round`); what it holds is the backend's."""

    #: How many prompts finishing it adds to that call (the batcher counts them against its `max_batch_size`).
    rows: int = 1


class BackendError(RuntimeError):
    """The model failed to answer; the server replies 500 with a request id and keeps serving."""


class Backend(abc.ABC):
    """A loaded model that answers questions about wafer maps."""

    @property
    @abc.abstractmethod
    def info(self) -> BackendInfo: ...

    @abc.abstractmethod
    def generate(self, requests: list[GenerationRequest]) -> list[str]:
        """Answer every request (one batch); answers in the same order. Raises BackendError."""

    def generate_round(
        self, requests: list[GenerationRequest], unfinished: list[Unfinished]
    ) -> tuple[list[str | Unfinished], list[str]]:
        """One generate call that answers `requests` and finishes `unfinished` (left so by an earlier
        round): each request's answer, or an `Unfinished` to hand back in a later round, and each
        unfinished one's answer. The server's batcher hands them back with its next batch, so an
        answer that needs a second pass (the hf backend's other views of an unsure map) costs no call
        of its own. The default answers in one pass and leaves nothing unfinished. Raises BackendError."""
        if unfinished:
            raise BackendError(f"{type(self).__name__} leaves no answer unfinished, got {len(unfinished)} back")
        return list(self.generate(requests)), []

    def prompt_rows(self, request: GenerationRequest) -> int:
        """How many prompts answering `request` puts in a generate call (the batcher counts them against
        its `max_batch_size`). A backend that answers from several views of the map says so in its info
        (`views`, and `views_below` when it asks the other views only when unsure: those come back as an
        `Unfinished` that counts its own `rows`): one prompt per view of a map it always asks them of, else 1."""
        views = int(self.info.details.get("views") or 1)
        return views if request.wafer is not None and self.info.details.get("views_below") is None else 1

    def generate_stream(self, request: GenerationRequest) -> Iterator[str]:
        """Answer one request as pieces of text as they are produced (for SSE streaming).

        The default yields the whole answer at once; backends that can stream override it.
        Closing the iterator early should stop generation. Raises BackendError.
        """
        yield from self.generate([request])

    def max_history_turns(self) -> int | None:
        """How many earlier turns fit the model's context (None: the server's default)."""
        return None

    def close(self) -> None:
        """Free the model's memory (called after a reload swapped in a new backend)."""
