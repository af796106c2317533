"""Event-to-answer latency of the Slack bot: fake Slack, the real bot, a real model server.

Measures, for each of N wafer-map uploads (and a text follow-up in each thread), the time from
Slack delivering the event (Socket Mode) to the answer replacing the placeholder in the thread,
and prints median / p90 / mean per kind. Target (issue #5): median ≤ 1.5 s with the default
model on this CPU.

    python benchmarks/bot_latency.py                 # the served checkpoint (default model)
    python benchmarks/bot_latency.py --model DIR     # another checkpoint
    python benchmarks/bot_latency.py --tiny          # a tiny random model (plumbing only)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _maps(n: int) -> list:
    import numpy as np
    from fake_slack.maps import center_map, disc

    out = []
    for i in range(n):
        grid = center_map() if i % 2 == 0 else disc()
        if i % 2:
            r, c = np.indices(grid.shape)
            grid[(np.abs(r - c - (i % 7) + 3) <= 0) & (grid == 1)] = 2  # a diagonal scratch
        out.append(grid)
    return out


async def _measure(model_dir: Path, n: int, warmup: int, max_new_tokens: int) -> dict[str, list[float]]:
    from fake_slack import FakeSlack
    from fake_slack.harness import ModelServer, bot_config
    from fake_slack.maps import wafer_png

    from bot.app import BotRuntime

    channel = "C0BENCH"
    results: dict[str, list[float]] = {"upload": [], "follow-up": []}
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            FakeSlack() as fake,
            ModelServer(model_dir, Path(tmp) / "server.sqlite3", max_new_tokens=max_new_tokens) as server,
            BotRuntime(bot_config(fake, server.url, Path(tmp) / "bot.sqlite3")),
        ):
            await fake.wait_for_socket()

            async def answer_time(thread_ts: str, count: int) -> float:
                def done() -> list[dict]:
                    return [m for m in fake.bot_replies(channel, thread_ts)
                            if any(b["type"] == "actions" for b in m.get("blocks", []))]

                answers = await fake.wait_for(lambda: len(done()) >= count and done(), 300, "an answer")
                return float(answers[count - 1]["updated_at"])

            for i, grid in enumerate(_maps(n + warmup)):
                files = [fake.add_file(wafer_png(grid), name=f"lot{i}.png")]
                event = fake.user_message(channel, "", files=files)
                start = time.time()
                await fake.send_socket(event)
                upload_s = await answer_time(event["ts"], 1) - start
                follow = fake.user_message(channel, "Where are the failures and what could cause them?",
                                           thread_ts=event["ts"])
                start = time.time()
                await fake.send_socket(follow)
                follow_s = await answer_time(event["ts"], 2) - start
                if i >= warmup:
                    results["upload"].append(upload_s)
                    results["follow-up"].append(follow_s)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="checkpoint directory (default: the served checkpoint)")
    parser.add_argument("--tiny", action="store_true", help="use a tiny random checkpoint (measures plumbing only)")
    parser.add_argument("-n", type=int, default=10, help="uploads to time (each with one follow-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed uploads first")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="the server's generation limit")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            from finetune.tiny import build_tiny_checkpoint

            model_dir, label = build_tiny_checkpoint(Path(tmp) / "tiny"), "tiny random model"
        elif args.model is not None:
            model_dir, label = args.model, str(args.model)
        else:
            from finetune.checkpoints import serving_model_dir

            try:
                model_dir = serving_model_dir()
            except Exception as exc:
                print(f"no served checkpoint ({exc}); pass --model DIR or --tiny", file=sys.stderr)
                return 2
            label = f"served checkpoint {model_dir}"
        results = asyncio.run(_measure(Path(model_dir), args.n, args.warmup, args.max_new_tokens))

    print(f"bot event-to-answer latency — {label}, Socket Mode, fake Slack on 127.0.0.1, "
          f"max_new_tokens={args.max_new_tokens}, n={args.n}")
    for kind, values in results.items():
        values = sorted(values)
        p90 = values[min(len(values) - 1, round(0.9 * (len(values) - 1)))]
        print(f"  {kind:<10} median {statistics.median(values):.3f} s   p90 {p90:.3f} s   "
              f"mean {statistics.fmean(values):.3f} s   min {values[0]:.3f} s   max {values[-1]:.3f} s")
    median_all = statistics.median(results["upload"] + results["follow-up"])
    print(f"  overall median {median_all:.3f} s (target ≤ 1.5 s with the default model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
