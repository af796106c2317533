"""Greedy answer latency and throughput of a small-model checkpoint on this machine's CPU.

Batch 1: one recognition question per map (English and Chinese alternately), timed end to end as
the server's hf backend runs it (prompt building, image processing, `generate`, decoding); prints
the median and p95 in ms and the answer length. Batch N: the same questions in batches of
`--batch` (an unsure map's other views asked beside the next batch, as the server does), reported
as maps per second. Maps come from a MixedWM38 file when given (its
held-out test split by default), else from the synthetic generator.

    python benchmarks/model_latency.py                                   # the served checkpoint
    python benchmarks/model_latency.py --model runs/v1 --mixedwm38 ../shared/data/mixedwm38_dev.npz
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from finetune.views import VIEW_TRANSFORMS


def _maps(args: argparse.Namespace) -> np.ndarray:
    if args.mixedwm38:
        from finetune.evaluate import select_maps

        grids, _ = select_maps(args.mixedwm38, split=args.split, limit=args.n, seed=0)
        return grids
    from data_tools.synthetic import generate_dataset

    return generate_dataset(per_class=max(1, args.n // 38 + 1), seed=0).grids[: args.n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: the served checkpoint)")
    parser.add_argument("--mixedwm38", help="MixedWM38 .npz to take maps from (default: synthetic maps)")
    parser.add_argument("--split", default="test", help="corpus split of --mixedwm38 to use (default test)")
    parser.add_argument("--n", type=int, default=100, help="maps for the batch-1 measurement (default 100)")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the throughput measurement")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="weights dtype, as the server's --dtype (default float32)")
    parser.add_argument("--views", type=int, choices=tuple(VIEW_TRANSFORMS),
                        help="views of each map to answer from (finetune/views.py; default: the checkpoint's)")
    parser.add_argument("--views-below", type=float, metavar="P",
                        help="ask the other views only below this sureness (1: always; default: the checkpoint's)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    from data_tools.phrasing import RECOGNITION_QUESTIONS
    from data_tools.wafer_map import WaferMap
    from finetune.checkpoints import serving_model_dir
    from finetune.generation import generate_answers
    from finetune.loading import load_model
    from finetune.views import answer_views, views_below
    from model_server.backends.base import GenerationRequest

    torch.set_num_threads(args.threads)
    model_dir = args.model or serving_model_dir()
    model, processor = load_model(model_dir, dtype=args.dtype, channels_last=True, views=args.views,
                                  views_below=args.views_below)
    grids = _maps(args)
    requests = [
        GenerationRequest(RECOGNITION_QUESTIONS[("en", "zh")[i % 2]][0], WaferMap(g), max_new_tokens=64)
        for i, g in enumerate(grids)
    ]
    generate_answers(model, processor, requests[:2])  # warm-up

    single_ms, lengths = [], []
    tokenizer = getattr(processor, "tokenizer", processor)
    for request in requests:
        started = time.perf_counter()
        (answer,) = generate_answers(model, processor, [request])
        single_ms.append(1000 * (time.perf_counter() - started))
        lengths.append(len(tokenizer(answer, add_special_tokens=False)["input_ids"]))

    started = time.perf_counter()
    generate_answers(model, processor, requests, batch_size=args.batch)  # unsure maps' views ride with the next batch
    batched_s = time.perf_counter() - started

    figures = {
        "model": str(model_dir),
        "threads": args.threads,
        "dtype": args.dtype,
        "views": answer_views(model),
        "views_below": views_below(model),
        "maps": len(requests),
        "batch1_median_ms": round(statistics.median(single_ms), 1),
        "batch1_p95_ms": round(float(np.percentile(single_ms, 95)), 1),
        "batch1_maps_per_s": round(len(requests) / (sum(single_ms) / 1000), 2),
        "answer_tokens_median": statistics.median(lengths),
        f"batch{args.batch}_maps_per_s": round(len(requests) / batched_s, 2),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        for key, value in figures.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
