"""`defect-glm data …`: the data tools from the command line (synth, stats, read, build, feedback-export).

Each subcommand's handler imports its module lazily so `defect-glm --help` stays fast.
"""

from __future__ import annotations

import argparse


def register(subcommands: argparse._SubParsersAction) -> None:
    data = subcommands.add_parser("data", help="wafer-map data: synthesise, inspect, read images, build corpora")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    # Each block below belongs to one module; keep them independent.
    _register_synth(actions)
    _register_stats(actions)
    _register_read(actions)
    _register_build(actions)
    _register_feedback_export(actions)


# --- synth (data_tools.synthetic) -------------------------------------------------------
#: Largest number of maps `data synth` makes unless --max-maps says otherwise (about 1 GB as int32 52×52).
SYNTH_MAX_MAPS = 100_000


def _register_synth(actions: argparse._SubParsersAction) -> None:
    synth = actions.add_parser(
        "synth",
        help="generate synthetic wafer maps of the 38 MixedWM38 classes into a MixedWM38-layout .npz",
        description="Generate seeded synthetic wafer maps, N per class, and write them as arr_0 (maps, int32), "
        "arr_1 (multi-hot labels, int32) and index, like the MixedWM38 file. 52×52 maps use the MixedWM38 "
        "die layout; other sizes a round layout.",
    )
    synth.add_argument("--per-class", metavar="N", type=int, required=True, help="maps per class")
    synth.add_argument("--out", metavar="FILE.npz", required=True, help="output file (.npz)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--rows", type=int, default=52, help="grid rows (default 52)")
    synth.add_argument("--cols", type=int, default=52, help="grid columns (default 52)")
    synth.add_argument("--classes", metavar="LIST", help="comma-separated class names, e.g. Center,Donut+Scratch "
                       "(default all 38)")
    synth.add_argument("--max-maps", metavar="N", type=int, default=SYNTH_MAX_MAPS,
                       help=f"refuse to make more maps than this (default {SYNTH_MAX_MAPS})")
    synth.add_argument("--compress", action="store_true", help="write a compressed .npz")
    synth.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.set_defaults(handler=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from tqdm import tqdm

    from data_tools.loaders import DataFormatError, save_mixedwm38
    from data_tools.synthetic import SyntheticError, generate_dataset, resolve_class
    from data_tools.taxonomy import CLASS_NAMES
    from defect_glm import CommandError

    out = Path(args.out)
    if out.suffix != ".npz":
        raise CommandError(f"--out must name a .npz file, got {out}")
    if out.exists() and not args.overwrite:
        raise CommandError(f"{out} already exists; pass --overwrite to replace it")
    if args.per_class < 1:
        raise CommandError(f"--per-class must be at least 1, got {args.per_class}")
    try:
        names = CLASS_NAMES if not args.classes else tuple(
            resolve_class(c.strip()).name for c in args.classes.split(",") if c.strip()
        )
    except SyntheticError as exc:
        raise CommandError(str(exc)) from None
    total = args.per_class * len(names)
    if total > args.max_maps:
        raise CommandError(f"{args.per_class} per class × {len(names)} classes = {total} maps is more than "
                           f"--max-maps {args.max_maps}; lower --per-class or raise --max-maps")
    start = time.perf_counter()
    try:
        with tqdm(total=total, unit="map", desc="synth", disable=args.no_progress) as bar:
            data = generate_dataset(args.per_class, seed=args.seed, shape=(args.rows, args.cols),
                                    classes=names, progress=bar.update)
        save_mixedwm38(out, data.grids, data.labels, data.index, compress=args.compress)
    except (SyntheticError, DataFormatError) as exc:
        raise CommandError(str(exc)) from None
    print(f"wrote {out}: {len(data)} maps ({len(names)} classes × {args.per_class}) of {args.rows}×{args.cols} dies, "
          f"seed {args.seed}, {time.perf_counter() - start:.1f} s")
    return 0


# --- stats (data_tools.stats) ------------------------------------------------------------
def _register_stats(actions: argparse._SubParsersAction) -> None:
    stats = actions.add_parser(
        "stats",
        help="per-class counts, failing-die fractions and failure zones of a MixedWM38-layout .npz",
        description="Print per-class statistics of a MixedWM38-layout .npz: map counts, the mean and standard "
        "deviation of the failing-die fraction, and the share of failures in the centre/middle/edge zones.",
    )
    stats.add_argument("file", metavar="FILE.npz", help="MixedWM38-layout file (arr_0 maps, arr_1 labels)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.add_argument("--limit", metavar="N", type=int, help="only the first N maps")
    stats.set_defaults(handler=_run_stats)


def _run_stats(args: argparse.Namespace) -> int:
    import json

    from data_tools.loaders import DataFormatError, load_mixedwm38
    from data_tools.stats import format_table, stats_json
    from defect_glm import CommandError

    try:
        data = load_mixedwm38(args.file, limit=args.limit)
    except DataFormatError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(json.dumps(stats_json(data), indent=2, ensure_ascii=False))
    else:
        print(format_table(data))
    return 0


# --- read (data_tools.image_reader) ------------------------------------------------------
def _register_read(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "read",
        help="read a wafer-map image (PNG/JPEG/…) back into its die grid",
        description="Read a wafer-map image into a die grid (0 off wafer, 1 good, 2 failing) and print it "
        "with its numbers; exit status 2 with the reason when the image is not a wafer map.",
    )
    parser.add_argument("image", help="image file (PNG, JPEG, GIF, BMP, WebP)")
    parser.add_argument("--json", action="store_true", help="print a JSON object (grid, dies, failing, yield, facts)")
    parser.add_argument("--rows", type=int, help="expected grid rows (with --cols), e.g. 52 for MixedWM38")
    parser.add_argument("--cols", type=int, help="expected grid columns (with --rows)")
    parser.add_argument("--max-pixels", type=int, default=None, help="refuse larger images (default 40,000,000)")
    parser.set_defaults(handler=_run_read)


def _run_read(args: argparse.Namespace) -> int:
    import json
    import sys

    from data_tools.image_reader import NotAWaferMapError, read_wafer_image_details

    if (args.rows is None) != (args.cols is None):
        print("defect-glm data read: error: give both --rows and --cols, or neither", file=sys.stderr)
        return 2
    expected = (args.rows, args.cols) if args.rows is not None else None
    try:
        details = read_wafer_image_details(args.image, expected_shape=expected, max_pixels=args.max_pixels)
    except NotAWaferMapError as exc:
        print(f"defect-glm data read: not a wafer map: {exc}", file=sys.stderr)
        return 2
    wafer = details.wafer
    if args.json:
        payload = {
            "grid": wafer.to_list(),
            "dies": wafer.dies,
            "failing": wafer.failing,
            "yield": round(wafer.yield_percent, 2),
            "rows": wafer.shape[0],
            "cols": wafer.shape[1],
            "read": {
                "method": details.method,
                "pixels_per_die": [round(v, 3) for v in details.pitch],
                "palette": details.palette,
                "colours": {k: list(v) for k, v in details.colours.items()},
            },
            "facts": wafer.facts(),
        }
        print(json.dumps(payload, ensure_ascii=False))
        return 0
    symbols = {0: " ", 1: ".", 2: "X"}
    for row in wafer.grid:
        print("".join(symbols[int(v)] for v in row).rstrip())
    print(
        f"{wafer.shape[0]}×{wafer.shape[1]} grid, {wafer.dies} dies, {wafer.failing} failing, "
        f"yield {wafer.yield_percent:.2f}%  (read {details.method}, "
        f"{details.pitch[0]:.2f}×{details.pitch[1]:.2f} px per die, palette {details.palette or 'unknown'})"
    )
    return 0


# --- build (data_tools.corpus) -----------------------------------------------------------
def _register_build(actions: argparse._SubParsersAction) -> None:
    build = actions.add_parser(
        "build",
        help="build the question/answer training corpus (images, maps.npz, train/val/test.jsonl, stats.json)",
        description="Build the EN/ZH question/answer corpus from MixedWM38 maps and/or synthetic maps. "
        "Exact duplicate maps are merged and every distinct map goes to one split, chosen from its content hash.",
    )
    build.add_argument("--mixedwm38", metavar="FILE", help="MixedWM38 .npz (arr_0 maps, arr_1 labels)")
    build.add_argument("--synthetic", metavar="N", type=int, default=0, help="add N synthetic maps per class")
    build.add_argument("--seed", type=int, default=0, help="seed for phrasings, languages, --limit and synthetic maps")
    build.add_argument("--conversations-per-map", "-k", metavar="K", type=int, default=3,
                       help="conversations sampled per distinct map (default 3)")
    build.add_argument("--val-fraction", metavar="F", type=float, default=0.05, help="share of maps in val (0.05)")
    build.add_argument("--test-fraction", metavar="F", type=float, default=0.10, help="share of maps in test (0.10)")
    build.add_argument("--zh-fraction", metavar="F", type=float, default=0.5,
                       help="share of conversations in Chinese (0.5)")
    build.add_argument("--kinds", metavar="LIST", help="comma-separated question types to use "
                       "(recognition,location,count,cause,check,yesno,followup; default all)")
    build.add_argument("--limit", metavar="N", type=int, help="use a seeded random sample of N MixedWM38 maps")
    build.add_argument("--out", metavar="DIR", required=True, help="output folder (must be new or empty)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing corpus in --out")
    build.add_argument("--no-progress", action="store_true", help="no progress bar")
    build.set_defaults(handler=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    from data_tools.corpus import CorpusConfig, CorpusError, build_corpus
    from defect_glm import CommandError

    kinds = None if args.kinds is None else tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    config = CorpusConfig(
        conversations_per_map=args.conversations_per_map,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        zh_fraction=args.zh_fraction,
        seed=args.seed,
        kinds=kinds,
    )
    try:
        stats = build_corpus(args.out, args.mixedwm38, args.synthetic, config, limit=args.limit,
                             overwrite=args.overwrite, progress=not args.no_progress)
    except CorpusError as exc:
        raise CommandError(str(exc)) from None
    maps, convs = stats["maps"], stats["conversations"]
    print(
        f"wrote {args.out}: {maps['total']} maps (train {maps['train']}, val {maps['val']}, test {maps['test']}), "
        f"{convs['total']} conversations, {stats['duplicates_merged']} duplicates merged, "
        f"{stats['build_seconds']} s"
    )
    return 0


# --- feedback-export (bot feedback → corpus records) -------------------------------------
def _register_feedback_export(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "feedback-export",
        help="turn 👍/👎 votes collected by the Slack bot into corpus records for the next fine-tune",
        description=(
            "Read the Slack bot's SQLite file and write a corpus-layout folder: images/, maps.npz, "
            "train.jsonl (answers voted helpful), rejected.jsonl (voted unhelpful), stats.json."
        ),
    )
    parser.add_argument("--db", required=True, help="the bot's SQLite file (its DEFECT_GLM_BOT_DB)")
    parser.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    parser.add_argument("--helpful-only", action="store_true", help="leave out answers voted unhelpful")

    def handler(args: argparse.Namespace) -> int:
        from bot.feedback import FeedbackExportError, export_feedback
        from bot.store import StoreError
        from defect_glm import CommandError

        try:
            result = export_feedback(args.db, args.out, include_unhelpful=not args.helpful_only)
        except (FeedbackExportError, StoreError) as exc:
            raise CommandError(str(exc)) from None
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(result.skipped.items())) or "none"
        print(f"wrote {result.out_dir}: {result.helpful} helpful, {result.unhelpful} unhelpful; skipped: {skipped}")
        return 0

    parser.set_defaults(handler=handler)
