"""The command line end to end: train, evaluate, results table, resume, models, errors."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from msakit.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def _only_run_dir(output_dir):
    (run_dir,) = [p for p in output_dir.iterdir() if p.is_dir()]
    return run_dir


def test_help_everywhere(runner):
    for args in ([], ["train"], ["evaluate"], ["models"], ["data", "inspect"]):
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_train_evaluate_and_resume_end_to_end(runner, mosi_word_aligned, tmp_path):
    out = tmp_path / "runs"
    result = runner.invoke(main, [
        "train", "lf_dnn", "--data", str(mosi_word_aligned), "--folds", "2", "--seeds", "1", "2",
        "--epochs", "1", "--output-dir", str(out), "--no-progress",
        "--set", "model.freeze_language_model=true",
    ])
    assert result.exit_code == 0, result.output
    assert "mean ± std (n=4)" in result.output
    run_dir = _only_run_dir(out)
    trained = json.loads((run_dir / "metrics.json").read_text())

    # evaluate reproduces each checkpoint's test metrics exactly
    result = runner.invoke(main, ["evaluate", str(run_dir)])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    by_run = {(r["seed"], r["partition"]): r["test"] for r in trained["runs"]}
    for entry in evaluation["runs"]:
        assert entry["test"] == pytest.approx(by_run[(entry["seed"], entry["partition"])])

    # resume of a run whose second seed was lost retrains only what is missing
    shutil.rmtree(run_dir / "seed2")
    (run_dir / "metrics.json").unlink()
    before = (run_dir / "seed1" / "fold0" / "best.safetensors").stat().st_mtime_ns
    result = runner.invoke(main, ["train", "lf_dnn", "--resume", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "seed1" / "fold0" / "best.safetensors").stat().st_mtime_ns == before
    resumed = json.loads((run_dir / "metrics.json").read_text())
    for metric, stats in trained["summary"].items():
        assert resumed["summary"][metric]["mean"] == pytest.approx(stats["mean"]), metric
        assert resumed["summary"][metric]["std"] == pytest.approx(stats["std"]), metric


def test_models_lists_registered_models_with_counts(runner):
    result = runner.invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    for name in ("misa", "lf_dnn"):
        assert name in result.output


def test_bad_override_is_a_clear_error(runner, mosi_word_aligned, tmp_path):
    result = runner.invoke(main, ["train", "misa", "--data", str(mosi_word_aligned),
                                  "--set", "train.learning_rate=1"])
    assert result.exit_code != 0
    assert "learning_rate" in result.output


def test_one_split_file_without_folds_is_a_clear_error(runner, mosi_word_aligned, tmp_path):
    result = runner.invoke(main, ["train", "lf_dnn", "--data", str(mosi_word_aligned),
                                  "--output-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "--folds" in result.output


def test_hostile_checkpoint_is_refused_and_runs_nothing(runner, tmp_path):
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    sub = tmp_path / "run" / "seed1" / "fold0"
    sub.mkdir(parents=True)
    (sub / "config.yaml").write_text("model:\n  name: lf_dnn\n")
    with (sub / "last.pt").open("wb") as handle:
        pickle.dump({"model": Hostile()}, handle)
    from msakit.runfolder import load_checkpoint

    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(sub / "last.pt")
    assert not marker.exists()


def test_seeds_take_several_values_after_one_flag_without_touching_clicks_parser():
    from msakit.cli._options import expand_multi_value

    flags = ("--seeds",)
    assert expand_multi_value(["m", "--seeds", "1", "2", "3", "--epochs", "2"], flags) == [
        "m", "--seeds", "1", "--seeds", "2", "--seeds", "3", "--epochs", "2"]
    assert expand_multi_value(["--seeds", "-1", "2"], flags) == ["--seeds", "-1", "--seeds", "2"]
    assert expand_multi_value(["--", "--seeds", "1", "2"], flags) == ["--", "--seeds", "1", "2"]
    assert expand_multi_value(["--seeds"], flags) == ["--seeds"]


@pytest.mark.parametrize("seeds, message", [(["-1"], "-1"), (["x"], "'x' is not a valid integer")])
def test_invalid_seeds_are_clear_errors(runner, seeds, message):
    result = runner.invoke(main, ["train", "lf_dnn", "--data", ".", "--seeds", *seeds])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("error", [KeyError("the_key"), ValueError("an internal value")])
def test_train_and_evaluate_report_a_plain_exception_as_a_bug(runner, monkeypatch, tmp_path,
                                                               error):
    """Only user errors (msakit's error classes) exit 1; a KeyError or ValueError from inside
    msakit is a bug: exit 2, and the message says so."""
    import msakit.training

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(msakit.training, "run_experiment", broken)
    monkeypatch.setattr(msakit.training, "evaluate_run", broken)
    for args in (["train", "lf_dnn", "--data", str(tmp_path)], ["evaluate", str(tmp_path)]):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, result.output
        assert "internal error, a bug in msakit" in result.output


def test_unknown_model_is_a_user_error(runner):
    result = runner.invoke(main, ["train", "no_such_model", "--data", "."])
    assert result.exit_code == 1, result.output
    assert "unknown model 'no_such_model'; available:" in result.output
    assert "bug" not in result.output
