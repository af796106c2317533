"""Recognition when the question is typed as people type in chat, against a question from the corpus.

The small model learned questions in the corpus's form: a capital first letter and closing
punctuation ("What's wrong with this wafer?"). In Slack people write "whats wrong with this wafer"
or "what defects do you see? thanks!". The prompt builder puts every question in the corpus's form
first (`data_tools.phrasing.question_as_written`: capital, closing mark, no emoji codes or closing
thanks) and reads a short question that comes with the map and names no other topic as the
recognition question (`opening_question`); this script measures what that leaves, including
phrasings it cannot mend (`--question TEXT` asks your own instead): each phrasing
below is asked about the same maps (the held-out test split of a MixedWM38 file, or synthetic maps),
the answers are parsed back to patterns (`finetune.answer_parser`), and the exact-match share is
printed per phrasing, the corpus's own question first.

    python benchmarks/chat_phrasings.py --mixedwm38 ../shared/data/mixedwm38_dev.npz
    python benchmarks/chat_phrasings.py --model runs/v21 --n 200 --json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: The corpus's question first, then chat-style phrasings: lowercase, no closing mark, a thanks or an emoji
#: code after the question, loose wording, context the question does not need, a bare keyword, a greeting.
#: None is a form `data_tools.phrasing.as_typed_in_chat` writes for training (a test checks). Most are read as
#: the banks' question by a rule (`data_tools.phrasing.bare_topic_question`: "defects?", "can you take a look";
#: `the_question_among_statements`: a sentence of context dropped; `opening_question`: a short question with the
#: map that names no other topic, "you see anything unusual?"); their rows measure the rule, the others how the
#: model reads a wording it never saw. The last six were added before `opening_question` was written.
PHRASINGS = (
    "What's wrong with this wafer?",
    "whats wrong with this wafer",
    "what defects do you see",
    "what is wrong with this wafer?",
    "any defects on this one?",
    "can you check this wafer",
    "what's wrong with this wafer? thanks!",
    "can you take a look :eyes:",
    "wafer map from lot 42, any pattern?",
    "What is wrong with this wafer? We saw a yield drop on tool ETCH-04 yesterday.",
    "defects?",
    "hi! what pattern is on this one?",
    "Lot 7 just finished final test. What pattern is this?",
    "这片晶圆有什么问题？",
    "这片晶圆有什么缺陷",
    "有什么缺陷",
    "这片晶圆有什么问题？谢谢",
    "帮我看看这片晶圆",
    "早上好，这片是什么缺陷？",
    "what's the story with this one?",
    "which failure signature is this",
    "you see anything unusual?",
    "你觉得这片是什么问题",
    "lot 3 came back from probe with low yield, what happened here?",
    "这片晶圆怎么回事",
    "anything weird going on with this one?",
    "how does this wafer look to you?",
    "we got this from the prober an hour ago, thoughts?",
    "what do we have here",
    "这片有异常吗",
    "看出什么了吗？",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint directory (default: the served checkpoint)")
    parser.add_argument("--mixedwm38", type=Path, help="MixedWM38 .npz to take maps from (default: synthetic maps)")
    parser.add_argument("--n", type=int, default=96, help="maps asked each phrasing (default 96)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the map choice (default 1)")
    parser.add_argument("--batch-size", type=int, default=32, help="generation batch size (default 32)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--question", action="append", metavar="TEXT",
                        help="ask this phrasing instead of the built-in list (repeatable)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")

    import numpy as np

    from data_tools.phrasing import opening_question
    from data_tools.taxonomy import from_multi_hot
    from data_tools.wafer_map import WaferMap
    from finetune.answer_parser import parse_answer
    from finetune.checkpoints import serving_model_dir
    from finetune.generation import generate_answers
    from finetune.loading import load_model
    from model_server.backends.base import GenerationRequest

    if args.mixedwm38:
        from finetune.evaluate import select_maps

        grids, labels = select_maps(args.mixedwm38, split="test", limit=args.n, seed=args.seed)
    else:
        from data_tools.synthetic import generate_dataset

        data = generate_dataset(per_class=args.n // 38 + 1, seed=args.seed)
        grids, labels = data.grids[: args.n], data.labels[: args.n]
    model_dir = args.model or serving_model_dir()
    model, processor = load_model(model_dir, dtype=args.dtype, channels_last=True)
    truth = [set(from_multi_hot(row)) for row in labels]
    rows = []
    for question in args.question or PHRASINGS:
        requests = [GenerationRequest(question, WaferMap(g), max_new_tokens=64) for g in grids]
        answers = generate_answers(model, processor, requests, batch_size=args.batch_size)
        right = [set(parse_answer(a) or ()) == t for a, t in zip(answers, truth)]
        rows.append({"question": question, "as_the_model_reads_it": opening_question(question),
                     "maps": len(right), "exact_match": round(float(np.mean(right)), 4),
                     "sample_answer": answers[0]})
    figures = {"model": str(model_dir), "maps": "mixedwm38 test split" if args.mixedwm38 else "synthetic",
               "rows": rows}
    if args.json:
        print(json.dumps(figures, ensure_ascii=False, indent=2))
    else:
        print(f"model {model_dir}, {figures['maps']}, {len(grids)} maps per phrasing")
        for row in rows:
            print(f"  {row['exact_match']:6.1%}  {row['question']!r:36} read as {row['as_the_model_reads_it']!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
