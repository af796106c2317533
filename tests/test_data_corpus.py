"""Answers, conversations and the corpus builder (`defect-glm data build`) on small hand-made and real data."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_tools import answers as A
from data_tools import phrasing
from data_tools.corpus import (
    RECOGNITION_QUESTIONS,
    CorpusConfig,
    CorpusError,
    build_corpus,
    recognition_answer,
    sample_conversation,
    split_of,
)
from data_tools.dialogue import KINDS, MapContext, sample_dialogue
from data_tools.phrasing import (
    bare_topic_question,
    defined_pattern,
    is_acknowledgement,
    opening_question,
    question_as_written,
)
from data_tools.taxonomy import BY_KEY, CLASSES, PATTERN_KEYS, to_multi_hot
from data_tools.wafer_map import FAIL, GOOD, WaferMap

ROOT = Path(__file__).resolve().parents[1]
CJK = re.compile(r"[\u4e00-\u9fff]")


# ---------------------------------------------------------------- hand-made maps


def disc(size: int = 52) -> np.ndarray:
    rows, cols = np.indices((size, size))
    r = np.hypot(rows - (size - 1) / 2, cols - (size - 1) / 2)
    return np.where(r <= size / 2 - 1, GOOD, 0).astype(np.uint8)


def noisy(grid: np.ndarray, seed: int, rate: float = 0.08) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = grid.copy()
    out[(grid == GOOD) & (rng.random(grid.shape) < rate)] = FAIL
    return out


def with_centre(grid: np.ndarray) -> np.ndarray:
    out = grid.copy()
    rows, cols = np.indices(grid.shape)
    out[(np.hypot(rows - 25.5, cols - 25.5) < 7) & (grid > 0)] = FAIL
    return out


def with_scratch(grid: np.ndarray) -> np.ndarray:
    out = grid.copy()
    for t in np.linspace(0, 1, 40):
        out[round(36 + 6 * t), round(8 + 24 * t)] = FAIL
    return out


def parse_listed(answer: str, language: str) -> list[str]:
    """The pattern names a recognition answer lists (the text between the colon and the full stop)."""
    colon, stop = (":", ".") if language == "en" else ("：", "。")
    listed = answer.split(colon, 1)[1].rsplit(stop, 1)[0].strip()
    if language == "en":
        return [n.strip() for n in re.split(r",\s*|\s+and\s+", listed)]
    return listed.split("、")


# ---------------------------------------------------------------- answers


@pytest.mark.parametrize("language", ["en", "zh"])
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_recognition_answer_states_the_full_pattern_set(language, variant):
    for cls in CLASSES:
        answer = recognition_answer(cls.patterns, language, variant)
        if not cls.patterns:
            assert ("normal" in answer) if language == "en" else ("正常" in answer)
            continue
        expected = [BY_KEY[k].english if language == "en" else BY_KEY[k].chinese for k in cls.patterns]
        assert parse_listed(answer, language) == expected, answer


def test_recognition_answer_variants_differ_and_bad_language_fails():
    assert len({recognition_answer(["Center", "Scratch"], "en", v) for v in range(3)}) == 3
    with pytest.raises(ValueError, match="'en' or 'zh'"):
        recognition_answer(["Center"], "de")


def test_count_answers_quote_the_measured_numbers():
    grid = disc()
    grid[20:23, 20:23] = FAIL  # 9 failing dies
    wafer = WaferMap(grid)
    facts = wafer.facts()
    assert facts["failing"] == 9
    assert A.count_answer(facts, "failing", "en") == f"9 of the {wafer.dies} dies fail."
    assert f"{wafer.yield_percent:.2f}%" in A.count_answer(facts, "yield", "zh")
    centre = facts["zones"]["center"]
    assert A.count_answer(facts, "zone", "en", zone="center") == f"9 of the {centre['dies']} dies in the centre zone fail."
    assert "1 cluster;" in A.count_answer(facts, "clusters", "en")
    with pytest.raises(ValueError, match="count topic"):
        A.count_answer(facts, "weight", "en")


@pytest.mark.parametrize("language", ["en", "zh"])
def test_yes_no_answers_for_present_and_absent_patterns(language):
    wafer = WaferMap(with_scratch(with_centre(noisy(disc(), 1))))
    context = MapContext.of(wafer, ["Center", "Scratch"])
    yes, no = ("Yes", "No") if language == "en" else ("是的", "没有")
    for key in PATTERN_KEYS:
        location = next((x for x in context.locations if x.key == key), None)
        answer = A.yesno_answer(key, context.patterns, language, location, context.facts)
        assert answer.startswith(yes if key in context.patterns else no), (key, answer)
    normal = A.yesno_answer("Donut", [], language)
    assert normal.startswith(no) and ("normal" in normal or "正常" in normal)


def test_cause_and_check_answers_name_every_pattern_and_separate_mixtures():
    text = A.cause_answer(["Center", "Scratch"], "en")
    assert text.startswith("This wafer shows Center and Scratch.")
    assert "CMP" in text and "To separate the contributors" in text
    zh = A.check_answer(["Edge_Ring"], "zh")
    assert zh.startswith("这片晶圆的缺陷模式是：边缘环。") and "去边" in zh
    assert "normal" in A.cause_answer([], "en")


def test_location_sentences_use_canonical_names_and_measured_numbers():
    from data_tools.locate import PatternLocation

    wafer = WaferMap(with_centre(noisy(disc(), 4)))
    facts = wafer.facts()
    centre = facts["zones"]["center"]
    assert A.location_sentence(PatternLocation("Center", "centred", "center"), facts, "en") == (
        f"The Center pattern sits at the wafer centre: {centre['failing']} of the {centre['dies']} centre-zone dies fail."
    )
    edge = A.location_sentence(PatternLocation("Edge_Loc", "edge_local", "edge", ("N", "NW")), facts, "zh")
    assert edge == "边缘局部缺陷位于边缘的上方和左上扇区（N、NW）。"
    line = A.location_sentence(PatternLocation("Scratch", "line", "middle", ("SW",), "rising"), facts, "en")
    assert line == "The Scratch is a diagonal (lower left to upper right) line in the middle zone, in the lower left " \
                   "sector (SW)."
    assert "unclear" in A.location_sentence(PatternLocation("Loc", "local"), facts, "en")
    assert "normal" in A.location_answer([], facts, "en")


# ---------------------------------------------------------------- conversations


def _context() -> MapContext:
    return MapContext.of(WaferMap(with_scratch(with_centre(noisy(disc(), 2)))), ["Center", "Scratch"])


def test_conversations_are_deterministic_alternate_roles_and_answer_in_the_question_language():
    context = _context()
    switched = 0
    for seed in range(80):
        language = "zh" if seed % 2 else "en"
        a = sample_dialogue(context, random.Random(seed), language)
        b = sample_dialogue(context, random.Random(seed), language)
        assert a == b
        roles = [m["role"] for m in a.messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and roles
        in_chinese = [bool(CJK.search(m["content"])) for m in a.messages]
        assert in_chinese[0::2] == in_chinese[1::2], a.messages  # every answer in its question's language
        assert in_chinese[0] == (language == "zh")
        if a.scenario.endswith("+switch"):
            switched += 1
            assert not all(flag == in_chinese[0] for flag in in_chinese), a.messages
        else:
            assert all(flag == in_chinese[0] for flag in in_chinese), a.messages
        assert set(a.kinds) <= set(KINDS)
    assert 0 < switched < 40  # about SWITCH_SHARE of them


def test_language_switch_share_is_configurable():
    context = _context()
    for seed in range(20):
        never = sample_dialogue(context, random.Random(seed), "en", switch_share=0.0)
        always = sample_dialogue(context, random.Random(seed), "en", switch_share=1.0)
        assert not never.scenario.endswith("+switch")
        assert always.scenario.endswith("+switch")
        # the turn after the original scenario is a self-contained question in Chinese, answered in Chinese
        extra = always.messages[len(never.messages)] if len(always.messages) > len(never.messages) else None
        assert extra is not None and CJK.search(extra["content"])
    with pytest.raises(CorpusError, match="switch fraction"):
        CorpusConfig(switch_share=1.5).validate()


def test_kinds_restrict_the_questions():
    context = _context()
    for seed in range(20):
        only = sample_dialogue(context, random.Random(seed), "en", kinds=["recognition"], switch_share=0.0)
        assert only.kinds == ("recognition",) and len(only.messages) == 2
        assert only.messages[0]["content"] in RECOGNITION_QUESTIONS["en"]
        switched = sample_dialogue(context, random.Random(seed), "en", kinds=["recognition"], switch_share=1.0)
        assert switched.kinds == ("recognition",)
        assert switched.messages[2]["content"] in RECOGNITION_QUESTIONS["zh"]
    with pytest.raises(ValueError, match="unknown conversation kinds"):
        sample_dialogue(context, random.Random(0), "en", kinds=["poetry"])
    with pytest.raises(ValueError, match="no conversation scenario"):
        sample_dialogue(context, random.Random(0), "en", kinds=["followup"])


def test_follow_ups_rely_on_earlier_turns():
    context = _context()
    found = Counter()
    for seed in range(400):
        conv = sample_dialogue(context, random.Random(seed), "en" if seed % 2 else "zh")
        questions = [m["content"] for m in conv.messages[0::2]]
        replies = [m["content"] for m in conv.messages[1::2]]
        for i, question in enumerate(questions):
            if question in ("And the second one?", "What about the second one?", "那第二个呢？", "第二个呢？"):
                # same kind of question as the turn before, now about Scratch (the second pattern)
                assert "Scratch" in replies[i] or "划痕" in replies[i]
                assert "Scratch" not in replies[i - 1] and "划痕" not in replies[i - 1]
                found["second"] += 1
            if question in ("那良率呢？", "What about the yield?"):
                assert f"{context.facts['yield']:.2f}%" in replies[i]
                found["yield"] += 1
            if question in ("What could cause them?", "这些可能是什么原因？"):
                assert i > 0 and ("CMP" in replies[i])
                found["cause"] += 1
    assert found["second"] and found["yield"] and found["cause"], found


def test_sample_conversation_for_a_normal_map():
    messages = sample_conversation(WaferMap(noisy(disc(), 5, 0.01)), [], random.Random(3), "en", kinds=["recognition"])
    assert "normal" in messages[1]["content"]


# ---------------------------------------------------------------- splits


def test_split_depends_only_on_the_hash_and_matches_fractions():
    hashes = [f"{i:016x}" for i in range(4000)]
    splits = [split_of(h, 0.1, 0.2) for h in hashes]
    assert splits == [split_of(h, 0.1, 0.2) for h in hashes]
    counts = Counter(splits)
    assert abs(counts["test"] / 4000 - 0.2) < 0.03 and abs(counts["val"] / 4000 - 0.1) < 0.03
    assert set(split_of(h, 0.0, 0.0) for h in hashes[:50]) == {"train"}


# ---------------------------------------------------------------- building


def _fixture_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """12 maps in the MixedWM38 layout, with two exact duplicates."""
    grids, labels = [], []
    for i in range(5):
        grids.append(noisy(disc(), i))
        labels.append(to_multi_hot([]))
        grids.append(with_scratch(with_centre(noisy(disc(), 100 + i))))
        labels.append(to_multi_hot(["Center", "Scratch"]))
    grids += [grids[1], grids[2]]
    labels += [labels[1], labels[2]]
    g, y = np.stack(grids).astype(np.int32), np.stack(labels).astype(np.int32)
    np.savez(path, arr_0=g, arr_1=y)
    return g, y


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    """`defect-glm data build ARGS` as the installed console script runs it (importing `defect_glm`)."""
    return subprocess.run(
        [sys.executable, "-c", "import sys, defect_glm; sys.exit(defect_glm.main())", "data", "build", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )


def _read_corpus(out: Path) -> list[dict]:
    return [json.loads(line) for s in ("train", "val", "test") for line in (out / f"{s}.jsonl").open(encoding="utf-8")]


def test_cli_builds_the_corpus_layout(tmp_path):
    npz = tmp_path / "maps.npz"
    grids, labels = _fixture_npz(npz)
    out = tmp_path / "corpus"
    result = _run_cli("--mixedwm38", str(npz), "--out", str(out), "-k", "4", "--val-fraction", "0.25",
                      "--test-fraction", "0.25", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "10 maps" in result.stdout and "2 duplicates merged" in result.stdout

    records = _read_corpus(out)
    stats = json.loads((out / "stats.json").read_text())
    assert len(records) == stats["conversations"]["total"] == 40
    assert len({r["id"] for r in records}) == 40
    assert stats["maps"]["total"] == 10 and stats["duplicates_merged"] == 2
    assert sum(stats["by_language"][s].get(lang, 0) for s in ("train", "val", "test") for lang in ("en", "zh")) == 40

    split_by_hash: dict[str, set[str]] = {}
    for r in records:
        assert set(r) >= {"id", "map_hash", "image", "split", "class", "patterns", "source", "language", "kinds",
                          "facts", "messages"}
        split_by_hash.setdefault(r["map_hash"], set()).add(r["split"])
        assert r["split"] == split_of(r["map_hash"], 0.25, 0.25)
        assert r["class"] in ("Normal", "Center+Scratch") and r["source"].startswith("mixedwm38:")
        image = Image.open(out / r["image"])
        assert image.size == (52, 52)
        grid = WaferMap(grids[int(r["source"].split(":")[1])])
        assert grid.content_hash == r["map_hash"] and r["facts"] == json.loads(json.dumps(grid.facts()))
    assert all(len(s) == 1 for s in split_by_hash.values())  # duplicates never straddle splits
    assert len(split_by_hash) == 10

    maps = np.load(out / "maps.npz")
    assert maps["grids"].shape == (10, 52, 52) and maps["grids"].dtype == np.uint8
    assert sorted(maps["hashes"].tolist()) == sorted(split_by_hash)
    for grid, h, y in zip(maps["grids"], maps["hashes"], maps["labels"]):
        assert WaferMap(grid).content_hash == h
        assert y.tolist() in (labels[0].tolist(), labels[1].tolist())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_rebuilding_with_the_same_seed_gives_the_same_corpus(tmp_path):
    npz = tmp_path / "maps.npz"
    _fixture_npz(npz)
    config = CorpusConfig(conversations_per_map=2, seed=7)
    build_corpus(tmp_path / "a", npz, config=config, progress=False)
    build_corpus(tmp_path / "b", npz, config=config, progress=False)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    other = build_corpus(tmp_path / "c", npz, config=CorpusConfig(conversations_per_map=2, seed=8), progress=False)
    assert other["maps"] == json.loads((tmp_path / "a" / "stats.json").read_text())["maps"]  # splits ignore the seed


def test_bad_inputs_give_clear_errors_and_write_nothing(tmp_path):
    out = tmp_path / "corpus"
    missing = _run_cli("--mixedwm38", str(tmp_path / "nope.npz"), "--out", str(out))
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr

    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, maps=np.zeros((2, 4, 4)))
    layout = _run_cli("--mixedwm38", str(wrong), "--out", str(out))
    assert layout.returncode == 2 and "arr_0" in layout.stderr

    nothing = _run_cli("--out", str(out))
    assert nothing.returncode == 2 and "nothing to build" in nothing.stderr

    fractions = _run_cli("--mixedwm38", str(wrong), "--out", str(out), "--val-fraction", "0.6", "--test-fraction", "0.5")
    assert fractions.returncode == 2 and "val + test" in fractions.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    npz = tmp_path / "maps.npz"
    _fixture_npz(npz)
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CorpusError, match="--overwrite"):
        build_corpus(out, npz, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    build_corpus(out, npz, config=CorpusConfig(conversations_per_map=1), overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "stats.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "maps.npz"]


def test_invalid_labels_are_refused(tmp_path):
    npz = tmp_path / "bad.npz"
    grid = noisy(disc(), 0)[None].astype(np.int32)
    np.savez(npz, arr_0=grid, arr_1=to_multi_hot(["Center", "Donut"])[None])
    with pytest.raises(CorpusError, match="MixedWM38 class"):
        build_corpus(tmp_path / "out", npz, progress=False)
    assert not (tmp_path / "out").exists()


def test_synthetic_maps_are_added_per_class(tmp_path):
    pytest.importorskip("data_tools.synthetic")
    stats = build_corpus(tmp_path / "out", synthetic_per_class=1, config=CorpusConfig(conversations_per_map=1),
                         progress=False)
    assert stats["maps_read"] == {"synthetic": 38}
    assert len(stats["by_class"]) == 38
    records = _read_corpus(tmp_path / "out")
    assert all(r["source"].startswith("synthetic:") for r in records)


def test_synthetic_maps_take_the_given_generator_parameters(tmp_path):
    stats = build_corpus(tmp_path / "out", synthetic_per_class=1, config=CorpusConfig(conversations_per_map=1),
                         progress=False, synthetic_params={"noise": (0.0, 0.05), "normal_noise": 0.0})
    assert stats["config"]["synthetic_params"] == {"noise": [0.0, 0.05], "normal_noise": 0.0}
    maps = np.load(tmp_path / "out" / "maps.npz")
    fail_share = (maps["grids"] == 2).sum(axis=(1, 2)) / (maps["grids"] > 0).sum(axis=(1, 2))
    assert fail_share.min() == 0.0  # the Normal map is clean
    with pytest.raises(CorpusError, match="unknown generator parameter"):
        build_corpus(tmp_path / "bad", synthetic_per_class=1, synthetic_params={"nois": 0.0}, progress=False)
    assert not (tmp_path / "bad").exists()


def test_real_maps_recognition_answers_match_labels(real_mixedwm38, tmp_path):
    stats = build_corpus(tmp_path / "out", real_mixedwm38, config=CorpusConfig(conversations_per_map=2, seed=1),
                         limit=300, progress=False)
    assert stats["maps"]["total"] >= 290
    for r in _read_corpus(tmp_path / "out"):
        names = [BY_KEY[k].english if r["language"] == "en" else BY_KEY[k].chinese for k in r["patterns"]]
        for question, answer in zip(r["messages"][0::2], r["messages"][1::2]):
            if question["content"] in RECOGNITION_QUESTIONS[r["language"]] and r["patterns"]:
                assert parse_listed(answer["content"], r["language"]) == names


@pytest.mark.parametrize(("typed", "as_written"), [
    ("whats wrong with this wafer", "Whats wrong with this wafer?"),
    ("  what defects\n do you   see?  ", "What defects do you see?"),
    ("Classify the defect pattern(s) on this wafer.", "Classify the defect pattern(s) on this wafer."),
    ("yield?", "What's the yield?"),  # a bare topic: the bank's first question on it
    ("Defects", "What defects does this wafer show?"),
    ("the root cause? thanks", "What could cause the defects on this wafer?"),
    ("原因", "这片晶圆的缺陷可能是什么原因造成的？"),
    ("良率？", "良率是多少？"),
    ("Scratch?", "Scratch?"),  # a pattern's name may ask whether there is one: kept
    ("what defects?", "What defects?"),  # more than a topic: kept
    ("What is the failure rate?", "How many dies fail?"),  # "what is the" asks nothing more than its topic
    ("坏了多少颗？", "有多少颗芯片失效？"),
    ("What is wrong with this wafer?", "What is wrong with this wafer?"),
    ("这是什么缺陷", "这片晶圆有哪些缺陷？"),  # "what defect is this": a topic after words that ask nothing more
    ("hey, yield?", "What's the yield?"),  # a greeting before a topic is dropped
    ("早上好，这片是什么缺陷？", "这片晶圆有哪些缺陷？"),
    ("Hi! what pattern is on this one?", "What pattern is on this one?"),  # a sentence of greeting: dropped
    ("Hi, what pattern is on this one?", "Hi, what pattern is on this one?"),  # a greeting in the question's sentence: kept
    # sentences that only tell something around one question are dropped
    ("What is wrong with this wafer? We saw a yield drop on tool ETCH-04 yesterday.", "What is wrong with this wafer?"),
    ("What is wrong with this wafer? yield dropped on ETCH-04", "What is wrong with this wafer?"),
    ("Lot 7 just finished final test. what pattern is this", "What pattern is this?"),
    ("Yield fell to 81.5 % on lot 7. Is there a scratch?", "Is there a scratch?"),
    ("这是A123批次的。这片有划痕吗", "这片有划痕吗？"),
    ("这是A123批次的。这片是什么缺陷", "这片晶圆有哪些缺陷？"),  # and the question left may be a bare topic
    ("Please list the causes. Is it a scratch?", "Please list the causes. Is it a scratch?"),  # a request: kept
    ("What pattern is it? And the yield?", "What pattern is it? And the yield?"),  # two questions: kept
    ("Lot 7 is done. The yield is low.", "Lot 7 is done. The yield is low."),  # no question: kept
    ("wafer map from lot 42, any pattern?", "What defects does this wafer show?"),  # a topic after context
    ("这是A批次的，良率？", "良率是多少？"),
    ("any defects?", "What defects does this wafer show?"),
    ("any scratch?", "Any scratch?"),
    ("check the chuck, causes?", "Check the chuck, causes?"),  # a request before the topic: kept
    ("这片有缺陷吗？", "这片有缺陷吗？"),  # a yes/no question: kept
    ("check this wafer please", "What defects does this wafer show?"),  # a request to look: what does it show?
    ("帮我看看这片晶圆", "这片晶圆有哪些缺陷？"),
    ("麻烦看下这片。", "这片晶圆有哪些缺陷？"),
    ("check?", "What should I check for this wafer?"),  # the topic "checks", not a request to look
    ("check the chuck", "Check the chuck?"),  # a request about something else: kept
    ("看看良率", "看看良率？"),
    ("这片晶圆有什么缺陷", "这片晶圆有哪些缺陷？"),  # a topic after "this wafer has what": the bank's question
    ("良率是多少？", "良率是多少？"),
    ("état du wafer", "état du wafer?"),  # only an ASCII first letter is capitalised
    ("what's wrong with this wafer? thanks!", "What's wrong with this wafer?"),
    ("is it ok, thx", "Is it ok?"),
    ("can you take a look :eyes:", "What defects does this wafer show?"),  # a request to look, once the emoji goes
    ("这片晶圆有什么问题？谢谢", "这片晶圆有什么问题？"),
    ("良率多少，谢谢", "良率多少？"),
    ("thanks", "Thanks?"),  # nothing but thanks: kept
    ("Thank you for the list?", "Thank you for the list?"),
    ("   ", ""),
    # a guess at the cause, naming no pattern: the cause bank's question
    ("is it a tool problem?", "What could cause the defects on this wafer?"),
    ("could this be litho", "What could cause the defects on this wafer?"),
    ("Yield dropped on lot 7, is it the etcher?", "What could cause the defects on this wafer?"),
    ("是不是工艺问题？", "这片晶圆的缺陷可能是什么原因造成的？"),
    ("会不会是机台造成的", "这片晶圆的缺陷可能是什么原因造成的？"),
    ("Is it a CMP scratch?", "Is it a CMP scratch?"),  # names a pattern: whether there is one
    ("is it bad?", "Give me the numbers for this wafer."),  # how bad: the numbers
    # one zone's failing dies: the banks' zone question
    ("what's the failure rate at the edge?", "How many dies fail in the edge zone?"),
    ("Lot 4, how many failing dies near the centre", "How many dies fail in the centre zone?"),
    ("边缘失效多少", "边缘区有多少颗失效？"),
    ("what is the yield at the edge?", "What is the yield at the edge?"),  # not a count of failing dies: kept
    ("are you sure?", "What defects does this wafer show?"),  # the patterns again
    ("确定吗", "这片晶圆有哪些缺陷？"),
    ("how bad is it?", "Give me the numbers for this wafer."),  # the numbers say how bad
    ("严重吗？", "给我这片晶圆的数据。"),
    ("is the donut serious?", "Give me the numbers for this wafer."),  # about one pattern: the numbers too
    ("how bad are the scratches?", "Give me the numbers for this wafer."),
    ("划痕严重吗", "给我这片晶圆的数据。"),
    ("Is the scratch on the edge?", "Is the scratch on the edge?"),  # not about how bad
])
def test_a_chat_question_is_put_in_the_corpus_form(typed, as_written):
    assert question_as_written(typed) == as_written


def test_the_corpus_questions_are_already_in_that_form():
    # what the model was trained on reaches it unchanged, except one-word topics ("Yield?", "Next steps?"),
    # which it reads as the bank's first question on that topic
    context = _context()
    questions = {m["content"] for seed in range(300) for language in ("en", "zh")
                 for m in sample_dialogue(context, random.Random(seed), language).messages if m["role"] == "user"}
    assert len(questions) > 100
    changed = {q for q in questions if question_as_written(q) != q}
    assert changed and all(question_as_written(q) == bare_topic_question(q) for q in changed)


@pytest.mark.parametrize(("typed", "read_as"), [
    ("anything odd here?", "What defects does this wafer show?"),  # asks about the wafer as a whole
    ("what went wrong", "What defects does this wafer show?"),
    ("Yield dropped on ETCH-04 this week, what's going on?", "What defects does this wafer show?"),
    ("Good morning! what happened?", "What defects does this wafer show?"),
    ("这片什么情况", "这片晶圆有哪些缺陷？"),
    ("这个有什么问题吗", "这片晶圆有哪些缺陷？"),
    ("What's wrong with this wafer?", "What's wrong with this wafer?"),  # a bank question: kept
    ("what's the failing count?", "What's the failing count?"),  # a topic of its own: kept as written
    ("where is the damage", "Where is the damage?"),
    ("why?", "Why?"),
    ("what should I do", "What should I do?"),
    ("is it a crescent or a scratch?", "Is it a crescent or a scratch?"),  # names a pattern
    ("is this wafer ok?", "Is this wafer ok?"),  # whether it is fine: the yes/no check reads it
    ("Yield dropped on ETCH-04, why?", "Yield dropped on ETCH-04, why?"),
    ("这片的失效是什么问题", "这片的失效是什么问题？"),  # names the failing dies
    ("哪里坏了", "哪里坏了？"),
    ("下一步怎么办", "下一步怎么办？"),
    ("Who ran this lot? Which shift?", "Who ran this lot? Which shift?"),  # several questions: as written
    ("what happened " * 10, ("what happened " * 10).strip().capitalize() + "?"),  # long: as written
])
def test_the_question_with_a_map_asks_what_it_shows_unless_it_names_another_topic(typed, read_as):
    assert opening_question(typed) == read_as


def _bank_questions(bank) -> list[str]:
    fills = {"p": "a scratch", "zone": "edge", "nth": "second"}
    zh_fills = {"p": "划痕", "zone": "边缘区", "nth": "第二个"}
    return [q.format(**(zh_fills if language == "zh" else fills)) for language, questions in bank.items()
            for q in questions]


def test_every_question_of_the_other_banks_keeps_its_form_when_it_comes_with_the_map():
    banks = [getattr(phrasing, name) for name in dir(phrasing)
             if name.endswith("_QUESTIONS") or name.startswith(("FOLLOW_", "NTH_"))]
    # FOLLOW_WHAT_THEN ("So what is there?") asks what the map shows, like the recognition bank
    banks = [bank for bank in banks if bank not in (phrasing.RECOGNITION_QUESTIONS, phrasing.FOLLOW_WHAT_THEN)]
    banks += list(phrasing.COUNT_QUESTIONS.values())
    questions = [q for bank in banks if "en" in bank for q in _bank_questions(bank)]
    assert len(questions) > 150
    assert [q for q in questions if opening_question(q) != question_as_written(q)] == []
    recognition = _bank_questions(phrasing.RECOGNITION_QUESTIONS)
    assert all(opening_question(q) == question_as_written(q) for q in recognition)


@pytest.mark.parametrize(("text", "acknowledges"), [
    ("thanks!", True), ("ok got it", True), ("Great, thank you :pray:", True), (":+1:", True), ("好的，谢谢", True),
    ("收到！", True), ("ok?", False), ("thanks, and the yield?", False), ("ok, where is it?", False),
    ("good catch, what about the edge", False), ("no", False), ("", False), ("   ", False),
])
def test_a_reply_that_only_acknowledges_is_told_apart(text, acknowledges):
    assert is_acknowledgement(text) is acknowledges


@pytest.mark.parametrize(("text", "key"), [
    ("What does Edge-Loc mean?", "Edge_Loc"), ("what's a donut?", "Donut"), ("define scratch", "Scratch"),
    ("EL stands for?", "Edge_Loc"), ("what does ER stand for", "Edge_Ring"), ("What is an edge ring pattern?", "Edge_Ring"),
    ("what are scratches?", "Scratch"), ("What is Near-full?", "Near_Full"), ("what is meant by a Loc defect?", "Loc"),
    ("what does the edge-loc mean? thanks!", "Edge_Loc"), ("什么是边缘环？", "Edge_Ring"), ("划痕是什么意思", "Scratch"),
    ("Edge-Loc是什么意思？", "Edge_Loc"), ("什么是中心缺陷？", "Center"),
    ("tell me more about the edge loc", "Edge_Loc"), ("Can you explain the donut pattern on this wafer?", "Donut"),
    ("介绍一下边缘环", "Edge_Ring"), ("请讲讲划痕。", "Scratch"),
    # questions about this wafer, or about no pattern
    ("What is the yield?", None), ("这片是什么缺陷？", None), ("what is wrong?", None), ("What is the scratch?", None),
    ("What is it?", None), ("What pattern is this?", None), ("what does it mean?", None), ("what are the causes?", None),
    ("什么是良率？", None), ("这是什么？", None), ("Is there a scratch?", None), ("what is the meaning of this?", None),
    ("tell me more about this wafer", None), ("explain the yield", None), ("说说这片晶圆", None),
])
def test_a_question_about_what_a_patterns_name_means_is_told_apart(text, key):
    assert defined_pattern(text) == key


def test_what_a_pattern_means_is_told_from_the_knowledge_in_the_questions_language():
    english = A.definition_answer("Edge_Loc", "en", shown=True)
    assert english.startswith("Edge-Loc is a wafer-map pattern: a cluster of failing dies on one stretch of the wafer edge.")
    assert "handling or clamp contact" in english and english.endswith("This wafer shows it.")
    assert not CJK.search(english)
    chinese = A.definition_answer("Scratch", "zh", shown=False)
    assert chinese.startswith("划痕（Scratch）是一种晶圆图缺陷图案：一条由失效芯片组成的细线或弧线。")
    assert chinese.endswith("这片晶圆没有划痕缺陷。")
    assert not A.definition_answer("Donut", "en").endswith("it.")  # no map: nothing said about one
    place = "The Loc pattern is a local cluster in the middle zone, in the north sector (N)."
    assert A.definition_answer("Loc", "en", shown=True, place=place).endswith(f"This wafer shows it. {place}")
    assert A.definition_answer("Loc", "en", shown=False, place=place).endswith("This wafer does not show it.")
