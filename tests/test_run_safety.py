"""Run folders under faults (issue #16): data moved or changed, resume with other settings, a
diverging run. One short LF-DNN training (frozen LM) on the real 229 clips."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from click.testing import CliRunner

from msakit.cli import main


@pytest.fixture(scope="module")
def trained(mosi_word_aligned, tmp_path_factory):
    """A finished run trained on a copy of the data given by a *relative* path."""
    root = tmp_path_factory.mktemp("safety")
    (root / "data").mkdir()
    shutil.copyfile(mosi_word_aligned, root / "data" / "clips.pkl")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(main, [
            "train", "lf_dnn", "--data", "data/clips.pkl", "--folds", "2", "--epochs", "1",
            "--output-dir", "runs", "--no-progress", "--set", "model.freeze_language_model=true",
            "--set", "run.name=safety"])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    assert "run folder: " in result.output and "MB)" in result.output
    return root, root / "runs" / "safety"


@pytest.mark.slow
def test_evaluate_from_another_folder_scores_the_recorded_data(trained, tmp_path, monkeypatch):
    root, run_dir = trained
    record = json.loads((run_dir / "data.json").read_text())
    assert record["path"] == str(root / "data" / "clips.pkl") and len(record["sha256"]) == 64
    assert json.loads((run_dir / "experiment.json").read_text())["status"] == "finished"
    for sub in ("seed1/fold0", "seed1/fold1"):
        assert (run_dir / sub / "best.safetensors").exists()
        assert not (run_dir / sub / "last.pt").exists()
    trained_metrics = json.loads((run_dir / "metrics.json").read_text())["summary"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "clips.pkl").write_bytes(b"other data at the same relative path")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["evaluate", str(run_dir)])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["summary"]["MAE"]["mean"] == pytest.approx(trained_metrics["MAE"]["mean"])


@pytest.mark.slow
def test_changed_data_is_refused_unless_given_explicitly(trained, mosi_word_aligned):
    import pickle

    root, run_dir = trained
    data = root / "data" / "clips.pkl"
    original = data.read_bytes()
    try:
        content = pickle.loads(original)
        data.write_bytes(pickle.dumps(content[:-1], protocol=2))  # one clip fewer
        for args in (["evaluate", str(run_dir)], ["train", "lf_dnn", "--resume", str(run_dir)]):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 1, result.output
            assert "the data changed since" in result.output
        before = (run_dir / "evaluation.json").read_bytes() \
            if (run_dir / "evaluation.json").exists() else None
        result = CliRunner().invoke(main, ["evaluate", str(run_dir), "--data",
                                           str(mosi_word_aligned), "--split", "all"])
        assert result.exit_code == 0, result.output
        assert (run_dir / "evaluation-word_aligned_valid.pkl-all.json").exists()
        after = (run_dir / "evaluation.json").read_bytes() \
            if (run_dir / "evaluation.json").exists() else None
        assert before == after  # scoring other data never overwrites the run's own evaluation
    finally:
        data.write_bytes(original)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["train", "misa"], "is a lf_dnn run; --resume cannot continue it as misa"),
    (["train", "lf_dnn", "--epochs", "3"], "train.epochs 1 -> 3"),
    (["train", "lf_dnn", "--folds", "3"], "data.folds 2 -> 3"),
    (["train", "lf_dnn", "--seeds", "1", "2"], "the run has seeds [1], not [1, 2]"),
])
def test_resume_with_other_settings_is_refused(trained, args, message):
    _, run_dir = trained
    result = CliRunner().invoke(main, [*args, "--resume", str(run_dir)])
    assert result.exit_code == 1, result.output
    assert message in result.output


@pytest.mark.slow
def test_a_diverging_run_stops_at_the_first_nonfinite_loss_and_is_marked_failed(
        mosi_word_aligned, tmp_path, monkeypatch):
    import torch

    from msakit.models.lf_dnn import LFDNN

    original = LFDNN.forward
    calls = {"n": 0}

    def diverge_on_second_step(self, batch):
        output = original(self, batch)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 2:
                output.losses["task"] = output.losses["task"] * torch.tensor(float("nan"))
        return output

    monkeypatch.setattr(LFDNN, "forward", diverge_on_second_step)
    args = ["train", "lf_dnn", "--data", str(mosi_word_aligned), "--folds", "2", "--epochs", "2",
            "--output-dir", str(tmp_path), "--no-progress", "--set",
            "model.freeze_language_model=true", "--set", "train.batch_size=32",  # 4 steps/epoch
            "--set", "run.name=diverges"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert re.search(r"training diverged: loss term '(task|total)' of lf_dnn is not finite "
                     r"\(NaN or inf\) at epoch 1, step 2\b", message), message
    assert "Traceback" not in result.output
    record = json.loads((tmp_path / "diverges" / "experiment.json").read_text())
    assert record["status"] == "failed" and "nan" in record["error"].lower()
    # the retry takes the failed folder's place instead of going to diverges-2
    monkeypatch.setattr(LFDNN, "forward", original)
    result = CliRunner().invoke(main, args[:6] + ["--epochs", "1"] + args[8:])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diverges"]
    assert json.loads((tmp_path / "diverges" / "experiment.json").read_text())["status"] == \
        "finished"
