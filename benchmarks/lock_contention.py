"""How much a batch's generation slows down when another thread of the same process holds Python's lock.

Generation is many small torch operations; after each one the generating thread takes Python's lock
(the GIL) back. In a server process the event loop (HTTP, SQLite, findings) wants the same lock, which
is why `defect-glm serve` runs the model in a process of its own (`model_server/model_process.py`). This
script measures the effect directly: one batch of recognition questions is generated alone, then beside
a thread that runs pure Python for a given share of each 2 ms (its duty) and sleeps for the rest. It
prints the median wall time of the batch at each duty.

    python benchmarks/lock_contention.py                                   # the served checkpoint
    python benchmarks/lock_contention.py --batch 14 --dtype bfloat16 --duty 0,0.33,0.6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PERIOD_S = 0.002  # the busy thread's cycle: hold the lock for duty × 2 ms, then sleep for the rest


def _busy(duty: float, stop: threading.Event) -> None:
    """Pure Python (it holds the lock while it runs) for `duty` of every PERIOD_S, until `stop`."""
    while not stop.is_set():
        started = time.perf_counter()
        while time.perf_counter() - started < duty * PERIOD_S:
            sum(range(200))
        time.sleep((1.0 - duty) * PERIOD_S)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: the served checkpoint)")
    parser.add_argument("--batch", type=int, default=14, help="questions in the batch (default 14)")
    parser.add_argument("--duty", default="0,0.33,0.6",
                        help="comma-separated shares of time the other thread holds the lock (default 0,0.33,0.6)")
    parser.add_argument("--repeats", type=int, default=7, help="timed generations per duty (default 7)")
    parser.add_argument("--max-new-tokens", type=int, default=17, help="tokens generated per answer (default 17)")
    parser.add_argument("--dtype", default="float32", choices=("auto", "float32", "bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, the server's on 2 cores)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    try:
        duties = [float(x) for x in args.duty.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--duty must be comma-separated numbers, got {args.duty!r}")
    if not duties or any(not 0.0 <= d < 1.0 for d in duties) or args.batch < 1 or args.repeats < 1:
        parser.error("--duty needs shares in [0, 1), --batch and --repeats at least 1")

    import torch

    from data_tools.phrasing import RECOGNITION_QUESTIONS
    from data_tools.synthetic import generate_dataset
    from data_tools.wafer_map import WaferMap
    from finetune.checkpoints import serving_model_dir
    from finetune.generation import generate_answers
    from finetune.loading import load_model, loaded_dtype
    from model_server.backends.base import GenerationRequest

    torch.set_num_threads(args.threads)
    model_dir = args.model or serving_model_dir()
    model, processor = load_model(model_dir, dtype=args.dtype, channels_last=True)
    grids = generate_dataset(per_class=args.batch // 38 + 1, seed=0).grids[: args.batch]
    requests = [GenerationRequest(RECOGNITION_QUESTIONS["en"][0], WaferMap(grid), max_new_tokens=args.max_new_tokens)
                for grid in grids]

    def timed() -> float:
        started = time.perf_counter()
        generate_answers(model, processor, requests)
        return time.perf_counter() - started

    timed()  # warm-up: the first call allocates and picks kernels
    rows = []
    for duty in duties:
        stop = threading.Event()
        other = threading.Thread(target=_busy, args=(duty, stop), daemon=True) if duty > 0 else None
        if other is not None:
            other.start()
        try:
            times = [timed() for _ in range(args.repeats)]
        finally:
            stop.set()
            if other is not None:
                other.join()
        rows.append({"duty": duty, "batch_ms_median": round(1000 * statistics.median(times), 1)})
    alone = rows[0]["batch_ms_median"] if duties[0] == 0 else None
    figures = {"model": str(model_dir), "dtype": loaded_dtype(args.dtype, "cpu"), "batch": args.batch,
               "torch_threads": args.threads, "rows": rows}
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"model {model_dir} ({figures['dtype']}), a batch of {args.batch}, {args.max_new_tokens} new tokens at most, "
          f"{args.threads} torch thread(s)")
    for row in rows:
        slower = f" ({row['batch_ms_median'] / alone:.2f}× alone)" if alone else ""
        print(f"  another thread holding the lock {100 * row['duty']:3.0f} % of the time: "
              f"{row['batch_ms_median']:7.1f} ms{slower}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
