"""One leaderboard over finished runs: each model's mean ± std (n) and its paired difference to a
baseline run (usually the text-only floor) with the 95 % CI and p of :mod:`compare`.

The runs must be pairable with the baseline (same data, partitions and seeds; see
:func:`msakit.experiments.compare.check_pairable`). Alongside the numbers the leaderboard says
what a reader needs to judge them on small data:

* the **majority-class rate** of the test clips: the share of the majority sign among clips with a
  non-zero label (what always predicting that sign scores on ``Non0_acc_2``), and which models'
  mean ``Non0_acc_2`` is above it;
* which differences to the baseline are **outside the noise**: by the one decision rule of
  :mod:`compare` (jackknife-t interval and p over videos, p Holm-adjusted over the models), so
  the interval, p and the verdict never disagree;
* each run's **selected epochs** (best epoch on validation / epochs run, per training run), so a
  budget that stops before the model converged (the last epoch selected) shows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from msakit import runfolder
from msakit.experiments.compare import (
    CI_LEGEND,
    CompareError,
    compare_runs,
    forest_plot,
    format_p,
    load_units,
)
from msakit.summary import is_percent

DEFAULT_METRICS = ("Non0_acc_2", "Non0_F1_score", "MAE", "Corr")
ACCURACY_METRIC = "Non0_acc_2"


def run_label(run_dir: Path) -> str:
    """``model`` or ``model [text]`` when the run used only some modalities."""
    if not runfolder.has_config(run_dir):
        raise CompareError(f"{run_dir}: no {runfolder.CONFIG_FILE} (not a finished msakit run "
                           "folder)")
    model = runfolder.read_config_tree(run_dir).get("model") or {}
    label = model.get("name", run_dir.name)
    modalities = model.get("modalities")
    if modalities and len(modalities) < 3:
        label += " [" + "+".join(modalities) + "]"
    return label


def _run_summary(run_dir: Path, metrics: Sequence[str]) -> dict[str, Any]:
    path = runfolder.metrics_path(run_dir)
    if not runfolder.has_metrics(run_dir):
        raise CompareError(f"{path}: missing (not a finished msakit run folder)")
    saved = runfolder.read_metrics(run_dir)
    summary = saved.get("summary") or {}
    missing = [m for m in metrics if m not in summary]
    if missing:
        raise CompareError(f"{path}: no summary of {missing}; it has {sorted(summary)}")
    epochs = [{"seed": r.get("seed"), "partition": r.get("partition"),
               "best_epoch": r.get("best_epoch"), "epochs_run": r.get("epochs_run")}
              for r in saved.get("runs", [])]
    return {"summary": {m: summary[m] for m in metrics}, "selected_epochs": epochs}


def majority_rate(run_dir: str | Path) -> dict[str, Any]:
    """Share of the majority sign among the non-zero labels of a run's test clips (each clip
    counted once, over all partitions of one seed: with K folds, every clip of the data)."""
    units = load_units(run_dir)
    labels: dict[str, float] = {}
    for unit in units.values():
        labels.update(zip(unit.ids, unit.labels.tolist()))
    values = np.array(list(labels.values()))
    nonzero = values[values != 0]
    positive = int((nonzero > 0).sum())
    negative = len(nonzero) - positive
    return {"rate": max(positive, negative) / len(nonzero) if len(nonzero) else float("nan"),
            "majority": "positive" if positive >= negative else "negative",
            "n_clips": len(values), "n_nonzero": len(nonzero),
            "n_positive": positive, "n_negative": negative}


def build_leaderboard(
    baseline: str | Path,
    run_dirs: Sequence[str | Path],
    metrics: Sequence[str] = DEFAULT_METRICS,
    run_notes: Mapping[Path, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The leaderboard of ``baseline`` and ``run_dirs``; ``run_notes`` (sentences by resolved run
    folder, e.g. what a suite changed in a row) are shown under the table.

    Returns:
        ``{"baseline", "metrics", "majority", "method", "rows": [{"run", "label", "notes", "summary":
        {metric: {mean, std, n}}, "selected_epochs": [...], "difference": {metric: {difference,
        ci_low, ci_high, p_value, p_holm, outside_noise}} (None for the baseline),
        "above_majority"}]}``.

    Raises:
        CompareError: a run folder that is not finished or cannot be paired with the baseline.
    """
    metrics = list(metrics)
    baseline = Path(baseline)
    others = [Path(r) for r in run_dirs]
    if not others:
        raise CompareError("give the baseline run folder and at least one other run folder")
    comparison = compare_runs([baseline, *others], metrics=metrics)
    majority = majority_rate(baseline)
    rows = []
    for run_dir, compared in zip([baseline, *others], [None, *comparison["comparisons"]]):
        row = {"run": str(run_dir), "label": run_label(run_dir),
               "notes": list((run_notes or {}).get(run_dir.resolve(), ())),
               **_run_summary(run_dir, metrics)}
        row["difference"] = None if compared is None else {
            m: {k: e[k] for k in ("difference", "se", "df", "ci_low", "ci_high", "p_value",
                                  "p_holm", "outside_noise", "higher_is_better")}
            for m, e in compared["metrics"].items()}
        if ACCURACY_METRIC in row["summary"]:
            row["above_majority"] = bool(row["summary"][ACCURACY_METRIC]["mean"] > majority["rate"])
        rows.append(row)
    first = comparison["comparisons"][0]
    return {"baseline": str(baseline), "metrics": metrics, "majority": majority,
            "pairing": first["pairing"], "method": first["method"],
            "n_comparisons": len(others), "rows": rows}


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------

def _fmt(metric: str, value: float) -> str:
    return f"{100 * value:.1f}" if is_percent(metric) else f"{value:.3f}"


def _epochs_cell(row: dict[str, Any]) -> str:
    epochs = [e for e in row["selected_epochs"] if e["best_epoch"] is not None]
    if not epochs:
        return "?"
    last = sum(e["best_epoch"] == e["epochs_run"] for e in epochs)
    return (" ".join(f"{e['best_epoch']}/{e['epochs_run']}" for e in epochs)
            + f" (last {last}/{len(epochs)})")


def leaderboard_rows(board: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Column names and cells, shared by the console table and the markdown."""
    columns = ["model"]
    for m in board["metrics"]:
        name = m + (" (%)" if is_percent(m) else "")
        columns += [name, f"Δ {name} [95 % CI] p (Holm)"]
    columns.append("selected epoch / run")
    cells = []
    for row in board["rows"]:
        line = [row["label"]]
        for m in board["metrics"]:
            s = row["summary"][m]
            line.append(f"{_fmt(m, s['mean'])} ± {_fmt(m, s['std'])} ({s['n']})")
            if row["difference"] is None:
                line.append("baseline")
            else:
                d = row["difference"][m]
                sign = "+" if d["difference"] >= 0 else ""
                line.append(f"{sign}{_fmt(m, d['difference'])} [{_fmt(m, d['ci_low'])}, "
                            f"{_fmt(m, d['ci_high'])}] p={format_p(d['p_value'])} "
                            f"({format_p(d['p_holm'])})"
                            + ("" if d["outside_noise"] else " ~"))
        line.append(_epochs_cell(row))
        cells.append(line)
    return columns, cells


def leaderboard_notes(board: dict[str, Any]) -> list[str]:
    """The sentences under the table: majority rate, who is above it, what is noise."""
    majority = board["majority"]
    rate = majority["rate"]
    baseline = board["rows"][0]["label"]
    notes = [(f"Majority-class rate: {100 * rate:.1f} % ({majority['majority']} labels: "
              f"{max(majority['n_positive'], majority['n_negative'])} of the "
              f"{majority['n_nonzero']} test clips with a non-zero label), what always "
              f"predicting the majority sign scores on {ACCURACY_METRIC}.")]
    if ACCURACY_METRIC in board["metrics"]:
        above = [r["label"] for r in board["rows"] if r.get("above_majority")]
        below = [r["label"] for r in board["rows"] if r.get("above_majority") is False]
        notes.append(f"Mean {ACCURACY_METRIC} above it: {', '.join(above) or 'none'}"
                     + (f"; not above it: {', '.join(below)}." if below else "."))
    n = board["n_comparisons"]
    for m in board["metrics"]:
        noise = [r["label"] for r in board["rows"][1:] if not r["difference"][m]["outside_noise"]]
        clear = [r["label"] for r in board["rows"][1:] if r["difference"][m]["outside_noise"]]
        notes.append(f"Δ {m} vs {baseline} inside the noise (marked ~): "
                     f"{', '.join(noise) or 'none'}"
                     + (f"; outside it: {', '.join(clear)}." if clear else "."))
    runs_of: dict[str, list[str]] = {}  # each run note once, with the runs it applies to
    for row in board["rows"]:
        for note in row.get("notes", ()):
            runs_of.setdefault(note, []).append(row["label"])
    notes += [f"{', '.join(labels)}: {note}" for note, labels in runs_of.items()]
    pairing, method = board["pairing"], board["method"]
    notes.append(f"Δ = model − {baseline}, paired over {pairing['n_units']} training runs "
                 f"({pairing['n_clips']} test predictions, {pairing['n_videos']} videos); "
                 f"CI: {method['ci']}; p: {method['p_value']}; (Holm): p adjusted over the "
                 f"{n} model{'s' * (n > 1)} compared with {baseline}, per metric. Outside the "
                 "noise only when the Holm-adjusted p < 0.05 (then the CI excludes 0, too). "
                 "Selected epoch / run: the epoch chosen on validation and the epochs run, per "
                 "training run; 'last' counts runs whose selected epoch is the last one run.")
    return notes


def leaderboard_forest_plot(board: dict[str, Any], path: str | Path) -> Path:
    """The forest plot of the leaderboard: every model's Δ to the baseline with its interval,
    one panel per metric."""
    rows = [(r["label"], r["difference"]) for r in board["rows"][1:]]
    title = (f"Δ vs {board['rows'][0]['label']}: "
             + CI_LEGEND.format(n=board["pairing"]["n_videos"]))
    return forest_plot(rows, board["metrics"], path, title)


def leaderboard_table(board: dict[str, Any]):
    """A rich table of :func:`build_leaderboard`'s result."""
    from rich.markup import escape
    from rich.table import Table

    columns, cells = leaderboard_rows(board)
    # labels such as "lf_dnn [text]" are text, not rich markup
    table = Table(title=escape(f"Leaderboard (Δ vs {board['rows'][0]['label']}: "
                               f"{board['baseline']})"))
    for column in columns:
        table.add_column(escape(column), justify="left" if column in ("model",) else "right")
    for line in cells:
        table.add_row(*(escape(cell) for cell in line))
    return table


def leaderboard_markdown(board: dict[str, Any]) -> str:
    columns, cells = leaderboard_rows(board)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(line) + " |" for line in cells]
    lines += [""] + [f"- {note}" for note in leaderboard_notes(board)] + [""]
    lines += ["Runs:", ""] + [f"- {r['label']}: `{r['run']}`" for r in board["rows"]] + [""]
    return "\n".join(lines)


def write_leaderboard(board: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path, Path]:
    """Write ``leaderboard.json``, ``leaderboard.md`` and the forest plot ``leaderboard.png``
    into ``out_dir`` (never over existing ones: ``leaderboard-2.json`` ... then)."""
    json_path, md_path, png_path = runfolder.unused_paths(out_dir, "leaderboard",
                                                     (".json", ".md", ".png"))
    runfolder.write_json(json_path, board)
    md_path.write_text(leaderboard_markdown(board)
                       + f"\n![forest plot of the differences]({png_path.name})\n")
    leaderboard_forest_plot(board, png_path)
    return json_path, md_path, png_path
