"""Results tables: one row per training run, per-partition means, and mean ± sample std."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from msakit.training import runs

#: Metrics shown as percentages in tables (accuracies and F1 scores).
PERCENT_MARKERS = ("acc", "F1")


def _is_percent(metric: str) -> bool:
    return any(marker in metric for marker in PERCENT_MARKERS)


def format_metric(metric: str, value: float) -> str:
    """One value for a log line: accuracies and F1 in percent with the unit (``69.90 %``),
    others with four decimals."""
    return f"{format_value(metric, value)} %" if _is_percent(metric) else format_value(metric, value)


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


def artifacts_table(title: str, summary: dict[str, dict[str, dict[str, float]]]) -> Table:
    """A rich table of :func:`summarise_artifacts`: one row per group, mean ± std per name."""
    names: list[str] = []
    for group in summary.values():
        names += [n for n in group if n not in names]
    table = Table(title=title)
    table.add_column("runs")
    for name in names:
        table.add_column(name, justify="right")
    for group, stats in summary.items():
        n = next(iter(stats.values()))["n"]
        table.add_row(f"{group} (n={n})", *[
            f"{stats[name]['mean']:.3f} ± {stats[name]['std']:.3f}" if name in stats else ""
            for name in names])
    return table


def format_value(metric: str, value: float, std: float | None = None) -> str:
    scale = 100.0 if _is_percent(metric) else 1.0
    digits = 2 if _is_percent(metric) else 4
    text = f"{value * scale:.{digits}f}"
    if std is not None:
        text += f" ± {std * scale:.{digits}f}"
    return text


def results_table(title: str, results: list[dict[str, Any]], summary: dict) -> Table:
    """A rich table: per-partition means over seeds, then the overall mean ± std."""
    metrics = list(summary)
    table = Table(title=title)
    table.add_column("runs")
    for metric in metrics:
        table.add_column(metric + (" (%)" if _is_percent(metric) else ""), justify="right")
    by_partition: dict[str, list[dict]] = defaultdict(list)
    for result in results:
        by_partition[result["partition"]].append(result)
    if len(by_partition) > 1 or len(results) > 1:
        for partition, group in by_partition.items():
            cells = [format_value(m, *mean_std([r["test"][m] for r in group])) if len(group) > 1
                     else format_value(m, group[0]["test"][m]) for m in metrics]
            table.add_row(f"{partition} ({len(group)} seed{'s' * (len(group) > 1)})", *cells)
    table.add_row(f"[bold]mean ± std (n={len(results)})",
                  *[format_value(m, summary[m]["mean"], summary[m]["std"]) for m in metrics])
    return table


def paper_table(preset, summary: dict, language_model: str | None = None) -> Table:
    """The paper's reported numbers (:class:`msakit.presets.Preset`) beside this run's mean ± std.

    Papers give accuracies and F1 in percent; the table shows both in the paper's units.
    """
    paper = preset.paper
    title = f"{preset.model} preset {preset.name!r}: paper ({paper.citation}) vs this run"
    table = Table(title=title, min_width=len(title))  # a narrow table would wrap the title
    for column in ("metric", "paper", "this run (mean ± std)", "n"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for metric, value in paper.metrics.items():
        if metric in summary:
            ours = format_value(metric, summary[metric]["mean"], summary[metric]["std"])
            n = str(summary[metric]["n"])
        else:
            ours, n = "-", "-"
        table.add_row(metric, f"{value:g}", ours, n)
    notes = []
    if paper.note:
        notes.append(paper.note)
    if language_model and language_model != preset.language_model:
        notes.append(f"this run used language model {language_model!r}, the preset names "
                     f"{preset.language_model!r}")
    if notes:
        table.caption = "; ".join(notes)
    return table


def write_results(run_dir: Path, model: str, results: list[dict[str, Any]], summary: dict) -> None:
    """``results.csv`` (one row per run, then mean and std), ``results.md``, ``metrics.json``."""
    metrics = list(summary)
    with (run_dir / "results.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seed", "partition", "best_epoch", *metrics])
        for r in results:
            writer.writerow([r["seed"], r["partition"], r.get("best_epoch", ""),
                             *[r["test"][m] for m in metrics]])
        writer.writerow(["mean", "", "", *[summary[m]["mean"] for m in metrics]])
        writer.writerow(["std", "", "", *[summary[m]["std"] for m in metrics]])
    header = "| model | runs | " + " | ".join(
        m + (" (%)" if _is_percent(m) else "") for m in metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 2),
             f"| {model} | {len(results)} | " + " | ".join(
                 format_value(m, summary[m]["mean"], summary[m]["std"]) for m in metrics) + " |"]
    (run_dir / "results.md").write_text("\n".join(lines) + "\n")
    runs.write_json(run_dir / runs.METRICS_FILE, {"summary": summary, "runs": results})
