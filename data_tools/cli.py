"""`defect-glm data …`: the data tools from the command line.

Actions: classes (the taxonomy), synth, stats, render, read, build, feedback-export.

Each subcommand's handler imports its module lazily so `defect-glm --help` stays fast.
"""

from __future__ import annotations

import argparse


def register(subcommands: argparse._SubParsersAction) -> None:
    data = subcommands.add_parser("data", help="wafer-map data: synthesise, inspect, read images, build corpora")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    # Each block below belongs to one module; keep them independent.
    _register_classes(actions)
    _register_synth(actions)
    _register_stats(actions)
    _register_render(actions)
    _register_read(actions)
    _register_build(actions)
    _register_feedback_export(actions)


# --- classes (data_tools.taxonomy) --------------------------------------------------------
def _register_classes(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "classes",
        help="list the 8 base patterns and the 38 MixedWM38 classes (names in English and Chinese)",
        description="Print the defect taxonomy: the 8 base patterns in multi-hot column order with their "
        "Chinese names and accepted aliases, the 38 MixedWM38 classes and the rules of the data.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON (patterns, classes, rules)")
    parser.add_argument("--lookup", metavar="NAME", help="resolve one pattern or class name/alias, e.g. 'EL+S' or Dount")
    parser.set_defaults(handler=_run_classes)


def _run_classes(args: argparse.Namespace) -> int:
    import json

    from data_tools import taxonomy as tx
    from defect_glm import CommandError

    def describe(c: tx.DefectClass) -> dict:
        return {"name": c.name, "english": c.english, "chinese": c.chinese, "patterns": list(c.patterns),
                "multi_hot": c.multi_hot.tolist()}

    if args.lookup is not None:
        try:
            found = tx.parse_class_name(args.lookup)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        print(json.dumps(describe(found), ensure_ascii=False) if args.json else
              f"{args.lookup} → {found.name} ({found.english}; {found.chinese}), multi-hot {found.multi_hot.tolist()}")
        return 0
    aliases: dict[str, list[str]] = {}
    for alias, key in tx.alias_table().items():
        aliases.setdefault(key, []).append(alias)
    rules = [f"{tx.BY_KEY[a].english} and {tx.BY_KEY[b].english} never occur together" for a, b in tx.EXCLUSIVE_PAIRS]
    rules += [f"{tx.BY_KEY[k].english} only occurs alone" for k in tx.SOLO_ONLY]
    if args.json:
        payload = {
            "columns": list(tx.PATTERN_KEYS),
            "patterns": [{"key": p.key, "english": p.english, "chinese": p.chinese, "description": p.description,
                          "aliases": sorted(aliases[p.key])} for p in tx.PATTERNS],
            "classes": [describe(c) for c in tx.CLASSES],
            "rules": rules,
        }
        print(json.dumps(payload, ensure_ascii=False, indent=2))
        return 0
    print("base patterns (multi-hot column order):")
    for i, p in enumerate(tx.PATTERNS):
        print(f"  {i}  {p.key:<10} {p.english:<10} {p.chinese:<6} aliases: {', '.join(sorted(aliases[p.key]))}")
    print(f"{len(tx.CLASSES)} classes:")
    for c in tx.CLASSES:
        print(f"  {''.join(str(v) for v in c.multi_hot)}  {c.name:<34} {c.chinese}")
    print("rules: " + "; ".join(rules))
    return 0


# --- synth (data_tools.synthetic) -------------------------------------------------------
#: Largest number of maps `data synth` makes unless --max-maps says otherwise (about 1 GB as int32 52×52).
SYNTH_MAX_MAPS = 100_000


def _synthetic_params(given: list[str]) -> dict:
    """`--param NAME=VALUE|LOW:HIGH` flags as generator parameters (a CommandError names a bad one)."""
    from data_tools.synthetic import SyntheticError, parse_param
    from defect_glm import CommandError

    try:
        return dict(parse_param(text) for text in given)
    except SyntheticError as exc:
        raise CommandError(str(exc)) from None


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
    synth.add_argument("--param", metavar="NAME=VALUE", action="append", default=[],
                       help="fix a generator parameter for every map, or NAME=LOW:HIGH to draw it from that range "
                       "(repeatable), e.g. --param noise=0 for maps without background noise; names: "
                       "data_tools/synthetic.py PARAM_RANGES")
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

    params = _synthetic_params(args.param)
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
                                    classes=names, progress=bar.update, params=params)
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
        help="per-class counts, failing-die fractions and failure zones of a data file",
        description="Print per-class statistics of wafer maps: map counts, the mean and standard deviation of "
        "the failing-die fraction, and the share of failures in the centre/middle/edge zones. FILE is a "
        "MixedWM38-layout .npz (arr_0 maps, arr_1 labels), WM-811K's LSWMD.pkl, or a folder of wafer-map "
        "images together with --labels CSV. Class keys are '+'-joined pattern names, 'Normal' for none.",
    )
    stats.add_argument("file", metavar="FILE", help="MixedWM38 .npz, WM-811K .pkl, or an image folder (with --labels)")
    stats.add_argument("--labels", metavar="CSV", help="labels CSV of an image folder (file column + class column "
                       "or 0/1 pattern columns)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.add_argument("--limit", metavar="N", type=int, help="only the first N maps")
    stats.set_defaults(handler=_run_stats)


def _run_stats(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from data_tools.loaders import DataFormatError, load_image_folder, load_mixedwm38, load_wm811k
    from data_tools.stats import format_report, format_table, records_stats, stats_json
    from defect_glm import CommandError

    path = Path(args.file)
    if args.limit is not None and args.limit < 1:
        raise CommandError(f"--limit must be a positive number of maps, got {args.limit}")
    try:
        if path.is_dir() or args.labels is not None:
            if args.labels is None:
                raise CommandError(f"{path} is a folder: give its labels CSV with --labels")
            result = load_image_folder(path, args.labels, limit=args.limit)
            for failure in result.failures:
                print(f"skipped line {failure.line} ({failure.file}): {failure.reason}", file=sys.stderr)
            if not result.records:
                raise CommandError(f"no wafer-map image listed in {args.labels} could be read")
            report = records_stats(result.records, str(path))
        elif path.suffix.lower() == ".pkl":
            records = load_wm811k(path, limit=args.limit)
            if not records:
                raise CommandError(f"{path} holds no wafer maps")
            report = records_stats(records, str(path))
        else:
            data = load_mixedwm38(path, limit=args.limit)
            if args.json:
                print(json.dumps(stats_json(data), indent=2, ensure_ascii=False))
            else:
                print(format_table(data))
            return 0
    except DataFormatError as exc:
        raise CommandError(str(exc)) from None
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else format_report(report))
    return 0


# --- render (data_tools.render) ----------------------------------------------------------
def _register_render(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "render",
        help="draw one map of a MixedWM38-layout .npz as an image (grey, viridis, fab or highlight palette)",
        description="Render map number INDEX of a MixedWM38-layout .npz to an image file (PNG, JPEG, …, "
        "from the --out suffix). Palettes: grey (Defect-GLM: white off wafer, grey good, black failing), viridis "
        "(matplotlib, WM-811K style), fab (light background, green good, red failing), highlight.",
    )
    parser.add_argument("file", metavar="FILE.npz", help="MixedWM38-layout file (arr_0 maps, arr_1 labels)")
    parser.add_argument("--index", metavar="I", type=int, default=0, help="which map (row of arr_0, default 0)")
    parser.add_argument("--out", metavar="IMAGE", required=True, help="output image, e.g. map.png or map.jpg")
    parser.add_argument("--palette", default="grey", help="grey (default), viridis, fab or highlight")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, help="pixels per die, may be fractional (default 1)")
    size.add_argument("--size", metavar="PX|WxH", help="image size in pixels: 512 or 800x600 (map centred)")
    parser.add_argument("--grid-lines", action="store_true", help="one-pixel lines between dies (≥ 3 px per die)")
    parser.add_argument("--margin", metavar="PX", type=int, default=0, help="uniform border in pixels (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(handler=_run_render)


def _parse_size(text: str) -> int | tuple[int, int]:
    from defect_glm import CommandError

    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 1:
        raise CommandError(f"--size is a number of pixels (512) or WIDTHxHEIGHT (800x600); got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def _run_render(args: argparse.Namespace) -> int:
    from pathlib import Path

    from data_tools.loaders import DataFormatError, load_mixedwm38
    from data_tools.render import render, save_image
    from defect_glm import CommandError

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CommandError(f"{out} already exists; pass --overwrite to replace it")
    if args.index < 0:
        raise CommandError(f"--index must be ≥ 0, got {args.index}")
    size = None if args.size is None else _parse_size(args.size)
    try:
        data = load_mixedwm38(args.file, limit=args.index + 1)
    except DataFormatError as exc:
        raise CommandError(str(exc)) from None
    if args.index >= len(data):
        raise CommandError(f"--index {args.index} is past the end of {args.file} ({len(data)} maps)")
    try:
        image = render(data.wafer(args.index), palette=args.palette, scale=args.scale, size=size,
                       grid_lines=args.grid_lines, margin=args.margin)
        save_image(image, out)
    except (ValueError, OSError) as exc:
        raise CommandError(str(exc)) from None
    print(f"wrote {out}: map {args.index} ({data.class_name(args.index)}), {image.size[0]}×{image.size[1]} px, "
          f"palette {args.palette}")
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
    build.add_argument("--synthetic-param", metavar="NAME=VALUE", action="append", default=[],
                       help="a generator parameter of the synthetic maps, fixed or NAME=LOW:HIGH drawn from that "
                       "range (repeatable), e.g. --synthetic-param noise=0:0.2 (as `data synth --param`)")
    build.add_argument("--seed", type=int, default=0, help="seed for phrasings, languages, --limit and synthetic maps")
    build.add_argument("--conversations-per-map", "-k", metavar="K", type=int, default=3,
                       help="conversations sampled per distinct map (default 3)")
    build.add_argument("--val-fraction", metavar="F", type=float, default=0.05, help="share of maps in val (0.05)")
    build.add_argument("--test-fraction", metavar="F", type=float, default=0.10, help="share of maps in test (0.10)")
    build.add_argument("--zh-fraction", metavar="F", type=float, default=0.5,
                       help="share of conversations in Chinese (0.5)")
    build.add_argument("--switch-share", metavar="F", type=float,
                       help="share of conversations that go on in the other language (default 0.12)")
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
        **({} if args.switch_share is None else {"switch_share": args.switch_share}),
    )
    try:
        stats = build_corpus(args.out, args.mixedwm38, args.synthetic, config, limit=args.limit,
                             overwrite=args.overwrite, progress=not args.no_progress,
                             synthetic_params=_synthetic_params(args.synthetic_param))
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
