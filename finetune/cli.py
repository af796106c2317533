"""`defect-glm train | merge | average | eval | promote | checkpoints | convert`: training, evaluation, checkpoints.

Each subcommand's handler imports its module lazily so `defect-glm --help` stays fast.
"""

from __future__ import annotations

import argparse

from finetune.views import VIEW_TRANSFORMS


def register(subcommands: argparse._SubParsersAction) -> None:
    # Each block below belongs to one module; keep them independent.
    _register_training(subcommands)
    _register_merge(subcommands)
    _register_average(subcommands)
    _register_evaluation(subcommands)
    _register_checkpoints(subcommands)
    _register_convert(subcommands)


# --- train (finetune.train) ---------------------------------------------------------------
def _register_training(subcommands: argparse._SubParsersAction) -> None:
    train = subcommands.add_parser(
        "train",
        help="train the small model from scratch, or a LoRA adapter on any image-text-to-text model",
        description="Full training of the small wafer VLM on a corpus (`defect-glm data build`), or with --lora "
        "an adapter on --base (QLoRA with --quant on CUDA). Writes the checkpoint, training_state/ (for --resume), "
        "log.jsonl, loss_curve.png and train_meta.json into --out; never into the served checkpoint. "
        "Several GPUs: `accelerate launch -m defect_glm train ...` with the same arguments.",
    )
    train.add_argument("--data", metavar="DIR", required=True, help="corpus directory from `defect-glm data build`")
    train.add_argument("--out", metavar="DIR", required=True, help="new output directory for this run")
    train.add_argument("--lora", action="store_true", help="train a LoRA adapter on --base instead of the full model")
    train.add_argument("--base", metavar="MODEL_DIR", help="starting checkpoint (required with --lora)")
    train.add_argument("--quant", choices=("4bit", "8bit"), help="QLoRA: load --base quantised (CUDA + bitsandbytes)")
    train.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    train.add_argument("--batch-size", type=int, default=32, help="examples per step and process (default 32)")
    train.add_argument("--micro-batches", type=int, default=4, metavar="K",
                       help="split each batch into K length-sorted pieces: less padding, same gradient (default 4)")
    train.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3; try 2e-4 for LoRA)")
    train.add_argument("--warmup-steps", type=int, default=100, help="linear warm-up steps (default 100)")
    train.add_argument("--seed", type=int, default=0, help="seed of initialisation and batches (default 0)")
    train.add_argument("--eval-every", type=int, default=500, metavar="N", help="evaluate on val maps every N steps")
    train.add_argument("--eval-maps", type=int, default=256, metavar="N", help="val maps per evaluation (default 256)")
    train.add_argument("--save-every", type=int, default=500, metavar="N", help="save resumable state every N steps")
    train.add_argument("--log-every", type=int, default=10, metavar="N", help="log the smoothed loss every N steps")
    train.add_argument("--recognition-fraction", type=float, default=0.5, metavar="F",
                       help="share of examples that are augmented recognition questions (default 0.5)")
    train.add_argument("--count-fraction", type=float, default=0.0, metavar="F",
                       help="share of examples that are generated number questions (failing dies, yield, zones) on "
                       "augmented training maps, answered from the measured facts (default 0)")
    train.add_argument("--location-fraction", type=float, default=0.0, metavar="F",
                       help="share of examples that are generated location questions on augmented training maps, "
                       "answered with the places measured on them, half after a recognition question (default 0)")
    train.add_argument("--yesno-fraction", type=float, default=0.0, metavar="F",
                       help="share of examples that are generated 'is there <pattern>?' questions on augmented training "
                       "maps, half about a pattern the map lacks, answered from its labels (default 0)")
    train.add_argument("--count-varied", type=float, default=0.0, metavar="F",
                       help="share of those number questions asked about synthetic maps of random size (20-100 "
                       "dies a side), whose counts the image cannot tell: they teach copying from the facts (default 0)")
    train.add_argument("--chat-style", type=float, default=0.0, metavar="F",
                       help="share of all user turns dressed as typed in chat: context before or after the question, "
                       "a greeting, loose words for a recognition question (default 0)")
    train.add_argument("--measured-facts", choices=("yes", "no"),
                       help="whether the prompts carry the line of measured facts (dies, failing, yield, zones, clusters) "
                       "before the question; 'no' makes prompts ~60 %% shorter (numbers and places are slots filled "
                       "from the grid either way). Saved in config.json; default: the base checkpoint's choice, yes for "
                       "a new model. Full training only")
    train.add_argument("--vision-steps", type=int, default=0, metavar="N",
                       help="stage 1 before the conversation steps: N steps training the vision tower alone as a "
                       "pattern classifier (full training only; default 0: none)")
    train.add_argument("--vision-batch-size", type=int, default=128, help="maps per stage-1 step (default 128)")
    train.add_argument("--vision-lr", type=float, default=2e-3, help="stage-1 peak learning rate (default 2e-3)")
    train.add_argument("--max-length", type=int, default=512, help="longest example in tokens (default 512)")
    train.add_argument("--vocab-size", type=int, default=3000, help="tokenizer size for a model from scratch")
    train.add_argument("--model-config", metavar="JSON", default="{}",
                       help='small-model size overrides, e.g. \'{"text_layers": 6}\' (see finetune/small_model.py)')
    train.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    train.add_argument("--lora-alpha", type=int, default=32, help="LoRA alpha (default 32)")
    train.add_argument("--lora-targets", default="all-linear", help="comma-separated module names or all-linear")
    train.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    train.add_argument("--bf16", action="store_true",
                       help="bf16 mixed precision: forward passes under autocast, weights and checkpoint stay fp32 "
                       "(~1.6x faster on CPUs with AVX512-BF16/AMX and on recent GPUs; ignored, with a warning, on a CPU "
                       "without them, where bf16 is emulated and slower than fp32)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run saved in --out (same settings; ends with the same weights)")
    train.add_argument("--stop-after", type=int, metavar="STEP",
                       help="end this session after STEP (state saved), e.g. for a job time limit; then --resume")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(handler=_run_training)


def _run_training(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from defect_glm import CommandError
    from finetune.dataset import CorpusError
    from finetune.loading import ModelLoadError
    from finetune.train import TrainConfig, TrainingError, run_training

    try:
        model = json.loads(args.model_config)
    except json.JSONDecodeError as exc:
        raise CommandError(f"--model-config must be a JSON object: {exc}") from None
    if not isinstance(model, dict):
        raise CommandError(f"--model-config must be a JSON object, got {args.model_config!r}")
    cfg = TrainConfig(
        data=Path(args.data), out=Path(args.out), lora=args.lora, base=Path(args.base) if args.base else None,
        quant=args.quant, steps=args.steps, batch_size=args.batch_size, micro_batches=args.micro_batches, lr=args.lr, warmup_steps=args.warmup_steps,
        seed=args.seed, eval_every=args.eval_every, eval_maps=args.eval_maps, save_every=args.save_every, log_every=args.log_every,
        recognition_fraction=args.recognition_fraction, count_fraction=args.count_fraction, location_fraction=args.location_fraction, yesno_fraction=args.yesno_fraction, count_varied=args.count_varied, chat_style=args.chat_style, vision_steps=args.vision_steps,
        vision_batch_size=args.vision_batch_size, vision_lr=args.vision_lr, max_length=args.max_length, vocab_size=args.vocab_size,
        model=model, lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets,
        threads=args.threads, bf16=args.bf16, resume=args.resume, progress=not args.no_progress, stop_after=args.stop_after,
        measured_facts=None if args.measured_facts is None else args.measured_facts == "yes",
    )
    try:
        out = run_training(cfg)
    except (TrainingError, CorpusError, ModelLoadError) as exc:
        raise CommandError(str(exc)) from None
    if cfg.stop_after is not None and cfg.stop_after < cfg.steps:
        print(f"stopped after step {cfg.stop_after} of {cfg.steps}; state saved in {out / 'training_state'}. "
              "Continue with the same command plus --resume (without --stop-after, or a later one).")
        return 0
    print(f"checkpoint written to {out}")
    return 0


# --- merge (finetune.lora) -------------------------------------------------------------------
def _register_merge(subcommands: argparse._SubParsersAction) -> None:
    merge = subcommands.add_parser(
        "merge",
        help="fold a LoRA adapter into its base checkpoint: a plain checkpoint to serve or promote",
        description="Loads --base with the --adapter from `defect-glm train --lora`, merges the adapter weights "
        "into the base and saves model + processor into --out (new or empty). The result loads without peft "
        "and answers like base + adapter.",
    )
    merge.add_argument("--base", metavar="MODEL_DIR", required=True, help="the checkpoint the adapter was trained on")
    merge.add_argument("--adapter", metavar="ADAPTER_DIR", required=True, help="the adapter directory")
    merge.add_argument("--out", metavar="DIR", required=True, help="new directory for the merged checkpoint")
    merge.set_defaults(handler=_run_merge)


def _run_merge(args: argparse.Namespace) -> int:
    from defect_glm import CommandError
    from finetune.checkpoints import CheckpointError
    from finetune.loading import ModelLoadError
    from finetune.lora import merge_adapter

    try:
        out = merge_adapter(args.base, args.adapter, args.out)
    except (CheckpointError, ModelLoadError) as exc:
        raise CommandError(str(exc)) from None
    print(f"merged checkpoint written to {out}")
    return 0


# --- average (finetune.averaging) ----------------------------------------------------------
def _register_average(subcommands: argparse._SubParsersAction) -> None:
    average = subcommands.add_parser(
        "average",
        help="average the weights of refreshes of one checkpoint (a model soup) into a new checkpoint",
        description="Loads every --models checkpoint (runs of one architecture and vocabulary, fine-tuned from a "
        "common checkpoint), checks that their weights match in name and shape, and saves the (weighted) mean "
        "of their weights with the first one's config and processor into --out (new or empty), with "
        "averaged_from.json naming the ingredients. Evaluate the result (defect-glm eval --split val) before "
        "promoting it.",
    )
    average.add_argument("--models", metavar="DIR", nargs="+", required=True, help="two or more checkpoint directories")
    average.add_argument("--weights", metavar="W", nargs="+", type=float,
                         help="one weight per checkpoint (default: equal); normalised to sum to 1")
    average.add_argument("--out", metavar="DIR", required=True, help="new directory for the averaged checkpoint")
    average.set_defaults(handler=_run_average)


def _run_average(args: argparse.Namespace) -> int:
    from defect_glm import CommandError
    from finetune.averaging import AveragingError, average_checkpoints
    from finetune.checkpoints import CheckpointError
    from finetune.loading import ModelLoadError

    try:
        out = average_checkpoints(args.models, args.out, args.weights)
    except (AveragingError, CheckpointError, ModelLoadError) as exc:
        raise CommandError(str(exc)) from None
    print(f"averaged checkpoint ({len(args.models)} ingredients) written to {out}")
    return 0


# --- eval (finetune.evaluate) ---------------------------------------------------------------
def _register_evaluation(subcommands: argparse._SubParsersAction) -> None:
    ev = subcommands.add_parser(
        "eval",
        help="evaluate a checkpoint on labelled MixedWM38 maps through generation",
        description="Asks the model in natural language what defects each map shows, parses the generated answer "
        "back to a pattern set and scores it (exact match, per-pattern P/R/F1, Defect-GLM 36-class protocol, "
        "ms per map, and a failing-dies/yield number check on a sample).",
    )
    ev.add_argument("--model", metavar="DIR", help="checkpoint directory (default: the served checkpoint)")
    ev.add_argument("--adapter", metavar="DIR", help="LoRA adapter to apply on --model")
    ev.add_argument("--mixedwm38", metavar="FILE.npz", required=True, help="labelled maps (arr_0, arr_1)")
    ev.add_argument("--split", default="all", choices=("all", "train", "val", "test"),
                    help="keep only maps of this corpus split (by content hash; default all)")
    ev.add_argument("--limit", type=int, metavar="N", help="evaluate a seeded random sample of N maps")
    ev.add_argument("--batch-size", type=int, default=32, help="generation batch size (default 32)")
    ev.add_argument("--numbers", type=int, default=50, metavar="N", help="maps for the number check (0: skip)")
    ev.add_argument("--yesno", type=int, default=50, metavar="N",
                    help="maps for the yes/no check: 'is there <pattern>?', half about a pattern the map lacks (0: skip)")
    ev.add_argument("--locations", type=int, default=50, metavar="N",
                    help="maps with an Edge-Loc, Loc or Scratch for the location check (0: skip)")
    ev.add_argument("--seed", type=int, default=0, help="seed of the sample and question choice")
    ev.add_argument("--threads", type=int, help="torch CPU threads")
    ev.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16", "auto"),
                    help="weights' dtype, as `defect-glm serve --dtype` loads them (default float32; the server's "
                         "default is auto: bfloat16 where the CPU or GPU runs it natively)")
    ev.add_argument("--views", type=int, choices=tuple(VIEW_TRANSFORMS),
                    help="answer from this many rotated/mirrored views of each map (finetune/views.py; "
                         "default: the checkpoint's setting, as the server answers)")
    ev.add_argument("--views-below", type=float, metavar="P",
                    help="ask the other views only when the answer about the map as sent is less sure than P "
                         "(its least likely token after the first; 1: always; default: the checkpoint's setting)")
    ev.add_argument("--json", action="store_true", help="print the full result as JSON")
    ev.add_argument("--report", metavar="DIR", help="write confusion_matrix.png and report.md here")
    ev.set_defaults(handler=_run_evaluation)


def _run_evaluation(args: argparse.Namespace) -> int:
    from defect_glm import CommandError
    from finetune.checkpoints import serving_model_dir
    from finetune.evaluate import EvaluationError, dumps, evaluate_file
    from finetune.loading import ModelLoadError

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {args.batch_size}")
    try:
        result = evaluate_file(
            args.model or serving_model_dir(), args.mixedwm38, adapter_dir=args.adapter, split=args.split,
            limit=args.limit, batch_size=args.batch_size, numbers=args.numbers, locations=args.locations, yesno=args.yesno,
            seed=args.seed,
            report_dir=args.report, threads=args.threads, dtype=args.dtype, views=args.views,
            views_below=args.views_below,
        )
    except (EvaluationError, ModelLoadError) as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(dumps(result))
    else:
        protocol = result["defect_glm_protocol"]
        print(f"exact match {100 * result['exact_match']:.2f}% of {result['n']} maps "
              f"(Defect-GLM 36-class protocol {100 * protocol['exact_match']:.2f}% of {protocol['n']}); "
              f"{result['ms_per_map']} ms per map; unparsed {result['unparsed']}")
        if "numbers" in result:
            numbers = result["numbers"]
            print(f"numbers: failing dies ±1 {100 * numbers['failing_within_1_die']:.1f}%, "
                  f"yield ±0.5% {100 * numbers['yield_within_0_5_pct']:.1f}% on {numbers['n_maps']} maps "
                  f"({100 * (numbers.get('from_slots') or 0):.1f}% as slots filled from the map)")
        if result.get("yesno", {}).get("n"):
            yesno = result["yesno"]
            print(f"yes/no: right in {100 * yesno['right']:.1f}% of {yesno['n']} questions as served (checked against the "
                  f"recognition; the model's own answers {100 * (yesno.get('model_right') or 0):.1f}%); yes to a missing "
                  f"pattern {100 * (yesno['yes_when_absent'] or 0):.1f}%, no to a present one "
                  f"{100 * (yesno['no_when_present'] or 0):.1f}%")
        if result.get("locations", {}).get("n_maps"):
            locations = result["locations"]
            print(f"locations: sectors right in {100 * locations['sectors_right']:.1f}% of answers on "
                  f"{locations['n_maps']} maps, the largest cluster placed right in "
                  f"{100 * locations['largest_cluster_right']:.1f}%")
        if "report" in result:
            print(f"report: {result['report']}")
    return 0


# --- promote / checkpoints (finetune.checkpoints) -------------------------------------------
def _register_checkpoints(subcommands: argparse._SubParsersAction) -> None:
    from finetune.checkpoints import DEFAULT_TOLERANCE  # standard library only

    listing = subcommands.add_parser(
        "checkpoints",
        help="list registered checkpoint versions and the served one; --add DIR registers a checkpoint",
        description="Checkpoints live under $DEFECT_GLM_HOME/checkpoints (default ~/.local/share/defect-glm). "
        "The server loads the promoted one, or the committed finetune/default_model when none is promoted.",
    )
    listing.add_argument("--add", metavar="DIR", help="copy a checkpoint directory into the registry as a new version")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_run_checkpoints)
    promote = subcommands.add_parser(
        "promote",
        help="serve a checkpoint if it evaluates at least as well as the served one on a held-out file",
        description="Evaluates the candidate and the currently served checkpoint on the same held-out file; "
        "switches serving only if the candidate's exact match is at least as high and none of its other answer "
        "checks (numbers, places, yes/no; ~50 maps each) is more than --tolerance lower. The server picks it up at "
        "start or on POST /admin/reload.",
    )
    promote.add_argument("candidate", metavar="VERSION_OR_DIR", help="registered version (e.g. v0002) or a directory")
    promote.add_argument("--mixedwm38", metavar="HELDOUT.npz", required=True, help="held-out labelled maps")
    promote.add_argument("--split", default="all", choices=("all", "train", "val", "test"),
                         help="corpus split of the file to use (default all)")
    promote.add_argument("--limit", type=int, metavar="N", help="seeded sample of N maps (same for both)")
    promote.add_argument("--batch-size", type=int, default=32, help="generation batch size (default 32)")
    promote.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, metavar="F",
                         help="how far below the served checkpoint the candidate may score on an answer check other "
                         f"than recognition (shares in [0, 1]; default {DEFAULT_TOLERANCE})")
    promote.set_defaults(handler=_run_promote)


def _run_checkpoints(args: argparse.Namespace) -> int:
    import json

    from defect_glm import CommandError
    from finetune.checkpoints import CheckpointError, add_checkpoint, list_checkpoints, registry_root, serving_info

    if args.add:
        try:
            path = add_checkpoint(args.add)
        except CheckpointError as exc:
            raise CommandError(str(exc)) from None
        print(f"registered {path.name} at {path}")
        return 0
    rows, served = list_checkpoints(), serving_info()
    if args.json:
        print(json.dumps({"registry": str(registry_root()), "serving": served, "checkpoints": rows}, indent=2))
        return 0
    print(f"registry: {registry_root()}")
    print(f"serving:  {served['version']} ({served['path']})")
    for row in rows:
        last = (row.get("evaluations") or [{}])[-1]
        score = f"exact match {last['exact_match']:.4f} on {last['n']} maps" if "exact_match" in last else "not evaluated"
        print(f"{'*' if row['serving'] else ' '} {row['version']}  {row.get('created', '?')}  {score}")
    return 0


def _run_promote(args: argparse.Namespace) -> int:
    from defect_glm import CommandError
    from finetune.checkpoints import CheckpointError, promote
    from finetune.evaluate import EvaluationError
    from finetune.loading import ModelLoadError

    try:
        decision = promote(args.candidate, args.mixedwm38, split=args.split, limit=args.limit,
                           batch_size=args.batch_size, tolerance=args.tolerance)
    except (CheckpointError, EvaluationError, ModelLoadError) as exc:
        raise CommandError(str(exc)) from None
    candidate, current = decision["candidate_eval"], decision["current_eval"]
    previous = f"{current['exact_match']:.4f}" if current else "n/a (no checkpoint was served)"
    print(f"promoted {decision['serving']['version']}: exact match {candidate['exact_match']:.4f} vs "
          f"{previous} for the previous checkpoint; now serving "
          f"{decision['serving']['path']} (reload the server: POST /admin/reload)")
    return 0


# --- convert (finetune.visualglm.convert_sat) -----------------------------------------------
def _register_convert(subcommands: argparse._SubParsersAction) -> None:
    convert = subcommands.add_parser(
        "convert",
        help="convert a released checkpoint into one the visualglm backend serves",
        description="defect-glm-sat: Defect-GLM's SwissArmyTransformer release (e.g. checkpoint-WaferGLM-6000: "
        "latest, <iter>/mp_rank_00_model_states.pt, model_config.json) -> a VisualGLM checkpoint with its LoRA "
        "merged (safetensors + ChatGLM tokenizer). Serve it with `defect-glm serve --backend visualglm --model DST`. "
        "The .pt file is a pickle: convert only checkpoints you trust.",
    )
    convert.add_argument("format", choices=("defect-glm-sat",), help="source format")
    convert.add_argument("src", metavar="SRC", help="SAT checkpoint directory")
    convert.add_argument("dst", metavar="DST", help="new output directory")
    convert.add_argument("--tokenizer", metavar="PATH",
                         help="ice_text.model, or the THUDM/visualglm-6b directory holding it (default: SRC or its parent)")
    convert.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), help="cast weights (default: as stored)")
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    convert.set_defaults(handler=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from defect_glm import CommandError
    from finetune.visualglm.convert_sat import SatCheckpointError, convert_sat_checkpoint

    try:
        summary = convert_sat_checkpoint(args.src, args.dst, tokenizer=args.tokenizer, dtype=args.dtype,
                                         overwrite=args.overwrite)
    except (SatCheckpointError, FileNotFoundError) as exc:
        raise CommandError(str(exc)) from None
    print(f"converted iteration {summary['iteration']} ({summary['tensors']} tensors, LoRA merged in "
          f"{len(summary['merged_lora_layers'])} layers) to {summary['dst']}")
    return 0
