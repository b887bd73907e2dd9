"""Robustness of trained checkpoints to test-time perturbations (``msakit evaluate --robustness``).

Every selected checkpoint of a run is scored on its own test part, clean and under each
perturbation; the table reports each metric's mean over checkpoints and the paired difference
to the clean score with its 95 % interval over videos, by the rule ``msakit compare`` uses
(:func:`msakit.experiments.compare.paired_units_interval`: delete-one-video jackknife, t with
videos - 1 degrees of freedom).

Perturbations (applied to the clips, before tokenisation and batching):

* ``remove:<modalities>`` — each modality, and each pair, removed. Audio/vision become zeros at
  their true length (the mask is kept), as a clip with a silent/blank stream; the text's words
  all become the tokenizer's mask token, so word-aligned features stay aligned (a language
  model has no "zero" input; this is the deliberate choice for text).
* ``noise:<s>`` — Gaussian noise on audio and vision: ``x + s * std_train(d) * N(0, 1)`` with
  ``std_train(d)`` each feature's standard deviation over the checkpoint's training clips.
* ``time_mask:<r>`` — each audio/vision time step zeroed with probability ``r``.
* ``word_dropout:<r>`` — each word replaced by the mask token with probability ``r``.

Randomness depends only on the clip id, the condition and ``seed``: every checkpoint and every
run (two models compared) sees the same perturbed clips.
"""

from __future__ import annotations

import csv
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msakit.data.dataset import Split

NOISE_LEVELS = (0.1, 0.25, 0.5, 1.0, 2.0)
RATES = (0.1, 0.3, 0.5, 0.7, 0.9)
REMOVALS = (("text",), ("audio",), ("vision",), ("text", "audio"), ("text", "vision"),
            ("audio", "vision"))


@dataclass(frozen=True)
class Condition:
    """One test-time perturbation: ``family`` (clean, remove, noise, time_mask, word_dropout),
    its ``level`` (noise scale or rate; ``None`` for clean/remove) and removed modalities."""

    family: str
    level: float | None = None
    removed: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """Short identifier, the key of the written files (``remove:text+audio``, ``noise:0.5``)."""
        if self.family == "clean":
            return "clean"
        if self.family == "remove":
            return "remove:" + "+".join(self.removed)
        return f"{self.family}:{self.level:g}"

    @property
    def label(self) -> str:
        """The condition in words, for tables and plots (``without text and audio``)."""
        if self.family == "clean":
            return "clean"
        if self.family == "remove":
            return "without " + " and ".join(self.removed)
        if self.family == "noise":
            return f"noise {self.level:g} × std on audio and vision"
        if self.family == "time_mask":
            return f"{100 * self.level:g} % of audio/vision steps zeroed"
        return f"{100 * self.level:g} % of words masked"


def default_conditions(noise_levels: Sequence[float] = NOISE_LEVELS,
                       rates: Sequence[float] = RATES) -> list[Condition]:
    """Clean, every modality and pair removed, noise at ``noise_levels``, time-step masking and
    word dropout at ``rates``."""
    return ([Condition("clean")] + [Condition("remove", removed=r) for r in REMOVALS]
            + [Condition("noise", s) for s in noise_levels]
            + [Condition("time_mask", r) for r in rates]
            + [Condition("word_dropout", r) for r in rates])


def feature_std(split: Split) -> dict[str, np.ndarray]:
    """``{modality: (D,)}`` standard deviation of each feature over all time steps of ``split``."""
    out = {}
    for modality in ("audio", "vision"):
        clips = getattr(split, modality)
        if clips:
            steps = np.concatenate([c for c in clips if c.shape[0]], axis=0) \
                if any(c.shape[0] for c in clips) else np.zeros((1, clips[0].shape[1]))
            out[modality] = steps.std(axis=0).astype(np.float32)
    return out


def _rng(seed: int, clip_id: str, condition: Condition) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(clip_id.encode()),
                                  zlib.crc32(condition.name.encode())])


def _mask_words(words: list[str], rate: float, rng: np.random.Generator,
                mask_token: str) -> list[str]:
    hit = rng.random(len(words)) < rate
    return [mask_token if h else w for w, h in zip(words, hit)]


def perturb_split(split: Split, condition: Condition, train_std: dict[str, np.ndarray],
                  mask_token: str, seed: int = 0) -> Split:
    """A copy of ``split`` with ``condition`` applied to every clip (see the module doc)."""
    out = split.subset(range(len(split)))
    if condition.family == "clean":
        return out
    for row, clip_id in enumerate(out.ids):
        rng = _rng(seed, clip_id, condition)
        word_rate = (1.0 if "text" in condition.removed else
                     condition.level if condition.family == "word_dropout" else 0.0)
        if word_rate:
            if out.words is not None:
                out.words[row] = _mask_words(out.words[row], word_rate, rng, mask_token)
                out.texts[row] = " ".join(out.words[row])
            else:
                out.texts[row] = " ".join(_mask_words(out.texts[row].split(), word_rate, rng,
                                                      mask_token))
        for modality in ("audio", "vision"):
            clips = getattr(out, modality)
            if clips is None:
                continue
            x = clips[row]
            if modality in condition.removed:
                x = np.zeros_like(x)
            elif condition.family == "noise" and modality in train_std:
                x = x + condition.level * train_std[modality] * rng.standard_normal(
                    x.shape).astype(np.float32)
            elif condition.family == "time_mask":
                x = np.where((rng.random(x.shape[0]) < condition.level)[:, None], 0.0, x)
            clips[row] = x.astype(np.float32)
    return out


def mask_token_of(tokenizer) -> str:
    token = getattr(tokenizer, "mask_token", None) or getattr(tokenizer, "unk_token", None)
    if not token:
        raise ValueError("the tokenizer has neither a mask nor an unknown token to drop words with")
    return token


def evaluate_robustness(
    run_dir: str | Path,
    conditions: Sequence[Condition] | None = None,
    seed: int = 0,
    write: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Score every selected checkpoint of ``run_dir`` under each condition (module doc).

    Args:
        progress: called as ``progress(done, total, what)`` after each (checkpoint, condition)
            is scored, e.g. to drive a progress bar.

    Returns:
        ``{"run", "model", "dataset", "conditions": [{"condition", "label", "family", "level",
        "metrics": {m: {"mean", "std", "difference", "ci_low", "ci_high", "p_value"}}}],
        "n_units", "n_clips", "n_videos", "method"}``; written as
        ``robustness.json``/``.md``/``.csv`` and ``robustness-<metric>.png`` in ``run_dir``
        when ``write``.

    Raises:
        MissingExtraError: ``write`` without matplotlib (extra ``msakit[report]``), before any
            scoring.
    """
    import torch

    from msakit.errors import require_extra

    if write:
        require_extra("matplotlib", "report", "msakit evaluate --robustness (its plots)")

    from msakit import runfolder
    from msakit.experiments.compare import PairedUnit, paired_units_interval
    from msakit.lm import load_tokenizer
    from msakit.metrics import metric_names
    from msakit.models import create_model
    from msakit.training.experiment import check_data_unchanged
    from msakit.training.loading import feature_dims, load_experiment_data, loader_for
    from msakit.training.trainer import evaluate_model, resolve_device

    run_dir = Path(run_dir)
    conditions = list(conditions or default_conditions())
    if not conditions or conditions[0].family != "clean":
        conditions = [Condition("clean")] + [c for c in conditions if c.family != "clean"]
    sub_dirs = runfolder.checkpoint_dirs(run_dir)
    config = runfolder.load_config(sub_dirs[0])
    check_data_unchanged(config, sub_dirs[0])
    dataset, partitions = load_experiment_data(config)
    by_name = {p.name: p for p in partitions}
    device = resolve_device(config.train.device)
    mask_token = mask_token_of(load_tokenizer(config.model.language_model))
    metrics = list(metric_names(dataset.name))

    predictions: dict[str, list[np.ndarray]] = {c.name: [] for c in conditions}
    scores: dict[str, list[dict[str, float]]] = {c.name: [] for c in conditions}
    units_info = []
    total, done = len(sub_dirs) * len(conditions), 0
    for sub in sub_dirs:
        sub_config = runfolder.load_config(sub)
        partition = by_name[sub.name]
        model = create_model(sub_config.model, feature_dims(dataset, sub_config))
        runfolder.load_best_into(model, sub, device)
        model.to(device)
        std = feature_std(partition.train)
        for condition in conditions:
            split = perturb_split(partition.test, condition, std, mask_token, seed)
            torch.manual_seed(seed)
            result = evaluate_model(model, loader_for(split, dataset, sub_config, train=False),
                                    dataset.name, device)
            predictions[condition.name].append(result.predictions)
            scores[condition.name].append(result.metrics)
            done += 1
            if progress is not None:
                progress(done, total, f"{sub.parent.name}/{sub.name}: {condition.label}")
        units_info.append((partition.name, partition.test))

    videos: dict[str, int] = {}
    unit_videos = []
    for partition_name, test in units_info:
        unit_videos.append(np.array([videos.setdefault(f"{partition_name}/{v}", len(videos))
                                     for v in test.video_ids]))

    rows = []
    for condition in conditions:
        per_metric = {}
        if condition.family == "clean":
            rule = {m: {"difference": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
                    for m in metrics}
        else:
            units = [PairedUnit(test.labels, clean, perturbed, video, name)
                     for (name, test), clean, perturbed, video in zip(
                         units_info, predictions["clean"], predictions[condition.name],
                         unit_videos)]
            rule = paired_units_interval(units, len(videos), dataset.name, metrics)
        for m in metrics:
            values = np.array([s[m] for s in scores[condition.name]], dtype=np.float64)
            per_metric[m] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                **{k: rule[m][k] for k in ("difference", "ci_low", "ci_high", "p_value")},
            }
        rows.append({"condition": condition.name, "label": condition.label,
                     "family": condition.family, "level": condition.level,
                     "removed": list(condition.removed), "metrics": per_metric})
    report = {
        "run": str(run_dir), "model": config.model.name, "dataset": dataset.name,
        "n_units": len(sub_dirs), "n_clips": int(sum(len(t) for _, t in units_info)),
        "n_videos": len(videos), "seed": seed,
        "method": "metric per checkpoint on its test part, mean ± sample std over checkpoints; "
                  "difference = mean over checkpoints of metric(perturbed) - metric(clean), "
                  f"95 % CI over the {len(videos)} videos by msakit compare's rule "
                  "(delete-one-video jackknife, t with videos - 1 degrees of freedom); "
                  "accuracies and F1 in %",
        "conditions": rows,
    }
    if write:
        write_robustness(report, run_dir)
    return report


TABLE_METRICS = ("Non0_acc_2", "Has0_acc_2", "Mult_acc_7", "MAE", "Corr", "Mult_acc_2",
                 "Mult_acc_3")


def _shown_metrics(report: dict[str, Any]) -> list[str]:
    present = report["conditions"][0]["metrics"]
    return [m for m in TABLE_METRICS if m in present]


def format_cell(value: dict[str, float], family: str, delta: str = " (Δ {})",
                metric: str = "MAE") -> str:
    """``mean ± std``; for a perturbed condition also ``delta`` filled with
    ``difference [ci_low, ci_high]``; accuracies and F1 of ``metric`` in percent."""
    from msakit.summary import is_percent

    scale, digits = (100.0, 1) if is_percent(metric) else (1.0, 3)

    def fmt(x, sign=""):
        return f"{scale * x:{sign}.{digits}f}"

    cell = f"{fmt(value['mean'])} ± {fmt(value['std'])}"
    if family != "clean":
        cell += delta.format(f"{fmt(value['difference'], '+')} "
                             f"[{fmt(value['ci_low'], '+')}, {fmt(value['ci_high'], '+')}]")
    return cell


def metric_header(metric: str) -> str:
    """The column name of ``metric``: accuracies and F1 with ``(%)``."""
    from msakit.summary import is_percent

    return metric + (" (%)" if is_percent(metric) else "")


def condition_label(row: dict[str, Any]) -> str:
    """A written row's condition in words (rows written before labels existed: rebuilt)."""
    if "label" in row:
        return row["label"]
    return Condition(row["family"], row["level"], tuple(row.get("removed") or ())).label


def robustness_markdown(report: dict[str, Any]) -> str:
    metrics = _shown_metrics(report)
    lines = [f"# Robustness of {report['model']} ({report['run']})", "",
             f"{report['n_units']} checkpoint(s), {report['n_clips']} test clips, "
             f"{report['n_videos']} videos. {report['method']}.", "",
             "| condition | " + " | ".join(metric_header(m) for m in metrics) + " |",
             "| --- | " + " | ".join("---" for _ in metrics) + " |"]
    for row in report["conditions"]:
        cells = [format_cell(row["metrics"][m], row["family"], metric=m) for m in metrics]
        lines.append(f"| {condition_label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_robustness(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """``robustness.json``, ``.md``, ``.csv`` and one ``robustness-<metric>.png`` per metric."""
    from msakit.runfolder import write_json

    out_dir = Path(out_dir)
    written = [out_dir / "robustness.json", out_dir / "robustness.md", out_dir / "robustness.csv"]
    write_json(written[0], report)
    written[1].write_text(robustness_markdown(report))
    metrics = list(report["conditions"][0]["metrics"])
    with written[2].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["condition", "label", "family", "level", "metric", "mean", "std",
                         "difference", "ci_low", "ci_high", "p_value"])
        for row in report["conditions"]:
            for m in metrics:
                v = row["metrics"][m]
                writer.writerow([row["condition"], condition_label(row), row["family"],
                                 row["level"], m, v["mean"], v["std"], v["difference"],
                                 v["ci_low"], v["ci_high"], v["p_value"]])
    for m in _shown_metrics(report):
        path = out_dir / f"robustness-{m}.png"
        plot_metric(report, m, path)
        written.append(path)
    return written


#: The smallest y-range of a robustness plot, in the plotted unit (points for accuracies and F1),
#: so that a change of a few tenths does not fill the panel and look like a cliff.
MIN_Y_SPAN = {"percent": 10.0, "MAE": 0.2, "Corr": 0.2}


def _y_limits(values: np.ndarray, metric: str) -> tuple[float, float]:
    from msakit.summary import is_percent

    span = MIN_Y_SPAN["percent"] if is_percent(metric) else MIN_Y_SPAN.get(metric, 0.2)
    finite = values[np.isfinite(values)]
    low, high = float(finite.min()), float(finite.max())
    margin = max(span - (high - low), 0.0) / 2 + 0.05 * (high - low)
    return low - margin, high + margin


def plot_metric(report: dict[str, Any], metric: str, path: Path) -> None:
    """Three panels: removals (points with CIs), noise level, masking rates; clean as a line.
    Accuracies and F1 in percent; the y-range is at least :data:`MIN_Y_SPAN`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from msakit.summary import is_percent

    scale = 100.0 if is_percent(metric) else 1.0
    rows = report["conditions"]
    clean = scale * rows[0]["metrics"][metric]["mean"]

    def series(family):
        chosen = [r for r in rows if r["family"] == family]
        levels = [r["level"] for r in chosen]
        means = np.array([scale * r["metrics"][metric]["mean"] for r in chosen])
        shifted = np.array([clean + scale * r["metrics"][metric]["difference"] for r in chosen])
        low = np.array([scale * r["metrics"][metric]["ci_low"] for r in chosen]) + clean
        high = np.array([scale * r["metrics"][metric]["ci_high"] for r in chosen]) + clean
        return chosen, levels, means, shifted, low, high

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4), constrained_layout=True)
    removed, _, means, shifted, low, high = series("remove")
    shown = [np.array([clean]), means, low, high]
    # points, not bars: a bar's length from an axis that does not start at 0 would mislead
    axes[0].plot(range(len(removed)), means, marker="o", linestyle="none", color="tab:gray",
                 label="mean over checkpoints")
    axes[0].errorbar(range(len(removed)), shifted, yerr=[shifted - low, high - shifted],
                     fmt="none", ecolor="black", capsize=3)
    axes[0].set_xticks(range(len(removed)),
                       ["without\n" + " and\n".join(r["removed"]) for r in removed], fontsize=8)
    axes[0].set_xlim(-0.6, len(removed) - 0.4)
    axes[0].set_title("modalities removed")
    for axis, families, xlabel in ((axes[1], ["noise"], "noise on audio and vision (× training std)"),
                                   (axes[2], ["time_mask", "word_dropout"], "rate")):
        for family, label in zip(families, ("audio/vision steps zeroed", "words masked")
                                 if len(families) > 1 else ("noise",)):
            _, levels, means, _, low, high = series(family)
            if levels:
                axis.plot(levels, means, marker="o", label=label)
                axis.fill_between(levels, low, high, alpha=0.2)
                shown += [means, low, high]
        axis.set_xlabel(xlabel)
    limits = _y_limits(np.concatenate(shown), metric)
    for axis in axes:
        axis.axhline(clean, color="tab:green", linestyle="--", label="clean")
        axis.set_ylabel(metric + (" (%)" if scale == 100.0 else ""))
        axis.set_ylim(*limits)
        axis.grid(axis="y", alpha=0.3)
    for axis in axes[1:]:
        axis.legend(fontsize=8, loc="best", framealpha=0.8)
    fig.suptitle(f"{report['model']}: {metric} under test-time perturbations "
                 f"({report['n_units']} checkpoints; bars and bands: 95 % CI of the paired "
                 "difference to clean)", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
