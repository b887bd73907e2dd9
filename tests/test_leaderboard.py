"""``msakit leaderboard`` on two real tiny trainings (the packaged 229 MOSI clips, 2 grouped
folds, 1 epoch, frozen LM): its numbers are the runs' own metrics.json summaries and exactly what
``msakit compare`` reports, and its majority-class rate is the labels'."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from msakit import runfolder as runs
from msakit.cli import main
from msakit.data import load_dataset
from msakit.experiments.compare import CompareError, compare_runs
from msakit.experiments.leaderboard import DEFAULT_METRICS, build_leaderboard

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("leaderboard")
    common = ["--data", "mosi-demo", "--folds", "2", "--seeds", "1", "--epochs", "1",
              "--set", "model.freeze_language_model=true",
              "--output-dir", str(root), "--no-progress"]
    for name, extra in (("floor", ["--set", "model.modalities=[text]"]), ("full", [])):
        result = CliRunner().invoke(main, ["train", "lf_dnn", *common, "--set",
                                           f"run.name={name}", *extra])
        assert result.exit_code == 0, result.output
    return root, root / "floor", root / "full"


def test_leaderboard_numbers_are_the_runs_and_compares(two_runs):
    _, floor, full = two_runs
    board = build_leaderboard(floor, [full])
    reference = compare_runs([floor, full], metrics=list(DEFAULT_METRICS))
    assert [r["label"] for r in board["rows"]] == ["lf_dnn [text]", "lf_dnn"]
    for row, run_dir in zip(board["rows"], (floor, full)):
        saved = runs.read_json(run_dir / runs.METRICS_FILE)
        for metric in DEFAULT_METRICS:
            assert row["summary"][metric] == saved["summary"][metric]
            assert row["summary"][metric]["n"] == 2
        assert [e["best_epoch"] for e in row["selected_epochs"]] == \
            [r["best_epoch"] for r in saved["runs"]]
    assert board["rows"][0]["difference"] is None
    compared = reference["comparisons"][0]["metrics"]
    for metric in DEFAULT_METRICS:
        entry = board["rows"][1]["difference"][metric]
        for key in ("difference", "ci_low", "ci_high", "p_value", "p_holm", "outside_noise"):
            assert entry[key] == compared[metric][key], (metric, key)
        if entry["ci_low"] <= 0 <= entry["ci_high"] or entry["p_holm"] >= 0.05:
            assert not entry["outside_noise"]
        # the difference is the difference of the two runs' reported means
        assert entry["difference"] == pytest.approx(
            board["rows"][1]["summary"][metric]["mean"]
            - board["rows"][0]["summary"][metric]["mean"], abs=1e-9)

    labels = np.asarray(load_dataset("mosi-demo").split("all").labels, dtype=float)
    nonzero = labels[labels != 0]
    expected = max((nonzero > 0).mean(), (nonzero < 0).mean())
    assert board["majority"]["n_clips"] == 229 == len(labels)
    assert board["majority"]["rate"] == pytest.approx(expected)
    for row in board["rows"]:
        assert row["above_majority"] == (row["summary"]["Non0_acc_2"]["mean"] > expected)


def test_leaderboard_command_prints_and_writes(two_runs, tmp_path):
    root, floor, full = two_runs
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["leaderboard", str(floor), str(full),
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "Majority-class rate" in result.output and "inside the noise" in result.output
    # the terminal shows the label too (rich would otherwise take "[text]" for markup)
    assert "lf_dnn [text]" in result.output
    assert "Δ Non0_acc_2 vs lf_dnn [text] inside the noise" in " ".join(result.output.split())
    saved = json.loads((out / "leaderboard.json").read_text())
    assert [r["label"] for r in saved["rows"]] == ["lf_dnn [text]", "lf_dnn"]
    markdown = (out / "leaderboard.md").read_text()
    assert "| lf_dnn [text] |" in markdown and "baseline" in markdown
    forest = (out / "leaderboard.png").read_bytes()
    assert forest.startswith(b"\x89PNG\r\n\x1a\n") and "leaderboard.png" in markdown
    again = CliRunner().invoke(main, ["leaderboard", str(floor), str(full),
                                      "--output-dir", str(out)])
    assert again.exit_code == 0 and (out / "leaderboard-2.json").exists()
    assert (out / "leaderboard-2.png").exists()
    refused = CliRunner().invoke(main, ["leaderboard", str(floor), str(root)])
    assert refused.exit_code != 0
    assert "no predictions.csv" in refused.output and "Traceback" not in refused.output
    with pytest.raises(CompareError, match="at least one other"):
        build_leaderboard(floor, [])
