"""The decision rule of ``msakit compare`` / ``leaderboard`` keeps its promised error rates on
data shaped like the main job (the real labels and per-video clip counts of ``mosi-demo``,
3 folds grouped by video; 5, 10 and 20 videos), simulated with per-video random effects on the
paired difference (:mod:`msakit.experiments.simulation`): with no true difference, "outside the
noise" at most 5 % of the time (plus Monte Carlo error); with a true difference, the 95 %
interval covers it at least 93 % of the time. Every replicate runs the real statistic."""

from __future__ import annotations

import math

import pytest

from msakit.experiments.simulation import ALTERNATIVE, NULL, simulate

REPLICATES = 1000
#: 5 % plus two Monte Carlo standard errors of a 5 % rate over REPLICATES
NULL_BOUND = 0.05 + 2 * math.sqrt(0.05 * 0.95 / REPLICATES)


@pytest.mark.parametrize("n_videos", [5, 10, 20])
@pytest.mark.parametrize("metric", ["MAE", "Non0_acc_2"])
def test_false_outside_the_noise_rate_and_coverage(metric, n_videos):
    null = simulate(metric, NULL, n_videos, REPLICATES, seed=0)
    assert null["true_difference"] == 0.0
    assert null["declared"] <= NULL_BOUND, null
    alternative = simulate(metric, ALTERNATIVE, n_videos, REPLICATES, seed=1)
    assert abs(alternative["true_difference"]) > 0.05  # -0.08 MAE / +7.5 points of Acc-2
    assert alternative["covered"] >= 0.93, alternative
    # the estimate is unbiased for the true difference (within 4 Monte Carlo errors)
    spread = alternative["mean_half_width"] / 1.96 / math.sqrt(REPLICATES)
    assert abs(alternative["mean_difference"] - alternative["true_difference"]) < 4 * spread


def test_the_simulated_data_is_mosi_demo():
    from msakit.experiments.simulation import demo_videos, fold_units

    labels, videos = demo_videos(10)
    assert len(labels) == 229 and videos.max() == 9
    sizes = sorted(int((videos == v).sum()) for v in range(10))
    assert sizes == [9, 11, 15, 21, 22, 25, 28, 30, 34, 34]
    folds = fold_units(labels, videos)
    assert sorted(len(set(v.tolist())) for _, v in folds) == [3, 3, 4]
    assert sum(len(rows) for rows, _ in folds) == 229
