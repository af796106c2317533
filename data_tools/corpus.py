"""The question/answer corpus builder: wafer maps → images, maps.npz, {train,val,test}.jsonl, stats.json.

`build_corpus` takes MixedWM38 maps and/or synthetic maps, merges exact duplicates
(by `WaferMap.content_hash`), assigns each distinct map to a split from its hash alone
(so duplicates never straddle splits and the split of a map never depends on the seed or
on what else is in the corpus), renders each map once, and samples conversations in
English and Chinese with `data_tools.dialogue`. The output layout is the "Corpus"
contract of docs/ARCHITECTURE.md. Everything is written into a temporary folder next to
the output and renamed into place at the end, so a failed build leaves nothing
half-written.

The pure pieces other code reuses are re-exported here: `recognition_answer`,
`sample_conversation` and `RECOGNITION_QUESTIONS`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from data_tools import taxonomy
from data_tools.answers import recognition_answer
from data_tools.dialogue import KINDS, SWITCH_SHARE, MapContext, sample_conversation, sample_dialogue
from data_tools.phrasing import RECOGNITION_QUESTIONS
from data_tools.render import render
from data_tools.wafer_map import WaferMap

if TYPE_CHECKING:
    from data_tools.dialogue import Conversation
    from data_tools.loaders import WaferDataset

__all__ = [
    "RECOGNITION_QUESTIONS",
    "CorpusConfig",
    "CorpusError",
    "build_corpus",
    "recognition_answer",
    "sample_conversation",
    "split_of",
]

SPLITS = ("train", "val", "test")
#: Upper bound of conversations per map (keeps a typo such as -k 3000 from filling the disk).
MAX_CONVERSATIONS_PER_MAP = 50


class CorpusError(ValueError):
    """Bad input to the corpus builder; the message says what was expected and what was found."""


@dataclass(frozen=True)
class CorpusConfig:
    """Settings of one build (recorded in stats.json)."""

    conversations_per_map: int = 3
    val_fraction: float = 0.05
    test_fraction: float = 0.10
    zh_fraction: float = 0.5  # share of conversations in Chinese
    switch_share: float = SWITCH_SHARE  # share that go on in the other language
    seed: int = 0  # picks phrasings, scenarios, languages, --limit samples and synthetic maps
    kinds: tuple[str, ...] | None = None  # restrict question types (None: all of KINDS)

    def validate(self) -> None:
        k = self.conversations_per_map
        if not isinstance(k, int) or not 1 <= k <= MAX_CONVERSATIONS_PER_MAP:
            raise CorpusError(f"conversations per map must be an integer from 1 to {MAX_CONVERSATIONS_PER_MAP}, got {k!r}")
        for label, value in (("val", self.val_fraction), ("test", self.test_fraction), ("zh", self.zh_fraction),
                             ("switch", self.switch_share)):
            if not 0.0 <= value <= 1.0:
                raise CorpusError(f"the {label} fraction must be between 0 and 1, got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise CorpusError(
                f"val + test fractions must leave room for training: {self.val_fraction} + {self.test_fraction} ≥ 1"
            )
        if self.kinds is not None:
            unknown = set(self.kinds) - set(KINDS)
            if unknown or not self.kinds:
                raise CorpusError(f"kinds must be some of {', '.join(KINDS)}; got {', '.join(self.kinds) or 'none'}")


@dataclass(frozen=True)
class MapEntry:
    """One distinct map of the corpus."""

    map_hash: str
    grid: np.ndarray
    labels: np.ndarray  # (8,) multi-hot
    source: str  # where it first came from, e.g. "mixedwm38:1234" or "synthetic:17"


def split_of(map_hash: str, val_fraction: float, test_fraction: float) -> str:
    """The split of a map, from its content hash only (deterministic, seed-independent)."""
    u = int(hashlib.sha256(f"split:{map_hash}".encode()).hexdigest()[:15], 16) / float(1 << 60)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def _sources(
    mixedwm38: str | os.PathLike | None, synthetic_per_class: int, seed: int, limit: int | None,
    synthetic_params: Mapping | None = None,
) -> list[tuple[str, WaferDataset]]:
    """(name, WaferDataset) pairs to build from."""
    if mixedwm38 is None and synthetic_per_class <= 0:
        raise CorpusError("nothing to build from: give a MixedWM38 .npz file, synthetic maps per class, or both")
    if synthetic_per_class < 0:
        raise CorpusError(f"synthetic maps per class must be ≥ 0, got {synthetic_per_class}")
    if limit is not None and limit < 1:
        raise CorpusError(f"--limit must be a positive number of maps, got {limit}")
    out = []
    if mixedwm38 is not None:
        from data_tools.loaders import DataFormatError, load_mixedwm38

        try:
            data = load_mixedwm38(mixedwm38)
        except DataFormatError as exc:
            raise CorpusError(str(exc)) from exc
        if limit is not None and limit < len(data):
            pick = np.sort(np.random.default_rng(seed).choice(len(data), size=limit, replace=False))
            data = data.subset(pick)
        out.append(("mixedwm38", data))
    if synthetic_per_class > 0:
        from data_tools.synthetic import SyntheticError, generate_dataset

        try:
            out.append(("synthetic", generate_dataset(synthetic_per_class, seed=seed, params=synthetic_params)))
        except SyntheticError as exc:
            raise CorpusError(str(exc)) from exc
    return out


def collect_maps(sources: Iterable[tuple[str, WaferDataset]]) -> tuple[list[MapEntry], dict]:
    """Distinct labelled maps (first occurrence wins), with counts of what was merged or dropped."""
    by_hash: dict[str, MapEntry] = {}
    conflicts: set[str] = set()
    seen = Counter()
    duplicates = 0
    for name, data in sources:
        if data.labels is None:
            raise CorpusError(f"the {name} maps have no labels; a corpus needs labelled maps")
        for i in range(len(data)):
            wafer = data.wafer(i)
            labels = np.asarray(data.labels[i], dtype=np.int32)
            if taxonomy.violations(taxonomy.from_multi_hot(labels)):
                raise CorpusError(
                    f"{name} map {int(data.index[i])} has labels {labels.tolist()}, which is not one of the 38 "
                    "MixedWM38 classes"
                )
            seen[name] += 1
            h = wafer.content_hash
            if h in by_hash:
                duplicates += 1
                if not np.array_equal(by_hash[h].labels, labels):
                    conflicts.add(h)
                continue
            by_hash[h] = MapEntry(h, wafer.grid, labels, f"{name}:{int(data.index[i])}")
    entries = [e for h, e in by_hash.items() if h not in conflicts]
    info = {"maps_read": dict(seen), "duplicates_merged": duplicates, "label_conflicts_dropped": len(conflicts)}
    return entries, info


def _conversations(entry: MapEntry, config: CorpusConfig) -> Iterator[tuple[str, Conversation, MapContext]]:
    """`conversations_per_map` distinct conversations (language, Conversation) for one map."""
    rng = random.Random(f"{config.seed}:{entry.map_hash}")
    context = MapContext.of(WaferMap(entry.grid), taxonomy.from_multi_hot(entry.labels))
    seen: set[str] = set()
    made = 0
    for _ in range(4 * config.conversations_per_map):
        language = "zh" if rng.random() < config.zh_fraction else "en"
        conversation = sample_dialogue(context, rng, language, config.kinds, config.switch_share)
        key = json.dumps(conversation.messages, ensure_ascii=False)
        if key in seen:
            continue
        seen.add(key)
        yield language, conversation, context
        made += 1
        if made == config.conversations_per_map:
            return


def _prepare_out(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CorpusError(f"--out must be a folder; {out_dir} is a file")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise CorpusError(f"{out_dir} already exists and is not empty; pass --overwrite to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished build to `out_dir`, replacing (and then deleting) what was there."""
    old = None
    if out_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old / "corpus")
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if old is not None:  # put the previous corpus back
            os.replace(old / "corpus", out_dir)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_corpus(
    out_dir: str | os.PathLike,
    mixedwm38: str | os.PathLike | None = None,
    synthetic_per_class: int = 0,
    config: CorpusConfig | None = None,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    synthetic_params: Mapping | None = None,
) -> dict:
    """Build a corpus into `out_dir`; returns the statistics also written to stats.json.

    `synthetic_params` fix (or give ranges for) the synthetic maps' generator parameters, as
    `data_tools.synthetic.generate_dataset` takes them."""
    config = config or CorpusConfig()
    config.validate()
    out_dir = Path(out_dir)
    _prepare_out(out_dir, overwrite)
    started = time.monotonic()
    entries, info = collect_maps(_sources(mixedwm38, synthetic_per_class, config.seed, limit, synthetic_params))
    if not entries:
        raise CorpusError("no usable maps were found in the inputs")

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        (tmp / "images").mkdir()
        stats = _write(tmp, entries, config, progress)
        stats.update(info)
        stats["config"] = {**asdict(config), "synthetic_per_class": synthetic_per_class,
                           "synthetic_params": {k: list(v) if isinstance(v, tuple) else v
                                                for k, v in (synthetic_params or {}).items()},
                           "limit": limit,
                           "mixedwm38": None if mixedwm38 is None else str(mixedwm38)}
        stats["build_seconds"] = round(time.monotonic() - started, 1)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def _write(tmp: Path, entries: list[MapEntry], config: CorpusConfig, progress: bool) -> dict:
    """Images, jsonl files and maps.npz into `tmp`; returns the counts for stats.json."""
    splits = {e.map_hash: split_of(e.map_hash, config.val_fraction, config.test_fraction) for e in entries}
    handles = {s: (tmp / f"{s}.jsonl").open("w", encoding="utf-8") for s in SPLITS}
    maps_per_split: Counter = Counter()
    conversations: Counter = Counter()
    by_class: dict[str, Counter] = {}
    by_language: dict[str, Counter] = {s: Counter() for s in SPLITS}
    by_kind: Counter = Counter()
    by_scenario: Counter = Counter()
    turns: Counter = Counter()
    number = 0
    try:
        for entry in tqdm(entries, desc="building corpus", unit="map", disable=not progress):
            split = splits[entry.map_hash]
            keys = taxonomy.from_multi_hot(entry.labels)
            class_name = taxonomy.class_name(entry.labels)
            image = f"images/{entry.map_hash}.png"
            render(entry.grid, palette="grey", scale=1).save(tmp / image, format="PNG")
            maps_per_split[split] += 1
            by_class.setdefault(class_name, Counter())[split] += 1
            for language, conversation, context in _conversations(entry, config):
                record = {
                    "id": f"c{number:06d}",
                    "map_hash": entry.map_hash,
                    "image": image,
                    "split": split,
                    "class": class_name,
                    "patterns": list(keys),
                    "source": entry.source,
                    "language": language,
                    "kinds": list(conversation.kinds),
                    "scenario": conversation.scenario,
                    "facts": context.facts,
                    "messages": conversation.messages,
                }
                handles[split].write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
                number += 1
                conversations[split] += 1
                by_language[split][language] += 1
                by_kind.update(conversation.kinds)
                by_scenario[conversation.scenario] += 1
                turns[len(conversation.messages) // 2] += 1
    finally:
        for handle in handles.values():
            handle.close()
    _write_maps(tmp / "maps.npz", entries, splits)
    return {
        "maps": {"total": len(entries), **{s: maps_per_split[s] for s in SPLITS}},
        "conversations": {"total": number, **{s: conversations[s] for s in SPLITS}},
        "by_class": {name: {s: c[s] for s in SPLITS} for name, c in sorted(by_class.items())},
        "by_language": {s: dict(by_language[s]) for s in SPLITS},
        "by_kind": dict(by_kind.most_common()),
        "by_scenario": dict(by_scenario.most_common()),
        "turns_per_conversation": {str(k): v for k, v in sorted(turns.items())},
    }


def _write_maps(path: Path, entries: list[MapEntry], splits: dict[str, str]) -> None:
    """maps.npz with the maps of the most common size (others remain available as images)."""
    shape = Counter(e.grid.shape for e in entries).most_common(1)[0][0]
    chosen = [e for e in entries if e.grid.shape == shape]
    with path.open("wb") as handle:
        np.savez_compressed(
            handle,
            grids=np.stack([e.grid for e in chosen]).astype(np.uint8),
            hashes=np.array([e.map_hash for e in chosen]),
            labels=np.stack([e.labels for e in chosen]).astype(np.int32),
            splits=np.array([splits[e.map_hash] for e in chosen]),
        )
