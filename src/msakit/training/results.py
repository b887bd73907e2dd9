"""Results tables of an experiment: one row per training run, per-partition means, and mean ±
sample std (computed by :mod:`msakit.summary`), on the console and in the run folder."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.table import Table

from msakit import runfolder
from msakit.summary import (
    format_value,
    is_percent,
    mean_std,
    summarise,
    summarise_artifacts,
)


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


def results_table(title: str, results: list[dict[str, Any]], summary: dict) -> Table:
    """A rich table: per-partition means over seeds, then the overall mean ± std."""
    metrics = list(summary)
    table = Table(title=title)
    table.add_column("runs")
    for metric in metrics:
        table.add_column(metric + (" (%)" if is_percent(metric) else ""), justify="right")
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
    rows = [[r["seed"], r["partition"], r.get("best_epoch", ""), *[r["test"][m] for m in metrics]]
            for r in results]
    rows.append(["mean", "", "", *[summary[m]["mean"] for m in metrics]])
    rows.append(["std", "", "", *[summary[m]["std"] for m in metrics]])
    header = "| model | runs | " + " | ".join(
        m + (" (%)" if is_percent(m) else "") for m in metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 2),
             f"| {model} | {len(results)} | " + " | ".join(
                 format_value(m, summary[m]["mean"], summary[m]["std"]) for m in metrics) + " |"]
    runfolder.write_results_tables(run_dir, ["seed", "partition", "best_epoch", *metrics], rows,
                                   "\n".join(lines) + "\n", summary, results)


__all__ = ["artifacts_table", "format_value", "mean_std", "paper_table", "results_table",
           "summarise", "summarise_artifacts", "write_results"]
