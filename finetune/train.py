"""Training: the small model from scratch, or LoRA (optionally QLoRA on CUDA) on any image-text-to-text model.

`run_training(TrainConfig)` is what `defect-glm train` calls. A run writes into its own output
directory: the final checkpoint (model or adapter + processor), `training_state/` (for
`--resume`), `log.jsonl`, `loss_curve.png` and `train_meta.json`. It never writes into the
served checkpoint or the committed default model. Steps are seeded from (seed, step, process),
so a resumed run draws the same batches it would have drawn, and `accelerate launch` on several
GPUs works unchanged (each process draws its own share; gradients are averaged by Accelerate).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetune.dataset import (
    IGNORE_INDEX,
    Corpus,
    ExampleSampler,
    collate,
    encode_example,
    length_groups,
    recognition_example,
)
from finetune.small_model import SmallModelConfig

STATE_DIR = "training_state"


class TrainingError(ValueError):
    """A training run that cannot start (bad arguments, output in the way); the message says why."""


@dataclass
class TrainConfig:
    data: Path
    out: Path
    lora: bool = False
    base: Path | None = None  # starting checkpoint (required with lora; optional for full training)
    quant: str | None = None  # "4bit" | "8bit" (LoRA on CUDA only)
    steps: int = 3000
    batch_size: int = 32
    micro_batches: int = 4  # length-sorted pieces of each batch (less padding; same gradient)
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    eval_every: int = 500
    eval_maps: int = 256
    save_every: int = 500
    log_every: int = 10
    recognition_fraction: float = 0.5
    max_length: int = 512
    vocab_size: int = 3000
    model: dict = field(default_factory=dict)  # SmallModelConfig overrides for a model from scratch
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    threads: int | None = None
    resume: bool = False
    progress: bool = True

    def validate(self) -> None:
        if self.lora and self.base is None:
            raise TrainingError("--lora needs --base MODEL_DIR: the checkpoint to put the adapter on")
        if self.quant is not None and not self.lora:
            raise TrainingError("--quant is for LoRA only (QLoRA); add --lora --base MODEL_DIR")
        for name in ("steps", "batch_size", "micro_batches", "eval_every", "save_every", "log_every", "max_length"):
            if getattr(self, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.lr < 1:
            raise TrainingError(f"--lr must be in (0, 1), got {self.lr}")
        if not 0.0 <= self.recognition_fraction <= 1.0:
            raise TrainingError(f"--recognition-fraction must be in [0, 1], got {self.recognition_fraction}")
        unknown = set(self.model) - set(SmallModelConfig.__dataclass_fields__)
        if unknown:
            raise TrainingError(
                f"unknown model settings {sorted(unknown)}; known: {', '.join(SmallModelConfig.__dataclass_fields__)}"
            )


# ---------------------------------------------------------------- output guard


def _protected_dirs() -> list[Path]:
    from finetune.checkpoints import default_model_dir, serving_model_dir

    dirs = [default_model_dir()]
    with contextlib.suppress(OSError, ValueError):
        dirs.append(serving_model_dir())
    return [d.resolve() for d in dirs]


def check_output(cfg: TrainConfig) -> None:
    out = cfg.out.resolve()
    for protected in _protected_dirs():
        if out == protected or protected in out.parents:
            raise TrainingError(
                f"--out {cfg.out} is the served checkpoint or the committed default model ({protected}); training "
                "never writes there. Train into a new directory, then `defect-glm promote` it."
            )
    state = cfg.out / STATE_DIR
    if cfg.resume:
        if not (state / "meta.json").is_file():
            raise TrainingError(f"--resume: no training state in {state}; start without --resume")
        return
    if cfg.out.exists() and any(cfg.out.iterdir()):
        raise TrainingError(
            f"--out {cfg.out} already holds files; pass --resume to continue that run, or choose a new directory"
        )


# ---------------------------------------------------------------- model setup


def _tokenizer_texts(corpus: Corpus, limit_maps: int = 2000) -> list[str]:
    from data_tools.answers import recognition_answer
    from data_tools.phrasing import RECOGNITION_QUESTIONS
    from data_tools.taxonomy import CLASSES
    from data_tools.wafer_map import WaferMap
    from finetune.prompting import facts_line

    texts = corpus.texts("train")
    for language in ("en", "zh"):
        texts += RECOGNITION_QUESTIONS[language]
        texts += [recognition_answer(c.patterns, language, v) for c in CLASSES for v in range(3)]
    step = max(1, len(corpus.grids) // limit_maps)
    texts += [facts_line(WaferMap(g)) for g in corpus.grids[::step]]
    return texts


def _new_small_model(cfg: TrainConfig, corpus: Corpus) -> tuple[Any, Any]:
    from finetune.small_model import build_model, build_processor
    from finetune.tokenizer import train_tokenizer

    model_config = SmallModelConfig(**cfg.model)
    model_config.validate()
    tokenizer = train_tokenizer(_tokenizer_texts(corpus), vocab_size=cfg.vocab_size)
    processor = build_processor(tokenizer, model_config)
    model = build_model(tokenizer, model_config, seed=cfg.seed)
    return model, processor


def _with_lora(cfg: TrainConfig, model: Any) -> Any:
    from peft import LoraConfig, get_peft_model

    if cfg.quant is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    targets: Any = cfg.lora_targets if cfg.lora_targets == "all-linear" else cfg.lora_targets.split(",")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets)
    return get_peft_model(model, lora)


def setup_model(cfg: TrainConfig, corpus: Corpus) -> tuple[Any, Any]:
    """(model in train mode, processor) for the run: resumed, LoRA on a base, a base, or new."""
    from finetune.loading import load_model, load_processor

    state = cfg.out / STATE_DIR
    if cfg.lora:
        assert cfg.base is not None
        if cfg.resume:
            model, _ = load_model(cfg.base, adapter_dir=state / "model", quantization=cfg.quant, trainable=True)
        else:
            model, _ = load_model(cfg.base, quantization=cfg.quant, trainable=True)
            model = _with_lora(cfg, model)
        return model, load_processor(cfg.base)
    if cfg.resume:
        model, _ = load_model(state / "model", trainable=True)
        return model, load_processor(cfg.out)
    if cfg.base is not None:
        model, processor = load_model(cfg.base, trainable=True)
        return model, processor
    return _new_small_model(cfg, corpus)


# ---------------------------------------------------------------- state


def _atomic_dir(final: Path, write: Any) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(tmp)
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_state(cfg: TrainConfig, model: Any, optimizer: Any, scheduler: Any, step: int, history: list[dict]) -> None:
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp / "model")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        meta = {"step": step, "config": _jsonable(asdict(cfg)), "history": history}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    _atomic_dir(cfg.out / STATE_DIR, write)


def load_state(cfg: TrainConfig, optimizer: Any, scheduler: Any) -> tuple[int, list[dict]]:
    state = cfg.out / STATE_DIR
    meta = json.loads((state / "meta.json").read_text())
    saved = torch.load(state / "optim.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return int(meta["step"]), list(meta.get("history", []))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def save_final(cfg: TrainConfig, model: Any, processor: Any) -> None:
    """Model (or adapter) and processor files into the output directory, each file replaced atomically."""
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=cfg.out))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        for item in tmp.iterdir():
            os.replace(item, cfg.out / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- schedule, curve, eval


def lr_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def plot_loss_curve(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["val_loss"]) for h in history if "val_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def evaluate_during_training(model: Any, processor: Any, corpus: Corpus, cfg: TrainConfig) -> dict:
    """Val loss on fixed augmented-free recognition examples + recognition exact match through generation."""
    from finetune.evaluate import recognition_scores

    maps = corpus.map_indices("val")
    if not len(maps):
        return {}
    chosen = maps[: cfg.eval_maps]
    was_training = model.training
    model.eval()
    rng = random.Random(f"eval-{cfg.seed}")
    examples = [recognition_example(corpus.grids[i], corpus.labels[i], rng, augment=False) for i in chosen]
    tokenizer = getattr(processor, "tokenizer", processor)
    device = next(model.parameters()).device
    losses = []
    with torch.no_grad():
        for start in range(0, len(examples), cfg.batch_size):
            encoded = [encode_example(processor, e, cfg.max_length) for e in examples[start : start + cfg.batch_size]]
            losses.append(batch_loss(model, encoded, tokenizer.pad_token_id, device, cfg.micro_batches))
    scores = recognition_scores(model, processor, corpus.grids[chosen], corpus.labels[chosen], batch_size=32, seed=cfg.seed)
    model.train(was_training)
    return {"val_loss": float(np.mean(losses)), "val_exact_match": scores["exact_match"], "val_n": scores["n"]}


# ---------------------------------------------------------------- the loss


def answer_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy over answer tokens, their count) for one left-padded batch.

    Only the tail of the sequence that holds answer tokens goes through the vocabulary
    projection (`logits_to_keep`): on the small model that projection is a quarter of the
    compute when it runs over the whole prompt.
    """
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if getattr(model, "derives_position_ids", False):
        inputs.pop("position_ids", None)
    labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()
    if not len(labelled):
        raise ValueError("a training batch without answer tokens: nothing to learn from")
    length = labels.shape[1]
    keep = length - int(labelled[0]) + 1  # from the position that predicts the first answer token
    logits = model(**inputs, logits_to_keep=keep).logits[:, :-1]
    targets = labels[:, length - keep + 1 :].to(logits.device)
    loss = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int((targets != IGNORE_INDEX).sum())


def batch_loss(model: Any, encoded: list[dict], pad_token_id: int, device: Any, groups: int, backward: Any = None) -> float:
    """Mean answer-token loss of `encoded`, run as length-sorted micro-batches; `backward(loss)` per micro-batch."""
    chunks = length_groups(encoded, groups)
    total_tokens = sum(sum(1 for t in e["labels"][1:] if t != IGNORE_INDEX) for e in encoded)
    total = 0.0
    for chunk in chunks:
        batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
        summed, _ = answer_loss(model, batch)
        scaled = summed / max(1, total_tokens)
        if backward is not None:
            backward(scaled)
        total += float(scaled.detach())
    return total


# ---------------------------------------------------------------- the loop


def run_training(cfg: TrainConfig) -> Path:
    """Train as configured; returns the output directory holding the final checkpoint or adapter."""
    from accelerate import Accelerator
    from tqdm import tqdm

    cfg.validate()
    check_output(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    accelerator = Accelerator()
    corpus = Corpus(cfg.data, splits=("train", "val"))
    sampler = ExampleSampler(corpus, "train", cfg.recognition_fraction)
    cfg.out.mkdir(parents=True, exist_ok=True)
    model, processor = setup_model(cfg, corpus)
    if not cfg.resume and accelerator.is_main_process:
        processor.save_pretrained(cfg.out)  # a resumed run needs the tokenizer it started with
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    start_step, history = (0, [])
    if cfg.resume:
        start_step, history = load_state(cfg, optimizer, scheduler)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    tokenizer = getattr(processor, "tokenizer", processor)
    # wall time of earlier sessions of a resumed run, so "seconds" stays cumulative
    earlier = next((h["seconds"] for h in reversed(history) if "seconds" in h), 0.0)
    started = time.monotonic() - earlier
    bar = tqdm(
        total=cfg.steps, initial=start_step, desc="training", unit="step", disable=not (cfg.progress and accelerator.is_main_process)
    )
    smoothed = None
    for step in range(start_step + 1, cfg.steps + 1):
        examples = sampler.batch((cfg.seed, step, accelerator.process_index), cfg.batch_size)
        encoded = [encode_example(processor, e, cfg.max_length) for e in examples]
        loss = torch.tensor(batch_loss(
            model, encoded, tokenizer.pad_token_id, accelerator.device, cfg.micro_batches, accelerator.backward
        ), device=accelerator.device)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        value = float(accelerator.reduce(loss.detach(), reduction="mean"))
        smoothed = value if smoothed is None else 0.95 * smoothed + 0.05 * value
        bar.update(1)
        bar.set_postfix(loss=f"{smoothed:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if step % cfg.log_every == 0 or step == cfg.steps:
            history.append({"step": step, "loss": round(smoothed, 5), "seconds": round(time.monotonic() - started, 1)})
        is_eval = step % cfg.eval_every == 0 or step == cfg.steps
        if is_eval and accelerator.is_main_process:
            scores = evaluate_during_training(accelerator.unwrap_model(model), processor, corpus, cfg)
            if scores:
                history.append({"step": step, **scores})
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in scores.items()))
            plot_loss_curve(history, cfg.out / "loss_curve.png")
        if (step % cfg.save_every == 0 or step == cfg.steps) and accelerator.is_main_process:
            save_state(cfg, accelerator.unwrap_model(model), optimizer, scheduler, step, history)
        accelerator.wait_for_everyone()
    bar.close()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        save_final(cfg, final, processor)
        with (cfg.out / "log.jsonl").open("w") as handle:
            for entry in history:
                handle.write(json.dumps(entry) + "\n")
        plot_loss_curve(history, cfg.out / "loss_curve.png")
        meta = {
            "config": _jsonable(asdict(cfg)),
            "steps": cfg.steps,
            "seconds_total": round(time.monotonic() - started, 1),
            "resumed_at_seconds": earlier or None,
            "last_eval": next((h for h in reversed(history) if "val_loss" in h), None),
            "torch_threads": torch.get_num_threads(),
            "device": str(accelerator.device),
            "processes": accelerator.num_processes,
        }
        (cfg.out / "train_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return cfg.out
