"""The checkpoint registry: versions, `defect-glm promote` (accept and refuse), and what the server loads.

Two tiny checkpoints of known quality on a held-out file of Normal maps: one answers "normal" to
everything (exact match 1.0), the random one answers gibberish (0.0). The random one stands in for
the committed default model, so the first promotion has something real to beat.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defect_glm import main
from finetune import checkpoints
from finetune.tiny import build_fixed_answer_checkpoint, build_tiny_checkpoint
from finetune.train import TrainConfig, TrainingError, check_output
from model_server.backends.registry import model_dir
from model_server.config import ServerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("heldout") / "normal.npz"
    assert main(["data", "synth", "--per-class", "3", "--classes", "Normal", "--seed", "4", "--out", str(path),
                 "--no-progress"]) == 0
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fixed_answer_checkpoint(tmp_path_factory.mktemp("good") / "model", "normal")


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> Path:
    """An empty registry; the tiny random checkpoint is the committed default model."""
    monkeypatch.setenv(checkpoints.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.setenv(checkpoints.ENV_DEFAULT_MODEL, str(tiny_model_dir))
    return tmp_path / "home"


def _promote(capsys: pytest.CaptureFixture, candidate: Path | str, heldout: Path) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["promote", str(candidate), "--mixedwm38", str(heldout), "--batch-size", "3"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_promotion_accepts_a_better_checkpoint_refuses_a_worse_one_and_the_server_follows(
    home, heldout, good, tiny_model_dir, tmp_path, capsys
):
    # nothing promoted: the default model is served
    assert checkpoints.serving_model_dir() == tiny_model_dir
    assert model_dir(ServerConfig()) == tiny_model_dir
    assert checkpoints.serving_info()["source"] == "default"

    # better than the default: copied into the registry as v0001 and served
    code, out, err = _promote(capsys, good, heldout)
    assert code == 0, err
    assert "promoted v0001: exact match 1.0000 vs 0.0000" in out
    v1 = home / "checkpoints" / "v0001"
    assert checkpoints.serving_model_dir() == v1.resolve()
    assert model_dir(ServerConfig()) == v1.resolve()
    assert (v1 / "model.safetensors").read_bytes() == (good / "model.safetensors").read_bytes()
    meta = json.loads((v1 / "checkpoint.json").read_text())
    assert meta["evaluations"][-1]["exact_match"] == 1.0 and meta["evaluations"][-1]["n"] == 3
    pointer = json.loads((home / "serving.json").read_text())
    assert pointer["version"] == "v0001" and pointer["previous"] == str(tiny_model_dir)

    # worse than the served one: refused with both figures, nothing changes, nothing is registered
    random_model = build_tiny_checkpoint(tmp_path / "random", seed=5)
    code, out, err = _promote(capsys, random_model, heldout)
    assert code == 2
    assert "not promoted" in err and "exact match 0.0000" in err and "served" in err and "1.0000" in err
    assert checkpoints.serving_model_dir() == v1.resolve()
    assert [row["version"] for row in checkpoints.list_checkpoints()] == ["v0001"]

    # as good as the served one is enough ("at least as well")
    code, out, err = _promote(capsys, good, heldout)
    assert code == 0, err
    assert checkpoints.serving_model_dir() == (home / "checkpoints" / "v0002").resolve()

    # a registered version can be promoted back by name
    code, out, err = _promote(capsys, "v0001", heldout)
    assert code == 0, err
    assert checkpoints.serving_model_dir() == v1.resolve()
    assert [row["version"] for row in checkpoints.list_checkpoints()] == ["v0001", "v0002"]

    # training can never write into what is served or registered
    with pytest.raises(TrainingError, match="training never writes there"):
        check_output(TrainConfig(data=tmp_path, out=checkpoints.serving_model_dir()))


def test_promotion_also_refuses_a_candidate_that_answers_worse_beyond_the_tolerance(home, heldout, good, tmp_path, capsys):
    # Both read every Normal map right; only this one also opens its yes/no answers with the right "No".
    says_no = build_fixed_answer_checkpoint(tmp_path / "says-no", "No, normal.")
    code, _, err = _promote(capsys, says_no, heldout)
    assert code == 0, err
    served = checkpoints.serving_model_dir()
    evaluation = json.loads((served / "checkpoint.json").read_text())["evaluations"][-1]
    assert evaluation["exact_match"] == 1.0 and evaluation["checks"]["yesno.right"] == 1.0

    code, _, err = _promote(capsys, good, heldout)
    assert code == 2
    assert "not promoted" in err and "yesno.right 0.0000 vs 1.0000" in err and "tolerance 0.05" in err
    assert checkpoints.serving_model_dir() == served

    capsys.readouterr()
    code = main(["promote", str(good), "--mixedwm38", str(heldout), "--batch-size", "3", "--tolerance", "1"])
    assert code == 0, capsys.readouterr().err
    assert checkpoints.serving_model_dir() != served
    code = main(["promote", str(good), "--mixedwm38", str(heldout), "--tolerance", "1.5"])
    assert code == 2 and "--tolerance must be in [0, 1]" in capsys.readouterr().err


def test_checkpoints_command_registers_and_lists(home, good, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for item in good.iterdir():
        (run / item.name).write_bytes(item.read_bytes())
    (run / "training_state").mkdir()
    (run / "training_state" / "optim.pt").write_bytes(b"not part of a checkpoint")

    assert main(["checkpoints", "--add", str(run)]) == 0
    assert "registered v0001" in capsys.readouterr().out
    v1 = home / "checkpoints" / "v0001"
    assert (v1 / "config.json").is_file() and not (v1 / "training_state").exists()

    assert main(["checkpoints", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["serving"]["source"] == "default"
    assert [(r["version"], r["serving"]) for r in listing["checkpoints"]] == [("v0001", False)]
    assert listing["checkpoints"][0]["source"] == str(run.resolve())


def test_bad_promotions_are_clear_errors(home, heldout, good, tmp_path, capsys):
    code, _, err = _promote(capsys, "v0042", heldout)
    assert code == 2 and "no checkpoint version v0042 (known: none registered)" in err
    (tmp_path / "empty").mkdir()
    code, _, err = _promote(capsys, tmp_path / "empty", heldout)
    assert code == 2 and "expected config.json" in err
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    code, _, err = _promote(capsys, tmp_path / "adapter", heldout)
    assert code == 2 and "is a LoRA adapter" in err and "defect-glm merge" in err
    code, _, err = _promote(capsys, good, tmp_path / "missing.npz")
    assert code == 2 and "no such file" in err
    assert not (home / "serving.json").exists()


def test_a_served_checkpoint_that_disappeared_falls_back_to_the_default(home, good, tiny_model_dir):
    home.mkdir()
    (home / checkpoints.SERVING_FILE).write_text(json.dumps({"version": "v0009", "path": str(home / "gone")}))
    assert checkpoints.serving_model_dir() == tiny_model_dir
