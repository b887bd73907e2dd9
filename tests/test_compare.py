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
    PairedUnit,
    _decide,
    cluster_bootstrap_ci,
    compare_pair,
    compare_runs,
    holm_adjust,
    jackknife_t_rule,
    paired_permutation_p_value,
    paired_units_interval,
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
    result = compare_pair(noisy, good)
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
    assert mae["p_value"] < 0.001 and mae["p_holm"] == mae["p_value"]  # one comparison
    assert mae["outside_noise"] and mae["df"] == 9  # 10 videos
    corr = result["metrics"]["Corr"]
    assert corr["better"] == "b" and corr["ci_low"] > 0


def test_a_run_against_itself_differs_by_nothing(real_folds, tmp_path):
    run = write_run(tmp_path, "same", real_folds, noise=1.0)
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    result = compare_runs([run, copy], metrics=["Non0_acc_2", "MAE"])
    for entry in result["comparisons"][0]["metrics"].values():
        assert entry["difference"] == 0.0
        assert entry["ci_low"] == entry["ci_high"] == 0.0
        assert entry["p_value"] == 1.0
        assert entry["better"] == "none" and not entry["outside_noise"]


def test_jackknife_t_rule_is_the_paired_t_test_on_equal_videos():
    """For a mean of per-clip differences over equal-sized videos (one unit), the delete-one-video
    jackknife SE is sd(video means) / sqrt(G): p is the one-sample t-test on the video means."""
    from scipy import stats

    rng = np.random.default_rng(3)
    videos = np.repeat(np.arange(8), 12)
    labels = rng.choice([-2.0, -1.0, 1.0, 2.0], size=len(videos))
    a = labels + rng.normal(0, 1.0, len(videos))
    b = labels + rng.normal(0.3, 1.0, 8)[videos] * rng.uniform(0.5, 1.5, len(videos))
    rule = paired_units_interval([PairedUnit(labels, a, b, videos, "all")], 8, "mosi", ["MAE"])
    per_video = np.bincount(videos, np.abs(b - labels) - np.abs(a - labels)) / 12
    reference = stats.ttest_1samp(per_video, 0.0)
    low, high = reference.confidence_interval(0.95)
    assert rule["MAE"]["difference"] == pytest.approx(per_video.mean(), rel=1e-9)
    assert rule["MAE"]["p_value"] == pytest.approx(reference.pvalue, rel=1e-6)
    assert (rule["MAE"]["ci_low"], rule["MAE"]["ci_high"]) == pytest.approx((low, high), rel=1e-6)
    assert rule["MAE"]["df"] == 7


def test_interval_and_p_never_disagree():
    rng = np.random.default_rng(4)
    observed = rng.normal(0, 1, 5000)
    deleted = observed[:, None] + rng.normal(0, 1, (5000, 1)) * rng.normal(0, 1, (5000, 10))
    rule = jackknife_t_rule(observed, deleted)
    excludes = (rule["ci_low"] > 0) | (rule["ci_high"] < 0)
    assert 0.05 < excludes.mean() < 0.95  # both kinds of case occur
    assert np.array_equal(excludes, rule["p_value"] < 0.05)


def test_holm_adjustment():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, float("nan"), 0.2]) == pytest.approx([0.5, float("nan"), 0.4],
                                                                  nan_ok=True)
    assert holm_adjust([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # 2 x 0.8 capped at 1


def test_no_verdict_inside_the_interval_or_above_the_holm_level():
    """p = 0.03 alone is outside the noise; next to two other models (Holm over 3), it is not."""
    def entry(p, low, high):
        return {"difference": 0.1, "ci_low": low, "ci_high": high, "p_value": p,
                "higher_is_better": True}

    single = {"Non0_acc_2": entry(0.03, 0.01, 0.19)}
    _decide(single, 0.05)
    assert single["Non0_acc_2"]["outside_noise"] and single["Non0_acc_2"]["better"] == "b"
    family = [{"Non0_acc_2": entry(p, 0.01, 0.19)} for p in (0.03, 0.04, 0.5)]
    for table, p_holm in zip(family, holm_adjust([0.03, 0.04, 0.5])):
        table["Non0_acc_2"]["p_holm"] = p_holm
        _decide(table, 0.05)
        assert not table["Non0_acc_2"]["outside_noise"]
        assert table["Non0_acc_2"]["better"] == "none"


def test_compare_runs_adjusts_p_over_the_models_and_decides_by_it(real_folds, tmp_path):
    base = write_run(tmp_path, "base", real_folds, noise=1.0, seed=5)
    others = [write_run(tmp_path, f"m{k}", real_folds, noise=noise, seed=6 + k)
              for k, noise in enumerate((0.3, 0.95, 1.05))]
    result = compare_runs([base, *others])
    assert [c["method"]["n_comparisons"] for c in result["comparisons"]] == [3, 3, 3]
    decided = 0
    for metric in result["comparisons"][0]["metrics"]:
        entries = [c["metrics"][metric] for c in result["comparisons"]]
        assert [e["p_holm"] for e in entries] == pytest.approx(
            holm_adjust([e["p_value"] for e in entries]))
        for e in entries:
            inside = e["ci_low"] <= 0.0 <= e["ci_high"]
            assert e["outside_noise"] == (e["p_holm"] < 0.05)
            if inside or e["p_holm"] >= 0.05:
                assert not e["outside_noise"] and e["better"] == "none"
            decided += e["outside_noise"]
    assert decided >= 1  # the clearly better model (noise 0.3) is outside the noise


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
                                       "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    assert "95 % CI" in result.output and "jackknife" in result.output
    written = next(out.glob("compare-*"))
    saved = json.loads((written / "compare.json").read_text())
    assert list(saved["comparisons"][0]["metrics"]) == ["MAE", "Corr"]
    assert "| MAE |" in (written / "compare.md").read_text()
    forest = (written / "compare.png").read_bytes()
    assert forest.startswith(b"\x89PNG\r\n\x1a\n") and len(forest) > 5000
    from PIL import Image

    with Image.open(written / "compare.png") as image:
        image.verify()
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
