"""SwissArmyTransformer (SAT) VisualGLM checkpoints -> our format (`defect-glm convert defect-glm-sat SRC DST`).

A SAT checkpoint directory (what Defect-GLM released as `checkpoint-WaferGLM-6000`) holds:
- `latest`: the iteration number;
- `<iter>/mp_rank_00_model_states.pt`: a DeepSpeed file whose `module` is the state dict;
- `model_config.json`: the model arguments (sizes, special token ids, `eva_args`, `qformer_args`,
  LoRA settings; unknown keys are ignored).

Conversion:
1. LoRA layers (`….original.weight/bias` + `matrix_A.i` / `matrix_B.i`, one pair per fused
   partition) are merged: W = W0 + concat_i(B_i @ A_i) * alpha / r (SAT's alpha is 1).
2. Names: `mixins.eva.model.*` -> `image_encoder.*`, `mixins.chatglm-final.lm_head` -> `lm_head`,
   `transformer.*` unchanged; the rotary `inv_freq` buffers are recomputed.
3. The language model's fused QKV rows go from SAT's [all Q; all K; all V] to the per-head
   (q, k, v) grouping of the published checkpoint (a row permutation); vision weights keep SAT's layout.
Every tensor of the checkpoint is taken (Defect-GLM's second stage re-created the ViT's final
LayerNorm, so it is not the base model's). The result is written atomically (temp dir, rename).

The `.pt` file is a pickle (torch >= 2.6 needs weights_only=False for its numpy RNG state):
convert only checkpoints you trust.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .configuration import QFORMER_DEFAULTS, VisualGLMConfig

STATES_FILE = "mp_rank_00_model_states.pt"
LM_QKV = re.compile(r"^transformer\.layers\.(\d+)\.attention\.query_key_value\.(weight|bias)$")
LORA_PART = re.compile(r"^(?P<prefix>.+)\.matrix_(?P<which>[AB])\.(?P<index>\d+)$")


class SatCheckpointError(ValueError):
    """A directory that is not a convertible SAT VisualGLM checkpoint."""


# ---------------------------------------------------------------------------------------- reading
def read_sat_checkpoint(src: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """(state dict, model_config.json, iteration) of a SAT checkpoint directory."""
    src = Path(src).expanduser()
    if not src.is_dir():
        raise SatCheckpointError(f"{src} is not a directory; expected a SAT checkpoint directory")
    latest = src / "latest"
    config_file = src / "model_config.json"
    for path in (latest, config_file):
        if not path.is_file():
            raise SatCheckpointError(
                f"{src} is not a SAT checkpoint: {path.name} is missing "
                f"(expected latest, model_config.json and <iteration>/{STATES_FILE})"
            )
    iteration = latest.read_text().strip()
    states = src / iteration / STATES_FILE
    if not states.is_file():
        raise SatCheckpointError(f"{src}/latest names iteration {iteration!r} but {states} does not exist")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise SatCheckpointError(f"{config_file} is not valid JSON: {exc}") from exc
    blob = torch.load(states, map_location="cpu", weights_only=False)  # trusted input: see module docstring
    module = blob.get("module") if isinstance(blob, dict) else None
    if not isinstance(module, dict) or not module:
        found = sorted(blob)[:10] if isinstance(blob, dict) else type(blob).__name__
        raise SatCheckpointError(f"{states} has no 'module' state dict (found {found})")
    return dict(module), config, iteration


def config_from_sat(sat: dict[str, Any], **overrides: Any) -> VisualGLMConfig:
    """Our config from SAT's model_config.json (token ids and sizes as trained)."""
    required = ("num_layers", "hidden_size", "num_attention_heads", "vocab_size", "eva_args", "qformer_args")
    missing = [k for k in required if k not in sat]
    if missing:
        raise SatCheckpointError(f"model_config.json lacks {missing}: not a VisualGLM SAT checkpoint")
    hidden = int(sat["hidden_size"])
    values: dict[str, Any] = {
        "vocab_size": int(sat["vocab_size"]),
        "hidden_size": hidden,
        "num_layers": int(sat["num_layers"]),
        "num_attention_heads": int(sat["num_attention_heads"]),
        "inner_hidden_size": int(sat.get("inner_hidden_size") or 4 * hidden),
        "layernorm_epsilon": float(sat.get("layernorm_epsilon", 1e-5)),
        "max_sequence_length": int(sat.get("max_sequence_length", 2048)),
        "image_length": int(sat.get("image_length", 32)),
        "eva_config": dict(sat["eva_args"]),
        "qformer_config": {**{"is_decoder": QFORMER_DEFAULTS["is_decoder"]}, **dict(sat["qformer_args"])},
    }
    for key in ("bos_token_id", "eos_token_id", "mask_token_id", "gmask_token_id", "pad_token_id"):
        if sat.get(key) is not None:
            values[key] = int(sat[key])
    order = sat.get("layernorm_order", "post")
    if order != "post":
        raise SatCheckpointError(
            f"model_config.json has layernorm_order {order!r}; ChatGLM-6B (and this converter) use 'post'"
        )
    values.update(overrides)
    return VisualGLMConfig(**values)


# ---------------------------------------------------------------------------------------- transforming
def merge_lora(state: dict[str, torch.Tensor], alpha: float = 1.0) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Fold SAT LoRA pairs into plain weights; returns (new state dict, names of merged layers)."""
    groups: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    plain: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = LORA_PART.match(key)
        if match:
            groups.setdefault(match["prefix"], {"A": {}, "B": {}})[match["which"]][int(match["index"])] = value
        else:
            plain[key] = value
    merged = []
    for prefix, parts in sorted(groups.items()):
        weight_key = f"{prefix}.original.weight"
        if weight_key not in plain:
            raise SatCheckpointError(f"LoRA matrices for {prefix} but no {weight_key} in the checkpoint")
        if sorted(parts["A"]) != sorted(parts["B"]) or sorted(parts["A"]) != list(range(len(parts["A"]))):
            raise SatCheckpointError(
                f"{prefix}: matrix_A indices {sorted(parts['A'])} and matrix_B indices {sorted(parts['B'])} do not pair up"
            )
        original = plain.pop(weight_key)
        deltas = []
        for i in range(len(parts["A"])):
            a, b = parts["A"][i].float(), parts["B"][i].float()
            if a.shape[0] != b.shape[1] or a.shape[1] != original.shape[1]:
                raise SatCheckpointError(
                    f"{prefix} partition {i}: A {tuple(a.shape)} and B {tuple(b.shape)} do not fit a weight of "
                    f"shape {tuple(original.shape)}"
                )
            deltas.append(b @ a * (alpha / a.shape[0]))
        delta = torch.cat(deltas, dim=0)
        if delta.shape != original.shape:
            raise SatCheckpointError(f"{prefix}: LoRA update {tuple(delta.shape)} != weight {tuple(original.shape)}")
        plain[f"{prefix}.weight"] = (original.float() + delta).to(original.dtype)
        bias_key = f"{prefix}.original.bias"
        if bias_key in plain:
            plain[f"{prefix}.bias"] = plain.pop(bias_key)
        merged.append(prefix)
    leftovers = [k for k in plain if ".original." in k]
    if leftovers:
        raise SatCheckpointError(f"LoRA base weights without LoRA matrices: {leftovers[:5]}")
    return plain, merged


def qkv_sat_to_grouped(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rows [Q_all; K_all; V_all] -> [h0: q,k,v; h1: q,k,v; ...] (weight or bias)."""
    rows = tensor.shape[0]
    head_dim = rows // (3 * num_heads)
    return tensor.reshape(3, num_heads, head_dim, *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)


def qkv_grouped_to_sat(tensor: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of `qkv_sat_to_grouped`."""
    rows = tensor.shape[0]
    head_dim = rows // (3 * num_heads)
    return tensor.reshape(num_heads, 3, head_dim, *tensor.shape[1:]).transpose(0, 1).reshape(tensor.shape)


def rename_sat(state: dict[str, torch.Tensor], config: VisualGLMConfig) -> dict[str, torch.Tensor]:
    """SAT names/layouts -> ours (after LoRA merging)."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith("mixins.eva.model."):
            out["image_encoder." + key[len("mixins.eva.model.") :]] = value
        elif key == "mixins.chatglm-final.lm_head.weight":
            out["lm_head.weight"] = value
        elif key.startswith("mixins.chatglm-attn.rotary_emb."):
            continue  # recomputed
        elif key.startswith("transformer."):
            out[key] = qkv_sat_to_grouped(value, config.num_attention_heads) if LM_QKV.match(key) else value
        else:
            unknown.append(key)
    if unknown:
        raise SatCheckpointError(
            f"the checkpoint has tensors this converter does not know ({len(unknown)}, e.g. {unknown[:5]}); "
            "p-tuning and other SAT mixins are not supported"
        )
    return out


# ---------------------------------------------------------------------------------------- writing
def _find_tokenizer(src: Path, tokenizer: str | Path | None) -> Path:
    candidates = [Path(tokenizer).expanduser()] if tokenizer is not None else [src, src.parent]
    for candidate in candidates:
        path = candidate / "ice_text.model" if candidate.is_dir() else candidate
        if path.is_file():
            return path
    where = str(tokenizer) if tokenizer is not None else f"{src} or {src.parent}"
    raise SatCheckpointError(
        f"no ice_text.model found in {where}: pass --tokenizer PATH (the file, or the THUDM/visualglm-6b "
        "directory that holds it)"
    )


def convert_sat_checkpoint(
    src: str | Path,
    dst: str | Path,
    tokenizer: str | Path | None = None,
    dtype: str | None = None,
    lora_alpha: float = 1.0,
    max_shard_size: str = "2GB",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert SRC (SAT) into DST (our safetensors checkpoint + processor); returns a summary."""
    from .image_processing import VisualGLMImageProcessor
    from .modeling import VisualGLMForConditionalGeneration
    from .processing import VisualGLMProcessor
    from .tokenization import ChatGLMTokenizer

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if dst.exists() and not overwrite:
        raise SatCheckpointError(f"{dst} already exists; choose a new directory or pass --overwrite")
    state, sat_config, iteration = read_sat_checkpoint(src)
    vocab = _find_tokenizer(src, tokenizer)
    tok = ChatGLMTokenizer(str(vocab))
    overrides = {} if "eos_token_id" in sat_config else {"eos_token_id": tok.eos_token_id}
    config = config_from_sat(sat_config, **overrides)
    for name, expected in (("bos", config.bos_token_id), ("gmask", config.gmask_token_id), ("pad", config.pad_token_id)):
        found = getattr(tok, f"{name}_token_id")
        if found != expected:
            raise SatCheckpointError(
                f"the tokenizer's {name} id is {found} but model_config.json says {expected}: wrong ice_text.model?"
            )
    merged_state, merged = merge_lora(state, alpha=lora_alpha)
    weights = rename_sat(merged_state, config)
    target_dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(dtype or "")
    if dtype is not None and target_dtype is None:
        raise SatCheckpointError(f"dtype must be float16, bfloat16 or float32; got {dtype!r}")
    if target_dtype is not None:
        weights = {k: v.to(target_dtype) if v.is_floating_point() else v for k, v in weights.items()}

    with torch.device("meta"):
        model = VisualGLMForConditionalGeneration(config)
    expected_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for layer in range(config.num_layers):
        key = f"transformer.layers.{layer}.attention.rotary_emb.inv_freq"
        rotary = model.transformer.layers[layer].attention.rotary_emb
        weights[key] = rotary._inv_freq(torch.device("cpu"))
    missing = sorted(set(expected_shapes) - set(weights))
    extra = sorted(set(weights) - set(expected_shapes))
    wrong = [k for k in expected_shapes if k in weights and tuple(weights[k].shape) != expected_shapes[k]]
    if missing or extra or wrong:
        raise SatCheckpointError(
            "the checkpoint does not match its model_config.json: "
            f"missing {missing[:5]} ({len(missing)}), unexpected {extra[:5]} ({len(extra)}), "
            f"wrong shapes {[(k, tuple(weights[k].shape), expected_shapes[k]) for k in wrong[:5]]}"
        )
    model.load_state_dict(weights, strict=True, assign=True)
    config.dtype = str(next(iter(weights.values())).dtype).replace("torch.", "") if target_dtype is None else dtype

    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        model.save_pretrained(staging, max_shard_size=max_shard_size)
        image_processor = VisualGLMImageProcessor(image_size=int(config.eva_config["image_size"][0]))
        VisualGLMProcessor(image_processor, tok, image_length=config.image_length).save_pretrained(staging)
        (staging / "conversion.json").write_text(
            json.dumps(
                {"source": str(src.resolve()), "format": "sat", "iteration": iteration, "lora_alpha": lora_alpha,
                 "merged_lora_layers": merged},
                indent=2,
            )
            + "\n"
        )
        if dst.exists():
            shutil.rmtree(dst)
        staging.rename(dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"dst": str(dst), "iteration": iteration, "tensors": len(weights), "merged_lora_layers": merged}
