"""Evaluation metrics, with exactly the semantics of MMSA's ``MetricsTop`` (regression mode).

MOSI / MOSEI / custom data (labels in [-3, 3]), computed on the *unclipped* predictions:

- ``MAE``: mean absolute error; ``Corr``: Pearson correlation.
- ``Mult_acc_7`` / ``Mult_acc_5``: clip prediction and truth to [-3, 3] / [-2, 2], round both to
  the nearest integer with NumPy's round-half-to-even (``np.round``: 2.5 -> 2, -2.5 -> -2,
  0.5 -> 0), then compare.
- ``Non0_acc_2`` / ``Non0_F1_score``: drop the samples whose truth is exactly 0, binarise
  ``x > 0`` (negative vs positive).
- ``Has0_acc_2`` / ``Has0_F1_score``: all samples, binarise ``x >= 0`` (a truth of 0 counts as
  positive).
- F1 scores are the class-support-weighted F1 of the two classes: sklearn's
  ``f1_score(average="weighted", zero_division=0)``, which MMSA calls, computed here from the
  four confusion counts (the same value, bit for bit: the metric parity fixture and
  ``tests/test_metrics.py`` check it against both).

CH-SIMS / SIMS v2 (labels in [-1, 1]): prediction and truth are clipped to [-1, 1] *first*; MAE
and ``Corr`` are computed on the clipped values. Classes are right-closed intervals:

- ``Mult_acc_2``: [-1, 0] / (0, 1]
- ``Mult_acc_3``: [-1, -0.1] / (-0.1, 0.1] / (0.1, 1]
- ``Mult_acc_5``: [-1, -0.7] / (-0.7, -0.1] / (-0.1, 0.1] / (0.1, 0.7] / (0.7, 1]
- ``F1_score``: weighted F1 of the 2-class split.

Differences from MMSA, all deliberate and harmless: results are not rounded to 4 decimals;
a constant prediction (or truth) gives ``Corr = 0.0`` instead of NumPy's ``nan`` plus a warning
(the Pearson correlation is undefined there; 0.0 means "no linear relationship can be measured"
and keeps averages over folds finite); when every truth is exactly 0 the ``Non0`` metrics are
``nan`` (there is nothing to score). Bin edges are compared in the input's floating dtype, as in
MMSA, so a float32 prediction of exactly ``0.1`` falls in the same class there and here.

Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

MOSI_STYLE = ("mosi", "mosei", "custom")
SIMS_STYLE = ("sims", "simsv2")

MOSI_METRICS = (
    "Has0_acc_2", "Has0_F1_score", "Non0_acc_2", "Non0_F1_score",
    "Mult_acc_5", "Mult_acc_7", "MAE", "Corr",
)
SIMS_METRICS = ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr")

#: Inner class boundaries of the SIMS bins (each class is right-closed: (edge_i, edge_i+1]).
SIMS_BIN_EDGES = {
    2: (0.0,),
    3: (-0.1, 0.1),
    5: (-0.7, -0.1, 0.1, 0.7),
}

_LOWER_IS_BETTER = {"MAE", "loss", "Loss"}
_HIGHER_IS_BETTER = set(MOSI_METRICS + SIMS_METRICS) - {"MAE"}


def _as_float_array(values: Any, what: str) -> np.ndarray:
    """``values`` (tensor, array or sequence) as a 1-D floating NumPy array, dtype kept if float."""
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu()
        if values.is_floating_point() and values.dtype not in (torch.float32, torch.float64):
            values = values.float()  # NumPy has no bfloat16
        values = values.numpy()
    array = np.asarray(values)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    if array.ndim > 1:
        if array.size != array.shape[0]:
            raise ValueError(f"{what}: expected shape (N,) or (N, 1), got {array.shape}")
        array = array.reshape(-1)
    if array.ndim == 0:
        raise ValueError(f"{what}: expected a 1-D array of N values, got a scalar")
    if not np.all(np.isfinite(array)):
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(f"{what}: {bad} non-finite value(s) (NaN or inf)")
    return array


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two 1-D arrays; 0.0 when either is constant (see module doc)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((xc * xc).sum()) * float((yc * yc).sum()))
    if denominator == 0.0:
        return 0.0
    return float((xc * yc).sum() / denominator)


def multiclass_accuracy(pred: np.ndarray, truth: np.ndarray) -> float:
    """Share of samples whose rounded (half to even) prediction equals the rounded truth."""
    return float(np.mean(np.round(pred) == np.round(truth)))


def _binary_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """Support-weighted F1 of the boolean classes ``truth`` vs ``pred``, ``(N,)`` each.

    The value of sklearn's ``f1_score(average="weighted", zero_division=0)`` from the confusion
    counts; sklearn's own call spends about 0.8 ms per call on input checks, which every
    validation and test pass would pay twice (Has0 and Non0).
    """
    return float(_weighted_binary_f1(truth, pred, np.ones(truth.shape)))


def sims_bins(values: np.ndarray, n_classes: int) -> np.ndarray:
    """Class index of each (already clipped) value; classes are right-closed intervals."""
    edges = np.asarray(SIMS_BIN_EDGES[n_classes], dtype=values.dtype)
    # side="left": a value equal to an edge lands in the class *below* it, i.e. (a, b].
    return np.searchsorted(edges, values, side="left")


def _mosi_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    mae = float(np.mean(np.abs(pred.astype(np.float64) - truth.astype(np.float64))))
    corr = pearson_r(pred, truth)
    acc7 = multiclass_accuracy(np.clip(pred, -3.0, 3.0), np.clip(truth, -3.0, 3.0))
    acc5 = multiclass_accuracy(np.clip(pred, -2.0, 2.0), np.clip(truth, -2.0, 2.0))

    non_zero = truth != 0
    if non_zero.any():
        non0_truth = truth[non_zero] > 0
        non0_pred = pred[non_zero] > 0
        non0_acc2 = float(np.mean(non0_truth == non0_pred))
        non0_f1 = _binary_f1(non0_truth, non0_pred)
    else:
        non0_acc2 = non0_f1 = float("nan")

    has0_truth = truth >= 0
    has0_pred = pred >= 0
    return {
        "Has0_acc_2": float(np.mean(has0_truth == has0_pred)),
        "Has0_F1_score": _binary_f1(has0_truth, has0_pred),
        "Non0_acc_2": non0_acc2,
        "Non0_F1_score": non0_f1,
        "Mult_acc_5": acc5,
        "Mult_acc_7": acc7,
        "MAE": mae,
        "Corr": corr,
    }


def _sims_metrics(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    pred = np.clip(pred, -1.0, 1.0)
    truth = np.clip(truth, -1.0, 1.0)
    bins = {k: (sims_bins(pred, k), sims_bins(truth, k)) for k in SIMS_BIN_EDGES}
    return {
        "Mult_acc_2": float(np.mean(bins[2][0] == bins[2][1])),
        "Mult_acc_3": float(np.mean(bins[3][0] == bins[3][1])),
        "Mult_acc_5": float(np.mean(bins[5][0] == bins[5][1])),
        "F1_score": _binary_f1(bins[2][1] == 1, bins[2][0] == 1),
        "MAE": float(np.mean(np.abs(pred.astype(np.float64) - truth.astype(np.float64)))),
        "Corr": pearson_r(pred, truth),
    }


def _weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum(w * v) / sum(w)`` over the last axis; ``nan`` where the weights sum to 0."""
    total = weights.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weights * values).sum(axis=-1) / total, np.nan)


def _weighted_pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Pearson correlation under sample weights over the last axis; 0.0 where one side is
    constant (as :func:`pearson_r`)."""
    total = weights.sum(axis=-1, keepdims=True)
    xc = x - (weights * x).sum(axis=-1, keepdims=True) / total
    yc = y - (weights * y).sum(axis=-1, keepdims=True) / total
    denominator = np.sqrt((weights * xc * xc).sum(axis=-1) * (weights * yc * yc).sum(axis=-1))
    covariance = (weights * xc * yc).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, covariance / np.where(denominator > 0, denominator, 1),
                        0.0)


def _weighted_binary_f1(truth: np.ndarray, pred: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Support-weighted F1 of two classes (sklearn's ``average="weighted"``, ``zero_division=0``)
    from weighted confusion counts over the last axis."""
    tp = (weights * (truth & pred)).sum(axis=-1)
    fp = (weights * (~truth & pred)).sum(axis=-1)
    fn = (weights * (truth & ~pred)).sum(axis=-1)
    tn = (weights * (~truth & ~pred)).sum(axis=-1)

    def f1(hits, misses):
        return np.where(hits > 0, 2 * hits / np.maximum(2 * hits + misses, 1e-300), 0.0)

    support = tp + fn + tn + fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0,
                        ((tp + fn) * f1(tp, fp + fn) + (tn + fp) * f1(tn, fn + fp)) / support,
                        np.nan)


def weighted_metrics(
    pred: Any, truth: Any, weights: Any = None, dataset: str = "mosi",
    names: Any = None,
) -> dict[str, np.ndarray]:
    """:func:`compute_metrics` under per-sample weights, for many weightings at once.

    A weight of ``k`` counts the sample ``k`` times, so integer weights give exactly what
    :func:`compute_metrics` gives on the samples repeated (the tests check this); a bootstrap
    replicate is a row of resampling counts. F1 scores are computed from weighted confusion
    counts (two classes: the same value as sklearn's weighted F1).

    Args:
        pred: ``(..., N)`` predictions (a batch of prediction vectors, e.g. permuted pairs).
        truth: ``(N,)`` labels.
        weights: ``(..., N)`` non-negative sample weights broadcastable against ``pred``;
            ``None`` = all 1.
        dataset: metric family, as for :func:`compute_metrics`.
        names: compute only these metrics (default: all of the family's).

    Returns:
        ``{name: array of the broadcast batch shape}``; ``nan`` where nothing is scored (e.g.
        ``Non0`` metrics when every weighted truth is 0).
    """
    family = _family(dataset)
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape[-1] != truth.shape[-1] or truth.ndim != 1:
        raise ValueError(f"predictions {pred.shape} and labels {truth.shape}: expected "
                         "(..., N) and (N,)")
    weights = np.ones_like(pred) if weights is None else np.asarray(weights, dtype=np.float64)
    pred, weights = np.broadcast_arrays(pred, weights)
    truth = np.broadcast_to(truth, pred.shape)
    if family == "mosi":
        non_zero = weights * (truth != 0)
        formulas = {
            "Has0_acc_2": lambda: _weighted_mean((truth >= 0) == (pred >= 0), weights),
            "Has0_F1_score": lambda: _weighted_binary_f1(truth >= 0, pred >= 0, weights),
            "Non0_acc_2": lambda: _weighted_mean((truth > 0) == (pred > 0), non_zero),
            "Non0_F1_score": lambda: _weighted_binary_f1(truth > 0, pred > 0, non_zero),
            "Mult_acc_5": lambda: _weighted_mean(
                np.round(np.clip(pred, -2, 2)) == np.round(np.clip(truth, -2, 2)), weights),
            "Mult_acc_7": lambda: _weighted_mean(
                np.round(np.clip(pred, -3, 3)) == np.round(np.clip(truth, -3, 3)), weights),
            "MAE": lambda: _weighted_mean(np.abs(pred - truth), weights),
            "Corr": lambda: _weighted_pearson(pred, truth, weights),
        }
    else:
        pred, truth = np.clip(pred, -1.0, 1.0), np.clip(truth, -1.0, 1.0)
        bins = {k: (sims_bins(pred, k), sims_bins(truth, k)) for k in SIMS_BIN_EDGES}
        formulas = {
            "Mult_acc_2": lambda: _weighted_mean(bins[2][0] == bins[2][1], weights),
            "Mult_acc_3": lambda: _weighted_mean(bins[3][0] == bins[3][1], weights),
            "Mult_acc_5": lambda: _weighted_mean(bins[5][0] == bins[5][1], weights),
            "F1_score": lambda: _weighted_binary_f1(bins[2][1] == 1, bins[2][0] == 1, weights),
            "MAE": lambda: _weighted_mean(np.abs(pred - truth), weights),
            "Corr": lambda: _weighted_pearson(pred, truth, weights),
        }
    unknown = set(names or ()) - set(formulas)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)} for {dataset}; "
                         f"choose from {list(formulas)}")
    return {name: formula() for name, formula in formulas.items()
            if names is None or name in names}


def metric_names(dataset: str = "mosi") -> tuple[str, ...]:
    """The keys :func:`compute_metrics` returns for ``dataset``."""
    family = _family(dataset)
    return MOSI_METRICS if family == "mosi" else SIMS_METRICS


def _family(dataset: str) -> str:
    name = str(dataset).lower()
    if name in MOSI_STYLE:
        return "mosi"
    if name in SIMS_STYLE:
        return "sims"
    raise ValueError(
        f"unknown dataset {dataset!r} for metrics; expected one of "
        f"{', '.join(MOSI_STYLE + SIMS_STYLE)}"
    )


def compute_metrics(pred: Any, truth: Any, dataset: str = "mosi") -> dict[str, float]:
    """MMSA's regression metrics of ``pred`` against ``truth``.

    Args:
        pred: ``(N,)`` (or ``(N, 1)``) predicted sentiment intensities; tensor, array or list.
        truth: ``(N,)`` human labels.
        dataset: ``mosi``, ``mosei`` or ``custom`` (MOSI-style metrics), ``sims`` or ``simsv2``.

    Returns:
        ``{name: value}`` with the keys of :data:`MOSI_METRICS` or :data:`SIMS_METRICS`;
        accuracies and F1 as fractions in [0, 1].
    """
    family = _family(dataset)
    pred_array = _as_float_array(pred, "predictions")
    truth_array = _as_float_array(truth, "labels")
    if pred_array.shape != truth_array.shape:
        raise ValueError(
            f"predictions and labels differ in length: {pred_array.shape[0]} vs "
            f"{truth_array.shape[0]}"
        )
    if pred_array.size == 0:
        raise ValueError("cannot compute metrics on zero samples")
    if family == "mosi":
        return _mosi_metrics(pred_array, truth_array)
    return _sims_metrics(pred_array, truth_array)


def metric_direction(name: str) -> str:
    """``"min"`` if lower values of metric ``name`` are better (MAE, losses), else ``"max"``."""
    if name in _LOWER_IS_BETTER or name.lower().endswith("loss"):
        return "min"
    if name in _HIGHER_IS_BETTER:
        return "max"
    known = sorted(_HIGHER_IS_BETTER | _LOWER_IS_BETTER)
    raise ValueError(f"unknown metric {name!r}; known: {', '.join(known)} (or any '*loss')")


__all__ = [
    "MOSI_METRICS", "SIMS_METRICS", "SIMS_BIN_EDGES", "compute_metrics", "metric_direction",
    "metric_names", "multiclass_accuracy", "pearson_r", "sims_bins", "weighted_metrics",
]
