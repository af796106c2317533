"""Server throughput and latency with dynamic batching on and off, at several concurrency levels.

Starts a real server in this process on 127.0.0.1 (ephemeral port, temporary SQLite file) with
the hf backend, then for each setting — batching off (max batch size 1) and on (max batch size
= the highest concurrency, `--max-wait-ms`) — and each concurrency level, runs that many
clients in a closed loop for `--requests` requests in all. Traffic goes only to 127.0.0.1.

`--mode image` (default): each request is a new thread, one `POST /v1/threads/{id}/messages`
with a wafer map and "What defects does this wafer show?" (the bot's first message: the image
is read into a die grid, then one generation). `--mode followup`: each client first opens a
thread with a map, then every request is a text follow-up in its own thread (the prompt holds
the map and at most the last exchange: `max_history_turns 2`), so the model dominates.

Prints p50/p95 latency and throughput per row, the batched/unbatched throughput ratio at each
concurrency, and the generate-call batch sizes the server reported; `--json FILE` writes them.

    python benchmarks/server_throughput.py                         # the served/default checkpoint
    python benchmarks/server_throughput.py --model DIR --max-new-tokens 32
    python benchmarks/server_throughput.py --tiny                  # a tiny random checkpoint (smoke run)

Targets for the small model: ≥ 4× throughput at concurrency 32 with batching vs one at a time,
p95 < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_server.backends.base import Backend
from model_server.client import ModelServerClient
from model_server.config import ServerConfig, torch_threads_for
from model_server.testing import running_server, wafer_png

QUESTION = "What defects does this wafer show?"
KINDS = ("center", "edge", "scratch", "random", "none")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def _drive(url: str, concurrency: int, total: int, images: list[bytes], tag: str, mode: str,
                 before_timing: Callable[[], Awaitable[None]] | None = None) -> tuple[list[float], int, float]:
    """The clients: `total` requests from `concurrency` closed-loop clients (follow-up threads get their
    map first, untimed; `before_timing` runs just before the timed part). Latencies, errors, seconds."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(total))

    async with ModelServerClient(url, timeout=600) as client:
        if mode == "followup":  # each client's thread gets its map first (not timed)
            await asyncio.gather(*(client.send_message(f"{tag}-w{w}", QUESTION, image=images[w % len(images)])
                                   for w in range(concurrency)))

        async def worker(w: int) -> None:
            nonlocal errors
            for n in counter:
                started = time.perf_counter()
                try:
                    if mode == "followup":
                        await client.send_message(f"{tag}-w{w}", f"How many dies fail? ({n})")
                    else:
                        await client.send_message(f"{tag}-{n}", QUESTION, image=images[n % len(images)])
                except Exception as exc:  # counted and shown, the benchmark goes on
                    errors += 1
                    print(f"  request {n} failed: {exc}", file=sys.stderr)
                    continue
                latencies.append(time.perf_counter() - started)

        if before_timing is not None:
            await before_timing()
        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    return latencies, errors, elapsed


def _drive_in_child(conn: Connection, *args: Any) -> None:
    """Entry of the clients' own process: `_drive(*args)`, timed once the parent says go."""

    async def ready() -> None:
        conn.send("ready")
        conn.recv()  # blocks this process's loop, which has nothing else to do

    conn.send(asyncio.run(_drive(*args, before_timing=ready)))


async def run_level(url: str, concurrency: int, total: int, images: list[bytes], tag: str,
                    mode: str = "image", model_seconds: Callable[[], float] | None = None,
                    clients_process: bool = False) -> dict:
    """`total` requests from `concurrency` closed-loop clients; latency percentiles and throughput.

    `model_seconds` (the server's total time in generate calls so far) gives `model_busy`: the share
    of the timed run the model worker spent generating (near 1: the model is the bottleneck).
    `clients_process` runs the clients in a process of their own, as real clients (the bot) are,
    rather than on the server's event loop.
    """
    busy_before = 0.0

    async def snapshot() -> None:
        nonlocal busy_before
        busy_before = model_seconds() if model_seconds else 0.0

    args = (url, concurrency, total, images, tag, mode)
    if clients_process:
        context = multiprocessing.get_context("spawn")
        here, there = context.Pipe()
        process = context.Process(target=_drive_in_child, args=(there, *args), daemon=True)
        process.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, here.recv)  # the clients are set up
        await snapshot()
        here.send("go")
        latencies, errors, elapsed = await loop.run_in_executor(None, here.recv)
        process.join()
    else:
        latencies, errors, elapsed = await _drive(*args, before_timing=snapshot)
    busy = (model_seconds() - busy_before) / elapsed if model_seconds and elapsed > 0 else None
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p95_ms": percentile(latencies, 0.95) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000 if latencies else 0.0,
        "throughput_rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "model_busy": busy,
    }


async def run_setting(backend: Backend, db_dir: Path, batching: bool, levels: list[int], requests: int,
                      max_new_tokens: int, max_wait_ms: float, images: list[bytes], mode: str,
                      image_readers: int = ServerConfig.image_readers, clients_process: bool = False) -> list[dict]:
    cfg = ServerConfig(
        port=0,
        db=db_dir / f"bench-{'on' if batching else 'off'}.sqlite",
        max_batch_size=max(levels) if batching else 1,
        max_wait_ms=max_wait_ms if batching else 0.0,
        max_queue=max(256, 4 * max(levels)),
        max_new_tokens=max_new_tokens,
        max_threads=1_000_000,
        max_history_turns=2,
        image_readers=image_readers,
    )
    rows = []
    async with running_server(cfg, backend) as server:
        # warm-up: first calls allocate and compile kernels
        await run_level(server.url, 1, 2, images, "warm", mode)
        for level in levels:
            metrics = server.state.metrics
            calls_before, sizes_before = metrics.batch_size.count(), metrics.batch_size.sum()
            row = await run_level(server.url, level, max(requests, level), images, f"b{int(batching)}-c{level}",
                                  mode, metrics.generate_seconds.sum, clients_process)
            calls = metrics.batch_size.count() - calls_before
            row["mean_batch"] = (metrics.batch_size.sum() - sizes_before) / calls if calls else 0.0
            row["batching"] = batching
            rows.append(row)
            print(f"  batching {'on ' if batching else 'off'} concurrency {level:>3}: "
                  f"p50 {row['p50_ms']:8.1f} ms  p95 {row['p95_ms']:8.1f} ms  "
                  f"{row['throughput_rps']:7.2f} req/s  mean batch {row['mean_batch']:5.1f}  "
                  f"model busy {row['model_busy']:4.0%}  errors {row['errors']}", flush=True)
    return rows


def load_backend(args: argparse.Namespace, workdir: Path) -> Backend:
    """The backend to serve, with this process's torch threads set as `defect-glm serve` sets them."""
    from model_server.backends.registry import create_backend, use_torch_threads

    model = args.model
    if args.tiny:
        from finetune.tiny import build_tiny_checkpoint

        model = build_tiny_checkpoint(workdir / "tiny")
    cfg = ServerConfig(model=model, adapter=args.adapter, dtype=args.dtype, device=args.device, db=workdir / "x",
                       image_readers=args.image_readers, torch_threads=args.torch_threads,
                       model_process=args.model_process == "yes", views=args.views, views_below=args.views_below)
    use_torch_threads(cfg)  # a model process sets its own
    print(f"torch threads {torch_threads_for(cfg)}, image reader processes {args.image_readers}, "
          f"model {'in a process of its own' if cfg.model_process else 'in the server process'}", flush=True)
    return create_backend(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint directory (default: the served checkpoint or finetune/default_model)")
    parser.add_argument("--adapter", type=Path, default=None, help="LoRA adapter directory")
    parser.add_argument("--tiny", action="store_true", help="use a freshly built tiny random checkpoint")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights dtype (default auto, the server's: bfloat16 where native, else float32)")
    parser.add_argument("--device", default=None, help="torch device (default: CUDA when present)")
    parser.add_argument("--views", type=int, default=None,
                        help="views of each map the model answers from, as the server's --views (default: the checkpoint's)")
    parser.add_argument("--views-below", type=float, default=None,
                        help="sureness under which the other views are asked, as the server's --views-below "
                             "(default: the checkpoint's)")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts (default 1,8,32)")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level (default 64)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per answer (default 32)")
    parser.add_argument("--max-wait-ms", type=float, default=0.0, help="batching wait (default 0, the server default)")
    parser.add_argument("--mode", choices=("image", "followup"), default="image",
                        help="image: a new thread with a map per request; followup: text follow-ups (default image)")
    parser.add_argument("--only", choices=("on", "off"), default=None, help="run one setting only")
    parser.add_argument("--image-readers", type=int, default=ServerConfig.image_readers,
                        help=f"processes reading uploads into die grids (default {ServerConfig.image_readers}, the server's)")
    parser.add_argument("--torch-threads", type=int, default=ServerConfig.torch_threads,
                        help="the model's CPU threads (default 0: the server's rule, the cores left after one for "
                             "the event loop and one per image reader)")
    parser.add_argument("--model-process", choices=("yes", "no"), default="yes",
                        help="run the model in a process of its own (default yes, the server's) or in the server's")
    parser.add_argument("--clients-process", action="store_true",
                        help="run the clients in a process of their own, as real clients (the bot) are "
                             "(default: on the server's event loop)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    levels = sorted({int(x) for x in args.concurrency.split(",") if x.strip()})
    images = [wafer_png(kind, seed=i) for i, kind in enumerate(KINDS)]

    with tempfile.TemporaryDirectory(prefix="defect-glm-bench-") as tmp:
        workdir = Path(tmp)
        backend = load_backend(args, workdir)
        info = backend.info
        print(f"model {info.name} (version {info.version}, backend {info.backend}, "
              f"{info.details.get('dtype', '')}), {args.max_new_tokens} new tokens, "
              f"{args.requests} requests per level, mode {args.mode}", flush=True)
        settings = [s for s in (False, True) if args.only is None or args.only == ("on" if s else "off")]
        rows: list[dict] = []
        for batching in settings:
            rows += asyncio.run(run_setting(backend, workdir, batching, levels, args.requests,
                                            args.max_new_tokens, args.max_wait_ms, images, args.mode,
                                            args.image_readers, args.clients_process))
        backend.close()

    by = {(r["batching"], r["concurrency"]): r for r in rows}
    speedups = {}
    for level in levels:
        on, off = by.get((True, level)), by.get((False, level))
        if on and off and off["throughput_rps"] > 0:
            speedups[level] = on["throughput_rps"] / off["throughput_rps"]
            print(f"concurrency {level:>3}: batching gives {speedups[level]:.2f}x the throughput "
                  f"(p95 {on['p95_ms']:.0f} ms vs {off['p95_ms']:.0f} ms)")
    top = max(levels)
    if top in speedups and (True, top) in by:
        ok = speedups[top] >= 4.0 and by[(True, top)]["p95_ms"] < 1000
        print(f"target (>=4x at concurrency {top}, p95 < 1 s with batching): {'met' if ok else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps({"model": info.name, "version": info.version, "mode": args.mode, "rows": rows,
                                         "speedup": speedups}, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
