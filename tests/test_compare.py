"""Paired comparison of runs (``msakit compare``) on the real 229 MOSI clips' folds.

The run folders here are written by hand from the real grouped folds (real clip ids, videos and
labels) with predictions of known quality, so what the statistics must say is known; the slow
test at the end compares two real trainings end to end.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from msakit import runfolder as runs
from msakit.cli import main
from msakit.config import build_config
from msakit.experiments.compare import (
    CompareError,
    cluster_bootstrap_ci,
    compare_pair,
    compare_runs,
    paired_permutation_p_value,
)
from msakit.metrics import compute_metrics, weighted_metrics
from msakit.provenance import environment_record
from msakit.training.loading import data_record, load_experiment_data

SEEDS = (1, 2)


@pytest.fixture(scope="module")
def real_folds(mosi_word_aligned):
    config = build_config("lf_dnn", [f"data.path={mosi_word_aligned}", "data.folds=5"])
    dataset, partitions = load_experiment_data(config)
    return config, dataset, partitions


def write_run(root, name, real_folds, noise, seed=0, drop_clip=False, fold_seed=None):
    """A finished run folder whose test predictions are ``label + N(0, noise^2)``."""
    config, dataset, partitions = real_folds
    config = config.model_copy(deep=True)
    if fold_seed is not None:
        config.data.fold_seed = fold_seed
    run_dir = root / name
    run_dir.mkdir()
    config.save(run_dir / runs.CONFIG_FILE)
    runs.write_json(run_dir / runs.DATA_FILE, data_record(dataset, partitions, config))
    runs.write_json(run_dir / "env.json", environment_record(config.data.path))
    rng = np.random.default_rng(seed)
    for s in SEEDS:
        for part in partitions:
            sub = runs.sub_run_dir(run_dir, s, part.name)
            sub.mkdir(parents=True)
            labels = part.test.labels.astype(np.float64)
            predictions = labels + rng.normal(0.0, noise, size=len(labels))
            rows = list(zip(part.test.ids, part.test.video_ids, labels, predictions))
            if drop_clip and part.name == "fold0":
                rows = rows[1:]
            lines = ["id,video_id,label,prediction"] + [",".join(map(str, r)) for r in rows]
            (sub / "predictions.csv").write_text("\n".join(lines) + "\n")
            runs.write_json(sub / runs.METRICS_FILE, {"seed": s, "partition": part.name})
    return run_dir


def test_weighted_metrics_equal_metrics_on_repeated_clips():
    rng = np.random.default_rng(0)
    for dataset in ("mosi", "sims"):
        scale = 3.0 if dataset == "mosi" else 1.0
        for _ in range(20):
            truth = np.round(rng.uniform(-scale, scale, 40) * 5) / 5
            pred = truth + rng.normal(0, scale / 3, 40)
            weights = rng.integers(0, 3, size=(3, 40))
            batched = weighted_metrics(pred, truth, weights, dataset)
            for row in range(3):
                reference = compute_metrics(np.repeat(pred, weights[row]),
                                            np.repeat(truth, weights[row]), dataset)
                for name, value in reference.items():
                    assert batched[name][row] == pytest.approx(value, abs=1e-9), name


def test_cluster_bootstrap_ci_is_wider_when_clips_of_a_video_move_together():
    rng = np.random.default_rng(1)
    videos = np.repeat(np.arange(12), 20)
    differences = rng.normal(0, 1, 12)[videos] + rng.normal(0, 0.1, len(videos))
    clustered = cluster_bootstrap_ci(differences, videos, n_boot=2000, seed=0)
    independent = cluster_bootstrap_ci(differences, np.arange(len(videos)), n_boot=2000, seed=0)
    assert clustered["mean"] == pytest.approx(differences.mean())
    assert clustered["n_clusters"] == 12 and independent["n_clusters"] == 240
    assert clustered["ci_low"] < clustered["mean"] < clustered["ci_high"]
    # clips of one video are nearly copies: 12 effective observations, not 240
    assert (clustered["ci_high"] - clustered["ci_low"]) > \
        3 * (independent["ci_high"] - independent["ci_low"])
    constant = cluster_bootstrap_ci(np.full(30, 0.5), np.repeat(np.arange(3), 10), n_boot=200)
    assert constant["ci_low"] == constant["ci_high"] == pytest.approx(0.5)


def test_paired_permutation_p_value_is_exact_for_few_videos():
    videos = np.repeat(np.arange(10), 3)
    # every video favours B: only the identity and the all-flipped pattern reach |D|
    assert paired_permutation_p_value(np.ones(30), videos) == pytest.approx(2 / 1024)
    balanced = np.where(videos % 2 == 0, 1.0, -1.0)
    assert paired_permutation_p_value(balanced, videos) == pytest.approx(1.0)


def test_compare_finds_the_better_model_and_matches_the_results_tables(real_folds, tmp_path):
    noisy = write_run(tmp_path, "noisy", real_folds, noise=1.5, seed=1)
    good = write_run(tmp_path, "good", real_folds, noise=0.3, seed=2)
    result = compare_pair(noisy, good, n_boot=500)
    mae = result["metrics"]["MAE"]
    assert result["pairing"]["n_units"] == 10
    assert result["pairing"]["n_clips"] == 2 * 229
    assert result["pairing"]["n_videos"] == 10
    # the difference is exactly the difference of the two runs' per-unit metric means
    means = {}
    for name, run_dir in (("a", noisy), ("b", good)):
        values = []
        for path in sorted(run_dir.glob("seed*/*/predictions.csv")):
            table = np.genfromtxt(path, delimiter=",", skip_header=1, usecols=(2, 3))
            values.append(compute_metrics(table[:, 1], table[:, 0])["MAE"])
        means[name] = np.mean(values)
    assert mae["a_mean"] == pytest.approx(means["a"])
    assert mae["difference"] == pytest.approx(means["b"] - means["a"])
    assert mae["better"] == "b" and mae["ci_high"] < 0  # lower MAE, CI excludes 0
    assert mae["p_value"] == pytest.approx(2 / 1024)  # exact: all 10 videos favour B
    corr = result["metrics"]["Corr"]
    assert corr["better"] == "b" and corr["ci_low"] > 0


def test_a_run_against_itself_differs_by_nothing(real_folds, tmp_path):
    run = write_run(tmp_path, "same", real_folds, noise=1.0)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    result = compare_runs([run, copy], metrics=["Non0_acc_2", "MAE"], n_boot=200)
    for entry in result["comparisons"][0]["metrics"].values():
        assert entry["difference"] == 0.0
        assert entry["ci_low"] == entry["ci_high"] == 0.0
        assert entry["p_value"] == 1.0


def test_runs_that_cannot_be_paired_are_refused_with_what_differs(real_folds, tmp_path):
    base = write_run(tmp_path, "base", real_folds, noise=1.0)
    other_folds = write_run(tmp_path, "folds", real_folds, noise=1.0, fold_seed=7)
    with pytest.raises(CompareError, match="data.fold_seed 0 vs 7"):
        compare_pair(base, other_folds)
    fewer = write_run(tmp_path, "fewer", real_folds, noise=1.0, drop_clip=True)
    with pytest.raises(CompareError, match="fold0: test clips differ"):
        compare_pair(base, fewer)
    other_data = write_run(tmp_path, "data", real_folds, noise=1.0)
    env = runs.read_json(other_data / "env.json")
    env["data"]["sha256"] = "0" * 64
    runs.write_json(other_data / "env.json", env)
    with pytest.raises(CompareError, match="SHA-256"):
        compare_pair(base, other_data)
    shutil.rmtree(other_data / "seed2")
    with pytest.raises(CompareError, match=r"only in .*base: \[\(2, 'fold0'\)"):
        compare_pair(base, other_data)
    with pytest.raises(CompareError, match="unknown metric"):
        compare_pair(base, base, metrics=["Acc"])


def test_compare_command_writes_json_and_markdown(real_folds, tmp_path):
    a = write_run(tmp_path, "a", real_folds, noise=1.0, seed=3)
    b = write_run(tmp_path, "b", real_folds, noise=0.8, seed=4)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["compare", str(a), str(b), "--metric", "MAE", "Corr",
                                       "--n-boot", "200", "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "95 % CI" in result.output and "cluster bootstrap" in result.output
    written = next(out.glob("compare-*"))
    saved = json.loads((written / "compare.json").read_text())
    assert list(saved["comparisons"][0]["metrics"]) == ["MAE", "Corr"]
    assert "| MAE |" in (written / "compare.md").read_text()
    refused = CliRunner().invoke(main, ["compare", str(a), str(tmp_path)])
    assert refused.exit_code != 0
    assert "no predictions.csv" in refused.output and "Traceback" not in refused.output


@pytest.mark.slow
def test_train_with_baseline_prints_the_comparison(mosi_word_aligned, tmp_path):
    common = ["--data", str(mosi_word_aligned), "--folds", "2", "--seeds", "1", "--epochs", "1",
              "--set", "model.freeze_language_model=true",
              "--output-dir", str(tmp_path), "--no-progress"]
    first = CliRunner().invoke(main, ["train", "lf_dnn", *common, "--set", "run.name=base"])
    assert first.exit_code == 0, first.output
    base = tmp_path / "base"
    env = json.loads((base / "env.json").read_text())
    assert env["data"]["sha256"] and env["data"]["mmsa_published"] is None
    assert env["python"]["version"] and env["torch"]["version"]
    second = CliRunner().invoke(main, ["train", "lf_dnn", *common, "--set", "run.name=new",
                                       "--set", "train.lr=3e-3", "--baseline", str(base)])
    assert second.exit_code == 0, second.output
    assert "95 % CI" in second.output
    saved = json.loads((tmp_path / "new" / "compare.json").read_text())
    assert saved["comparisons"][0]["pairing"]["n_clips"] == 229
