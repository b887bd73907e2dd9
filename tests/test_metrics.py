"""Hand-computed cases for MMSA's MetricsTop semantics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from msakit.metrics import (
    MOSI_METRICS,
    SIMS_METRICS,
    compute_metrics,
    metric_direction,
    metric_names,
    pearson_r,
)


def test_keys_per_dataset_family():
    assert tuple(compute_metrics([1.0, -1.0], [1.0, -1.0], "mosi")) == MOSI_METRICS
    assert tuple(compute_metrics([1.0, -1.0], [1.0, -1.0], "MOSEI")) == MOSI_METRICS
    assert tuple(compute_metrics([1.0, -1.0], [1.0, -1.0], "custom")) == MOSI_METRICS
    assert tuple(compute_metrics([0.5, -0.5], [0.5, -0.5], "sims")) == SIMS_METRICS
    assert tuple(compute_metrics([0.5, -0.5], [0.5, -0.5], "simsv2")) == SIMS_METRICS
    assert metric_names("sims") == SIMS_METRICS
    with pytest.raises(ValueError, match="unknown dataset"):
        compute_metrics([1.0], [1.0], "iemocap")


def test_zero_labels_non0_drops_them_has0_counts_them_positive():
    truth = [0.0, 0.0, 1.0, -1.0]
    pred = [-0.5, 0.5, 2.0, 0.3]
    m = compute_metrics(pred, truth)
    # Non0: only samples 3 and 4 remain; truth (+, -), pred (+, +) -> 1 of 2 right.
    assert m["Non0_acc_2"] == pytest.approx(0.5)
    # Has0: truth >= 0 -> (T, T, T, F); pred >= 0 -> (F, T, T, T) -> 2 of 4 right.
    assert m["Has0_acc_2"] == pytest.approx(0.5)
    # Weighted F1 for Has0 by hand: class True (support 3): tp 2, fp 1, fn 1 -> F1 = 2/3;
    # class False (support 1): tp 0 -> F1 0. Weighted: 3/4 * 2/3 = 0.5.
    assert m["Has0_F1_score"] == pytest.approx(0.5)
    # Non0 F1: truth (T, F), pred (T, T): class T (support 1) P = 1/2, R = 1 -> 2/3;
    # class F (support 1) -> 0. Weighted: 1/2 * 2/3 = 1/3.
    assert m["Non0_F1_score"] == pytest.approx(1 / 3)


def test_prediction_of_zero_is_positive_for_has0_and_negative_for_non0():
    m = compute_metrics([0.0, 0.0], [1.0, -1.0])
    assert m["Has0_acc_2"] == pytest.approx(0.5)  # 0 >= 0 is positive: right for +1 only
    assert m["Non0_acc_2"] == pytest.approx(0.5)  # 0 > 0 is False: right for -1 only


def test_round_half_to_even():
    # np.round: 2.5 -> 2, -2.5 -> -2, 0.5 -> 0, 1.5 -> 2.
    pred = [2.5, -2.5, 0.5, 1.5]
    truth = [2.0, -2.0, 0.0, 2.0]
    m = compute_metrics(pred, truth)
    assert m["Mult_acc_7"] == pytest.approx(1.0)
    assert m["Mult_acc_5"] == pytest.approx(1.0)
    # Rounding half away from zero would give 3, -3, 1: those must not match.
    m = compute_metrics([2.5, -2.5, 0.5], [3.0, -3.0, 1.0])
    assert m["Mult_acc_7"] == pytest.approx(0.0)


def test_clipping_at_3_and_2():
    pred = [5.0, -4.0, 2.7]
    truth = [3.0, -3.0, 2.0]
    m = compute_metrics(pred, truth)
    # Acc-7: clip to [-3, 3] -> 3, -3, 2.7 -> rounds 3, -3, 3 vs 3, -3, 2 -> 2/3.
    assert m["Mult_acc_7"] == pytest.approx(2 / 3)
    # Acc-5: clip to [-2, 2] -> everything matches (2, -2, 2 vs 2, -2, 2).
    assert m["Mult_acc_5"] == pytest.approx(1.0)
    # MAE uses the unclipped predictions: (2 + 1 + 0.7) / 3.
    assert m["MAE"] == pytest.approx(3.7 / 3)


def test_mae_and_corr_against_numpy():
    rng = np.random.default_rng(0)
    truth = rng.uniform(-3, 3, 50)
    pred = truth + rng.normal(0, 0.5, 50)
    m = compute_metrics(pred, truth)
    assert m["MAE"] == pytest.approx(np.mean(np.abs(pred - truth)))
    assert m["Corr"] == pytest.approx(np.corrcoef(pred, truth)[0, 1])


def test_constant_prediction_gives_zero_corr_not_nan():
    m = compute_metrics([0.3, 0.3, 0.3], [1.0, -1.0, 2.0])
    assert m["Corr"] == 0.0
    assert pearson_r(np.ones(4), np.arange(4)) == 0.0


def test_all_zero_truth_gives_nan_non0():
    m = compute_metrics([0.1, -0.1], [0.0, 0.0])
    assert math.isnan(m["Non0_acc_2"]) and math.isnan(m["Non0_F1_score"])
    assert m["Has0_acc_2"] == pytest.approx(0.5)


def test_accepts_tensors_and_column_vectors():
    pred = torch.tensor([[1.0], [-1.0]])
    truth = torch.tensor([1.0, -2.0])
    m = compute_metrics(pred, truth)
    assert m["Non0_acc_2"] == 1.0
    m = compute_metrics(pred.to(torch.bfloat16), truth.to(torch.float16))
    assert m["Non0_acc_2"] == 1.0


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        compute_metrics([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        compute_metrics([float("nan")], [1.0])
    with pytest.raises(ValueError, match="zero samples"):
        compute_metrics([], [])


def test_sims_bin_boundaries():
    # Truth on each boundary, prediction just inside the interval each boundary closes.
    truth = np.array([0.0, 0.1, -0.1, 0.7, -0.7], dtype=np.float32)
    # 2 classes: [-1,0] / (0,1]  -> truth classes 0, 1, 0, 1, 0
    # 3 classes: cuts at -0.1, 0.1 -> 1, 1, 0, 2, 0
    # 5 classes: cuts -0.7,-0.1,0.1,0.7 -> 2, 2, 1, 3, 0
    pred = np.array([-0.05, 0.05, -0.3, 0.5, -0.9], dtype=np.float32)
    # pred classes 2: 0, 1, 0, 1, 0 ; 3: 1, 1, 0, 2, 0 ; 5: 2, 2, 1, 3, 0 -> all match
    m = compute_metrics(pred, truth, "sims")
    assert m["Mult_acc_2"] == 1.0
    assert m["Mult_acc_3"] == 1.0
    assert m["Mult_acc_5"] == 1.0
    # Just across each boundary: every value goes one class up.
    pred_up = np.array([0.01, 0.11, -0.09, 0.71, -0.69], dtype=np.float32)
    m = compute_metrics(pred_up, truth, "sims")
    # 2 classes: 1,1,0,1,0 vs 0,1,0,1,0 -> 4/5 (only the 0 boundary moves class).
    assert m["Mult_acc_2"] == pytest.approx(0.8)
    # 3 classes: 1,2,1,2,0 vs 1,1,0,2,0 -> 3/5.
    assert m["Mult_acc_3"] == pytest.approx(0.6)
    # 5 classes: 2,3,2,4,1 vs 2,2,1,3,0 -> 1/5.
    assert m["Mult_acc_5"] == pytest.approx(0.2)


def test_sims_clips_before_mae_and_corr():
    m = compute_metrics([2.0, -3.0, 0.5], [1.0, -1.0, 0.0], "sims")
    # Clipped predictions 1, -1, 0.5 -> MAE (0 + 0 + 0.5)/3.
    assert m["MAE"] == pytest.approx(0.5 / 3)
    assert m["Corr"] == pytest.approx(np.corrcoef([1.0, -1.0, 0.5], [1.0, -1.0, 0.0])[0, 1])
    # Weighted F1 on the 2-class split: truth 1, 0, 0 ; pred 1, 0, 1.
    # class 1 (support 1): P 1/2, R 1 -> 2/3 ; class 0 (support 2): P 1, R 1/2 -> 2/3.
    assert m["F1_score"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("dataset", ["mosi", "sims"])
def test_f1_scores_are_sklearns_weighted_f1_bit_for_bit(dataset):
    """The F1 scores come from confusion counts; the value must be what MMSA's sklearn call
    gives, exactly, from mixed cases to those where a class is missing on one side or both."""
    rng = np.random.default_rng(7)
    scale = 3.0 if dataset == "mosi" else 1.0
    cases = []
    for n in (1, 2, 5, 51, 686):
        truth = np.round(rng.uniform(-scale, scale, n) * 5) / 5
        cases += [(truth + rng.normal(0, scale / 2, n), truth),  # mixed
                  (truth, truth),  # all right
                  (-truth - 0.05 * scale, truth),  # nearly all wrong
                  (np.full(n, scale / 2), truth),  # one class predicted
                  (truth, np.full(n, -scale / 2)),  # one class true
                  (np.full(n, -scale / 2), np.full(n, scale / 2))]  # one each, never right
    for pred, truth in cases:
        m = compute_metrics(pred, truth, dataset)
        if dataset == "mosi":
            splits = {"Has0_F1_score": (truth >= 0, pred >= 0)}
            non_zero = truth != 0
            if non_zero.any():
                splits["Non0_F1_score"] = (truth[non_zero] > 0, pred[non_zero] > 0)
        else:
            splits = {"F1_score": (np.clip(truth, -1, 1) > 0, np.clip(pred, -1, 1) > 0)}
        for name, (truth_class, pred_class) in splits.items():
            expected = f1_score(truth_class, pred_class, average="weighted", zero_division=0)
            assert m[name] == expected, (name, len(truth), m[name], expected)


def test_metric_direction():
    assert metric_direction("MAE") == "min"
    assert metric_direction("loss") == "min"
    assert metric_direction("task_loss") == "min"
    for name in ("Corr", "Non0_acc_2", "Has0_F1_score", "Mult_acc_7", "F1_score"):
        assert metric_direction(name) == "max"
    with pytest.raises(ValueError, match="unknown metric"):
        metric_direction("accuracy")
