"""Time `build_corpus` and print what it built: maps/s, conversations, corpus size on disk, answer lengths.

    python benchmarks/corpus_build.py --mixedwm38 /work/shared/data/mixedwm38_dev.npz --synthetic 20
    python benchmarks/corpus_build.py --synthetic 50          # no real data needed

The corpus goes to a temporary folder that is removed afterwards, or to --out (a new or empty folder,
kept).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from data_tools.corpus import CorpusConfig, build_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mixedwm38", help="MixedWM38 .npz")
    parser.add_argument("--synthetic", type=int, default=0, help="synthetic maps per class")
    parser.add_argument("--limit", type=int)
    parser.add_argument("-k", "--conversations-per-map", type=int, default=3)
    parser.add_argument("--out", help="build here and keep it (default: a temporary folder, removed afterwards)")
    args = parser.parse_args()

    scratch = None if args.out else Path(tempfile.mkdtemp(prefix="corpus-bench-"))
    out = Path(args.out) if args.out else scratch / "corpus"
    started = time.perf_counter()
    stats = build_corpus(out, args.mixedwm38, args.synthetic, CorpusConfig(args.conversations_per_map),
                         limit=args.limit)
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    lengths = {"en": [], "zh": []}
    for split in ("train", "val", "test"):
        with (out / f"{split}.jsonl").open(encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                lengths[record["language"]].extend(len(m["content"]) for m in record["messages"][1::2])
    maps, convs = stats["maps"], stats["conversations"]
    print(f"maps: {maps['total']} (train {maps['train']}, val {maps['val']}, test {maps['test']}); "
          f"read {stats['maps_read']}, duplicates merged {stats['duplicates_merged']}")
    print(f"conversations: {convs['total']}; turns per conversation {stats['turns_per_conversation']}")
    print(f"kinds: {stats['by_kind']}")
    print(f"build: {seconds:.1f} s, {maps['total'] / seconds:.0f} maps/s, {size / 1e6:.1f} MB on disk")
    for language, values in lengths.items():
        if values:
            print(f"answer length ({language}, characters): median {statistics.median(values):.0f}, max {max(values)}")
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
