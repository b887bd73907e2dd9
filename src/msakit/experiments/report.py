"""``msakit report RUN_DIR``: one self-contained ``report.html`` of a finished run.

Everything comes from the run folder (``metrics.json``, each training run's ``epochs.csv``,
``predictions.csv`` and ``artifacts.json``, ``env.json``); figures are drawn with matplotlib's
Agg backend and embedded as base64 PNGs, so the file opens offline and can be mailed around.

Sections: the per-(seed, partition) results with mean ± std; learning curves per partition
(training loss terms, validation task loss, validation selection metric, the selected epoch
marked); predicted vs true; the 7-class confusion matrix (Acc-7's classes); the model's own
artifacts (DMD's HomoGD/HeteroGD edges, gate distributions of SAGE-Net and MMILN, Self-MM's
unimodal label drift, any per-epoch model statistics); the run's provenance.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from msakit import runfolder
from msakit.summary import format_value

EDGE = re.compile(r"^([A-Z])->([A-Z])$")
MODALITY_ORDER = ("L", "A", "V")


# ----------------------------------------------------------------------------------------------
# Reading the run folder
# ----------------------------------------------------------------------------------------------

def _read_epochs(folder: Path) -> list[dict[str, str]]:
    """``epochs.csv``'s rows, refused (naming file, line and column) unless ``epoch`` is a whole
    number and every other filled cell a number (``nan`` is one: e.g. Corr of constant output)."""
    path = folder / runfolder.EPOCHS_FILE
    rows = runfolder.read_epochs(folder)
    for line, row in enumerate(rows, start=2):
        for column, value in row.items():
            if column is None or value is None:
                raise ValueError(f"{path}: line {line}: more or fewer fields than the header's "
                                 "columns; expected one value per column")
            try:
                if column == "epoch":
                    int(value)
                elif value != "":
                    float(value)
            except ValueError:
                expected = "a whole number" if column == "epoch" else "a number"
                raise ValueError(f"{path}: line {line}: column {column!r} is {value!r}, expected "
                                 f"{expected}") from None
    if rows and "epoch" not in rows[0]:
        raise ValueError(f"{path}: no 'epoch' column; not an msakit epochs.csv")
    return rows


def _read_predictions(folder: Path) -> list[dict[str, str]]:
    """``predictions.csv``'s rows (``[]`` when there is none), after the checks ``msakit
    compare`` makes (finite labels and predictions, one row per clip)."""
    from msakit.experiments.compare import read_checked_predictions

    rows = runfolder.read_predictions(folder)
    if rows:
        read_checked_predictions(folder / runfolder.PREDICTIONS_FILE)
    return rows
def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else np.nan
    except ValueError:
        return np.nan


def _training_runs(run_dir: Path) -> list[dict[str, Any]]:
    """Every training run: seed, partition, epochs, predictions, artifacts."""
    found = []
    for folder in runfolder.training_dirs(run_dir):
        metrics = runfolder.read_metrics(folder, missing_ok=True)
        entry = {"seed": metrics.get("seed", folder.parent.name.removeprefix("seed")),
                 "partition": metrics.get("partition", folder.name), "folder": folder,
                 "epochs": _read_epochs(folder), "metrics": metrics,
                 "predictions": _read_predictions(folder),
                 "artifacts": runfolder.read_artifacts(folder)}
        found.append(entry)
    if not found:
        raise FileNotFoundError(f"{run_dir}: no training run (seed*/<partition>/epochs.csv) "
                                "found; is it an msakit run folder?")
    return found


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------

def _figure(width: float = 10, height: float = 3.2, cols: int = 1, rows: int = 1):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, cols, figsize=(width, height), squeeze=False)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    # "tight" keeps the legends placed outside the axes (see _legend) inside the image
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


#: More legend entries than this go below the axes instead of over the curves.
MAX_INSIDE_LEGEND = 4


def _legend(ax) -> None:
    """A legend that never covers the data: inside (best place) when short, below the axes in
    columns when long."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if len(handles) <= MAX_INSIDE_LEGEND:
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    else:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.45),
                  ncol=min(3, (len(handles) + 4) // 5), frameon=False)


def learning_curves(train_runs: list[dict], loss_terms: list[str], selection: str) -> list[tuple]:
    """One figure per partition: training loss terms, validation loss, selection metric."""
    from matplotlib.ticker import MaxNLocator

    by_partition: dict[str, list[dict]] = defaultdict(list)
    for run in train_runs:
        by_partition[run["partition"]].append(run)
    figures = []
    # with selection on the loss, the third panel shows the binary accuracy instead
    shown = selection if selection != "loss" else _accuracy_column(train_runs)
    valid_metric = f"valid_{shown}"
    for partition, group in by_partition.items():
        fig, axes = _figure(12, 3.2, cols=3)
        train_ax, loss_ax, metric_ax = axes[0]
        for run in group:
            rows = run["epochs"]
            epochs = [int(r["epoch"]) for r in rows]
            label = f"seed {run['seed']}"
            for term in ["total", *loss_terms]:
                column = f"train_{term}"
                if column in rows[0] and (term == "total" or len(loss_terms) > 1):
                    train_ax.plot(epochs, [_float(r.get(column)) for r in rows],
                                  label=f"{term} ({label})" if len(group) > 1 else term,
                                  linewidth=1.2)
            best = run["metrics"].get("best_epoch")
            for ax, column in ((loss_ax, "valid_task"), (metric_ax, valid_metric)):
                values = [_float(r.get(column)) for r in rows]
                line, = ax.plot(epochs, values, label=label, linewidth=1.2)
                if best in epochs:
                    ax.plot([best], [values[epochs.index(best)]], marker="*", markersize=12,
                            color=line.get_color(), linestyle="none")
        train_ax.set_title(f"{partition}: training loss terms")
        loss_ax.set_title(f"{partition}: validation task loss")
        metric_ax.set_title(f"{partition}: validation {shown} (★ = selected)")
        for ax in axes[0]:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            _legend(ax)
        figures.append((f"Learning curves: {partition}", _png(fig)))
    return figures


def _accuracy_column(train_runs: list[dict]) -> str:
    columns = train_runs[0]["epochs"][0]
    return next((m for m in ("Non0_acc_2", "Mult_acc_2", "MAE") if f"valid_{m}" in columns),
                "task")


def _pooled_predictions(train_runs: list[dict]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    truth, pred, partition = [], [], []
    for run in train_runs:
        for row in run["predictions"]:
            truth.append(float(row["label"]))
            pred.append(float(row["prediction"]))
            partition.append(run["partition"])
    return np.asarray(truth), np.asarray(pred), partition


def prediction_figures(train_runs: list[dict], label_range: tuple[float, float]) -> list[tuple]:
    truth, pred, partition = _pooled_predictions(train_runs)
    if not len(truth):
        return []
    from sklearn.metrics import confusion_matrix

    fig, axes = _figure(11, 4.6, cols=2)
    scatter_ax, matrix_ax = axes[0]
    low, high = label_range
    for name in sorted(set(partition)):
        mask = np.asarray(partition) == name
        scatter_ax.scatter(truth[mask], pred[mask], s=12, alpha=0.6, label=name)
    scatter_ax.plot([low, high], [low, high], color="grey", linewidth=1, linestyle="--")
    scatter_ax.set_xlabel("true sentiment")
    scatter_ax.set_ylabel("predicted sentiment")
    scatter_ax.set_title(f"Predicted vs true (test, {len(truth)} predictions, all seeds)")
    _legend(scatter_ax)
    scatter_ax.grid(alpha=0.3)
    if high - low >= 6:  # MOSI-style: Acc-7's classes
        classes = np.arange(-3, 4)
        truth_classes = np.round(np.clip(truth, -3, 3)).astype(int)
        pred_classes = np.round(np.clip(pred, -3, 3)).astype(int)
        title = "7-class confusion (Acc-7 classes: clip to [-3, 3], round)"
    else:  # SIMS: the five classes of Mult_acc_5
        from msakit.metrics import sims_bins

        classes = np.arange(5)
        truth_classes = sims_bins(np.clip(truth, -1, 1), 5)
        pred_classes = sims_bins(np.clip(pred, -1, 1), 5)
        title = "5-class confusion (SIMS Mult_acc_5 classes)"
    matrix = confusion_matrix(truth_classes, pred_classes, labels=classes)
    image = matrix_ax.imshow(matrix, cmap="Blues")
    matrix_ax.set_xticks(range(len(classes)), classes)
    matrix_ax.set_yticks(range(len(classes)), classes)
    matrix_ax.set_xlabel("predicted class")
    matrix_ax.set_ylabel("true class")
    matrix_ax.set_title(title)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            matrix_ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                           color="white" if count > matrix.max() / 2 else "black")
    fig.colorbar(image, ax=matrix_ax, fraction=0.046)
    return [("Test predictions", _png(fig))]


def _edge_matrix(values: dict[str, float]) -> tuple[np.ndarray, list[str]] | None:
    """``{"V->L": w, ...}`` as a source x target matrix, or None if the names are not edges."""
    pairs = [EDGE.match(name) for name in values]
    if not values or not all(pairs):
        return None
    names = [m for m in MODALITY_ORDER if any(m in p.groups() for p in pairs)]
    names += sorted({g for p in pairs for g in p.groups()} - set(names))
    matrix = np.full((len(names), len(names)), np.nan)
    for match, value in zip(pairs, values.values()):
        source, target = match.groups()
        matrix[names.index(source), names.index(target)] = value
    return matrix, names


def artifact_figures(train_runs: list[dict], run_artifacts: dict,
                     loss_terms: list[str] = ()) -> list[tuple]:
    """Whatever the model exposes: edge heatmaps, gate distributions, label drift, statistics."""
    figures = []
    summary = run_artifacts.get("test_summary", {})
    edge_groups = {g: {n: s["mean"] for n, s in stats.items()}
                   for g, stats in summary.items()
                   if _edge_matrix({n: s["mean"] for n, s in stats.items()}) is not None}
    if edge_groups:
        low, high = shared_colour_range([v for values in edge_groups.values()
                                         for v in values.values()])
        fig, axes = _figure(4.2 * len(edge_groups), 4.1, cols=len(edge_groups))
        for ax, (group, values) in zip(axes[0], edge_groups.items()):
            matrix, names = _edge_matrix(values)
            image = ax.imshow(matrix, cmap="viridis", vmin=low, vmax=high)
            ax.set_xticks(range(len(names)), names)
            ax.set_yticks(range(len(names)), names)
            ax.set_xlabel("target")
            ax.set_ylabel("source")
            n = next(iter(summary[group].values()))["n"]
            ax.set_title(f"{group} (mean over {n} runs)")
            for (i, j), value in np.ndenumerate(matrix):
                if np.isfinite(value):
                    dark = (value - low) / (high - low) < 0.6  # viridis is dark at the bottom
                    ax.text(j, i, f"{value:.3f}", ha="center", va="center",
                            color="white" if dark else "black")
            fig.colorbar(image, ax=ax, fraction=0.046)
        fig.suptitle(f"colour range {low:g} to {high:g}, the same in every panel", fontsize=9)
        figures.append(("Model artifacts: graph edges on the test split", _png(fig)))

    gates: dict[str, list[float]] = defaultdict(list)
    for run in train_runs:
        for name, values in (run["artifacts"].get("test", {}).get("gate_values") or {}).items():
            gates[name].extend(values)
    if gates:
        fig, axes = _figure(10, 3.4)
        ax = axes[0][0]
        ax.hist(list(gates.values()), bins=30, range=(0, 1), label=list(gates), alpha=0.8,
                histtype="stepfilled" if len(gates) == 1 else "bar")
        ax.set_xlabel("per-clip mean gate value (test split, all runs)")
        ax.set_ylabel("clips")
        ax.set_title("Gate distributions")
        _legend(ax)
        figures.append(("Model artifacts: gates", _png(fig)))

    drift_runs = [r for r in train_runs
                  if (r["artifacts"].get("generated_labels") or {}).get("drift_by_epoch")]
    if drift_runs:
        tasks = drift_runs[0]["artifacts"]["generated_labels"]["tasks"]
        fig, axes = _figure(4 * len(tasks), 3.4, cols=len(tasks))
        for ax, task in zip(axes[0], tasks):
            for run in drift_runs:
                history = run["artifacts"]["generated_labels"]["drift_by_epoch"]
                key = next((k for k in ("mean_abs_drift", "mean_drift")
                            if k in history[0].get(task, {})), None)
                if key is None:
                    continue
                ax.plot([h["epoch"] for h in history], [h[task][key] for h in history],
                        linewidth=1, alpha=0.7)
            ax.set_title(f"unimodal label {task}: drift from human label")
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        figures.append(("Model artifacts: generated unimodal labels (one line per run)",
                        _png(fig)))

    statistics = _model_statistics(train_runs, loss_terms)
    if statistics:
        fig, axes = _figure(10, 3.4)
        ax = axes[0][0]
        for column, series in statistics.items():
            ax.plot(range(1, len(series) + 1), series, label=column.removeprefix("train_"),
                    linewidth=1.2)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_title("Per-epoch model statistics (mean over runs)")
        _legend(ax)
        ax.grid(alpha=0.3)
        figures.append(("Model artifacts: per-epoch statistics", _png(fig)))
    return figures


def shared_colour_range(values: list[float]) -> tuple[float, float]:
    """One colour range for every panel of a heatmap figure: ``[0, 1]`` when all values lie in
    it (weights, probabilities), else the values' overall minimum and maximum; so equal
    values get equal colours in every panel, and a panel whose values hardly differ shows it."""
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if not len(finite):
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    if low >= 0.0 and high <= 1.0:
        return 0.0, 1.0
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def _model_statistics(train_runs: list[dict], loss_terms: list[str]) -> dict[str, list[float]]:
    """``train_*`` columns of epochs.csv that are not loss terms (e.g. DMD's edges)."""
    columns = None
    for run in train_runs:
        names = [c for c in run["epochs"][0] if c.startswith("train_")]
        columns = names if columns is None else [c for c in columns if c in names]
    stats = [c for c in columns or [] if c.removeprefix("train_") not in {"total", *loss_terms}]
    out = {}
    for column in stats:
        length = min(len(r["epochs"]) for r in train_runs)
        out[column] = [float(np.nanmean([_float(r["epochs"][e].get(column)) for r in train_runs]))
                       for e in range(length)]
    return out


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.summary td { font-weight: bold; background: #f4f4f4; }
img { max-width: 100%; } pre { background: #f6f6f6; padding: 0.8em; font-size: 0.8em; }
.note { color: #666; font-size: 0.85em; }
"""


def _results_table(train_runs: list[dict], summary: dict) -> str:
    metrics = list(summary)
    head = "".join(f"<th>{html.escape(m)}</th>" for m in metrics)
    rows = []
    for run in train_runs:
        test = run["metrics"].get("test", {})
        cells = "".join(f"<td>{format_value(m, test[m])}</td>" if m in test else "<td></td>"
                        for m in metrics)
        rows.append(f"<tr><td>seed {run['seed']} / {html.escape(run['partition'])}</td>"
                    f"<td>{run['metrics'].get('best_epoch', '')}</td>{cells}</tr>")
    n = next(iter(summary.values()))["n"] if summary else 0
    cells = "".join(f"<td>{format_value(m, summary[m]['mean'], summary[m]['std'])}</td>"
                    for m in metrics)
    rows.append(f"<tr class='summary'><td>mean ± std (n={n})</td><td></td>{cells}</tr>")
    return (f"<table><tr><th>run</th><th>selected epoch</th>{head}</tr>{''.join(rows)}</table>"
            "<p class='note'>Accuracies and F1 in %; std is the sample standard deviation over "
            "(seed, partition) runs.</p>")


def report_title(model: str, dataset: str | None, run_name: str) -> str:
    """``model on dataset``, then the run folder's name unless it only repeats the model's."""
    title = model + (f" on {dataset}" if dataset else "")
    if run_name.split("-")[0] != model:
        title += f" (run {run_name})"
    return title


def _artifacts_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    """The model's test-split artifacts as a table: one row per group, mean ± std per name."""
    names: list[str] = []
    for stats in summary.values():
        names += [n for n in stats if n not in names]
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = []
    for group, stats in summary.items():
        n = next(iter(stats.values()))["n"]
        cells = "".join(
            f"<td>{stats[name]['mean']:.4g} ± {stats[name]['std']:.2g}</td>" if name in stats
            else "<td></td>" for name in names)
        rows.append(f"<tr><td>{html.escape(group)} (n={n})</td>{cells}</tr>")
    return (f"<table><tr><th>group</th>{head}</tr>{''.join(rows)}</table>"
            "<p class='note'>Mean ± sample std over the training runs, on each run's test "
            "part.</p>")


def _comparison_sections(run_dir: Path) -> list[tuple[str, str]]:
    """The comparisons written into the run folder (``msakit train --baseline``): their table
    and forest plot."""
    from msakit.experiments.compare import (
        COLUMNS,
        COMPARISON_STEM,
        comparison_cells,
        comparison_forest_plot,
        comparison_title,
        method_notes,
    )
    from msakit.summary import is_percent

    sections = []
    for path in sorted(run_dir.glob(f"{COMPARISON_STEM}*.json")):
        try:
            result = json.loads(path.read_text())
            comparisons = result["comparisons"]
            entries = comparisons[0]["metrics"]
            if not all("p_holm" in e for e in entries.values()):
                continue  # written by an older msakit, without the decision rule
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        parts = []
        for comparison in comparisons:
            rows = "".join(
                "<tr><td>" + html.escape(metric + (" (%)" if is_percent(metric) else ""))
                + "</td>" + "".join(f"<td>{html.escape(c)}</td>" for c in comparison_cells(metric, e))
                + "</tr>" for metric, e in comparison["metrics"].items())
            parts.append(f"<p>{html.escape(comparison_title(comparison))}</p><table><tr>"
                         + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
                         + f"</tr>{rows}</table>")
        buffer = io.BytesIO()
        comparison_forest_plot(result, buffer)
        png = base64.b64encode(buffer.getvalue()).decode("ascii")
        parts.append(f"<img alt='forest plot' src='data:image/png;base64,{png}'>")
        parts.append("<p class='note'>" + " ".join(html.escape(n)
                                                    for n in method_notes(comparisons[0]))
                     + "</p>")
        sections.append((f"Comparison with the baseline ({path.name})", "".join(parts)))
    return sections


def _provenance(run_dir: Path) -> str:
    parts = []
    env = runfolder.read_environment(run_dir)
    if env is not None:
        data = env.get("data") or {}
        git = (env.get("msakit") or {}).get("git") or {}
        facts = [
            ("msakit", f"{env['msakit']['version']}"
             + (f", commit {git['commit'][:12]}{' (uncommitted changes)' if git.get('dirty') else ''}"
                if git else "")),
            ("Python", env["python"]["version"]),
            ("torch", f"{env['torch']['version']} (CUDA {env['torch']['cuda']}, cuDNN "
                      f"{env['torch']['cudnn']}; devices: "
                      f"{', '.join(env['torch']['devices']) or 'CPU only'})"),
            ("CPU / OS", f"{env['cpu']['count']} CPUs, {env['os']['platform']}"),
            ("data", f"{data.get('path', '?')}"),
            ("data SHA-256", f"{data.get('sha256', '?')} ({data.get('identity', '')})"),
        ]
        parts.append("<table>" + "".join(
            f"<tr><td>{html.escape(k)}</td><td style='text-align:left'>{html.escape(str(v))}"
            "</td></tr>" for k, v in facts) + "</table>")
    else:
        parts.append("<p class='note'>No env.json (a run made before msakit recorded "
                     "provenance).</p>")
    config_text = runfolder.read_config_text(run_dir)
    if config_text is not None:
        parts.append("<details><summary>Resolved config</summary><pre>"
                     + html.escape(config_text) + "</pre></details>")
    return "".join(parts)


def build_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write ``report.html`` (default: into ``run_dir``) and return its path.

    Raises:
        MissingExtraError: matplotlib is not installed (extra ``msakit[report]``).
    """
    from msakit.errors import require_extra

    require_extra("matplotlib", "report", "msakit report")
    run_dir = Path(run_dir)
    saved = runfolder.read_metrics(run_dir, missing_ok=True)
    if "summary" not in saved:
        raise FileNotFoundError(f"{run_dir}: no metrics.json with a summary (not a finished "
                                "msakit run folder)")
    train_runs = _training_runs(run_dir)
    config = runfolder.read_config_tree(run_dir)
    data = runfolder.read_data_record(run_dir, missing_ok=True)
    from msakit.data.dataset import LABEL_RANGES

    label_range = LABEL_RANGES.get(data.get("dataset", "mosi"), (-3.0, 3.0))
    selection = config["train"]["selection_metric"]
    run_artifacts = runfolder.read_artifacts(run_dir)
    sections = [
        ("Results on the test parts", _results_table(train_runs, saved["summary"])),
    ]
    loss_terms = list((config.get("model") or {}).get("loss_weights") or {})
    figures = (learning_curves(train_runs, loss_terms, selection)
               + prediction_figures(train_runs, label_range)
               + artifact_figures(train_runs, run_artifacts, loss_terms))
    for title, png in figures:
        sections.append((title, f"<img alt='{html.escape(title)}' "
                                f"src='data:image/png;base64,{png}'>"))
    if run_artifacts.get("test_summary"):
        sections.append(("Model artifacts (numbers)",
                         _artifacts_table(run_artifacts["test_summary"])))
    sections += _comparison_sections(run_dir)
    sections.append(("Provenance", _provenance(run_dir)))
    title = report_title(config["model"]["name"], data.get("dataset"), run_dir.name)
    body = "".join(f"<h2>{html.escape(t)}</h2>{content}" for t, content in sections)
    document = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
                f"</title><style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
                f"<p class='note'>{len(train_runs)} training run(s); selection on validation "
                f"{html.escape(selection)}; the test part of each partition scored once."
                f"</p>{body}</body></html>")
    output = Path(output) if output else run_dir / "report.html"
    output.write_text(document, encoding="utf-8")
    return output
