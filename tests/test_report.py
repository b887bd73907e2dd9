"""``msakit report``: one self-contained HTML page per run, checked in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from msakit.cli import main
from msakit.experiments.report import (
    artifact_figures,
    build_report,
    report_title,
    shared_colour_range,
)


def _decode(png_base64: str) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(base64.b64decode(png_base64)), format="png")


def _drawn(image: np.ndarray) -> float:
    """Share of pixels that are not (near) white."""
    rgb = image[..., :3]
    return float((rgb.min(axis=-1) < 0.9).mean())


def test_model_artifacts_become_figures():
    edges = {"V->L": 0.1, "A->L": 0.2, "L->V": 0.5, "A->V": 0.05, "L->A": 0.6, "V->A": 0.15}
    run_artifacts = {"test_summary": {
        "homo_gd": {k: {"mean": v, "std": 0.01, "n": 3} for k, v in edges.items()},
        "hetero_gd": {k: {"mean": 1 - v, "std": 0.01, "n": 3} for k, v in edges.items()}}}
    rng = np.random.default_rng(0)
    train_runs = [{
        "seed": 1, "partition": f"fold{i}", "metrics": {}, "predictions": [],
        "epochs": [{"epoch": "1", "train_task": "1.0"}, {"epoch": "2", "train_task": "0.9"}],
        "artifacts": {
            "test": {"gate_values": {"text_by_audio": rng.uniform(0.3, 0.7, 40).tolist()}},
            "generated_labels": {"tasks": ["T", "A"], "drift_by_epoch": [
                {"epoch": e, "T": {"mean_abs_drift": 0.1 * e}, "A": {"mean_abs_drift": 0.2 * e}}
                for e in (1, 2, 3)]}},
    } for i in range(2)]
    figures = dict(artifact_figures(train_runs, run_artifacts, ["task"]))
    assert set(figures) == {"Model artifacts: graph edges on the test split",
                            "Model artifacts: gates",
                            "Model artifacts: generated unimodal labels (one line per run)"}
    for png in figures.values():
        assert _drawn(_decode(png)) > 0.02


def test_report_title_does_not_repeat_the_model():
    assert report_title("dmd", "mosi", "dmd") == "dmd on mosi"  # was "dmd on mosi: dmd"
    assert report_title("dmd", "mosi", "dmd-mosi-20261130-010000") == "dmd on mosi"
    assert report_title("misa", "mosi", "tuned") == "misa on mosi (run tuned)"


def test_heatmap_panels_share_one_stated_colour_range():
    # DMD's homo_gd spans 0.1660-0.1672: on its own range equal 0.17 cells looked unequal
    homo = [0.1660, 0.1668, 0.1672]
    hetero = [0.05, 0.5, 0.9]
    assert shared_colour_range(homo + hetero) == (0.0, 1.0)   # weights: the full [0, 1]
    assert shared_colour_range([0.5, 2.5, -1.0]) == (-1.0, 2.5)
    edges = {"V->L": 0.1660, "A->L": 0.1672, "L->V": 0.1668}
    run_artifacts = {"test_summary": {
        "homo_gd": {k: {"mean": v, "std": 0.0, "n": 3} for k, v in edges.items()},
        "hetero_gd": {k: {"mean": 0.9 - v, "std": 0.0, "n": 3} for k, v in edges.items()}}}
    figures = dict(artifact_figures([], run_artifacts))
    image = _decode(figures["Model artifacts: graph edges on the test split"])
    assert _drawn(image) > 0.02


def test_log_lines_show_accuracies_in_percent():
    from msakit.training.experiment import _result_line

    line = _result_line({"seed": 1, "partition": "fold0", "best_epoch": 3,
                         "test": {"Non0_acc_2": 0.69899, "MAE": 1.09834, "Corr": 0.61}})
    assert "Non0_acc_2 69.90 %" in line and "MAE 1.0983" in line and "0.6990" not in line


@pytest.fixture(scope="module")
def trained_run(mosi_word_aligned, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = CliRunner().invoke(main, [
        "train", "lf_dnn", "--data", str(mosi_word_aligned), "--folds", "2", "--seeds", "1",
        "--epochs", "2", "--set", "model.freeze_language_model=true",
        "--set", "run.name=run", "--set", "run.loggers=[tensorboard]",
        "--output-dir", str(out),
        "--no-progress"])
    assert result.exit_code == 0, result.output
    return out / "run"


@pytest.mark.slow
def test_report_is_one_self_contained_page(trained_run):
    result = CliRunner().invoke(main, ["report", str(trained_run)])
    assert result.exit_code == 0, result.output
    page = (trained_run / "report.html").read_text()
    for section in ("Results on the test parts", "Learning curves: fold0",
                    "Learning curves: fold1", "Test predictions", "Provenance", "data SHA-256",
                    "mean ± std (n=2)"):
        assert section in page, section
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3  # two partitions' curves, predictions + confusion matrix
    assert "<title>lf_dnn on mosi (run run)</title>" in page  # the folder is named "run"
    assert all(_drawn(_decode(png)) > 0.02 for png in images)
    # nothing is fetched from anywhere: no external scripts, styles or images
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)
    # run.loggers=[tensorboard] wrote event files beside each training run's epochs.csv
    assert list((trained_run / "seed1" / "fold0" / "tensorboard").glob("events.out.tfevents.*"))
    missing = CliRunner().invoke(main, ["report", str(trained_run / "seed1")])
    assert missing.exit_code != 0 and "Traceback" not in missing.output


@pytest.mark.slow
def test_report_renders_in_headless_chromium(trained_run, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on PATH (Debian package chromium; .ci/run installs it)")
    page = build_report(trained_run, tmp_path / "report.html")
    screenshot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,2000", f"--screenshot={screenshot}",
                    page.resolve().as_uri()], check=True, capture_output=True, timeout=120)
    import matplotlib.image

    image = matplotlib.image.imread(screenshot)
    assert image.shape[:2] == (2000, 1280)
    # the page is not blank, and the embedded figures were decoded and drawn: text and
    # tables are grey, only the plots' lines, markers and heatmaps are coloured
    rgb = image[..., :3]
    coloured = float(((rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.2).mean())
    assert _drawn(image) > 0.02
    assert coloured > 0.003


@pytest.mark.slow
def test_report_shows_artifact_numbers_and_comparisons_as_tables(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    edges = {"V->L": 0.1660, "A->L": 0.1672, "L->V": 0.1668}
    (run / "artifacts.json").write_text(json.dumps({"test_summary": {
        "homo_gd": {k: {"mean": v, "std": 0.001, "n": 2} for k, v in edges.items()}}}))
    from msakit.experiments.compare import compare_runs, write_comparison

    write_comparison(compare_runs([trained_run, run], metrics=["Non0_acc_2", "MAE"]), run)
    page = build_report(run).read_text()
    assert "Model artifacts (numbers)" in page and "<th>group</th>" in page
    assert "<pre>" not in page.split("Provenance")[0]  # no raw JSON dump above the config
    assert '"mean"' not in page and "homo_gd (n=2)" in page
    assert "Comparison with the baseline (compare.json)" in page and "p (Holm)" in page
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 5  # curves x 2, predictions, edge heatmap, forest plot
