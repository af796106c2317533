"""Turning 👍/👎 votes from Slack into corpus records for the next fine-tune (`defect-glm data feedback-export`).

Reads the bot's SQLite file and writes a folder in the corpus layout of docs/ARCHITECTURE.md:

* `images/<map_hash>.png` — the map as the server read it, grey palette, 1 pixel per die;
* `maps.npz` — `grids` (same-size maps), `hashes`, `labels` (multi-hot of the answer's patterns);
* `train.jsonl` — answers voted helpful (more 👍 than 👎): one conversation each, the thread's
  earlier turns about the same map first, then the voted question and answer;
* `rejected.jsonl` — answers voted unhelpful (more 👎), same layout, for review or preference tuning;
* `stats.json` — what was exported and what was skipped (and why).

Answers about no map (text-only threads) and ties are skipped. The folder is written beside
its final place and renamed into it, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bot.store import BotStore, VotedAnswer
from data_tools.phrasing import language_of


class FeedbackExportError(ValueError):
    """The export cannot be made (missing database, output folder in the way)."""


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    helpful: int
    unhelpful: int
    skipped: dict[str, int]


def record_for(answer: VotedAnswer, earlier: list[VotedAnswer], split: str) -> dict | None:
    """The corpus record for one voted answer (None when the answer was not about a map)."""
    from data_tools.taxonomy import class_name
    from data_tools.wafer_map import WaferMap

    findings = answer.findings or {}
    grid = findings.get("grid")
    if not grid:
        return None
    wafer = WaferMap(np.asarray(grid, dtype=np.uint8))
    patterns = [str(p) for p in findings.get("patterns") or []]
    messages: list[dict[str, str]] = []
    for turn in earlier:
        if (turn.findings or {}).get("grid") == grid:
            messages += [{"role": "user", "content": turn.question}, {"role": "assistant", "content": turn.answer}]
    messages += [{"role": "user", "content": answer.question}, {"role": "assistant", "content": answer.answer}]
    try:
        cls = class_name(patterns)
    except ValueError:
        cls = str(findings.get("class") or "+".join(patterns) or "Normal")
    return {
        "id": f"fb-{answer.id[:16]}",
        "map_hash": wafer.content_hash,
        "image": f"images/{wafer.content_hash}.png",
        "split": split,
        "class": cls,
        "patterns": patterns,
        "source": f"slack-feedback:{answer.id}",
        "language": language_of(answer.question),
        "kinds": ["feedback"],
        "facts": wafer.facts(),
        "messages": messages,
        "feedback": {"up": answer.up, "down": answer.down, "model": answer.model},
    }


def export_feedback(db_path: str | Path, out_dir: str | Path, include_unhelpful: bool = True) -> ExportResult:
    """Write the export folder (see the module docstring); `out_dir` must not exist or be empty."""
    from data_tools.render import render, save_image
    from data_tools.taxonomy import to_multi_hot

    db_path, out_dir = Path(db_path), Path(out_dir)
    if not db_path.is_file():
        raise FeedbackExportError(f"no bot database at {db_path} (the bot's DEFECT_GLM_BOT_DB file)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FeedbackExportError(f"{out_dir} exists and is not an empty folder; choose a new output folder")
    store = BotStore(db_path)
    try:
        voted = store.voted_answers()
        threads = {a.thread_id: store.thread_answers(a.thread_id) for a in voted}
    finally:
        store.close()

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    skipped: Counter[str] = Counter()
    written = {"train": [], "rejected": []}
    grids: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    try:
        (staging / "images").mkdir()
        for answer in voted:
            if answer.up == answer.down:
                skipped["tie"] += 1
                continue
            split = "train" if answer.up > answer.down else "rejected"
            if split == "rejected" and not include_unhelpful:
                skipped["unhelpful_not_requested"] += 1
                continue
            earlier = [a for a in threads[answer.thread_id] if a.created_at < answer.created_at]
            record = record_for(answer, earlier, split)
            if record is None:
                skipped["no_map"] += 1
                continue
            written[split].append(record)
            grid = np.asarray(answer.findings["grid"], dtype=np.uint8)
            if record["map_hash"] not in grids:
                save_image(render(grid, palette="grey"), staging / record["image"])
                grids[record["map_hash"]] = grid
                labels[record["map_hash"]] = to_multi_hot(record["patterns"])
        for split, records in written.items():
            with open(staging / f"{split}.jsonl", "w", encoding="utf-8") as fh:
                for record in records:
                    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        _write_maps(staging / "maps.npz", grids, labels)
        stats = {
            "source": "slack feedback",
            "answers_voted": len(voted),
            "helpful": len(written["train"]),
            "unhelpful": len(written["rejected"]),
            "maps": len(grids),
            "skipped": dict(skipped),
            "classes": dict(Counter(r["class"] for r in written["train"])),
        }
        (staging / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out_dir, len(written["train"]), len(written["rejected"]), dict(skipped))


def _write_maps(path: Path, grids: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
    """maps.npz with the maps of the most common shape (others are available as their PNG images)."""
    if not grids:
        np.savez_compressed(path, grids=np.zeros((0, 0, 0), np.uint8), hashes=np.array([], dtype=str),
                            labels=np.zeros((0, 8), np.int32))
        return
    shape = Counter(g.shape for g in grids.values()).most_common(1)[0][0]
    keys = [h for h, g in grids.items() if g.shape == shape]
    np.savez_compressed(
        path,
        grids=np.stack([grids[h] for h in keys]),
        hashes=np.array(keys, dtype=str),
        labels=np.stack([labels[h] for h in keys]).astype(np.int32),
    )
