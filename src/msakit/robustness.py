"""Robustness of trained checkpoints to test-time perturbations (``msakit evaluate --robustness``).

Every selected checkpoint of a run is scored on its own test part, clean and under each
perturbation; the table reports each metric's mean over checkpoints and the paired difference
to the clean score with a 95 % cluster-bootstrap interval (videos resampled within each
partition, :func:`msakit.experiments.compare.paired_units_ci`, the statistic ``msakit compare``
uses).

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
from collections.abc import Sequence
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
        if self.family == "clean":
            return "clean"
        if self.family == "remove":
            return "remove:" + "+".join(self.removed)
        return f"{self.family}:{self.level:g}"


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
    n_boot: int = 2000,
    write: bool = True,
) -> dict[str, Any]:
    """Score every selected checkpoint of ``run_dir`` under each condition (module doc).

    Returns:
        ``{"run", "model", "dataset", "conditions": [{"condition", "family", "level",
        "metrics": {m: {"mean", "std", "difference", "ci_low", "ci_high"}}}], "n_units",
        "n_clips", "n_videos", "method"}``; written as ``robustness.json``/``.md``/``.csv`` and
        ``robustness-<metric>.png`` in ``run_dir`` when ``write``.
    """
    import torch

    from msakit import runfolder
    from msakit.experiments.compare import PairedUnit, paired_units_ci
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
        units_info.append((partition.name, partition.test))

    videos: dict[str, int] = {}
    partition_videos: dict[str, set[int]] = {}
    unit_videos = []
    for partition_name, test in units_info:
        index = np.array([videos.setdefault(f"{partition_name}/{v}", len(videos))
                          for v in test.video_ids])
        partition_videos.setdefault(partition_name, set()).update(index.tolist())
        unit_videos.append(index)
    members = {p: sorted(v) for p, v in partition_videos.items()}

    rows = []
    for condition in conditions:
        per_metric = {}
        if condition.family == "clean":
            differences = {m: 0.0 for m in metrics}
            intervals = {m: (0.0, 0.0, n_boot) for m in metrics}
        else:
            units = [PairedUnit(test.labels, clean, perturbed, video, name)
                     for (name, test), clean, perturbed, video in zip(
                         units_info, predictions["clean"], predictions[condition.name],
                         unit_videos)]
            differences, intervals = paired_units_ci(units, members, len(videos), dataset.name,
                                                     metrics, n_boot, seed)
        for m in metrics:
            values = np.array([s[m] for s in scores[condition.name]], dtype=np.float64)
            per_metric[m] = {
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "difference": differences[m], "ci_low": intervals[m][0],
                "ci_high": intervals[m][1],
            }
        rows.append({"condition": condition.name, "family": condition.family,
                     "level": condition.level, "removed": list(condition.removed),
                     "metrics": per_metric})
    report = {
        "run": str(run_dir), "model": config.model.name, "dataset": dataset.name,
        "n_units": len(sub_dirs), "n_clips": int(sum(len(t) for _, t in units_info)),
        "n_videos": len(videos), "seed": seed,
        "method": "metric per checkpoint on its test part, mean ± sample std over checkpoints; "
                  "difference = mean over checkpoints of metric(perturbed) - metric(clean), "
                  f"95% cluster-bootstrap CI over videos within partitions ({n_boot} "
                  "replicates, msakit compare's statistic)",
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


def format_cell(value: dict[str, float], family: str, delta: str = " (Δ {})") -> str:
    """``mean ± std``; for a perturbed condition also ``delta`` filled with
    ``difference [ci_low, ci_high]``."""
    cell = f"{value['mean']:.4f} ± {value['std']:.4f}"
    if family != "clean":
        cell += delta.format(f"{value['difference']:+.4f} "
                             f"[{value['ci_low']:+.4f}, {value['ci_high']:+.4f}]")
    return cell


def robustness_markdown(report: dict[str, Any]) -> str:
    metrics = _shown_metrics(report)
    lines = [f"# Robustness of {report['model']} ({report['run']})", "",
             f"{report['n_units']} checkpoint(s), {report['n_clips']} test clips, "
             f"{report['n_videos']} videos. {report['method']}.", "",
             "| condition | " + " | ".join(metrics) + " |",
             "| --- | " + " | ".join("---" for _ in metrics) + " |"]
    for row in report["conditions"]:
        cells = [format_cell(row["metrics"][m], row["family"]) for m in metrics]
        lines.append(f"| {row['condition']} | " + " | ".join(cells) + " |")
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
        writer.writerow(["condition", "family", "level", "metric", "mean", "std", "difference",
                         "ci_low", "ci_high"])
        for row in report["conditions"]:
            for m in metrics:
                v = row["metrics"][m]
                writer.writerow([row["condition"], row["family"], row["level"], m, v["mean"],
                                 v["std"], v["difference"], v["ci_low"], v["ci_high"]])
    for m in _shown_metrics(report):
        path = out_dir / f"robustness-{m}.png"
        plot_metric(report, m, path)
        written.append(path)
    return written


def plot_metric(report: dict[str, Any], metric: str, path: Path) -> None:
    """Three panels: removals (bars with CIs), noise level, masking rates; clean as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["conditions"]
    clean = rows[0]["metrics"][metric]["mean"]

    def series(family):
        chosen = [r for r in rows if r["family"] == family]
        levels = [r["level"] for r in chosen]
        means = np.array([r["metrics"][metric]["mean"] for r in chosen])
        low = np.array([r["metrics"][metric]["ci_low"] for r in chosen]) + clean
        high = np.array([r["metrics"][metric]["ci_high"] for r in chosen]) + clean
        return chosen, levels, means, low, high

    fig, axes = plt.subplots(1, 3, figsize=(14, 4), constrained_layout=True)
    removed, _, means, low, high = series("remove")
    axes[0].bar(range(len(removed)), means, color="tab:gray")
    axes[0].errorbar(range(len(removed)), clean + np.array(
        [r["metrics"][metric]["difference"] for r in removed]),
        yerr=[clean + np.array([r["metrics"][metric]["difference"] for r in removed]) - low,
              high - (clean + np.array([r["metrics"][metric]["difference"] for r in removed]))],
        fmt="none", ecolor="black", capsize=3)
    axes[0].set_xticks(range(len(removed)), ["-" + "+".join(r["removed"]) for r in removed],
                       rotation=30)
    axes[0].set_title("modality removed")
    for axis, families, xlabel in ((axes[1], ["noise"], "noise (x training std)"),
                                   (axes[2], ["time_mask", "word_dropout"], "rate")):
        for family in families:
            _, levels, means, low, high = series(family)
            if levels:
                axis.plot(levels, means, marker="o", label=family)
                axis.fill_between(levels, low, high, alpha=0.2)
        axis.set_xlabel(xlabel)
        axis.legend()
    for axis in axes:
        axis.axhline(clean, color="tab:green", linestyle="--", label="clean")
        axis.set_ylabel(metric)
    fig.suptitle(f"{report['model']}: {metric} under test-time perturbations "
                 f"({report['n_units']} checkpoints; bands: 95% CI of the paired difference)")
    fig.savefig(path, dpi=100)
    plt.close(fig)
