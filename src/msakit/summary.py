"""Summaries of metrics over runs: mean ± sample std per metric, per artifact group, and how a
metric is shown (percent or not). Used by training results, exports and the experiment tools."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

__all__ = ["PERCENT_MARKERS", "format_value", "is_percent", "mean_std", "summarise",
           "summarise_artifacts"]

#: Metrics shown as percentages in tables (accuracies and F1 scores).
PERCENT_MARKERS = ("acc", "F1")


def is_percent(metric: str) -> bool:
    """Whether ``metric`` is shown in percent (accuracies and F1 scores)."""
    return any(marker in metric for marker in PERCENT_MARKERS)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and *sample* standard deviation (ddof=1; 0.0 for a single value)."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std", "n"}}`` over all (seed, partition) runs."""
    by_metric: dict[str, list[float]] = defaultdict(list)
    for result in results:
        for metric, value in result["test"].items():
            by_metric[metric].append(value)
    out = {}
    for metric, values in by_metric.items():
        mean, std = mean_std(values)
        out[metric] = {"mean": mean, "std": std, "n": len(values)}
    return out


def summarise_artifacts(artifacts: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean ± sample std over runs of every ``{name: number}`` group in the runs' artifacts.

    A model's evaluation artifacts (e.g. DMD's ``{"homo_gd": {"V->L": 0.2, ...}, ...}``) are
    averaged group by group; a group is kept only when every run has it with the same names and
    numeric values, anything else (lists, strings, counts of other shapes) is left out.

    Returns:
        ``{group: {name: {"mean", "std", "n"}}}``; empty when nothing is averageable.
    """
    if not artifacts:
        return {}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for group, first in artifacts[0].items():
        if not isinstance(first, dict) or not first:
            continue
        names = list(first)
        values = [a.get(group) for a in artifacts]
        if not all(isinstance(v, dict) and list(v) == names for v in values):
            continue
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                   for v in values for x in v.values()):
            continue
        out[group] = {}
        for name in names:
            mean, std = mean_std([v[name] for v in values])
            out[group][name] = {"mean": mean, "std": std, "n": len(values)}
    return out


def format_value(metric: str, value: float, std: float | None = None) -> str:
    """``value`` (± ``std``) as tables show it: accuracies and F1 in percent with 2 digits,
    the rest with 4."""
    scale = 100.0 if is_percent(metric) else 1.0
    digits = 2 if is_percent(metric) else 4
    text = f"{value * scale:.{digits}f}"
    if std is not None:
        text += f" ± {std * scale:.{digits}f}"
    return text


def format_metric(metric: str, value: float) -> str:
    """One value for a log line: accuracies and F1 in percent with the unit (``69.90 %``),
    others with four decimals."""
    return f"{format_value(metric, value)} %" if is_percent(metric) else format_value(metric, value)
