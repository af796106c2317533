"""Training data: the corpus on disk, sampled examples (with free dihedral augmentation), model encoding.

A corpus directory (docs/ARCHITECTURE.md, "Corpus") holds `maps.npz` and `{train,val,test}.jsonl`.
`ExampleSampler` draws training examples from it: either a corpus conversation as written, or a
recognition question about a training map under a random one of the 8 dihedral transforms (the
labels are invariant; the facts line is measured again from the transformed grid, so nothing
is stale). `encode_example` turns one example into token ids with labels on the answer tokens
only, using nothing but the processor's chat template, so it works for any
image-text-to-text checkpoint whose processor has one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from data_tools.answers import count_answer, location_answer, other_language, recognition_answer
from data_tools.dialogue import MapContext, yesno_turn
from data_tools.locate import locate
from data_tools.phrasing import (
    COUNT_QUESTIONS,
    LOCATION_QUESTIONS,
    RECOGNITION_QUESTIONS,
    ZONE_NAMES,
    as_typed_in_chat,
)
from data_tools.taxonomy import CLASSES, PATTERN_KEYS, from_multi_hot
from data_tools.wafer_map import WaferMap
from finetune.location_slots import has_location_slots
from finetune.number_slots import has_slots, slot_answer
from finetune.prompting import build_messages, images_of
from model_server.backends.base import Turn

IGNORE_INDEX = -100
SPLITS = ("train", "val", "test")
#: (quarter turns, mirror) for the 8 symmetries of the square grid.
DIHEDRAL: tuple[tuple[int, bool], ...] = tuple((k, flip) for k in range(4) for flip in (False, True))
RECOGNITION_VARIANTS = 3
COUNT_VARIANTS = 2
#: Topics of the generated number questions, weighted towards the ones asked most (failing dies,
#: yield, good dies); "clusters" answers also place the largest cluster (a location slot).
COUNT_TOPIC_WEIGHTS: dict[str, int] = {
    "failing": 3, "yield": 3, "summary": 2, "good": 3, "dies": 2, "zone": 2, "clusters": 2,
}
#: Share of the generated number questions asked as a follow-up (after a first question and its
#: answer about the same map), as they mostly come in a Slack thread.
COUNT_FOLLOW_UP = 0.5
#: Share of those follow-ups whose thread opened in the other language (bilingual threads).
COUNT_SWITCH = 0.25
#: Side range (dies) of the synthetic maps of varied size that number questions may be asked about.
VARIED_SIDES = (20, 100)


class CorpusError(ValueError):
    """A corpus directory that is missing files or holds records of the wrong shape."""


@dataclass(frozen=True)
class Example:
    """One training conversation about one map: alternating user/assistant texts, user first."""

    wafer: WaferMap | None
    texts: tuple[str, ...]
    patterns: tuple[str, ...] = ()


def _grey_png_grid(path: Path) -> np.ndarray:
    """Die codes of a corpus image (grey palette, 1 pixel per die: white off, grey good, black failing)."""
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L"), dtype=np.int16)
    grid = np.ones(grey.shape, dtype=np.uint8)
    grid[grey >= 192] = 0
    grid[grey < 64] = 2
    return grid


class Corpus:
    """A built corpus: maps by content hash and conversation records by split."""

    def __init__(self, root: str | Path, splits: Sequence[str] = SPLITS) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise CorpusError(f"corpus directory {self.root} does not exist; build one with `defect-glm data build`")
        maps = self.root / "maps.npz"
        if not maps.is_file():
            raise CorpusError(f"{self.root} is not a corpus: expected maps.npz (from `defect-glm data build`)")
        with np.load(maps, allow_pickle=False) as archive:
            missing = {"grids", "hashes", "labels"} - set(archive.files)
            if missing:
                raise CorpusError(f"{maps} lacks the arrays {sorted(missing)}; found {sorted(archive.files)}")
            self.grids = archive["grids"].astype(np.uint8)
            self.hashes = [str(h) for h in archive["hashes"]]
            self.labels = archive["labels"].astype(np.int32)
            map_splits = archive["splits"] if "splits" in archive.files else None
        self.index = {h: i for i, h in enumerate(self.hashes)}
        self.map_splits = [str(s) for s in map_splits] if map_splits is not None else None
        self.records: dict[str, list[dict]] = {}
        for split in splits:
            path = self.root / f"{split}.jsonl"
            if not path.is_file():
                raise CorpusError(f"{self.root} is not a complete corpus: {path.name} is missing")
            self.records[split] = self._read_records(path)
        self._png_cache: dict[str, np.ndarray] = {}

    @staticmethod
    def _read_records(path: Path) -> list[dict]:
        records = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise CorpusError(f"{path}:{number} is not valid JSON: {exc}") from exc
                messages = record.get("messages")
                if (
                    not isinstance(messages, list)
                    or len(messages) < 2
                    or len(messages) % 2
                    or any(m.get("role") != ("user", "assistant")[i % 2] for i, m in enumerate(messages))
                ):
                    raise CorpusError(
                        f"{path}:{number}: expected 'messages' alternating user/assistant turns, user first; "
                        f"found {[m.get('role') for m in messages] if isinstance(messages, list) else messages!r}"
                    )
                records.append(record)
        return records

    def map_indices(self, split: str) -> np.ndarray:
        """Indices (into `grids`) of the maps of one split."""
        if self.map_splits is None:
            hashes = {r["map_hash"] for r in self.records.get(split, [])}
            return np.array([i for i, h in enumerate(self.hashes) if h in hashes], dtype=np.int64)
        return np.array([i for i, s in enumerate(self.map_splits) if s == split], dtype=np.int64)

    def grid_of(self, record: dict) -> np.ndarray:
        i = self.index.get(record.get("map_hash", ""))
        if i is not None:
            return self.grids[i]
        image = record.get("image")
        if not image:
            raise CorpusError(f"record {record.get('id')} has a map_hash not in maps.npz and no image")
        if image not in self._png_cache:
            self._png_cache[image] = _grey_png_grid(self.root / image)
        return self._png_cache[image]

    def example(self, record: dict) -> Example:
        texts = tuple(str(m["content"]) for m in record["messages"])
        return Example(WaferMap(self.grid_of(record)), texts, tuple(record.get("patterns", ())))

    def texts(self, split: str = "train") -> list[str]:
        """Every message text of a split (for training a tokenizer)."""
        return [str(m["content"]) for r in self.records.get(split, []) for m in r["messages"]]


def augmented_wafer(grid: np.ndarray, rng: random.Random, augment: bool = True) -> WaferMap:
    """`grid` as a WaferMap, under a random one of the 8 dihedral transforms when `augment`."""
    wafer = WaferMap(grid)
    return wafer.transformed(*rng.choice(DIHEDRAL)) if augment else wafer


def _recognition_turn(patterns: tuple[str, ...], language: str, rng: random.Random) -> tuple[str, str]:
    """A recognition question and its answer naming `patterns`."""
    question = rng.choice(RECOGNITION_QUESTIONS[language])
    return question, recognition_answer(patterns, language, rng.randrange(RECOGNITION_VARIANTS))


def recognition_example(grid: np.ndarray, labels: np.ndarray, rng: random.Random, augment: bool = True) -> Example:
    """A recognition question about `grid` (randomly transformed), answered with its true patterns."""
    wafer = augmented_wafer(grid, rng, augment)
    language = rng.choice(("en", "zh"))
    patterns = from_multi_hot(labels)
    return Example(wafer, _recognition_turn(patterns, language, rng), patterns)


def _opening_language(language: str, rng: random.Random) -> str:
    """The language a thread opened in before a follow-up in `language`: the other one a share `COUNT_SWITCH`
    of the time (bilingual engineers switch; the answer follows the question's language)."""
    return other_language(language) if rng.random() < COUNT_SWITCH else language


def _count_turn(facts: dict, language: str, rng: random.Random) -> tuple[str, str]:
    """One number question of a random topic and its answer from `facts`."""
    topic = rng.choices(list(COUNT_TOPIC_WEIGHTS), weights=list(COUNT_TOPIC_WEIGHTS.values()))[0]
    zone = rng.choice(("center", "middle", "edge"))
    question = rng.choice(COUNT_QUESTIONS[topic][language]).format(zone=rng.choice(ZONE_NAMES[language][zone]))
    return question, count_answer(facts, topic, language, zone=zone, variant=rng.randrange(COUNT_VARIANTS))


def count_example(grid: np.ndarray, rng: random.Random, augment: bool = True, labels: np.ndarray | None = None,
                  follow_up: float = COUNT_FOLLOW_UP) -> Example:
    """A number question (failing dies, yield, a zone, ...) about `grid` (randomly transformed),
    answered with the numbers measured from it (as number slots, for a tokenizer that has them).

    With probability `follow_up` it comes second in the conversation, after a recognition question
    (when the map's `labels` are known) or another number question, each with its true answer: a
    follow-up such as "And how many dies are good?" must be answered for what it asks, not by
    echoing the kind of answer the thread already holds. A share `COUNT_SWITCH` of those threads
    opened in the other language: the answer follows the language of the question.
    """
    wafer = augmented_wafer(grid, rng, augment)
    language = rng.choice(("en", "zh"))
    facts = wafer.facts()
    texts = _count_turn(facts, language, rng)
    if rng.random() < follow_up:
        opened_in = _opening_language(language, rng)
        if labels is not None and rng.random() < 0.5:
            opener = _recognition_turn(from_multi_hot(labels), opened_in, rng)
        else:
            opener = _count_turn(facts, opened_in, rng)
        texts = (*opener, *texts)
    return Example(wafer, texts)


def location_example(grid: np.ndarray, labels: np.ndarray, rng: random.Random, augment: bool = True,
                     follow_up: float = COUNT_FOLLOW_UP) -> Example:
    """"Where are the defects?" about `grid` (randomly transformed), answered with the places measured on it
    (as location slots, for a tokenizer that has them).

    The transforms put each pattern in every sector, so the model learns to say *which* patterns it
    places, not the sectors most common in the data. With probability `follow_up` the question
    comes after a recognition question, whose opening language switches as in `count_example`.
    """
    wafer = augmented_wafer(grid, rng, augment)
    language = rng.choice(("en", "zh"))
    patterns = from_multi_hot(labels)
    texts: tuple[str, ...] = (rng.choice(LOCATION_QUESTIONS[language]),
                              location_answer(locate(wafer, patterns), wafer.facts(), language))
    if rng.random() < follow_up:
        opened_in = _opening_language(language, rng)
        texts = (*_recognition_turn(patterns, opened_in, rng), *texts)
    return Example(wafer, texts, patterns)


def yesno_example(grid: np.ndarray, labels: np.ndarray, rng: random.Random, augment: bool = True) -> Example:
    """"Is there <pattern>?" about `grid` (randomly transformed), half the time about a pattern it lacks,
    answered from its labels: the answer must follow the map, not the question."""
    wafer = augmented_wafer(grid, rng, augment)
    patterns = from_multi_hot(labels)
    (question, answer, _), _ = yesno_turn(MapContext.of(wafer, patterns), rng, rng.choice(("en", "zh")))
    return Example(wafer, (question, answer), patterns)


_RECOGNITION_TEXTS = frozenset(q for bank in RECOGNITION_QUESTIONS.values() for q in bank)


def typed_in_chat(example: Example, rng: random.Random, share: float) -> Example:
    """`example` with each user turn, with probability `share`, as typed in chat: context before or after
    it, a greeting, or loose words for a recognition question (`data_tools.phrasing.as_typed_in_chat`).
    The answers stay as they are."""
    texts = list(example.texts)
    for i in range(0, len(texts), 2):
        if rng.random() < share:
            texts[i] = as_typed_in_chat(texts[i], rng, recognition=texts[i] in _RECOGNITION_TEXTS)
    return replace(example, texts=tuple(texts))


def varied_size_grid(rng: random.Random) -> np.ndarray:
    """A synthetic map of a random class and a random size (square or not): its die and failure counts
    cannot be guessed from the image as they can on same-sized maps, so questions about it must take
    them from the measurements."""
    from data_tools.synthetic import generate_grid

    rows = rng.randint(*VARIED_SIDES)
    cols = rows if rng.random() < 0.7 else rng.randint(*VARIED_SIDES)
    return generate_grid(rng.choice(CLASSES), np.random.default_rng(rng.randrange(2**32)), (rows, cols))


class ExampleSampler:
    """Draws training examples: shares of augmented recognition, number, location and yes/no questions, the
    rest corpus conversations (all of them when the split has no maps). A share `chat_style` of all user
    turns is dressed as typed in chat (`typed_in_chat`)."""

    def __init__(self, corpus: Corpus, split: str = "train", recognition_fraction: float = 0.5, augment: bool = True,
                 count_fraction: float = 0.0, count_varied: float = 0.0, location_fraction: float = 0.0,
                 yesno_fraction: float = 0.0, chat_style: float = 0.0):
        for name, value in (("recognition_fraction", recognition_fraction), ("count_fraction", count_fraction),
                            ("count_varied", count_varied), ("location_fraction", location_fraction),
                            ("yesno_fraction", yesno_fraction), ("chat_style", chat_style)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if recognition_fraction + count_fraction + location_fraction + yesno_fraction > 1.0:
            raise ValueError(f"the recognition, count, location and yes/no fractions must add up to at most 1, got "
                             f"{recognition_fraction} + {count_fraction} + {location_fraction} + {yesno_fraction}")
        self.corpus = corpus
        self.records = corpus.records.get(split, [])
        self.maps = corpus.map_indices(split)
        if not self.records and not len(self.maps):
            raise CorpusError(f"the {split} split of {corpus.root} holds no conversations and no maps")
        shares = [recognition_fraction, count_fraction, location_fraction, yesno_fraction]
        if not len(self.maps):
            shares = [0.0] * len(shares)
        if not self.records:  # maps only: the generated questions share everything
            total = sum(shares)
            shares = [share / total for share in shares] if total else [1.0, 0.0, 0.0, 0.0]
        self.recognition_fraction, self.count_fraction, self.location_fraction, self.yesno_fraction = shares
        self.count_varied = count_varied
        self.chat_style = chat_style
        self.augment = augment

    def sample(self, rng: random.Random) -> Example:
        example = self._sample(rng)
        return typed_in_chat(example, rng, self.chat_style) if self.chat_style else example

    def _sample(self, rng: random.Random) -> Example:
        draw = rng.random()
        counted = self.recognition_fraction + self.count_fraction
        if draw < counted + self.location_fraction + self.yesno_fraction:
            i = int(self.maps[rng.randrange(len(self.maps))])
            grid, labels = self.corpus.grids[i], self.corpus.labels[i]
            if draw < self.recognition_fraction:
                return recognition_example(grid, labels, rng, self.augment)
            if draw >= counted + self.location_fraction:
                return yesno_example(grid, labels, rng, self.augment)
            if draw >= counted:
                return location_example(grid, labels, rng, self.augment)
            if self.count_varied and rng.random() < self.count_varied:
                return count_example(varied_size_grid(rng), rng, self.augment)
            return count_example(grid, rng, self.augment, labels=labels)
        return self.corpus.example(self.records[rng.randrange(len(self.records))])

    def batch(self, seed: Sequence[int], size: int) -> list[Example]:
        """A reproducible batch: the same seed (e.g. run seed, step, process) gives the same examples."""
        rng = random.Random("-".join(str(s) for s in seed))
        return [self.sample(rng) for _ in range(size)]


# ---------------------------------------------------------------- encoding


def training_messages(example: Example, number_slots: bool = False, location_slots: bool = False,
                      facts: bool = True) -> list[dict]:
    """Chat messages of a whole example (the prompt exactly as at inference, plus the final answer).

    With `number_slots` (a tokenizer that has the slot tokens), every answer names the measured
    numbers of the example's map as slot tokens (`finetune.number_slots`), as history answers are
    given at inference; with `location_slots` too, the places of its located patterns
    (`finetune.location_slots`). `facts=False` leaves the facts line out of the prompt (a model
    whose config says so, `finetune.prompting.uses_measured_facts`).
    """
    texts = example.texts
    if len(texts) < 2 or len(texts) % 2:
        raise ValueError(f"an example needs user/assistant pairs; got {len(texts)} texts")
    if number_slots and example.wafer is not None:
        wafer, patterns = example.wafer, example.patterns
        texts = tuple(slot_answer(t, wafer, patterns, location_slots) if i % 2 else t for i, t in enumerate(texts))
    history = [Turn("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(texts[:-2])]
    messages = build_messages(example.wafer, history, texts[-2], facts=facts)
    messages.append({"role": "assistant", "content": [{"type": "text", "text": texts[-1]}]})
    return messages


def _tokenizer(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def answer_segments(processor: Any, messages: list[dict]) -> list[tuple[str, bool]]:
    """The conversation's text cut into (piece, is_answer) segments by the processor's chat template.

    Every answer is a target when the template renders a conversation as growing prefixes (each
    turn appended to the last). Templates that re-serialise the history for every new question
    (VisualGLM's `[Round i]` prompts) do not; then the last answer alone is the target, after
    the prompt exactly as it is rendered at inference.
    """
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = processor.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        full = processor.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(prompt):
            raise ValueError(
                "the processor's chat template does not render an answer after its prompt; "
                "answer-only labels cannot be derived from it"
            )
        if not prompt.startswith(done):  # history re-serialised: train on the last answer only
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompt = processor.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
            full = processor.apply_chat_template(messages, tokenize=False)
            if not full.startswith(prompt):
                raise ValueError(
                    "the processor's chat template does not render an answer after its prompt; "
                    "answer-only labels cannot be derived from it"
                )
            return [(prompt, False), (full[len(prompt) :], True)]
        segments += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    return segments


def encode_example(processor: Any, example: Example, max_length: int, facts: bool = True) -> dict:
    """input_ids, labels (answer tokens only; the rest IGNORE_INDEX) and pixel_values for one example
    (`facts`: whether the prompt carries the facts line, as the model being trained expects)."""
    tokenizer = _tokenizer(processor)
    messages = training_messages(example, number_slots=has_slots(tokenizer), location_slots=has_location_slots(tokenizer),
                                 facts=facts)
    images = images_of(messages)
    segments = answer_segments(processor, messages)
    ids: list[int] = []
    labels: list[int] = []
    pixel_values = None
    for n, (text, is_answer) in enumerate(segments):
        if n == 0 and images:
            encoded = processor(text=[text], images=images, return_tensors="pt")
            pixel_values = encoded["pixel_values"]
            piece = encoded["input_ids"][0].tolist()
        elif n == 0:
            piece = tokenizer(text)["input_ids"]
        else:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        if n == 0 and len(piece) >= max_length:
            raise ValueError(
                f"the first turn alone is {len(piece)} tokens, max_length={max_length} leaves no room for its "
                "answer; raise --max-length"
            )
        if n > 0 and len(ids) + len(piece) > max_length:
            if is_answer and not any(label != IGNORE_INDEX for label in labels):
                piece = piece[: max_length - len(ids)]  # keep at least a truncated first answer
            else:
                break  # a later turn that does not fit: stop (its prompt is dropped below)
        ids += piece
        labels += piece if is_answer else [IGNORE_INDEX] * len(piece)
    # never leave a trailing prompt without its answer
    while labels and labels[-1] == IGNORE_INDEX:
        ids.pop()
        labels.pop()
    if not ids:
        raise ValueError(f"the first turn alone is longer than max_length={max_length} tokens")
    return {"input_ids": ids, "labels": labels, "pixel_values": pixel_values}


def collate(encoded: Sequence[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-padded batch tensors, as in generation: every row's answer ends at the last position.

    `position_ids` count real tokens only (0 at each row's first token), so a padded row sees the
    same positions as it would alone. Answers at the end let training compute the vocabulary
    projection for the tail of the sequence only (`finetune.train.answer_loss`).
    """
    length = max(len(e["input_ids"]) for e in encoded)
    input_ids = torch.full((len(encoded), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(encoded), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(encoded), length), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        input_ids[row, length - n :] = torch.tensor(e["input_ids"])
        labels[row, length - n :] = torch.tensor(e["labels"])
        attention[row, length - n :] = 1
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention, "position_ids": positions}
    pixels = [e["pixel_values"] for e in encoded if e["pixel_values"] is not None]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
    return batch


def length_groups(encoded: Sequence[dict], groups: int) -> list[list[dict]]:
    """`encoded` sorted by length and cut into up to `groups` micro-batches (less padding per batch)."""
    ordered = sorted(encoded, key=lambda e: len(e["input_ids"]))
    size = max(1, -(-len(ordered) // max(1, groups)))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def class_labels(labels: np.ndarray) -> list[tuple[str, ...]]:
    return [tuple(k for k, v in zip(PATTERN_KEYS, row) if v) for row in labels]
