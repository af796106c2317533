"""Training: the small model from scratch, or LoRA (optionally QLoRA on CUDA) on any image-text-to-text model.

`run_training(TrainConfig)` is what `defect-glm train` calls. A run writes into its own output
directory: the final checkpoint (model or adapter + processor), `training_state/` (for
`--resume`), `log.jsonl`, `loss_curve.png` and `train_meta.json`. It never writes into the
served checkpoint, a registered checkpoint or the committed default model. Every step is seeded
from (seed, step, process) — its batch and torch's generator (LoRA dropout) — so a resumed run
(`stop_after`, or an interruption after a saved state) ends with the same weights as an
uninterrupted one, and `accelerate launch` on several GPUs works unchanged (each process draws
its own share; gradients are averaged by Accelerate; the learning-rate schedule counts
optimizer steps, not process-steps).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
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
from finetune.loading import train_mode
from finetune.location_slots import LOCATION_SLOTS, LOCATION_TOKENS, has_location_slots, opening_words
from finetune.number_slots import has_slots
from finetune.precision import slow_bf16_warning
from finetune.prompting import set_measured_facts, uses_measured_facts
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
    count_fraction: float = 0.0
    location_fraction: float = 0.0
    yesno_fraction: float = 0.0
    count_varied: float = 0.0  # share of the number questions asked about synthetic maps of random size
    chat_style: float = 0.0  # share of user turns dressed as typed in chat (context, greetings, loose words)
    max_length: int = 512
    vocab_size: int = 3000
    model: dict = field(default_factory=dict)  # SmallModelConfig overrides for a model from scratch
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "all-linear"
    threads: int | None = None
    bf16: bool = False  # bf16 autocast for forward passes (weights, optimizer and saved model stay fp32)
    resume: bool = False
    progress: bool = True
    vision_steps: int = 0  # stage 1: pattern-classifier steps for the vision tower first (finetune.vision_pretrain)
    vision_batch_size: int = 128
    vision_lr: float = 2e-3
    stop_after: int | None = None  # end this session after this step (state saved); continue with resume
    measured_facts: bool | None = None  # facts line in the prompts; None: the base's choice (a new model: yes)

    def validate(self) -> None:
        from finetune.loading import QUANTIZATIONS

        if self.lora and self.base is None:
            raise TrainingError("--lora needs --base MODEL_DIR: the checkpoint to put the adapter on")
        if self.quant is not None and not self.lora:
            raise TrainingError("--quant is for LoRA only (QLoRA); add --lora --base MODEL_DIR")
        if self.quant is not None and self.quant not in QUANTIZATIONS:
            raise TrainingError(f"--quant must be one of {', '.join(QUANTIZATIONS)}; got {self.quant!r}")
        for name in ("steps", "batch_size", "micro_batches", "vision_batch_size", "eval_every", "eval_maps", "save_every", "log_every",
                     "max_length"):
            if getattr(self, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lora and self.measured_facts is not None:
            raise TrainingError("--measured-facts is for full training: a LoRA adapter keeps its base model's prompt")
        if self.stop_after is not None and self.stop_after < 1:
            raise TrainingError(f"--stop-after must be at least 1, got {self.stop_after}")
        if self.vocab_size < 300:
            raise TrainingError(f"--vocab-size must be at least 300 (256 bytes + special tokens), got {self.vocab_size}")
        if not 0 < self.lr < 1:
            raise TrainingError(f"--lr must be in (0, 1), got {self.lr}")
        if not 0.0 <= self.recognition_fraction <= 1.0:
            raise TrainingError(f"--recognition-fraction must be in [0, 1], got {self.recognition_fraction}")
        if not 0.0 <= self.count_fraction <= 1.0 - self.recognition_fraction:
            raise TrainingError(f"--count-fraction must be in [0, 1 - recognition fraction], got {self.count_fraction}"
                                f" with --recognition-fraction {self.recognition_fraction}")
        if not 0.0 <= self.location_fraction <= 1.0 - self.recognition_fraction - self.count_fraction:
            raise TrainingError(f"--location-fraction must be in [0, 1 - recognition and count fractions], got "
                                f"{self.location_fraction} with --recognition-fraction {self.recognition_fraction} "
                                f"and --count-fraction {self.count_fraction}")
        spare = 1.0 - self.recognition_fraction - self.count_fraction - self.location_fraction
        if not 0.0 <= self.yesno_fraction <= spare + 1e-9:
            raise TrainingError(f"--yesno-fraction must be in [0, 1 - the recognition, count and location fractions], "
                                f"got {self.yesno_fraction}")
        if not 0.0 <= self.count_varied <= 1.0:
            raise TrainingError(f"--count-varied must be in [0, 1], got {self.count_varied}")
        if not 0.0 <= self.chat_style <= 1.0:
            raise TrainingError(f"--chat-style must be in [0, 1], got {self.chat_style}")
        unknown = set(self.model) - set(SmallModelConfig.__dataclass_fields__)
        if unknown:
            raise TrainingError(
                f"unknown model settings {sorted(unknown)}; known: {', '.join(SmallModelConfig.__dataclass_fields__)}"
            )
        if self.model and self.base is not None:
            raise TrainingError(
                "--model-config sets the sizes of a model trained from scratch; with --base the checkpoint's own "
                "sizes are used. Drop one of the two."
            )
        if self.model:
            try:
                SmallModelConfig(**self.model).validate()
            except (TypeError, ValueError) as exc:
                raise TrainingError(f"--model-config: {exc}") from None


def check_quantization(cfg: TrainConfig) -> None:
    """Fail before anything is written when --quant cannot work here (no CUDA, no bitsandbytes)."""
    if cfg.quant is None:
        return
    from finetune.loading import ModelLoadError, quantization_config

    try:
        quantization_config(cfg.quant, torch.float32)
    except ModelLoadError as exc:
        raise TrainingError(str(exc)) from None


# ---------------------------------------------------------------- output guard


#: Settings that may differ when a run is resumed: they do not change the weights it ends with.
RESUMABLE_CHANGES = frozenset(
    {"out", "resume", "progress", "threads", "stop_after", "eval_every", "eval_maps", "save_every", "log_every"}
)


def _protected_dirs() -> list[Path]:
    from finetune.checkpoints import default_model_dir, registry_root, serving_model_dir

    dirs = [default_model_dir(), registry_root()]
    with contextlib.suppress(OSError, ValueError):
        dirs.append(serving_model_dir())
    return [d.resolve() for d in dirs]


def check_output(cfg: TrainConfig) -> None:
    """Refuse an --out that is (inside) a served, registered or default checkpoint, or that holds another run."""
    out = cfg.out.resolve()
    for protected in _protected_dirs():
        if out == protected or protected in out.parents:
            raise TrainingError(
                f"--out {cfg.out} is inside the served checkpoint, the checkpoint registry or the committed default "
                f"model ({protected}); training never writes there. Train into a new directory, then "
                "`defect-glm promote` it."
            )
    if cfg.out.exists() and not cfg.out.is_dir():
        raise TrainingError(f"--out {cfg.out} is a file; give a directory for the run")
    state = cfg.out / STATE_DIR
    if cfg.resume:
        if not (state / "meta.json").is_file():
            raise TrainingError(f"--resume: no training state in {state}; start without --resume")
        _check_resume_settings(cfg, json.loads((state / "meta.json").read_text()))
        return
    if cfg.out.exists() and any(cfg.out.iterdir()):
        raise TrainingError(
            f"--out {cfg.out} already holds files; pass --resume to continue that run, or choose a new directory"
        )


def _check_resume_settings(cfg: TrainConfig, meta: dict) -> None:
    saved = dict(meta.get("config", {}))
    current = _jsonable(asdict(cfg))
    for name in ("data", "base"):  # the same directory, however it is spelled
        for settings in (saved, current):
            if settings.get(name):
                settings[name] = str(Path(settings[name]).resolve())
    differing = [
        f"{name.replace('_', '-')} {current[name]!r} (saved run: {saved.get(name)!r})"
        for name in current
        if name not in RESUMABLE_CHANGES and name in saved and saved[name] != current[name]
    ]
    if differing:
        raise TrainingError(
            "--resume with settings that differ from the saved run: " + "; ".join(differing)
            + ". Resume with the original settings (see training_state/meta.json), or start a new run."
        )
    step = int(meta.get("step", 0))
    if cfg.stop_after is not None and cfg.stop_after <= step:
        raise TrainingError(f"--stop-after {cfg.stop_after}: the saved run is already at step {step}")


# ---------------------------------------------------------------- model setup


def _tokenizer_texts(corpus: Corpus, limit_maps: int = 2000) -> list[str]:
    """What a tokenizer trained from scratch learns its vocabulary from: the corpus's training texts, every
    recognition question and answer, the words `--chat-style` adds to questions, and the facts lines of up
    to `limit_maps` maps."""
    from data_tools.answers import recognition_answer
    from data_tools.phrasing import CHAT_CONTEXT, CHAT_OPENERS, LOOSE_RECOGNITION, RECOGNITION_QUESTIONS
    from data_tools.taxonomy import CLASSES
    from data_tools.wafer_map import WaferMap
    from finetune.prompting import facts_line

    texts = corpus.texts("train")
    for language in ("en", "zh"):
        texts += RECOGNITION_QUESTIONS[language]
        texts += LOOSE_RECOGNITION[language] + CHAT_OPENERS[language] + CHAT_CONTEXT[language]  # --chat-style's words
        texts += [recognition_answer(c.patterns, language, v) for c in CLASSES for v in range(3)]
    step = max(1, len(corpus.grids) // limit_maps)
    texts += [facts_line(WaferMap(g)) for g in corpus.grids[::step]]
    return texts


def _new_small_model(cfg: TrainConfig, corpus: Corpus, accelerator: Any = None) -> tuple[Any, Any]:
    """A model from scratch. The main process trains the tokenizer and saves the processor into --out;
    the other processes (accelerate launch) load that one, so every process has the same vocabulary."""
    from finetune.loading import load_processor
    from finetune.small_model import build_model, build_processor
    from finetune.tokenizer import train_tokenizer

    model_config = SmallModelConfig(**cfg.model)
    model_config.validate()
    main = accelerator is None or accelerator.is_main_process
    processor = None
    if main:
        tokenizer = train_tokenizer(_tokenizer_texts(corpus), vocab_size=cfg.vocab_size)
        processor = build_processor(tokenizer, model_config)
        processor.save_pretrained(cfg.out)  # a resumed run needs the tokenizer it started with
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if processor is None:
        processor = load_processor(cfg.out)
    model = build_model(processor.tokenizer, model_config, seed=cfg.seed)
    return model, processor


def _lora_config(cfg: TrainConfig) -> Any:
    from peft import LoraConfig

    targets: Any = cfg.lora_targets if cfg.lora_targets == "all-linear" else cfg.lora_targets.split(",")
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets)


def setup_model(cfg: TrainConfig, corpus: Corpus, accelerator: Any = None) -> tuple[Any, Any]:
    """(model in train mode, processor) for the run: resumed, LoRA on a base, a base, or new."""
    from finetune.loading import load_model, load_processor

    state = cfg.out / STATE_DIR
    if cfg.lora:
        from peft import PeftModel, get_peft_model

        assert cfg.base is not None
        model, _ = load_model(cfg.base, quantization=cfg.quant, trainable=True)
        if cfg.quant is not None:  # QLoRA: the same preparation for a new and a resumed run
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(model)
        if cfg.resume:
            model = PeftModel.from_pretrained(model, state / "model", is_trainable=True)
        else:
            model = get_peft_model(model, _lora_config(cfg))
        train_mode(model)
        return model, load_processor(cfg.base)
    if cfg.resume:
        model, _ = load_model(state / "model", trainable=True, with_processor=False)
        return model, load_processor(cfg.out)
    if cfg.base is not None:
        model, processor = load_model(cfg.base, trainable=True)
        if add_location_slots(model, processor) and (accelerator is None or accelerator.is_main_process):
            print(f"{cfg.base} predates location slots: added {len(LOCATION_TOKENS)} tokens to its tokenizer and "
                  "embeddings (finetune/location_slots.py)", file=sys.stderr)
        return model, processor
    return _new_small_model(cfg, corpus, accelerator)


def add_location_slots(model: Any, processor: Any) -> bool:
    """Give a small checkpoint trained with number slots but no location slots the location slot tokens.

    Each new embedding row starts as the mean of the rows of the words its text opens with
    (`opening_words`: "The Scratch", "划痕"), so the tokens differ from the start: rows at the mean
    of all others are nearly alike, and with tied input and output embeddings a refresh of 1,000
    steps did not tell them apart (every place came out as one token). True when tokens were
    added; other checkpoints (already upgraded, or without slots, as VisualGLM) are left as they are.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    if not has_slots(tokenizer) or has_location_slots(tokenizer):
        return False
    tokenizer.add_tokens(list(LOCATION_TOKENS))
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    tables = {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
    with torch.no_grad():
        for token, (place, language) in zip(LOCATION_TOKENS, LOCATION_SLOTS):
            words = tokenizer(opening_words(place, language), add_special_tokens=False)["input_ids"]
            for weight in tables.values():
                weight[tokenizer.convert_tokens_to_ids(token)] = weight[words].mean(dim=0)
    return True


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


def save_state(
    cfg: TrainConfig, model: Any, optimizer: Any, scheduler: Any, step: int, history: list[dict],
    smoothed: float | None = None, processor: Any = None,
) -> None:
    """Everything --resume needs (weights or adapter + processor, optimizer, schedule, step, log), replaced
    atomically; `training_state/model` is a loadable checkpoint (or adapter) of its own."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp / "model")
        if processor is not None:
            processor.save_pretrained(tmp / "model")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        meta = {"step": step, "config": _jsonable(asdict(cfg)), "history": history, "smoothed_loss": smoothed}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    _atomic_dir(cfg.out / STATE_DIR, write)


def load_state(cfg: TrainConfig, optimizer: Any, scheduler: Any) -> tuple[int, list[dict], float | None]:
    """(step, history, smoothed loss) of the saved run; optimizer and schedule restored in place."""
    state = cfg.out / STATE_DIR
    meta = json.loads((state / "meta.json").read_text())
    saved = torch.load(state / "optim.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return int(meta["step"]), list(meta.get("history", [])), meta.get("smoothed_loss")


def step_seed(seed: int, step: int, process: int) -> int:
    """The torch seed of one step of one process (dropout draws), independent of earlier steps."""
    return int(hashlib.sha256(f"step-{seed}-{step}-{process}".encode()).hexdigest()[:15], 16)


def write_log(history: list[dict], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as handle:
        for entry in history:
            handle.write(json.dumps(entry) + "\n")
    os.replace(tmp, path)


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
    facts = uses_measured_facts(model)
    losses = []
    with torch.no_grad():
        for start in range(0, len(examples), cfg.batch_size):
            encoded = [encode_example(processor, e, cfg.max_length, facts=facts)
                       for e in examples[start : start + cfg.batch_size]]
            losses.append(batch_loss(model, encoded, tokenizer.pad_token_id, device, cfg.micro_batches))
    scores = recognition_scores(model, processor, corpus.grids[chosen], corpus.labels[chosen], batch_size=32, seed=cfg.seed)
    if was_training:
        train_mode(model)
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
    if getattr(getattr(model, "module", model), "derives_position_ids", False):  # .module: a DDP wrapper
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


def bf16_autocast_allowed(device: Any, warn: bool = True) -> bool:
    """Whether `--bf16` autocast runs on `device`: not on a CPU that only emulates bf16, where it
    would make training several times slower (then a warning on stderr, with `warn`, and fp32)."""
    reason = slow_bf16_warning(device)
    if reason is not None and warn:
        print(f"warning: --bf16 ignored, training in float32: {reason}", file=sys.stderr, flush=True)
    return reason is None


def batch_loss(
    model: Any, encoded: list[dict], pad_token_id: int, device: Any, groups: int, backward: Any = None,
    no_sync: Any = None, bf16: bool = False,
) -> float:
    """Mean answer-token loss of `encoded` (summed over all its answer tokens / their count), run as
    length-sorted micro-batches; `backward(loss)` per micro-batch. `no_sync()`, when given, is a context
    in which backward skips the gradient all-reduce (all micro-batches but the last, on several GPUs).
    With `bf16` the forward passes run under bf16 autocast (the backward follows their dtypes).
    """
    device_type = torch.device(device).type
    chunks = length_groups(encoded, groups)
    total_tokens = sum(sum(1 for t in e["labels"][1:] if t != IGNORE_INDEX) for e in encoded)
    total = 0.0
    for i, chunk in enumerate(chunks):
        batch = {k: v.to(device) for k, v in collate(chunk, pad_token_id).items()}
        last = i == len(chunks) - 1
        with contextlib.nullcontext() if (backward is None or no_sync is None or last) else no_sync():
            with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
                summed, _ = answer_loss(model, batch)
            scaled = summed / max(1, total_tokens)
            if backward is not None:
                backward(scaled)
        total += float(scaled.detach())
    return total


# ---------------------------------------------------------------- the loop


#: Kernels oneDNN keeps per matrix shape on a CPU (its default is 1,024). Training batches vary in length, so
#: with the default the process grew by about 3 GB in stage 2 (to 5.3 GB); with 32 it stayed near 2.5 GB at the
#: same speed (the model card's runs/v29). A value already in the environment is kept.
ONEDNN_CACHE_CAPACITY = "32"


def bound_onednn_cache() -> None:
    """Bound oneDNN's kernel cache for this process, unless the environment sets it; takes effect when set
    before the process's first CPU matrix kernel, as at the start of a training run."""
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE_CAPACITY)


@contextlib.contextmanager
def denormals_flushed(device: Any) -> Iterator[bool]:
    """On a CPU, floats too small for a normal float32 are computed as zero for the run (PyTorch's
    `set_flush_denormal`, where the CPU supports it), and computed as usual again after it; yields whether
    they are flushed. As a run trains, more values in its softmaxes and gradients fall that low, and the
    CPU computes with them many times more slowly: steps of the trained `runs/v30` took 1.06–1.13 s against
    0.95 s with them flushed, at the same loss to five digits (the model card's runs/v30)."""
    flushed = torch.device(device).type == "cpu" and torch.set_flush_denormal(True)
    try:
        yield flushed
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def training_attention(model: Any, cfg: TrainConfig, device: Any) -> str | None:
    """The decoder's attention implementation for this run, set on `model`: the small model trains on a
    CPU with plain ("eager") attention, about a tenth faster per step than PyTorch's fused CPU kernel at
    its short sequences and four heads. The choice is not saved: a loaded checkpoint gets transformers'
    default. Other runs (LoRA, GPUs) keep what the model was loaded with."""
    text_config = getattr(model.config, "text_config", None)
    if cfg.lora or torch.device(device).type != "cpu" or text_config is None:
        return getattr(text_config, "_attn_implementation", None)
    model.set_attn_implementation({"text_config": "eager"})
    return text_config._attn_implementation


def param_groups(model: Any, cfg: TrainConfig) -> list[dict]:
    """Optimizer groups: after a vision stage the pretrained tower learns at a tenth of the rate,
    so the first noisy gradients from the still-random projector and decoder do not undo it."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.vision_steps < 1 or cfg.lora:
        return [{"params": [p for _, p in trainable]}]
    tower = [p for n, p in trainable if "vision_tower" in n]
    rest = [p for n, p in trainable if "vision_tower" not in n]
    return [{"params": rest}, {"params": tower, "lr": cfg.lr * 0.1}]


def run_vision_stage(cfg: TrainConfig, model: Any, processor: Any, corpus: Corpus, accelerator: Any,
                     bf16: bool = False) -> list[dict]:
    """Stage 1 (`vision_steps` > 0, full training only): the vision tower learns the patterns first
    (forward passes under bf16 autocast with `bf16`)."""
    if cfg.vision_steps < 1 or cfg.lora:
        return []
    from tqdm import tqdm

    from finetune.vision_pretrain import pattern_accuracy, pretrain_vision

    model.to(accelerator.device)
    maps = corpus.map_indices("train")
    history: list[dict] = []
    bar = tqdm(total=cfg.vision_steps, desc="vision stage", unit="step",
               disable=not (cfg.progress and accelerator.is_main_process))
    started = time.monotonic()

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if step % cfg.log_every == 0 or step == cfg.vision_steps:
            history.append({"vision_step": step, "vision_loss": round(loss, 5),
                            "vision_seconds": round(time.monotonic() - started, 1)})

    _, head = pretrain_vision(model, processor, corpus.grids[maps], corpus.labels[maps], cfg.vision_steps,
                              batch_size=cfg.vision_batch_size, lr=cfg.vision_lr, seed=cfg.seed, on_step=on_step,
                              bf16=bf16)
    bar.close()
    val = corpus.map_indices("val")[: cfg.eval_maps * 4]
    if len(val):  # how well the tower alone separates the patterns: a ceiling for stage 2
        accuracy = pattern_accuracy(model, head, processor, corpus.grids[val], corpus.labels[val])
        history.append({"vision_step": cfg.vision_steps, "vision_val_exact_match": round(accuracy, 4),
                        "vision_val_n": len(val)})
        if cfg.progress and accelerator.is_main_process:
            tqdm.write(f"vision stage: exact match of the pattern head on {len(val)} val maps {accuracy:.4f}")
    return history


def run_training(cfg: TrainConfig) -> Path:
    """Train as configured; returns the output directory holding the final checkpoint or adapter.

    With `stop_after` below `steps` the session ends after that step with its state saved (no final
    checkpoint yet); the same settings plus `resume=True` continue it.
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs

    cfg.validate()
    check_quantization(cfg)
    # Some trainable weights may get no gradient (a Llava checkpoint reads its ViT's last hidden state,
    # so the post-layernorm is unused); on several GPUs DDP must be told, or the second step fails.
    accelerator = Accelerator(kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    check_output(cfg)
    accelerator.wait_for_everyone()  # every process has checked --out before any writes into it
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if accelerator.device.type == "cpu":
        bound_onednn_cache()
    with denormals_flushed(accelerator.device) as flushed:
        return train_session(cfg, accelerator, flushed)


def train_session(cfg: TrainConfig, accelerator: Any, flushed: bool) -> Path:
    """`run_training` from the data to the checkpoint, on a set-up `accelerator` (`flushed`: whether denormal
    floats are computed as zero, recorded in `train_meta.json`)."""
    from tqdm import tqdm

    main = accelerator.is_main_process
    bf16 = cfg.bf16 and bf16_autocast_allowed(accelerator.device, warn=main)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    corpus = Corpus(cfg.data, splits=("train", "val"))
    sampler = ExampleSampler(corpus, "train", cfg.recognition_fraction, count_fraction=cfg.count_fraction,
                             location_fraction=cfg.location_fraction, yesno_fraction=cfg.yesno_fraction,
                             count_varied=cfg.count_varied, chat_style=cfg.chat_style)
    cfg.out.mkdir(parents=True, exist_ok=True)
    model, processor = setup_model(cfg, corpus, accelerator)
    facts = uses_measured_facts(model) if cfg.measured_facts is None else cfg.measured_facts
    attention = training_attention(model, cfg, accelerator.device)
    if not cfg.lora:
        set_measured_facts(model, facts)  # saved in config.json: generation builds the same prompt
    if not cfg.resume and main and not (cfg.out / "processor_config.json").is_file():
        processor.save_pretrained(cfg.out)  # a resumed run needs the tokenizer it started with
    vision_history = run_vision_stage(cfg, model, processor, corpus, accelerator, bf16) if not cfg.resume else []
    train_mode(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Not passed to accelerator.prepare: Accelerate would step it once per process per step.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    start_step, history, smoothed = (0, vision_history, None)
    if cfg.resume:
        start_step, history, smoothed = load_state(cfg, optimizer, scheduler)
    model, optimizer = accelerator.prepare(model, optimizer)
    tokenizer = getattr(processor, "tokenizer", processor)
    # wall time of earlier sessions of a resumed run, so "seconds" stays cumulative
    earlier = next((h["seconds"] for h in reversed(history) if "seconds" in h), 0.0)
    started = time.monotonic() - earlier
    last_step = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
    bar = tqdm(total=cfg.steps, initial=start_step, desc="training", unit="step", disable=not (cfg.progress and main))
    no_sync = (lambda: accelerator.no_sync(model)) if accelerator.num_processes > 1 else None
    for step in range(start_step + 1, last_step + 1):
        torch.manual_seed(step_seed(cfg.seed, step, accelerator.process_index))
        examples = sampler.batch((cfg.seed, step, accelerator.process_index), cfg.batch_size)
        try:
            encoded = [encode_example(processor, e, cfg.max_length, facts=facts) for e in examples]
        except ValueError as exc:
            raise TrainingError(f"step {step}: {exc}") from None
        loss = torch.tensor(batch_loss(
            model, encoded, tokenizer.pad_token_id, accelerator.device, cfg.micro_batches, accelerator.backward,
            no_sync, bf16=bf16,
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
        if is_eval and main:
            scores = evaluate_during_training(accelerator.unwrap_model(model), processor, corpus, cfg)
            if scores:
                history.append({"step": step, **scores})
                bar.write(f"step {step}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in scores.items()))
            plot_loss_curve(history, cfg.out / "loss_curve.png")
        if (step % cfg.save_every == 0 or step == last_step) and main:
            save_state(cfg, accelerator.unwrap_model(model), optimizer, scheduler, step, history, smoothed, processor)
            write_log(history, cfg.out / "log.jsonl")
        accelerator.wait_for_everyone()
    bar.close()
    if last_step < cfg.steps:
        if main:
            plot_loss_curve(history, cfg.out / "loss_curve.png")
        return cfg.out
    if main:
        final = accelerator.unwrap_model(model)
        save_final(cfg, final, processor)
        write_log(history, cfg.out / "log.jsonl")
        plot_loss_curve(history, cfg.out / "loss_curve.png")
        meta = {
            "config": _jsonable(asdict(cfg)),
            "steps": cfg.steps,
            "seconds_total": round(time.monotonic() - started, 1),
            "resumed_at_seconds": earlier or None,
            "last_eval": next((h for h in reversed(history) if "val_loss" in h), None),
            "torch_threads": torch.get_num_threads(),
            "device": str(accelerator.device),
            "bf16_autocast": bf16,
            "attention": attention,
            "flush_denormal": flushed,
            "measured_facts": uses_measured_facts(final),
            "processes": accelerator.num_processes,
        }
        (cfg.out / "train_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return cfg.out
