"""Evaluation through generation: ask the model what each map shows, parse its answer, score it.

`defect-glm eval` calls `evaluate_file`. Every map gets one natural-language recognition
question (from `data_tools.phrasing.RECOGNITION_QUESTIONS`, English and Chinese alternately);
the generated answer is parsed back to a pattern set by `finetune.answer_parser` and compared with
the labels. Scores: exact match (all 8 patterns right), per-pattern precision/recall/F1, per
class, per language, the Defect-GLM protocol (36 classes: Near-full and Random excluded),
ms per map, a number check (failing dies and yield asked on a sample, compared with the map
within ±1 die / ±0.5 %) and a location check (on maps with a pattern that sits in a sector —
Edge-Loc, Loc, Scratch — the sectors named in the answer to "where are the defects?" against those
measured from the map for its true patterns, `data_tools.locate`). `--report DIR` adds a
confusion-matrix PNG, a gallery of the maps answered wrong and a Markdown report.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from data_tools.answers import cluster_place, location_answer
from data_tools.loaders import DataFormatError, WaferDataset, load_mixedwm38
from data_tools.locate import locate
from data_tools.phrasing import (
    COUNT_QUESTIONS,
    LOCATION_QUESTIONS,
    PATTERN_NOUNS,
    RECOGNITION_QUESTIONS,
    YESNO_QUESTIONS,
)
from data_tools.taxonomy import CLASS_NAMES, DEFECT_GLM_36, PATTERN_KEYS, from_multi_hot, is_valid_combination
from data_tools.wafer_map import SECTORS, WaferMap
from finetune.answer_parser import parse_answer
from model_server.backends.base import GenerationRequest

LANGUAGES = ("en", "zh")
INVALID = "unparsed/invalid"
#: Patterns whose location answer names sectors (the location check asks about maps with one).
SECTOR_PATTERNS = ("Edge_Loc", "Loc", "Scratch")
_SECTOR = "(?:" + "|".join(SECTORS) + ")"
_SECTOR_CODES = re.compile(rf"[(（]({_SECTOR}(?:[,、]\s*{_SECTOR})*)[)）]")
#: Tolerances of the number check.
DIE_TOLERANCE = 1
YIELD_TOLERANCE = 0.5


class EvaluationError(ValueError):
    """Bad evaluation input (file, split, limit); the message says what was expected."""


def class_label(keys: tuple[str, ...] | None) -> str:
    if keys is None or not is_valid_combination(keys):
        return INVALID
    return "+".join(keys) if keys else "Normal"


def score(truth: list[tuple[str, ...]], predicted: list[tuple[str, ...] | None]) -> dict:
    """Exact match, per-pattern precision/recall/F1, per-class accuracy and the Defect-GLM protocol."""
    n = len(truth)
    exact = [p is not None and set(p) == set(t) for t, p in zip(truth, predicted)]
    per_pattern = {}
    for key in PATTERN_KEYS:
        tp = sum(1 for t, p in zip(truth, predicted) if key in t and p is not None and key in p)
        fp = sum(1 for t, p in zip(truth, predicted) if key not in t and p is not None and key in p)
        fn = sum(1 for t, p in zip(truth, predicted) if key in t and (p is None or key not in p))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_pattern[key] = {
            "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4), "support": tp + fn
        }
    classes = [class_label(t) for t in truth]
    per_class: dict[str, dict] = {}
    for name in sorted(set(classes), key=CLASS_NAMES.index):
        rows = [i for i, c in enumerate(classes) if c == name]
        per_class[name] = {"n": len(rows), "exact_match": round(sum(exact[i] for i in rows) / len(rows), 4)}
    protocol = [i for i, c in enumerate(classes) if c in DEFECT_GLM_36]
    return {
        "exact_match": round(sum(exact) / n, 5) if n else 0.0,
        "n": n,
        "correct": int(sum(exact)),
        "unparsed": sum(1 for p in predicted if p is None),
        "per_pattern": per_pattern,
        "macro_f1": round(float(np.mean([v["f1"] for v in per_pattern.values() if v["support"]] or [0.0])), 4),
        "per_class": per_class,
        "defect_glm_protocol": {
            "classes": len(DEFECT_GLM_36),
            "excluded": ["Near_Full", "Random"],
            "n": len(protocol),
            "exact_match": round(sum(exact[i] for i in protocol) / len(protocol), 5) if protocol else 0.0,
        },
    }


def recognition_scores(
    model: Any, processor: Any, grids: np.ndarray, labels: np.ndarray, batch_size: int = 32, seed: int = 0,
    max_new_tokens: int = 48, keep_predictions: bool = False, rows: np.ndarray | None = None,
) -> dict:
    """Ask each map a recognition question, parse the answers and score them (plus timing and samples).

    `missed` lists every map answered wrong: `map` (its position in `grids`), `row` (`rows[map]`: the
    file's `index` entry for it; `map` without `rows`), `truth` and `parsed` (what its answer was read as).
    `keep_predictions` adds `predicted`: each map's parsed pattern keys (None: unparseable), in map order."""
    from finetune.generation import generate_answers

    rng = random.Random(f"questions-{seed}")
    requests, languages = [], []
    for i, grid in enumerate(grids):
        language = LANGUAGES[i % len(LANGUAGES)]
        languages.append(language)
        requests.append(GenerationRequest(rng.choice(RECOGNITION_QUESTIONS[language]), WaferMap(grid),
                                          max_new_tokens=max_new_tokens))
    started = time.perf_counter()
    answers = generate_answers(model, processor, requests, batch_size=batch_size)
    elapsed = time.perf_counter() - started
    truth = [from_multi_hot(row) for row in labels]
    predicted = [parse_answer(a) for a in answers]
    result = score(truth, predicted)
    result["by_language"] = {
        lang: score([t for t, g in zip(truth, languages) if g == lang],
                    [p for p, g in zip(predicted, languages) if g == lang])["exact_match"]
        for lang in LANGUAGES if lang in languages
    }
    result["ms_per_map"] = round(1000 * elapsed / max(1, len(grids)), 2)
    result["batch_size"] = batch_size
    result["confusion"] = dict(Counter((class_label(t), class_label(p)) for t, p in zip(truth, predicted)))
    missed = [i for i, (t, p) in enumerate(zip(truth, predicted)) if p is None or set(p) != set(t)]
    result["mistakes"] = [
        {"question": requests[i].question, "answer": answers[i], "truth": class_label(truth[i]),
         "parsed": class_label(predicted[i])}
        for i in missed[:20]
    ]
    result["missed"] = [
        {"map": i, "row": i if rows is None else int(rows[i]), "truth": class_label(truth[i]),
         "parsed": class_label(predicted[i])}
        for i in missed
    ]
    if keep_predictions:
        result["predicted"] = [None if p is None else list(p) for p in predicted]
    return result


_FAILING = re.compile(r"(\d+)\s*(?:颗)?\s*(?:of the \d+ dies fail|failing|fail|颗失效|失效)")
_FAILING_ZH = re.compile(r"有\s*(\d+)\s*颗失效")
_YIELD = re.compile(r"(\d+(?:\.\d+)?)\s*%")


def read_failing(answer: str) -> int | None:
    match = _FAILING_ZH.search(answer) or _FAILING.search(answer)
    return int(match.group(1)) if match else None


def read_yield(answer: str) -> float | None:
    match = _YIELD.search(answer)
    return float(match.group(1)) if match else None


def number_scores(model: Any, processor: Any, grids: np.ndarray, batch_size: int = 32, seed: int = 0) -> dict:
    """Ask failing-die count and yield on each map; share within ±1 die / ±0.5 % of the measured values.

    Also the share of those answers whose number was written as a slot (`finetune.number_slots`)
    and filled from the map, rather than written out by the model.
    """
    from finetune.generation import generate_answers
    from finetune.number_slots import fill_from_map, slot_token

    rng = random.Random(f"numbers-{seed}")
    requests, expected = [], []
    for i, grid in enumerate(grids):
        wafer = WaferMap(grid)
        language = LANGUAGES[i % len(LANGUAGES)]
        requests.append(GenerationRequest(rng.choice(COUNT_QUESTIONS["failing"][language]), wafer, max_new_tokens=48))
        expected.append(("failing", wafer.failing))
        requests.append(GenerationRequest(rng.choice(COUNT_QUESTIONS["yield"][language]), wafer, max_new_tokens=48))
        expected.append(("yield", wafer.yield_percent))
    raw = generate_answers(model, processor, requests, batch_size=batch_size, fill_slots=False)
    slotted = [slot_token(topic) in answer for (topic, _), answer in zip(expected, raw)]
    answers = [fill_from_map(answer, request.wafer) for request, answer in zip(requests, raw)]
    ok = {"failing": [], "yield": []}
    examples = []
    for request, (topic, value), answer in zip(requests, expected, answers):
        got = read_failing(answer) if topic == "failing" else read_yield(answer)
        tolerance = DIE_TOLERANCE if topic == "failing" else YIELD_TOLERANCE
        good = got is not None and abs(got - value) <= tolerance
        ok[topic].append(good)
        if not good and len(examples) < 10:
            examples.append({"topic": topic, "question": request.question, "expected": round(value, 2), "answer": answer})
    return {
        "n_maps": len(grids),
        "failing_within_1_die": round(float(np.mean(ok["failing"])), 4) if ok["failing"] else None,
        "yield_within_0_5_pct": round(float(np.mean(ok["yield"])), 4) if ok["yield"] else None,
        "from_slots": round(float(np.mean(slotted)), 4) if slotted else None,
        "mistakes": examples,
    }


def sectors_named(answer: str) -> set[str]:
    """Sector codes named in parentheses in an answer: "(S, SW)" or "（S、SW）" → {"S", "SW"}."""
    return {code.strip() for group in _SECTOR_CODES.findall(answer) for code in re.split(r"[,、]", group)}


def location_scores(model: Any, processor: Any, grids: np.ndarray, labels: np.ndarray, limit: int = 50,
                    batch_size: int = 32, seed: int = 0) -> dict:
    """Ask "where are the defects?" about up to `limit` maps that have an Edge-Loc, Loc or Scratch; share of
    answers naming exactly the sectors measured for the map's true patterns (English and Chinese alternately).

    Each map is also asked about its clusters: `largest_cluster_right` is the share of answers that
    place the largest one in the zone and sector measured (`WaferMap.facts()`).
    """
    from finetune.generation import generate_answers

    rng = random.Random(f"locations-{seed}")
    columns = [PATTERN_KEYS.index(key) for key in SECTOR_PATTERNS]
    chosen = [i for i in range(len(grids)) if np.asarray(labels[i])[columns].any()][:limit]
    requests, expected, places = [], [], []
    for n, i in enumerate(chosen):
        wafer = WaferMap(grids[i])
        language = LANGUAGES[n % len(LANGUAGES)]
        reference = location_answer(locate(wafer, from_multi_hot(labels[i])), wafer.facts(), language)
        requests.append(GenerationRequest(rng.choice(LOCATION_QUESTIONS[language]), wafer, max_new_tokens=160))
        expected.append(sectors_named(reference))
        requests.append(GenerationRequest(rng.choice(COUNT_QUESTIONS["clusters"][language]), wafer, max_new_tokens=64))
        largest = wafer.facts()["clusters"]["largest"]
        places.append(None if largest is None else cluster_place(largest, language))
    answers = generate_answers(model, processor, requests, batch_size=batch_size)
    located, clustered = answers[0::2], answers[1::2]
    right = [sectors_named(answer) == sectors for answer, sectors in zip(located, expected)]
    placed = [place is None or place in answer for answer, place in zip(clustered, places)]
    mistakes = [{"expected": sorted(sectors), "answer": answer}
                for answer, sectors, ok in zip(located, expected, right) if not ok][:10]
    mistakes += [{"expected": place, "answer": answer}
                 for answer, place, ok in zip(clustered, places, placed) if not ok][:10]
    return {"n_maps": len(chosen), "sectors_right": round(float(np.mean(right)), 4) if right else None,
            "largest_cluster_right": round(float(np.mean(placed)), 4) if placed else None, "mistakes": mistakes}




def yesno_scores(model: Any, processor: Any, grids: np.ndarray, labels: np.ndarray, limit: int = 50,
                 batch_size: int = 32, seed: int = 0) -> dict:
    """Ask "is there <pattern>?" about up to `limit` maps, alternately a pattern the map has and one it
    lacks (English and Chinese alternately); share of answers opening with the right yes or no.

    As the server does for a thread with a new map, the recognition question is asked about the
    same map and the yes/no answer is checked against it (`finetune.yesno`): `right` scores the
    answers so served, `model_right` the model's own. `yes_when_absent` is the share of questions
    about a missing pattern answered yes (a made-up defect), `no_when_present` the share about a
    present one answered no (both as served).
    """
    from finetune.generation import generate_answers
    from finetune.yesno import ground_yesno, said_yes
    from model_server.findings import recognition_question

    rng = random.Random(f"yesno-{seed}")
    requests, truths = [], []
    for i in range(min(limit, len(grids))):
        present = set(from_multi_hot(labels[i]))
        pool = sorted(present) if i % 2 == 0 and present else sorted(set(PATTERN_KEYS) - present)
        key = rng.choice(pool)
        language = LANGUAGES[(i // 2) % len(LANGUAGES)]
        noun = rng.choice(PATTERN_NOUNS[key][language])
        question = rng.choice(YESNO_QUESTIONS[language]).format(p=noun)
        requests.append(GenerationRequest(question, WaferMap(grids[i]), max_new_tokens=96))
        truths.append(key in present)
    recognitions = [GenerationRequest(recognition_question(), r.wafer, max_new_tokens=96) for r in requests]
    generated = generate_answers(model, processor, requests + recognitions, batch_size=batch_size)
    own, recognised = generated[: len(requests)], [parse_answer(a) for a in generated[len(requests):]]
    answers = [ground_yesno(r.question, a, r.wafer, keys) for r, a, keys in zip(requests, own, recognised)]

    def share(values: list[bool]) -> float | None:
        return round(float(np.mean(values)), 4) if values else None

    said, said_own = [said_yes(a) for a in answers], [said_yes(a) for a in own]
    right = [s == t for s, t in zip(said, truths)]
    mistakes = [{"question": r.question, "truth": "yes" if t else "no", "answer": a, "model_answer": o}
                for r, a, o, t, ok in zip(requests, answers, own, truths, right) if not ok][:10]
    return {
        "n": len(requests),
        "right": share(right),
        "model_right": share([s == t for s, t in zip(said_own, truths)]),
        "yes_when_absent": share([s is True for s, t in zip(said, truths) if not t]),
        "no_when_present": share([s is False for s, t in zip(said, truths) if t]),
        "mistakes": mistakes,
    }


def select_maps(path: str | Path, split: str = "all", limit: int | None = None, seed: int = 0,
                val_fraction: float = 0.05, test_fraction: float = 0.10) -> tuple[np.ndarray, np.ndarray]:
    """Grids and labels of a MixedWM38 file, restricted to a corpus split (by content hash) and a limit."""
    maps = select_dataset(path, split, limit, seed, val_fraction, test_fraction)
    return maps.grids, maps.labels


def select_dataset(path: str | Path, split: str = "all", limit: int | None = None, seed: int = 0,
                   val_fraction: float = 0.05, test_fraction: float = 0.10) -> WaferDataset:
    """`select_maps` as a labelled `WaferDataset`, which keeps each map's row in the file (`index`)."""
    try:
        data = load_mixedwm38(path)
    except DataFormatError as exc:
        raise EvaluationError(str(exc)) from exc
    if data.labels is None:
        raise EvaluationError(f"{path} has no labels; evaluation needs labelled maps")
    indices = np.arange(len(data))
    if split != "all":
        from data_tools.corpus import split_of

        if split not in ("train", "val", "test"):
            raise EvaluationError(f"--split must be all, train, val or test; got {split!r}")
        indices = np.array(
            [i for i in indices if split_of(WaferMap(data.grids[i]).content_hash, val_fraction, test_fraction) == split],
            dtype=np.int64,
        )
    if limit is not None:
        if limit < 1:
            raise EvaluationError(f"--limit must be at least 1, got {limit}")
        if limit < len(indices):
            indices = np.sort(np.random.default_rng(seed).choice(indices, size=limit, replace=False))
    if not len(indices):
        raise EvaluationError(f"no maps of split {split!r} in {path}")
    return data.subset(indices)


def evaluate_file(
    model_dir: str | Path,
    mixedwm38: str | Path,
    adapter_dir: str | Path | None = None,
    split: str = "all",
    limit: int | None = None,
    batch_size: int = 32,
    numbers: int = 50,
    locations: int = 50,
    yesno: int = 50,
    seed: int = 0,
    report_dir: str | Path | None = None,
    threads: int | None = None,
    dtype: str = "float32",
    views: int | None = None,
    views_below: float | None = None,
) -> dict:
    """Load a checkpoint (weights in `dtype`, as the server would with `--dtype`; answering from `views`
    views of each map when less sure than `views_below`, None: the checkpoint's settings), evaluate
    it on a MixedWM38 file, optionally write a report; returns the JSON dict."""
    import torch

    from finetune.loading import load_model, loaded_dtype
    from finetune.views import answer_views
    from finetune.views import views_below as views_below_of

    if threads:
        torch.set_num_threads(threads)
    maps = select_dataset(mixedwm38, split, limit, seed)
    grids, labels = maps.grids, maps.labels
    model, processor = load_model(model_dir, adapter_dir=adapter_dir, dtype=dtype, channels_last=True, views=views,
                                  views_below=views_below)
    result: dict[str, Any] = {
        "model": str(model_dir),
        "dtype": loaded_dtype(dtype, None),
        "views": answer_views(model),
        "views_below": views_below_of(model),
        "adapter": None if adapter_dir is None else str(adapter_dir),
        "file": str(mixedwm38),
        "split": split,
        "limit": limit,
        "torch_threads": torch.get_num_threads(),
    }
    result.update(recognition_scores(model, processor, grids, labels, batch_size=batch_size, seed=seed,
                                     rows=maps.index))
    if numbers:
        result["numbers"] = number_scores(model, processor, grids[:numbers], batch_size=batch_size, seed=seed)
    if locations:
        result["locations"] = location_scores(model, processor, grids, labels, locations, batch_size, seed)
    if yesno:
        result["yesno"] = yesno_scores(model, processor, grids, labels, yesno, batch_size, seed)
    result["confusion"] = [{"truth": t, "predicted": p, "count": c} for (t, p), c in result["confusion"].items()]
    if report_dir is not None:
        from finetune.report import write_report

        result["report"] = str(write_report(result, Path(report_dir), grids=grids))
    return result


def dumps(result: dict) -> str:
    return json.dumps(result, indent=2, ensure_ascii=False)


def write_json(result: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dumps(result) + "\n", encoding="utf-8")
    os.replace(tmp, path)
