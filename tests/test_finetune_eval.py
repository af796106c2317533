"""Evaluation: `defect-glm eval` on synthetic MixedWM38-layout files, `score()` on hand-made predictions.

A checkpoint of known behaviour (finetune.tiny.build_fixed_answer_checkpoint: it answers "normal"
to everything) gives exact expected scores through the whole path — question, generation, parsing,
scoring, JSON, report; the tiny random checkpoint (gibberish answers) checks shape and consistency.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_tools.answers import location_answer
from data_tools.locate import locate
from data_tools.phrasing import COUNT_QUESTIONS
from data_tools.taxonomy import PATTERN_KEYS, from_multi_hot
from data_tools.wafer_map import WaferMap
from defect_glm import main
from finetune.evaluate import INVALID, score, sectors_named, select_maps
from finetune.tiny import build_fixed_answer_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def maps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three labelled maps in the MixedWM38 layout: Normal, Center, Random (in that order)."""
    path = tmp_path_factory.mktemp("eval-maps") / "maps.npz"
    assert main(["data", "synth", "--per-class", "1", "--classes", "Normal,Center,Random", "--out", str(path),
                 "--no-progress"]) == 0
    return path


@pytest.fixture(scope="module")
def says_normal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fixed_answer_checkpoint(tmp_path_factory.mktemp("fixed") / "normal", "normal")


def _eval_json(capsys: pytest.CaptureFixture, *args: str) -> dict:
    capsys.readouterr()
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_json_has_exact_scores_for_a_model_of_known_answers(maps, says_normal, tmp_path, capsys):
    result = _eval_json(capsys, "--model", str(says_normal), "--mixedwm38", str(maps), "--numbers", "3",
                        "--report", str(tmp_path / "report"))
    assert result["n"] == 3 and result["correct"] == 1 and result["unparsed"] == 0
    assert result["exact_match"] == pytest.approx(1 / 3, abs=1e-5)  # only the Normal map is right
    assert result["mistakes"][0]["answer"] == "normal" and result["mistakes"][0]["parsed"] == "Normal"

    assert set(result["per_pattern"]) == set(PATTERN_KEYS)
    for key in ("Center", "Random"):  # present once, never predicted
        assert result["per_pattern"][key] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["per_pattern"]["Scratch"]["support"] == 0
    assert result["macro_f1"] == 0.0
    assert result["per_class"] == {"Normal": {"n": 1, "exact_match": 1.0}, "Center": {"n": 1, "exact_match": 0.0},
                                   "Random": {"n": 1, "exact_match": 0.0}}

    protocol = result["defect_glm_protocol"]  # 36 classes: the Random map is left out
    assert protocol["classes"] == 36 and protocol["n"] == 2 and protocol["exact_match"] == 0.5
    assert set(protocol["excluded"]) == {"Near_Full", "Random"}

    assert result["ms_per_map"] > 0 and result["by_language"] == {"en": 0.5, "zh": 0.0}
    assert sorted((c["truth"], c["predicted"], c["count"]) for c in result["confusion"]) == [
        ("Center", "Normal", 1), ("Normal", "Normal", 1), ("Random", "Normal", 1)]
    assert result["numbers"]["n_maps"] == 3 and result["numbers"]["failing_within_1_die"] == 0.0
    asked = {q for topic in ("failing", "yield") for bank in COUNT_QUESTIONS[topic].values() for q in bank}
    assert result["numbers"]["mistakes"] and all(m["question"] in asked for m in result["numbers"]["mistakes"])

    report = Path(result["report"])
    assert report == tmp_path / "report" / "report.md"
    text = report.read_text()
    assert "33.33%" in text and "| Center | 0.0000 | 0.0000 | 0.0000 | 1 |" in text
    assert "![confusion matrix](confusion_matrix.png)" in text
    with Image.open(tmp_path / "report" / "confusion_matrix.png") as image:
        assert image.format == "PNG"

    # every map answered wrong, by its row in the file, listed and drawn for a person to judge
    assert result["missed"] == [{"map": 1, "row": 1, "truth": "Center", "parsed": "Normal"},
                                {"map": 2, "row": 2, "truth": "Random", "parsed": "Normal"}]
    assert "| 1 | Center | Normal |" in text and "| 2 | Random | Normal |" in text
    assert "![maps answered wrong](mistakes.png)" in text and "(all 2)" in text
    with Image.open(tmp_path / "report" / "mistakes.png") as image:
        assert image.format == "PNG" and image.width > image.height  # two maps side by side


def test_eval_of_the_tiny_random_model_is_consistent(maps, tiny_model_dir, capsys):
    result = _eval_json(capsys, "--model", str(tiny_model_dir), "--mixedwm38", str(maps), "--limit", "2",
                        "--numbers", "0", "--batch-size", "2")
    assert result["n"] == 2 and result["limit"] == 2 and "numbers" not in result
    assert result["correct"] == round(result["exact_match"] * result["n"])
    assert 0 <= result["unparsed"] <= result["n"]
    assert sum(c["count"] for c in result["confusion"]) == 2
    for values in result["per_pattern"].values():
        assert all(0.0 <= values[k] <= 1.0 for k in ("precision", "recall", "f1"))
    assert sum(v["n"] for v in result["per_class"].values()) == 2
    assert result["model"] == str(tiny_model_dir) and result["adapter"] is None and result["dtype"] == "float32"


def test_a_map_answered_wrong_is_named_by_its_row_in_the_file(maps, says_normal, tmp_path, capsys):
    result = _eval_json(capsys, "--model", str(says_normal), "--mixedwm38", str(maps), "--numbers", "0",
                        "--limit", "2", "--seed", "0", "--report", str(tmp_path))
    rows = {"Center": 1, "Random": 2}  # their rows in the file; seed 0 draws rows 1 and 2
    assert result["missed"] and all(m["row"] == rows[m["truth"]] for m in result["missed"])
    assert any(m["map"] != m["row"] for m in result["missed"])  # a position among the maps evaluated
    assert f"| {result['missed'][0]['row']} | {result['missed'][0]['truth']} | Normal |" in Path(result["report"]).read_text()


def test_eval_in_bfloat16_reports_the_dtype_and_scores_the_same_maps(maps, says_normal, capsys):
    result = _eval_json(capsys, "--model", str(says_normal), "--mixedwm38", str(maps), "--numbers", "0",
                        "--dtype", "bfloat16")
    assert result["dtype"] == "bfloat16" and result["n"] == 3 and result["correct"] == 1


def test_eval_answers_from_the_views_asked_for_and_reports_them(maps, says_normal, capsys):
    plain = _eval_json(capsys, "--model", str(says_normal), "--mixedwm38", str(maps), "--numbers", "0")
    viewed = _eval_json(capsys, "--model", str(says_normal), "--mixedwm38", str(maps), "--numbers", "0", "--views", "4")
    assert (plain["views"], plain["views_below"], viewed["views"], viewed["views_below"]) == (1, None, 4, None)
    assert viewed["n"] == 3 and viewed["correct"] == plain["correct"] == 1  # it says "Normal" from every view


def test_eval_text_output_is_one_summary(maps, says_normal, capsys):
    capsys.readouterr()
    assert main(["eval", "--model", str(says_normal), "--mixedwm38", str(maps), "--numbers", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("exact match 33.33% of 3 maps (Defect-GLM 36-class protocol 50.00% of 2)")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mixedwm38", "nowhere.npz"], "no such file"),
        (["--limit", "0"], "--limit must be at least 1"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_bad_eval_input_is_a_clear_error(maps, says_normal, capsys, extra, message):
    args = ["eval", "--model", str(says_normal), "--mixedwm38", str(maps), *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_eval_of_a_directory_that_is_no_checkpoint(maps, tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path), "--mixedwm38", str(maps)]) == 2
    assert "expected config.json" in capsys.readouterr().err


def test_score_of_hand_made_predictions():
    truth = [(), ("Center",), ("Center", "Scratch"), ("Donut",), ("Near_Full",)]
    predicted = [(), ("Center",), ("Center",), None, ("Near_Full",)]
    result = score(truth, predicted)
    assert result["n"] == 5 and result["correct"] == 3 and result["exact_match"] == 0.6 and result["unparsed"] == 1
    # Center: 2 true positives, 0 false positives, 0 misses; Scratch and Donut: missed once
    assert result["per_pattern"]["Center"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert result["per_pattern"]["Scratch"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert result["per_pattern"]["Donut"]["recall"] == 0.0
    assert result["per_pattern"]["Near_Full"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert result["macro_f1"] == 0.5  # mean F1 over the 4 patterns present: (1 + 0 + 0 + 1) / 4
    assert result["per_class"]["Center+Scratch"] == {"n": 1, "exact_match": 0.0}
    # the 36-class protocol leaves the Near-full map out: 2 of 4 right
    assert result["defect_glm_protocol"]["n"] == 4 and result["defect_glm_protocol"]["exact_match"] == 0.5


def test_score_counts_false_positives_and_invalid_combinations():
    from finetune.evaluate import class_label

    result = score([(), ("Scratch",)], [("Scratch",), ("Scratch",)])
    assert result["per_pattern"]["Scratch"] == {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1}
    assert class_label(None) == INVALID and class_label(("Near_Full", "Center")) == INVALID
    assert score([], [])["n"] == 0


def test_sectors_named_reads_english_and_chinese_location_answers():
    assert sectors_named("The Loc pattern is a local cluster in the edge zone, in the bottom and lower left "
                         "sectors (S, SW). The Scratch is a line in the middle zone, in the top sector (N).") == {
        "S", "SW", "N"}
    assert sectors_named("局部缺陷是中间区左下扇区（SW）的一团失效芯片。划痕位于下方和左下扇区（S、SW）。") == {"S", "SW"}
    assert sectors_named("The Center pattern sits at the wafer centre (see the map).") == set()


def test_location_check_compares_the_sectors_named_with_the_measured_ones(tmp_path, capsys):
    path = tmp_path / "maps.npz"
    assert main(["data", "synth", "--per-class", "1", "--classes", "Normal,Loc", "--out", str(path),
                 "--no-progress"]) == 0
    grids, labels = select_maps(path)
    (loc,) = [i for i in range(len(grids)) if from_multi_hot(labels[i]) == ("Loc",)]
    wafer = WaferMap(grids[loc])
    measured = sectors_named(location_answer(locate(wafer, ("Loc",)), wafer.facts(), "en"))
    assert len(measured) == 1  # the one-token-per-character answer below cannot repeat a letter
    (code,) = measured
    right = build_fixed_answer_checkpoint(tmp_path / "right", f"({code})")
    wrong = build_fixed_answer_checkpoint(tmp_path / "wrong", "(S)" if code == "N" else "(N)")
    for model, expected in ((right, 1.0), (wrong, 0.0)):
        result = _eval_json(capsys, "--model", str(model), "--mixedwm38", str(path), "--numbers", "0")
        assert result["locations"]["n_maps"] == 1  # only the Loc map has a sector pattern
        assert result["locations"]["sectors_right"] == expected
        assert result["locations"]["largest_cluster_right"] == 0.0  # "(W)" alone does not say the zone
    assert main(["eval", "--model", str(right), "--mixedwm38", str(path), "--numbers", "0"]) == 0
    assert "locations: sectors right in 100.0% of answers on 1 maps" in capsys.readouterr().out
    placed = build_fixed_answer_checkpoint(tmp_path / "placed", "<loc_largest_cluster_en>")
    result = _eval_json(capsys, "--model", str(placed), "--mixedwm38", str(path), "--numbers", "0")
    assert result["locations"]["largest_cluster_right"] == 1.0  # the slot, filled from the map


def test_yes_no_check_catches_a_model_that_always_says_yes_or_no(tmp_path, capsys):
    path = tmp_path / "maps.npz"
    assert main(["data", "synth", "--per-class", "1", "--classes", "Loc,Scratch", "--out", str(path),
                 "--no-progress"]) == 0
    for answer, scores in (("Yes", (0.5, 1.0, 0.0)), ("No", (0.5, 0.0, 1.0))):
        model = build_fixed_answer_checkpoint(tmp_path / answer, answer)
        result = _eval_json(capsys, "--model", str(model), "--mixedwm38", str(path), "--numbers", "0",
                            "--locations", "0")
        yesno = result["yesno"]  # map 0 is asked about a pattern it has, map 1 about one it lacks
        assert yesno["n"] == 2 and (yesno["right"], yesno["yes_when_absent"], yesno["no_when_present"]) == scores
    assert main(["eval", "--model", str(model), "--mixedwm38", str(path), "--numbers", "0", "--locations", "0"]) == 0
    assert ("yes/no: right in 50.0% of 2 questions as served (checked against the recognition; the model's own answers "
            "50.0%); yes to a missing pattern 0.0%, no to a present one 100.0%") in capsys.readouterr().out


def test_yes_no_answers_are_checked_against_the_recognition_of_the_same_map(tmp_path, capsys):
    path = tmp_path / "maps.npz"
    assert main(["data", "synth", "--per-class", "1", "--classes", "Loc,Scratch", "--out", str(path),
                 "--no-progress"]) == 0
    model = build_fixed_answer_checkpoint(tmp_path / "donut", "Yes, Donut")  # recognises a Donut on every map
    result = _eval_json(capsys, "--model", str(model), "--mixedwm38", str(path), "--numbers", "0", "--locations", "0")
    yesno = result["yesno"]
    # the model says yes to both questions (right about map 0's Loc, wrong about map 1's missing pattern); served,
    # both answers follow its recognition: no Loc (now wrong) and no to the missing pattern (now right)
    assert (yesno["model_right"], yesno["right"], yesno["yes_when_absent"], yesno["no_when_present"]) == (0.5, 0.5, 0.0, 1.0)
    (mistake,) = yesno["mistakes"]
    assert mistake["model_answer"] == "Yes, Donut"
    assert mistake["answer"] == "No, there is no Loc pattern. The wafer shows Donut."


def test_the_gallery_of_mistakes_shows_at_most_its_limit_and_the_report_lists_every_miss(tmp_path):
    from finetune.report import GALLERY_MAPS, missed_lines, mistakes_png

    grids = np.ones((GALLERY_MAPS + 6, 10, 10), dtype=np.int32)
    missed = [{"map": i, "row": 1000 + i, "truth": "Center", "parsed": "Normal"} for i in range(len(grids))]
    with Image.open(mistakes_png(missed, grids, tmp_path / "mistakes.png")) as image:
        assert image.size == (1848, 2200)  # 8 × 8 tiles of 2.1 × 2.5 inches at 110 dpi: 64 maps, not 70
    text = "\n".join(missed_lines(missed, "mistakes.png"))
    assert f"the first {GALLERY_MAPS} of {len(grids)}" in text
    assert all(f"| {1000 + i} | Center | Normal |" in text for i in range(len(grids)))
