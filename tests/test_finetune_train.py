"""Training the small model: `defect-glm train` end to end on a tiny corpus, resume, the loss, the output guard.

The corpus is built by the real builder (`defect-glm data build --synthetic 1`, one conversation per
map) and the model uses `TINY_CONFIG` sizes through `--model-config`, so a 4-step run takes seconds.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import platform
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from data_tools.answers import location_answer
from data_tools.locate import locate
from data_tools.wafer_map import WaferMap
from defect_glm import main
from finetune.answer_parser import mentions
from finetune.dataset import IGNORE_INDEX, Corpus, Example, ExampleSampler, collate, encode_example, training_messages
from finetune.loading import load_model
from finetune.precision import bf16_is_native
from finetune.prompting import uses_measured_facts
from finetune.small_model import TINY_CONFIG
from finetune.train import TrainConfig, TrainingError, batch_loss, check_output
from finetune.vision_pretrain import pretrain_vision, vision_tower

TINY = json.dumps(TINY_CONFIG.to_dict())
#: A 4-step run: evaluation every 2 steps, state saved every 2 steps, loss logged every step.
RUN = [
    "--steps", "4", "--batch-size", "4", "--micro-batches", "2", "--lr", "1e-2", "--warmup-steps", "1",
    "--eval-every", "2", "--eval-maps", "2", "--save-every", "2", "--log-every", "1", "--vocab-size", "300",
    "--model-config", TINY, "--threads", "1", "--seed", "3",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train-corpus") / "corpus"
    code = main(["data", "build", "--synthetic", "1", "-k", "1", "--val-fraction", "0.2", "--test-fraction", "0.1",
                 "--out", str(out), "--no-progress"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def full_run(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An uninterrupted 4-step run through the CLI, with its progress bar (stderr) captured."""
    out = tmp_path_factory.mktemp("run-a") / "run"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(["train", "--data", str(corpus_dir), "--out", str(out), *RUN])
    assert code == 0, stderr.getvalue()[-2000:]
    return out, stderr.getvalue()


@pytest.fixture()
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> Path:
    """An empty checkpoint registry, with the tiny checkpoint standing in for the committed default model."""
    home = tmp_path / "home"
    monkeypatch.setenv("DEFECT_GLM_HOME", str(home))
    monkeypatch.setenv("DEFECT_GLM_DEFAULT_MODEL", str(tiny_model_dir))
    return home


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


def _train_losses(run: Path) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return [(e["step"], e["loss"]) for e in lines if "loss" in e]


# ---------------------------------------------------------------- the run


def test_full_training_writes_a_loadable_checkpoint_log_curve_and_evaluations(full_run):
    out, stderr = full_run
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "log.jsonl",
                 "loss_curve.png", "train_meta.json", "training_state"):
        assert (out / name).exists(), name
    model, processor = load_model(out)
    assert model.config.text_config.hidden_size == TINY_CONFIG.text_hidden
    assert len(processor.tokenizer) == model.config.text_config.vocab_size

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in log if "loss" in e)
    evals = [e for e in log if "val_loss" in e]
    assert [e["step"] for e in evals] == [2, 4]  # every --eval-every steps (and at the end)
    assert all(e["val_n"] == 2 and 0.0 <= e["val_exact_match"] <= 1.0 for e in evals)

    with Image.open(out / "loss_curve.png") as image:
        assert image.format == "PNG" and image.size[0] > 100
    meta = json.loads((out / "train_meta.json").read_text())
    assert meta["steps"] == 4 and meta["config"]["seed"] == 3 and meta["last_eval"]["step"] == 4
    assert meta["measured_facts"] is True and json.loads((out / "config.json").read_text())["measured_facts"] is True
    assert "training" in stderr and "4/4" in stderr  # the progress bar
    # trained on this CPU with plain attention, a choice the checkpoint does not keep
    assert meta["attention"] == "eager" and model.config.text_config._attn_implementation == "sdpa"


def test_a_refresh_can_drop_the_facts_line_and_later_refreshes_keep_the_bases_choice(full_run, corpus_dir, tmp_path):
    base, _ = full_run
    short, kept = tmp_path / "short", tmp_path / "kept"
    one_step = ["--steps", "1", "--eval-every", "1", "--eval-maps", "2", "--save-every", "1", "--threads", "1",
                "--batch-size", "2", "--no-progress"]
    assert main(["train", "--base", str(base), "--data", str(corpus_dir), "--out", str(short), *one_step,
                 "--measured-facts", "no"]) == 0
    assert main(["train", "--base", str(short), "--data", str(corpus_dir), "--out", str(kept), *one_step]) == 0
    for run in (short, kept):
        assert json.loads((run / "train_meta.json").read_text())["measured_facts"] is False
        model, processor = load_model(run)
        assert not uses_measured_facts(model)
    example = Example(WaferMap(Corpus(corpus_dir, splits=("train",)).grids[0]), ("What is wrong?", "Center."))
    assert len(encode_example(processor, example, 512, facts=False)["input_ids"]) < len(
        encode_example(processor, example, 512)["input_ids"]) - 30


def test_a_bf16_run_with_a_vision_stage_logs_the_towers_val_exact_match_and_saves_fp32(corpus_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = [*RUN, "--steps", "2", "--vision-steps", "3", "--vision-batch-size", "4", "--count-fraction", "0.3",
            "--bf16", "--no-progress"]
    assert main(["train", "--data", str(corpus_dir), "--out", str(out), *args]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["vision_step"] for e in log if "vision_loss" in e] == [1, 2, 3]
    (ceiling,) = [e for e in log if "vision_val_exact_match" in e]
    assert 0.0 <= ceiling["vision_val_exact_match"] <= 1.0 and ceiling["vision_val_n"] >= 1
    meta = json.loads((out / "train_meta.json").read_text())
    assert meta["config"]["count_fraction"] == 0.3 and meta["config"]["bf16"] is True
    assert meta["flush_denormal"] is (platform.machine().lower() in ("x86_64", "amd64"))
    assert {t.dtype for t in _weights(out).values() if t.is_floating_point()} == {torch.float32}
    # On a CPU that only emulates bf16 (several times slower than fp32) the run says so and trains in fp32.
    native = bf16_is_native("cpu")
    assert meta["bf16_autocast"] is native
    assert ("--bf16 ignored, training in float32" in capsys.readouterr().err) is not native


def test_training_on_a_cpu_bounds_onednns_kernel_cache_unless_the_environment_sets_it(monkeypatch):
    from finetune.train import ONEDNN_CACHE_CAPACITY, bound_onednn_cache

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    bound_onednn_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == ONEDNN_CACHE_CAPACITY
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")
    bound_onednn_cache()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "256"


def test_training_on_a_cpu_computes_denormal_floats_as_zero_and_as_usual_after():
    from finetune.train import denormals_flushed

    tiny = torch.tensor([1e-39], dtype=torch.float32)  # below float32's smallest normal number
    with denormals_flushed("cpu") as flushed:
        assert flushed is (platform.machine().lower() in ("x86_64", "amd64"))
        assert (float((tiny * 1.5)[0]) == 0.0) is flushed
    assert float((tiny * 1.5)[0]) > 0.0
    with denormals_flushed("meta") as flushed:  # not a CPU run: left alone
        assert flushed is False and float((tiny * 1.5)[0]) > 0.0


def test_the_vision_stage_hands_stage_two_its_tower_in_the_default_layout(corpus_dir, tiny_model_dir):
    """Stage 1 trains the convolutions channels-last (faster); the tower it leaves has the default layout."""
    model, processor = load_model(tiny_model_dir, trainable=True)
    corpus = Corpus(corpus_dir, splits=("train",))
    tower = vision_tower(model)
    before = [p.detach().clone() for p in tower.parameters()]
    losses, _ = pretrain_vision(model, processor, corpus.grids[:8], corpus.labels[:8], steps=2, batch_size=4)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any(p.dim() == 4 for p in tower.parameters())  # a convolutional tower
    assert all(p.is_contiguous() for p in tower.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, tower.parameters(), strict=True))


def test_bf16_weights_warn_only_where_bf16_is_emulated(tiny_model_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, _ = load_model(tiny_model_dir, dtype="bfloat16", device="cpu")
    assert next(model.parameters()).dtype == torch.bfloat16
    emulated = [w for w in caught if "no native bf16" in str(w.message)]
    assert bool(emulated) is not bf16_is_native("cpu")
    assert bf16_is_native("meta")  # accelerators other than CPU and CUDA are trusted
    if not torch.cuda.is_available():
        assert not bf16_is_native("cuda")


def _assert_numbers_are_the_maps(example: Example) -> None:
    """Every number in the answer is one measured on the example's own (transformed) map."""
    facts = example.wafer.facts()
    answer = example.texts[-1]
    numbers = {int(n) for n in re.findall(r"\d+", re.sub(r"\d+\.\d+%", "", answer))}
    largest = facts["clusters"]["largest"]
    assert numbers and numbers <= {facts["dies"], facts["failing"], facts["good"], facts["clusters"]["count"],
                                   *([largest["size"]] if largest else []),
                                   *(v for z in facts["zones"].values() for v in (z["failing"], z["dies"]))}, answer
    if "%" in answer:
        assert f"{facts['yield']:.2f}%" in answer


def test_number_questions_are_answered_with_the_facts_of_the_transformed_map(corpus_dir):
    corpus = Corpus(corpus_dir, splits=("train", "val"))
    sampler = ExampleSampler(corpus, "train", 0.0, count_fraction=1.0)
    examples = sampler.batch((0, 0, 0), 40)
    originals = {corpus.grids[i].tobytes() for i in corpus.map_indices("train")}
    assert any(e.wafer.grid.tobytes() not in originals for e in examples)  # augmented
    for example in examples:
        _assert_numbers_are_the_maps(example)
    assert {"zh", "en"} == {"zh" if re.search(r"[\u4e00-\u9fff]", e.texts[1]) else "en" for e in examples}


def test_number_questions_also_come_as_follow_ups_answered_in_the_questions_language(corpus_dir):
    corpus = Corpus(corpus_dir, splits=("train", "val"))
    examples = ExampleSampler(corpus, "train", 0.0, count_fraction=1.0).batch((0, 0, 1), 80)
    follow_ups = [e for e in examples if len(e.texts) == 4]
    assert 20 <= len(follow_ups) <= 60 and len(examples) - len(follow_ups) >= 20
    openers = {"number" if re.search(r"\d", e.texts[1]) else "recognition" for e in follow_ups}
    assert openers == {"recognition", "number"}
    switched = 0
    for example in follow_ups:
        _assert_numbers_are_the_maps(example)  # the last answer: the follow-up's numbers
        chinese = [bool(re.search(r"[\u4e00-\u9fff]", text)) for text in example.texts]
        assert chinese[0] == chinese[1] and chinese[2] == chinese[3], example.texts
        switched += chinese[0] != chinese[2]  # a thread opened in the other language
    assert 0 < switched < len(follow_ups) / 2


def test_number_questions_on_varied_size_maps_use_those_maps_facts(corpus_dir):
    corpus = Corpus(corpus_dir, splits=("train", "val"))
    sampler = ExampleSampler(corpus, "train", 0.0, count_fraction=1.0, count_varied=1.0)
    examples = sampler.batch((0, 0, 0), 12)
    shapes = {e.wafer.shape for e in examples}
    assert len(shapes) > 3 and all(20 <= side <= 100 for shape in shapes for side in shape)
    for example in examples:
        _assert_numbers_are_the_maps(example)


def test_location_questions_are_answered_with_the_places_of_the_transformed_map(corpus_dir):
    corpus = Corpus(corpus_dir, splits=("train", "val"))
    examples = ExampleSampler(corpus, "train", 0.0, location_fraction=1.0).batch((0, 0, 2), 40)
    assert 8 <= sum(len(e.texts) == 4 for e in examples) <= 32  # half come after a recognition question
    for example in examples:
        measured = location_answer(locate(example.wafer, example.patterns), example.wafer.facts(),
                                   "zh" if re.search(r"[\u4e00-\u9fff]", example.texts[-2]) else "en")
        assert example.texts[-1] == measured
    placed = [e for e in examples if {"Edge_Loc", "Loc", "Scratch"} & set(e.patterns)]
    assert placed
    for example in placed:  # in training targets, the places are slots
        answer = training_messages(example, number_slots=True, location_slots=True)[-1]
        assert "<loc_" in answer["content"][0]["text"]


def test_yes_no_questions_follow_the_map_half_of_them_about_a_missing_pattern(corpus_dir):
    corpus = Corpus(corpus_dir, splits=("train", "val"))
    examples = ExampleSampler(corpus, "train", 0.0, yesno_fraction=1.0).batch((0, 0, 3), 60)
    answered = []
    for example in examples:
        _, answer = example.texts
        (asked, _), *_ = mentions(answer)  # "Yes, there is a Scratch pattern." / "没有，不存在划痕缺陷。"
        said_yes = answer.startswith(("Yes", "是的"))
        assert said_yes == (asked in example.patterns) and (said_yes or answer.startswith(("No", "没有"))), answer
        answered.append(said_yes)
    assert 15 <= sum(answered) <= 45


def test_chat_style_dresses_user_turns_and_keeps_the_answers(corpus_dir):
    from data_tools.phrasing import RECOGNITION_QUESTIONS, language_of

    corpus = Corpus(corpus_dir, splits=("train", "val"))

    def texts(chat_style: float | None) -> list[tuple[str, ...]]:
        shares = {} if chat_style is None else {"chat_style": chat_style}
        return [e.texts for e in ExampleSampler(corpus, "train", 0.6, count_fraction=0.2, **shares).batch((0, 0, 5), 80)]

    plain = texts(None)
    assert plain == texts(0.0)  # off by default: earlier recipes draw the same batches
    dressed = texts(1.0)
    assert dressed == texts(1.0)
    bank = {q for questions in RECOGNITION_QUESTIONS.values() for q in questions}
    user_turns = [t for example in dressed for t in example[::2]]
    assert sum(t not in bank and not any(q in t for q in bank) for t in user_turns) > 10  # loose words
    assert sum(any(q in t and q != t for q in bank) for t in user_turns) > 10  # a bank question with context around
    for example in dressed:
        assert all(language_of(q) == language_of(a) for q, a in zip(example[::2], example[1::2]))
    with pytest.raises(ValueError, match="chat_style must be in"):
        ExampleSampler(corpus, "train", 0.5, chat_style=1.5)


def test_the_chat_phrasings_benchmark_asks_wordings_training_does_not_show():
    import importlib.util
    import random

    from data_tools.phrasing import RECOGNITION_QUESTIONS, as_typed_in_chat, question_as_written

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "chat_phrasings.py"
    spec = importlib.util.spec_from_file_location("chat_phrasings", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    PHRASINGS = benchmark.PHRASINGS

    shown = {question_as_written(as_typed_in_chat(q, random.Random(seed), recognition=True))
             for seed in range(2000) for bank in RECOGNITION_QUESTIONS.values() for q in bank}
    bank = set(RECOGNITION_QUESTIONS["en"] + RECOGNITION_QUESTIONS["zh"])
    held_out = {question_as_written(p) for p in PHRASINGS} - bank  # not "what's wrong with this wafer? thanks!"
    assert len(held_out) >= 12
    assert not shown & held_out


def test_a_tokenizer_trained_from_scratch_learns_the_words_chat_style_training_adds(corpus_dir):
    from data_tools.phrasing import CHAT_CONTEXT, CHAT_OPENERS, LOOSE_RECOGNITION
    from finetune.train import _tokenizer_texts

    texts = set(_tokenizer_texts(Corpus(corpus_dir, splits=("train",))))
    for bank in (LOOSE_RECOGNITION, CHAT_OPENERS, CHAT_CONTEXT):
        assert set(bank["en"] + bank["zh"]) <= texts


def test_stopped_and_resumed_run_ends_with_the_same_weights(full_run, corpus_dir, tmp_path, capsys):
    reference, _ = full_run
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus_dir), "--out", str(out), *RUN, "--stop-after", "2", "--no-progress"]) == 0
    assert "--resume" in capsys.readouterr().out
    state = json.loads((out / "training_state" / "meta.json").read_text())
    assert state["step"] == 2 and not (out / "model.safetensors").exists()

    # a resume with different settings would not reproduce the run: refused, saying which
    assert main(["train", "--data", str(corpus_dir), "--out", str(out), *RUN, "--lr", "2e-2", "--resume"]) == 2
    assert "lr 0.02 (saved run: 0.01)" in capsys.readouterr().err

    assert main(["train", "--data", str(corpus_dir), "--out", str(out), *RUN, "--resume", "--no-progress"]) == 0
    expected, got = _weights(reference), _weights(out)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)
    resumed, uninterrupted = _train_losses(out), _train_losses(reference)
    assert [step for step, _ in resumed] == [step for step, _ in uninterrupted] == [1, 2, 3, 4]
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in uninterrupted], rel=1e-5)


def test_batches_are_seeded_by_run_seed_and_step(corpus_dir):
    sampler = ExampleSampler(Corpus(corpus_dir, splits=("train", "val")), "train", 0.5)

    def drawn(seed: tuple[int, int, int]) -> list[tuple]:
        return [(e.texts, e.patterns, e.wafer.grid.tobytes()) for e in sampler.batch(seed, 6)]

    first = drawn((3, 7, 0))
    assert drawn((3, 7, 0)) == first
    assert drawn((4, 7, 0)) != first and drawn((3, 8, 0)) != first and drawn((3, 7, 1)) != first


# ---------------------------------------------------------------- the loss


def _encoded_examples(
    corpus_dir: Path, processor: Any, n: int = 5, max_length: int = 512
) -> tuple[list[dict], list[Example]]:
    sampler = ExampleSampler(Corpus(corpus_dir, splits=("train", "val")), "train", 0.5, augment=True)
    examples = sampler.batch((0, 1, 0), n)
    return [encode_example(processor, e, max_length) for e in examples], examples


def test_labels_cover_exactly_the_answer_tokens(corpus_dir, tiny_model_dir):
    _, processor = load_model(tiny_model_dir)
    encoded, examples = _encoded_examples(corpus_dir, processor, n=8, max_length=4096)
    tokenizer = processor.tokenizer
    for e, example in zip(encoded, examples):
        answer_ids = [t for t in e["labels"] if t != IGNORE_INDEX]
        messages = training_messages(example, number_slots=True, location_slots=True)
        answers = [m["content"][0]["text"] for m in messages if m["role"] == "assistant"]
        assert tokenizer.decode(answer_ids) == "".join(f"{a}<|end|>" for a in answers)
        assert e["labels"][-1] == tokenizer.eos_token_id and e["labels"][0] == IGNORE_INDEX
    # over max_length: cut, but never to a prompt without an answer
    short, _ = _encoded_examples(corpus_dir, processor, n=8, max_length=200)
    for e in short:
        assert len(e["input_ids"]) <= 200 and e["labels"][-1] != IGNORE_INDEX
    with pytest.raises(ValueError, match="raise --max-length"):
        _encoded_examples(corpus_dir, processor, n=1, max_length=20)


#: A template that, like VisualGLM's, renders the question being answered differently from history.
ROUNDS_TEMPLATE = (
    "{% set ns = namespace(last=-1) %}"
    "{% for message in messages %}{% if message['role'] == 'user' %}{% set ns.last = loop.index0 %}{% endif %}"
    "{% endfor %}"
    "{% for message in messages %}"
    "{% if loop.index0 == ns.last %}{{ '<|user|>now: ' }}"
    "{% else %}{{ '<|' + message['role'] + '|>' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{{ '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def test_a_template_that_reserialises_history_trains_on_the_last_answer(tiny_model_dir):
    from data_tools.synthetic import generate

    _, processor = load_model(tiny_model_dir)
    wafer = generate("Center", __import__("numpy").random.default_rng(0))
    example = Example(wafer, ("What is it?", "Center.", "And the yield?", "High."), ("Center",))
    prefix_encoded = encode_example(processor, example, 4096)
    tokenizer = processor.tokenizer
    assert tokenizer.decode([t for t in prefix_encoded["labels"] if t != IGNORE_INDEX]) == "Center.<|end|>High.<|end|>"
    processor.chat_template = ROUNDS_TEMPLATE
    encoded = encode_example(processor, example, 4096)
    assert tokenizer.decode([t for t in encoded["labels"] if t != IGNORE_INDEX]) == "High.<|end|>"
    assert "now: And the yield?" in tokenizer.decode(encoded["input_ids"])


def test_collate_left_pads_with_real_token_positions():
    pixels = torch.ones(1, 3, 4, 4)
    short = {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7], "pixel_values": pixels}
    long = {"input_ids": [1, 2, 3, 4, 5], "labels": [IGNORE_INDEX] * 3 + [4, 5], "pixel_values": 2 * pixels}
    batch = collate([short, long], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX] * 3 + [6, 7], [IGNORE_INDEX] * 3 + [4, 5]]
    assert torch.equal(batch["pixel_values"], torch.cat([pixels, 2 * pixels]))


def test_batch_loss_is_the_mean_loss_over_answer_tokens_of_each_example_alone(corpus_dir, tiny_model_dir):
    model, processor = load_model(tiny_model_dir)
    encoded, _ = _encoded_examples(corpus_dir, processor)
    assert len({len(e["input_ids"]) for e in encoded}) > 1  # padding is really exercised

    # reference: every example on its own, no padding, full logits, plain next-token cross-entropy
    total, count = 0.0, 0
    with torch.no_grad():
        for e in encoded:
            ids = torch.tensor([e["input_ids"]])
            logits = model(input_ids=ids, pixel_values=e["pixel_values"]).logits[0, :-1]
            targets = torch.tensor(e["labels"][1:])
            total += float(torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX,
                                                             reduction="sum"))
            count += int((targets != IGNORE_INDEX).sum())
    expected = total / count
    pad = processor.tokenizer.pad_token_id
    with torch.no_grad():
        for groups in (1, 2, len(encoded)):
            assert batch_loss(model, encoded, pad, "cpu", groups) == pytest.approx(expected, rel=1e-5), groups


def test_micro_batches_give_the_same_gradient(corpus_dir, tiny_model_dir):
    model, processor = load_model(tiny_model_dir, trainable=True)
    encoded, _ = _encoded_examples(corpus_dir, processor, n=4)
    grads = []
    for groups in (1, 3):
        model.zero_grad(set_to_none=True)
        batch_loss(model, encoded, processor.tokenizer.pad_token_id, "cpu", groups, backward=lambda loss: loss.backward())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------- refusals


def test_out_guard_never_overwrites_runs_or_served_checkpoints(corpus_dir, full_run, isolated_home, tiny_model_dir,
                                                              tmp_path, capsys):
    used, _ = full_run
    assert main(["train", "--data", str(corpus_dir), "--out", str(used), *RUN]) == 2
    assert "already holds files; pass --resume" in capsys.readouterr().err
    assert main(["train", "--data", str(corpus_dir), "--out", str(tmp_path / "new"), *RUN, "--resume"]) == 2
    assert "no training state" in capsys.readouterr().err
    # the default model (here the tiny checkpoint) and anything in the registry are off limits
    for out in (tiny_model_dir, tiny_model_dir / "sub", isolated_home / "checkpoints" / "v0001"):
        with pytest.raises(TrainingError, match="training never writes there"):
            check_output(TrainConfig(data=corpus_dir, out=out))
    assert not (isolated_home / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given where CUDA is absent")
def test_quantised_lora_without_cuda_is_a_clear_error(corpus_dir, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "adapter"
    args = ["train", "--data", str(corpus_dir), "--out", str(out), "--lora", "--base", str(tiny_model_dir)]
    assert main([*args, "--quant", "4bit"]) == 2
    err = capsys.readouterr().err
    assert "--quant 4bit needs a CUDA GPU" in err and "without --quant" in err
    assert not out.exists()  # nothing was written
    assert main(["train", "--data", str(corpus_dir), "--out", str(out), "--quant", "8bit"]) == 2
    assert "--quant is for LoRA only" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model-config", '{"text_layerz": 2}'], "unknown model settings ['text_layerz']"),
        (["--model-config", '{"text_hidden": 30, "text_heads": 4}'], "text_hidden 30 must be divisible"),
        (["--model-config", "[1]"], "must be a JSON object"),
        (["--vocab-size", "100"], "--vocab-size must be at least 300"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--lora"], "--lora needs --base"),
        (["--lora", "--base", "somewhere", "--measured-facts", "no"], "--measured-facts is for full training"),
        (["--recognition-fraction", "0.5", "--count-fraction", "0.6"], "--count-fraction must be in [0, 1 - recog"),
        (["--count-varied", "1.5"], "--count-varied must be in [0, 1]"),
        (["--chat-style", "-0.1"], "--chat-style must be in [0, 1]"),
        (["--recognition-fraction", "0.5", "--count-fraction", "0.3", "--location-fraction", "0.3"],
         "--location-fraction must be in [0, 1 - recognition and count fractions]"),
        (["--recognition-fraction", "0.5", "--location-fraction", "0.3", "--yesno-fraction", "0.3"],
         "--yesno-fraction must be in [0, 1 - the recognition, count and location fractions]"),
    ],
)
def test_bad_settings_are_refused_before_training(corpus_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(["train", "--data", str(corpus_dir), "--out", str(out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_corpus_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    assert "build one with `defect-glm data build`" in capsys.readouterr().err


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    from finetune.train import lr_factor

    cfg = TrainConfig(data=Path("."), out=Path("."), steps=10, warmup_steps=2, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(11)]
    assert factors[:3] == [0.5, 1.0, 1.0] and factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(factors[1:]))
