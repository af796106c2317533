"""Parity of our VisualGLM with SwissArmyTransformer's on tiny random configs (run in the SAT venv: run.sh).

Checks, all in fp32 on CPU, printing the largest absolute difference of each:
1. vision encoder (ViT + ln_vision), Q-Former and projection outputs;
2. language-model logits for a prompt with an image, and for a text-only prompt;
3. greedy generation (ours: transformers' generate with a KV cache; SAT: full recompute per step),
   alone and inside a left-padded batch;
4. the SAT LoRA round trip: a SAT model with Defect-GLM's LoRA layout (LM + ViT attention, the
   projection) saved as a SAT checkpoint, converted by `convert_sat_checkpoint`, loaded through
   the Auto classes, compared again.
`--write-fixture DIR` also stores that SAT LoRA checkpoint and SAT's outputs for the offline test.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import sat_reference as ref
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from finetune.visualglm import VisualGLMForConditionalGeneration, register_auto_classes  # noqa: E402
from finetune.visualglm.convert_sat import config_from_sat, convert_sat_checkpoint, merge_lora, rename_sat  # noqa: E402

TOKENIZER = REPO / "tests" / "fixtures" / "visualglm" / "tiny_ice_text.model"
ATOL = 1e-4  # plus RTOL times the largest reference value: fp32 round-off of two implementations
RTOL = 1e-5
GEN_STEPS = 8


class Report:
    def __init__(self) -> None:
        self.failures = 0

    def close(self, name: str, ours: torch.Tensor, theirs: torch.Tensor) -> None:
        diff = (ours.float() - theirs.float()).abs().max().item()
        tolerance = ATOL + RTOL * theirs.float().abs().max().item()
        ok = ours.shape == theirs.shape and diff <= tolerance
        self.failures += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name:<48} max |diff| = {diff:.2e}  (tolerance {tolerance:.1e}, shape {tuple(ours.shape)})")

    def same(self, name: str, ours: list[int], theirs: list[int]) -> None:
        ok = ours == theirs
        self.failures += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name:<48} ours {ours}  sat {theirs}")


def ours_from_sat_model(sat_model: ref.SatVisualGLM, sat_args: dict) -> VisualGLMForConditionalGeneration:
    config = config_from_sat(sat_args)
    merged, _ = merge_lora({k: v.detach().clone() for k, v in sat_model.state_dict().items()})
    weights = rename_sat(merged, config)
    model = VisualGLMForConditionalGeneration(config).eval()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not unexpected, unexpected
    assert all(k.endswith("rotary_emb.inv_freq") for k in missing), missing
    return model


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def ours_greedy(model, ids: torch.Tensor, image: torch.Tensor | None, mask: torch.Tensor | None = None) -> torch.Tensor:
    out = model.generate(input_ids=ids, attention_mask=mask, pixel_values=image, max_new_tokens=GEN_STEPS,
                         do_sample=False, eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id)
    return out[:, ids.shape[1]:]


def compare(report: Report, label: str, sat_model, ours, sat_args: dict) -> dict:
    bos, eos, gmask, pad = (sat_args[k] for k in ("bos_token_id", "eos_token_id", "gmask_token_id", "pad_token_id"))
    pre = [20, 21]
    ids = torch.tensor([pre + [pad] * sat_args["image_length"] + [30, 31, 32, 33, gmask, bos]])
    text_ids = torch.tensor([[40, 41, 42, gmask, bos]])
    torch.manual_seed(7)
    image = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        sat_vision = ref.vision(sat_model, image)
        vit = ours.image_encoder.vit(image)
        qformer = ours.image_encoder.qformer(vit)
        report.close(f"{label}: ViT output", vit, sat_vision["vit"])
        report.close(f"{label}: Q-Former output", qformer, sat_vision["qformer"])
        report.close(f"{label}: projected image embeddings", ours.image_encoder.glm_proj(qformer), sat_vision["projected"])
        sat_logits = ref.logits(sat_model, ids, image, len(pre), bos)
        report.close(f"{label}: LM logits, image prompt", ours(input_ids=ids, pixel_values=image, use_cache=False).logits, sat_logits)
        sat_text = ref.logits(sat_model, text_ids, None, 0, bos)
        report.close(f"{label}: LM logits, text-only prompt", ours(input_ids=text_ids, use_cache=False).logits, sat_text)
        sat_tokens = until_eos(ref.greedy(sat_model, ids, image, len(pre), bos, GEN_STEPS), eos)
        mine = until_eos(ours_greedy(ours, ids, image)[0].tolist(), eos)
        report.same(f"{label}: greedy generation (KV cache vs recompute)", mine, sat_tokens)
        # a left-padded batch: the image prompt plus a shorter text-free prompt with its own image
        short = torch.tensor([[pad] * sat_args["image_length"] + [50, gmask, bos]])
        sat_short = until_eos(ref.greedy(sat_model, short, image * 0.5, 0, bos, GEN_STEPS), eos)
        fill = ids.shape[1] - short.shape[1]
        batch = torch.cat([ids, torch.cat([torch.full((1, fill), pad), short], dim=1)])
        mask = torch.cat([torch.ones_like(ids), torch.cat([torch.zeros(1, fill, dtype=torch.long), torch.ones_like(short)], 1)])
        rows = ours_greedy(ours, batch, torch.cat([image, image * 0.5]), mask)
        report.same(f"{label}: batched greedy, row 1", until_eos(rows[0].tolist(), eos), sat_tokens)
        report.same(f"{label}: batched greedy, row 2 (left-padded)", until_eos(rows[1].tolist(), eos), sat_short)
    return {"input_ids": ids, "image": image, "logits": sat_logits, "text_ids": text_ids, "text_logits": sat_text,
            "generated": torch.tensor(sat_tokens), **{f"vision_{k}": v for k, v in sat_vision.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-fixture", type=Path, help="store the SAT LoRA checkpoint + SAT outputs here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    register_auto_classes()
    report = Report()
    sat_args = ref.tiny_sat_args()

    print("== base model: SAT vs ours (weights renamed, LM QKV rows regrouped)")
    base = ref.build(sat_args, seed=0)
    compare(report, "base", base, ours_from_sat_model(base, sat_args), sat_args)

    print("== Defect-GLM LoRA layout: SAT checkpoint -> convert_sat_checkpoint -> AutoModelForImageTextToText")
    lora_model = ref.build(sat_args, seed=3)
    ref.add_lora(lora_model, rank=4, lm_layers=[0, 1], vit_layers=[1])
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "checkpoint-tiny-lora", Path(tmp) / "converted"
        ref.save_sat_checkpoint(lora_model, sat_args, src, iteration=6000, lora={"lora_rank": 4, "layer_range": [0, 1]})
        summary = convert_sat_checkpoint(src, dst, tokenizer=TOKENIZER)
        print(f"      converted {summary['tensors']} tensors, merged LoRA in {len(summary['merged_lora_layers'])} layers")
        from transformers import AutoModelForImageTextToText

        converted = AutoModelForImageTextToText.from_pretrained(dst).eval()
        outputs = compare(report, "lora", lora_model, converted, sat_args)
        if args.write_fixture:
            target = args.write_fixture
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(src, target / "sat_checkpoint")
            torch.save(outputs, target / "sat_outputs.pt")
            print(f"      wrote the fixture to {target}")
    print(f"== {'all checks passed' if not report.failures else f'{report.failures} check(s) FAILED'}")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
