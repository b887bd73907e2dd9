"""Summaries of a dataset: what ``msakit data inspect`` prints."""

from __future__ import annotations

from typing import Any

import numpy as np

from msakit.data.dataset import MSADataset
from msakit.data.readers import find_overlaps


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {"min": float(values.min()), "median": float(np.median(values)),
            "max": float(values.max())}


def summarize_dataset(dataset: MSADataset) -> dict[str, Any]:
    """A JSON-serialisable summary: per split the counts, sequence lengths and label statistics.

    Returns:
        ``{"name", "source", "word_aligned", "feature_dims", "replaced_nonfinite",
        "splits": {split: {"clips", "videos", "lengths": {modality: {min, median, max}},
        "labels": {mean, std, min, max, positive, negative, zero}}}}`` where ``lengths.text``
        counts whitespace-separated words and ``positive``/``negative``/``zero`` are shares.
    """
    summary: dict[str, Any] = {
        "name": dataset.name,
        "source": dataset.source,
        "word_aligned": dataset.word_aligned,
        "feature_dims": dict(dataset.feature_dims),
        "label_range": list(dataset.label_range),
        "replaced_nonfinite": dict(dataset.replaced_nonfinite),
        "splits": {},
    }
    for name, split in dataset.splits.items():
        lengths = {"text": _stats(np.array([len(t.split()) for t in split.texts]))}
        for modality in ("audio", "vision"):
            clips = getattr(split, modality)
            if clips is not None:
                lengths[modality] = _stats(np.array([c.shape[0] for c in clips]))
        labels = split.labels.astype(np.float64)
        summary["splits"][name] = {
            "clips": len(split),
            "videos": len(set(split.video_ids)),
            "lengths": lengths,
            "labels": {
                "mean": float(labels.mean()), "std": float(labels.std()),
                "min": float(labels.min()), "max": float(labels.max()),
                "positive": float((labels > 0).mean()), "negative": float((labels < 0).mean()),
                "zero": float((labels == 0).mean()),
            } if labels.size else {},
            "extra_labels": sorted(split.extra_labels),
        }
    summary["overlaps"] = find_overlaps(dataset)
    return summary


def render_summary(summary: dict[str, Any], console=None) -> None:
    """Print a :func:`summarize_dataset` summary as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    dims = summary["feature_dims"]
    described = [f"{m} {dims[m]}-d" if dims.get(m) else f"no {m}" for m in ("audio", "vision")]
    console.print(
        f"[bold]{summary['source']}[/bold]: dataset [bold]{summary['name']}[/bold] "
        f"(labels in [{summary['label_range'][0]:g}, {summary['label_range'][1]:g}]), "
        + ", ".join(described) + (", word-aligned" if summary["word_aligned"] else "")
    )
    splits = summary["splits"]
    modalities = [m for m in ("audio", "vision") if dims.get(m)]
    show_unimodal = any(info["extra_labels"] for info in splits.values())
    table = Table(title="Splits", caption="sequence lengths: min / median / max")
    columns = ["split", "clips", "videos", "text words"] + [f"{m} steps" for m in modalities]
    for column in columns + (["unimodal labels"] if show_unimodal else []):
        table.add_column(column, justify="right" if column in ("clips", "videos") else "left")

    def fmt(stats: dict[str, float] | None) -> str:
        if not stats:
            return "-"
        return f"{stats['min']:g} / {stats['median']:g} / {stats['max']:g}"

    for name, info in splits.items():
        lengths = info["lengths"]
        row = [name, str(info["clips"]), str(info["videos"]), fmt(lengths.get("text"))]
        row += [fmt(lengths.get(m)) for m in modalities]
        if show_unimodal:
            row.append(", ".join(info["extra_labels"]) or "-")
        table.add_row(*row)
    console.print(table)

    labels = Table(title="Labels")
    for column in ("split", "mean", "std", "min", "max", "positive", "negative", "zero"):
        labels.add_column(column, justify="left" if column == "split" else "right")
    for name, info in splits.items():
        s = info["labels"]
        if not s:
            labels.add_row(name, *["-"] * 7)
            continue
        labels.add_row(name, f"{s['mean']:.3f}", f"{s['std']:.3f}", f"{s['min']:g}",
                       f"{s['max']:g}", f"{s['positive']:.1%}", f"{s['negative']:.1%}",
                       f"{s['zero']:.1%}")
    console.print(labels)

    empty = [name for name, info in splits.items() if not info["clips"]]
    if empty:
        console.print(f"[yellow]Empty split(s): {', '.join(empty)}[/] (training needs clips in "
                      "train, valid and test, or --folds K to cross-validate)")
    overlaps = summary.get("overlaps") or []
    if overlaps:
        console.print(f"[red]{len(overlaps)} clip(s) shared between splits[/] (leakage; "
                      "training refuses them unless data.allow_overlap=true):")
        for item in overlaps[:10]:
            console.print(f"  {item['splits']}: " + (
                f"id {item['first']}" if item["kind"] == "id"
                else f"{item['first']} = {item['second']} (identical transcript and features)"),
                markup=False, highlight=False)
        if len(overlaps) > 10:
            console.print(f"  ... and {len(overlaps) - 10} more")
    else:
        console.print("No clip shared between splits.")
    replaced = summary["replaced_nonfinite"]
    if replaced:
        console.print("Non-finite feature values replaced by 0: " + ", ".join(
            f"{key} {count}" for key, count in sorted(replaced.items())))
    else:
        console.print("No non-finite feature values.")
