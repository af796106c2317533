"""The checkpoint registry: versioned checkpoints, promotion, and which checkpoint the server loads.

Layout under the data home (env `DEFECT_GLM_HOME`, default ~/.local/share/defect-glm):

    checkpoints/v0001/      a registered checkpoint (model + processor, copied in, never changed)
    checkpoints/v0001/checkpoint.json   where it came from, when, its evaluations
    serving.json            the promoted version (absent: the committed default model is served)

`serving_model_dir()` is what the server loads at start and on /admin/reload: the promoted
checkpoint, or else the committed `finetune/default_model` (env `DEFECT_GLM_DEFAULT_MODEL`
overrides that fallback). `promote` evaluates the candidate and the current one on the same
held-out file and switches only if the candidate is at least as good, so admins refresh
weights safely; `defect-glm train` never writes into a registered or served checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

ENV_HOME = "DEFECT_GLM_HOME"
ENV_DEFAULT_MODEL = "DEFECT_GLM_DEFAULT_MODEL"
SERVING_FILE = "serving.json"
META_FILE = "checkpoint.json"
#: Run artefacts that are not part of a checkpoint (left behind when one is registered).
NOT_COPIED = ("training_state",)
_VERSION = re.compile(r"^v(\d{4,})$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, registered or promoted; the message says why."""


class PromotionRefused(CheckpointError):
    """The candidate evaluated worse than the served checkpoint on the same file."""


def home() -> Path:
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".local" / "share" / "defect-glm").expanduser()


def registry_root() -> Path:
    return home() / "checkpoints"


def default_model_dir() -> Path:
    """The committed default checkpoint (or the directory named by DEFECT_GLM_DEFAULT_MODEL)."""
    override = os.environ.get(ENV_DEFAULT_MODEL)
    return Path(override).expanduser() if override else Path(__file__).resolve().parent / "default_model"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc


def serving_info() -> dict:
    """What is served: {"source": "promoted"|"default", "version", "path", ...}."""
    pointer = home() / SERVING_FILE
    if pointer.is_file():
        info = _read_json(pointer)
        path = Path(info.get("path", ""))
        if (path / "config.json").is_file():
            return {"source": "promoted", **info}
    return {"source": "default", "version": "default", "path": str(default_model_dir())}


def serving_model_dir() -> Path:
    """The checkpoint the server should load: the promoted one, else the committed default model."""
    return Path(serving_info()["path"])


def _versions() -> list[tuple[int, Path]]:
    root = registry_root()
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _VERSION.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def list_checkpoints() -> list[dict]:
    """Registered versions, oldest first, each with its metadata and whether it is served."""
    served = serving_info()
    rows = []
    for _, path in _versions():
        meta = _read_json(path / META_FILE) if (path / META_FILE).is_file() else {}
        rows.append({"version": path.name, "path": str(path), "serving": served.get("path") == str(path), **meta})
    return rows


def _check_checkpoint(path: Path) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"{path} is neither a registered version nor a checkpoint directory")
    if not (path / "config.json").is_file():
        if (path / "adapter_config.json").is_file():
            raise CheckpointError(
                f"{path} is a LoRA adapter, not a checkpoint; merge it into its base first: "
                f"defect-glm merge --base BASE_DIR --adapter {path} --out MERGED_DIR"
            )
        raise CheckpointError(f"{path} is not a checkpoint: expected config.json (model) in it")
    return path


def resolve(version_or_dir: str | Path) -> Path:
    """A registered version name (v0003) or a checkpoint directory → its path."""
    text = str(version_or_dir)
    if _VERSION.match(text):
        path = registry_root() / text
        if not path.is_dir():
            known = ", ".join(p.name for _, p in _versions()) or "none registered"
            raise CheckpointError(f"no checkpoint version {text} (known: {known})")
        return path
    return _check_checkpoint(Path(text).expanduser())


def require_new_dir(out: Path, what: str) -> None:
    """Refuse to write `what` into `out` when it already holds files (nothing is ever overwritten)."""
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out} already holds files; give a new directory for the {what}")


def save_new_checkpoint(out_dir: str | Path, model: Any, processor: Any, what: str = "checkpoint",
                        extra_json: dict[str, dict] | None = None) -> Path:
    """Save model + processor (+ `extra_json` files) into `out_dir`, new or empty, through a staging directory.

    The directory appears complete or not at all: a failed save leaves nothing behind.
    """
    out = Path(out_dir).expanduser()
    require_new_dir(out, what)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        for name, data in (extra_json or {}).items():
            _write_json(staging / name, data)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def add_checkpoint(source: str | Path, note: str = "") -> Path:
    """Copy a checkpoint directory into the registry as the next version; returns its path."""
    source = _check_checkpoint(Path(source).expanduser())
    root = registry_root()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=root))
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*NOT_COPIED, ".*"))
        while True:
            number = (_versions()[-1][0] + 1) if _versions() else 1
            final = root / f"v{number:04d}"
            meta = {"version": final.name, "source": str(source.resolve()), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    "note": note, "evaluations": []}
            _write_json(tmp / META_FILE, meta)
            try:
                os.rename(tmp, final)  # fails if another process took this number meanwhile
                return final
            except OSError:
                if not final.exists():
                    raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _in_registry(path: Path) -> bool:
    return path.resolve().parent == registry_root().resolve()


def _record_evaluation(path: Path, evaluation: dict) -> None:
    if not _in_registry(path):
        return
    meta_path = path / META_FILE
    meta = _read_json(meta_path) if meta_path.is_file() else {"version": path.name}
    meta.setdefault("evaluations", []).append(evaluation)
    _write_json(meta_path, meta)


#: The answer checks of `defect-glm eval` besides recognition that promotion also compares: (section, figure).
ANSWER_CHECKS = (
    ("numbers", "failing_within_1_die"), ("numbers", "yield_within_0_5_pct"),
    ("locations", "sectors_right"), ("locations", "largest_cluster_right"), ("yesno", "right"),
)
#: How far below the served checkpoint a candidate may score on an answer check (they ask ~50 maps each).
DEFAULT_TOLERANCE = 0.05


def _summary(result: dict) -> dict:
    checks = {
        f"{section}.{figure}": result[section][figure]
        for section, figure in ANSWER_CHECKS
        if isinstance(result.get(section), dict) and result[section].get(figure) is not None
    }
    return {
        "file": result["file"], "split": result["split"], "limit": result["limit"], "n": result["n"],
        "exact_match": result["exact_match"], "macro_f1": result["macro_f1"], "checks": checks,
        "evaluated": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _regressions(candidate: dict, current: dict, tolerance: float) -> list[str]:
    """The answer checks on which the candidate scores more than `tolerance` below the current checkpoint."""
    return [
        f"{name} {candidate['checks'][name]:.4f} vs {score:.4f}"
        for name, score in current.get("checks", {}).items()
        if name in candidate["checks"] and candidate["checks"][name] < score - tolerance
    ]


def promote(
    version_or_dir: str | Path,
    heldout: str | Path,
    split: str = "all",
    limit: int | None = None,
    batch_size: int = 32,
    tolerance: float = DEFAULT_TOLERANCE,
) -> dict:
    """Serve `version_or_dir` if it evaluates at least as well as the served checkpoint on `heldout`:
    exact match at least as high, and no answer check (`ANSWER_CHECKS`: numbers, places, yes/no)
    more than `tolerance` lower.

    A directory outside the registry is first copied in as a new version, so the served weights
    can never change under the server. Raises PromotionRefused (with the figures) otherwise.
    """
    if not 0.0 <= tolerance <= 1.0:
        raise CheckpointError(f"--tolerance must be in [0, 1], got {tolerance}")
    from finetune.evaluate import evaluate_file as evaluate

    candidate = resolve(version_or_dir)
    current = serving_model_dir()
    options = {"split": split, "limit": limit, "batch_size": batch_size}
    candidate_result = _summary(evaluate(candidate, heldout, **options))
    _record_evaluation(candidate, candidate_result)
    if current.exists():
        current_result = _summary(evaluate(current, heldout, **options))
        _record_evaluation(current, current_result)
    else:
        current_result = None
    decision = {"candidate": str(candidate), "current": str(current), "candidate_eval": candidate_result,
                "current_eval": current_result}
    if current_result is not None and candidate_result["exact_match"] < current_result["exact_match"]:
        raise PromotionRefused(
            f"not promoted: {candidate} scores exact match {candidate_result['exact_match']:.4f} on {heldout} "
            f"({candidate_result['n']} maps), below the served {current} at {current_result['exact_match']:.4f}"
        )
    regressions = [] if current_result is None else _regressions(candidate_result, current_result, tolerance)
    if regressions:
        raise PromotionRefused(
            f"not promoted: {candidate} matches or beats the served {current} on exact match "
            f"({candidate_result['exact_match']:.4f} vs {current_result['exact_match']:.4f}) but answers worse by more "
            f"than the tolerance {tolerance:g}: " + "; ".join(regressions)
            + ". Look at `defect-glm eval --json` of both; --tolerance sets the margin"
        )
    if not _in_registry(candidate):
        candidate = add_checkpoint(candidate, note=f"promoted from {version_or_dir}")
        _record_evaluation(candidate, candidate_result)
    pointer = {"version": candidate.name, "path": str(candidate.resolve()), "promoted_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "evaluation": candidate_result, "previous": str(current)}
    _write_json(home() / SERVING_FILE, pointer)
    return {**decision, "promoted": True, "serving": pointer}
