"""`defect-glm average`: the weight mean of tiny checkpoints, loaded back with the Auto classes, and its refusals."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from defect_glm import main
from finetune.averaging import AVERAGED_FROM_FILE, AveragingError, average_checkpoints
from finetune.checkpoints import save_new_checkpoint
from finetune.loading import load_model
from finetune.prompting import MEASURED_FACTS_ATTRIBUTE
from finetune.small_model import TINY_CONFIG, build_model, build_processor
from finetune.tiny import build_tiny_checkpoint


@pytest.fixture(scope="module")
def other_tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint of the same architecture and vocabulary as `tiny_model_dir`, other random weights."""
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-other") / "checkpoint", seed=1)


def _float_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(model_dir / "model.safetensors").items() if v.is_floating_point()}


def test_average_of_two_checkpoints_is_the_mean_of_every_weight(tiny_model_dir, other_tiny_dir, tmp_path, capsys):
    out = tmp_path / "soup"
    assert main(["average", "--models", str(tiny_model_dir), str(other_tiny_dir), "--out", str(out)]) == 0
    assert "2 ingredients" in capsys.readouterr().out
    first, second, averaged = (_float_weights(d) for d in (tiny_model_dir, other_tiny_dir, out))
    assert averaged.keys() == first.keys()
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the ingredients really differ
    for key, tensor in averaged.items():
        torch.testing.assert_close(tensor, (first[key] + second[key]) / 2)
    record = json.loads((out / AVERAGED_FROM_FILE).read_text())
    assert record == {"checkpoints": [str(tiny_model_dir), str(other_tiny_dir)], "weights": [0.5, 0.5]}
    model, processor = load_model(out)  # a plain checkpoint: Auto classes, processor saved with it
    assert type(model).__name__ == "FastVlmForConditionalGeneration"
    assert processor.tokenizer.get_vocab() == AutoTokenizer.from_pretrained(tiny_model_dir).get_vocab()


def test_weights_are_normalised_and_a_checkpoint_averaged_with_itself_is_unchanged(tiny_model_dir, other_tiny_dir,
                                                                                  tmp_path):
    weighted = average_checkpoints([tiny_model_dir, other_tiny_dir], tmp_path / "weighted", weights=[3, 1])
    first, second, averaged = (_float_weights(d) for d in (tiny_model_dir, other_tiny_dir, weighted))
    for key, tensor in averaged.items():
        torch.testing.assert_close(tensor, 0.75 * first[key] + 0.25 * second[key])
    same = average_checkpoints([tiny_model_dir, tiny_model_dir], tmp_path / "same")
    for key, tensor in _float_weights(same).items():
        torch.testing.assert_close(tensor, first[key], rtol=0, atol=1e-7)


def test_checkpoints_of_another_architecture_are_refused(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = dataclasses.replace(TINY_CONFIG, text_intermediate=48)
    other = save_new_checkpoint(tmp_path / "wider", build_model(tokenizer, config, seed=0),
                                build_processor(tokenizer, config))
    with pytest.raises(AveragingError, match="another architecture"):
        average_checkpoints([tiny_model_dir, other], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()  # nothing half-written


@pytest.mark.parametrize(("extra", "message"), [
    (["--weights", "1"], "one weight per checkpoint"),
    (["--weights", "0", "0"], "not all 0"),
    (["--weights", "-1", "2"], "0 or more"),
])
def test_bad_weights_get_a_clear_error(tiny_model_dir, other_tiny_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "soup"
    assert main(["average", "--models", str(tiny_model_dir), str(other_tiny_dir), "--out", str(out), *extra]) != 0
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_one_checkpoint_a_missing_one_or_a_used_out_dir_is_refused(tiny_model_dir, tmp_path, capsys):
    assert main(["average", "--models", str(tiny_model_dir), "--out", str(tmp_path / "a")]) != 0
    assert "at least two checkpoints" in capsys.readouterr().err
    assert main(["average", "--models", str(tiny_model_dir), str(tmp_path / "missing"), "--out",
                 str(tmp_path / "b")]) != 0
    assert "missing" in capsys.readouterr().err
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("admin's file")
    assert main(["average", "--models", str(tiny_model_dir), str(tiny_model_dir), "--out", str(used)]) != 0
    assert "already holds files" in capsys.readouterr().err
    assert (used / "keep.txt").read_text() == "admin's file" and len(list(used.iterdir())) == 1


def _copy_with_measured_facts(source: Path, out: Path, facts: bool | None) -> Path:
    """A copy of `source` whose config says `measured_facts: facts` (None: says nothing, as older checkpoints)."""
    shutil.copytree(source, out)
    config = json.loads((out / "config.json").read_text())
    config.pop(MEASURED_FACTS_ATTRIBUTE, None)
    if facts is not None:
        config[MEASURED_FACTS_ATTRIBUTE] = facts
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_a_config_without_the_facts_setting_averages_with_one_that_says_on_but_not_off(tiny_model_dir, other_tiny_dir,
                                                                                        tmp_path):
    older = _copy_with_measured_facts(tiny_model_dir, tmp_path / "older", None)  # as v13, trained before the setting
    refreshed = _copy_with_measured_facts(other_tiny_dir, tmp_path / "refreshed", True)
    assert average_checkpoints([older, refreshed], tmp_path / "soup").is_dir()
    without_facts = _copy_with_measured_facts(other_tiny_dir, tmp_path / "no-facts", False)
    with pytest.raises(AveragingError, match="another architecture or settings"):
        average_checkpoints([older, without_facts], tmp_path / "refused")


def test_checkpoints_that_answer_from_other_views_average_and_keep_the_firsts_setting(tiny_model_dir, other_tiny_dir,
                                                                                       tmp_path):
    four = tmp_path / "four"
    shutil.copytree(other_tiny_dir, four)
    config = json.loads((four / "config.json").read_text())
    (four / "config.json").write_text(json.dumps({**config, "answer_views": 4, "answer_views_below": 0.99}))
    soup = average_checkpoints([four, tiny_model_dir], tmp_path / "soup")
    saved = json.loads((soup / "config.json").read_text())
    assert (saved["answer_views"], saved["answer_views_below"]) == (4, 0.99)
