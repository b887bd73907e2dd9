"""Paired comparison of runs: is model B really better than model A?

Two runs trained on the same data with the same partitions (the file's own split or the same
grouped folds) and the same seeds are paired by training unit ``(seed, partition)`` and, inside a
unit, by clip id. For each metric the statistic is the **difference of the runs' reported
means**:

    D = mean over units u of [ metric(B's test predictions of u) - metric(A's ... of u) ]

The metric is computed per unit on that unit's whole test part, exactly as the run's results
table does (MMSA's Acc-2, F1 and Corr are properties of a set of predictions, not per-clip
averages), then averaged over units. So ``D`` is exactly ``mean_B - mean_A`` of the two
``results.md`` tables.

Uncertainty comes from *which videos* happened to be in the test parts. MOSI-style data has many
clips per video (one speaker each), and clips of one speaker are not independent, so both
procedures treat a video as the unit of resampling:

* **95 % CI — cluster bootstrap.** A replicate draws, for every partition, as many videos as its
  test part has, with replacement, from that partition's test videos (a stratified cluster
  bootstrap: each fold keeps its size in videos); every clip of a drawn video enters with the
  multiplicity of the draw, in every seed's unit of that partition (seeds share the videos). The
  metric of each unit is recomputed on the weighted clips, ``D`` recomputed, and the 2.5 / 97.5
  percentiles of the replicates are the interval. This is the uncertainty of ``D`` over the
  population of videos (speakers) the test parts were drawn from; seeds are held fixed.
* **p-value — paired permutation by video.** Under "A and B are exchangeable", swapping the two
  runs' predictions for all clips of a video (in every seed) leaves the distribution of ``D``
  unchanged. The p-value is the share of sign-flip patterns whose ``|D|`` reaches the observed
  ``|D|``: all ``2^V`` patterns when there are few videos (exact), otherwise ``n_permutations``
  random ones (with the usual +1 correction).

With the 229 MOSI clips (10 videos) these intervals are wide: that is the honest answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from msakit import runfolder
from msakit.metrics import metric_direction, metric_names, weighted_metrics
from msakit.summary import format_value, is_percent

#: ``predictions.csv`` columns: ``video_id`` is written by msakit >= this module; older run
#: folders get it from the clip id (``video$_$clip``).
CLIP_ID_SEPARATOR = "$_$"
MAX_EXACT_VIDEOS = 16  # 2^16 = 65,536 sign-flip patterns at most are enumerated


class CompareError(ValueError):
    """Runs that cannot be paired; the message says what differs."""


# ----------------------------------------------------------------------------------------------
# Reusable statistics on per-clip paired differences
# ----------------------------------------------------------------------------------------------

def _cluster_index(clusters: Sequence[Any]) -> tuple[np.ndarray, int]:
    _, index = np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)
    return index.reshape(-1), int(index.max()) + 1 if len(index) else 0


def cluster_bootstrap_ci(
    differences: Sequence[float],
    clusters: Sequence[Any],
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float]:
    """Mean of per-clip paired differences with a cluster-bootstrap confidence interval.

    For per-clip quantities (e.g. ``|error_B| - |error_A|`` of two models on the same clips, or
    a model's error on clean vs corrupted inputs) grouped by video: a replicate draws the videos
    with replacement and takes the mean over all clips of the drawn videos (with multiplicity).

    Args:
        differences: ``(N,)`` per-clip paired differences.
        clusters: ``(N,)`` cluster (video) id of each clip.
        n_boot: bootstrap replicates.
        seed: random seed (the result is deterministic given it).
        confidence: coverage of the percentile interval.

    Returns:
        ``{"mean", "ci_low", "ci_high", "n_clips", "n_clusters", "n_boot", "confidence"}``.
    """
    values = np.asarray(differences, dtype=np.float64).reshape(-1)
    index, n_clusters = _cluster_index(clusters)
    if len(index) != len(values):
        raise ValueError(f"{len(values)} differences but {len(index)} cluster ids")
    if not len(values):
        raise ValueError("no differences to summarise")
    if not np.all(np.isfinite(values)):
        raise ValueError("differences contain NaN or inf")
    sums = np.bincount(index, weights=values, minlength=n_clusters)
    sizes = np.bincount(index, minlength=n_clusters).astype(np.float64)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)
    replicates = (counts @ sums) / (counts @ sizes)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
    return {"mean": float(values.mean()), "ci_low": float(low), "ci_high": float(high),
            "n_clips": int(len(values)), "n_clusters": n_clusters, "n_boot": int(n_boot),
            "confidence": confidence}


def sign_flip_patterns(n_clusters: int, n_permutations: int, seed: int = 0) -> np.ndarray:
    """``(P, n_clusters)`` booleans: every pattern when ``2^n <= n_permutations`` (and
    ``n <= MAX_EXACT_VIDEOS``), else ``n_permutations`` random ones, the identity first."""
    if n_clusters <= MAX_EXACT_VIDEOS and 2 ** n_clusters <= n_permutations:
        codes = np.arange(2 ** n_clusters)[:, None]
        return ((codes >> np.arange(n_clusters)[None, :]) & 1).astype(bool)
    rng = np.random.default_rng(seed)
    random = rng.random((n_permutations, n_clusters)) < 0.5
    return np.concatenate([np.zeros((1, n_clusters), dtype=bool), random])


def permutation_p_value(observed: float, permuted: np.ndarray, exact: bool) -> float:
    """Two-sided p-value of ``observed`` against the permutation distribution ``permuted``
    (which includes the identity pattern as its first entry)."""
    permuted = permuted[np.isfinite(permuted)]
    reached = np.abs(permuted) >= abs(observed) - 1e-12 * max(1.0, abs(observed))
    if exact:
        return float(reached.mean())
    # the identity is in ``permuted``: (1 + hits among random) / (1 + random)
    return float(reached.sum() / len(permuted))


def paired_permutation_p_value(
    differences: Sequence[float],
    clusters: Sequence[Any],
    n_permutations: int = 10_000,
    seed: int = 0,
) -> float:
    """Two-sided paired permutation p-value of the mean per-clip difference, flipping the sign
    of whole clusters (videos) at once; exact when there are few clusters."""
    values = np.asarray(differences, dtype=np.float64).reshape(-1)
    index, n_clusters = _cluster_index(clusters)
    sums = np.bincount(index, weights=values, minlength=n_clusters)
    patterns = sign_flip_patterns(n_clusters, n_permutations, seed)
    signs = np.where(patterns, -1.0, 1.0)
    permuted = (signs @ sums) / len(values)
    exact = len(patterns) == 2 ** n_clusters and n_clusters <= MAX_EXACT_VIDEOS
    return permutation_p_value(float(values.mean()), permuted, exact)


# ----------------------------------------------------------------------------------------------
# Runs: loading and pairing
# ----------------------------------------------------------------------------------------------

@dataclass
class Unit:
    """One training run's test predictions: ``(seed, partition)`` and its clips."""

    seed: int
    partition: str
    ids: list[str]
    video_ids: list[str]
    labels: np.ndarray
    predictions: np.ndarray


def _read_predictions(path: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    columns, rows = runfolder.read_predictions_file(path)
    missing = {"id", "label", "prediction"} - set(columns)
    if missing:
        raise CompareError(f"{path}: missing column(s) {sorted(missing)}; expected id, "
                           "label, prediction[, video_id]")
    if not rows:
        raise CompareError(f"{path}: no predictions")
    ids = [r["id"] for r in rows]
    videos = [r.get("video_id") or r["id"].split(CLIP_ID_SEPARATOR)[0] for r in rows]
    try:
        labels = np.array([float(r["label"]) for r in rows])
        predictions = np.array([float(r["prediction"]) for r in rows])
    except ValueError as err:
        raise CompareError(f"{path}: non-numeric label or prediction ({err})") from None
    return ids, videos, labels, predictions


def load_units(run_dir: str | Path) -> dict[tuple[int, str], Unit]:
    """The test predictions of every training run in ``run_dir``, keyed ``(seed, partition)``."""
    run_dir = Path(run_dir)
    files = runfolder.predictions_files(run_dir)
    if not files:
        raise CompareError(f"{run_dir}: no predictions.csv (not a finished msakit run folder; "
                           "a tuning trial has no test predictions)")
    units = {}
    for path in files:
        saved = runfolder.read_metrics(path.parent, missing_ok=True)
        seed = saved.get("seed")
        if seed is None:
            seed = int(path.parent.parent.name.removeprefix("seed"))
        partition = saved.get("partition", path.parent.name)
        ids, videos, labels, predictions = _read_predictions(path)
        units[(int(seed), partition)] = Unit(int(seed), partition, ids, videos, labels,
                                             predictions)
    return units


def _run_record(run_dir: Path) -> dict[str, Any]:
    """What must agree between paired runs: data file, dataset family, partitioning."""
    data = runfolder.read_data_record(run_dir, missing_ok=True)
    config = runfolder.read_config_tree(run_dir, missing_ok=True)
    env = runfolder.read_environment(run_dir) or {}
    data_config = (config or {}).get("data", {}) or {}
    return {
        "model": ((config or {}).get("model") or {}).get("name", "?"),
        "data_sha256": (env.get("data") or {}).get("sha256"),
        "data_path": data.get("source"),
        "dataset": data.get("dataset", "mosi"),
        "partitions": data.get("partitions"),
        "split": {k: data_config.get(k) for k in ("folds", "fold_seed", "valid_fraction")},
    }


def check_pairable(a_dir: Path, a: dict, b_dir: Path, b: dict,
                   a_units: dict, b_units: dict) -> None:
    """Refuse runs that cannot be paired, saying what differs."""
    problems = []
    if a["data_sha256"] and b["data_sha256"]:
        if a["data_sha256"] != b["data_sha256"]:
            problems.append(f"data files differ: SHA-256 {a['data_sha256'][:16]}… "
                            f"({a['data_path']}) vs {b['data_sha256'][:16]}… ({b['data_path']})")
    elif a["data_path"] != b["data_path"]:
        problems.append(f"data files differ: {a['data_path']} vs {b['data_path']} (no SHA-256 "
                        "recorded in env.json to show they are the same bytes)")
    if a["dataset"] != b["dataset"]:
        problems.append(f"dataset family differs: {a['dataset']} vs {b['dataset']}")
    if a["split"] != b["split"]:
        differing = {k: (a["split"][k], b["split"][k]) for k in a["split"]
                     if a["split"][k] != b["split"][k]}
        problems.append("partitioning differs: " + ", ".join(
            f"data.{k} {x} vs {y}" for k, (x, y) in differing.items()))
    if a["partitions"] and b["partitions"] and a["partitions"] != b["partitions"]:
        problems.append(f"partition sizes differ: {a['partitions']} vs {b['partitions']}")
    if set(a_units) != set(b_units):
        only_a = sorted(set(a_units) - set(b_units))
        only_b = sorted(set(b_units) - set(a_units))
        problems.append("training runs differ: (seed, partition) "
                        + (f"only in {a_dir}: {only_a}" if only_a else "")
                        + ("; " if only_a and only_b else "")
                        + (f"only in {b_dir}: {only_b}" if only_b else ""))
    else:
        for key in sorted(a_units):
            ua, ub = a_units[key], b_units[key]
            if sorted(ua.ids) != sorted(ub.ids):
                missing = sorted(set(ua.ids) ^ set(ub.ids))
                problems.append(f"seed {key[0]} {key[1]}: test clips differ "
                                f"({len(missing)} not in both, e.g. {missing[:3]})")
                continue
            order = {clip: i for i, clip in enumerate(ub.ids)}
            b_labels = ub.labels[[order[c] for c in ua.ids]]
            if not np.allclose(ua.labels, b_labels, atol=1e-6):
                problems.append(f"seed {key[0]} {key[1]}: the same clips carry different labels")
    if problems:
        raise CompareError(f"cannot pair {a_dir} with {b_dir}:\n  - " + "\n  - ".join(problems))


# ----------------------------------------------------------------------------------------------
# The comparison
# ----------------------------------------------------------------------------------------------

@dataclass
class PairedUnit:
    """Two sets of predictions (a, b) of one training unit on the same clips, in one order."""

    labels: np.ndarray          # (N,)
    a: np.ndarray               # (N,) A's predictions
    b: np.ndarray               # (N,) B's predictions, same clip order
    video: np.ndarray           # (N,) global video index
    partition: str


def _pair(a_units: dict, b_units: dict) -> tuple[list[PairedUnit], list[str], dict[str, list]]:
    videos: dict[str, int] = {}
    partition_videos: dict[str, set[int]] = {}
    paired = []
    for key in sorted(a_units):
        ua, ub = a_units[key], b_units[key]
        order = {clip: i for i, clip in enumerate(ub.ids)}
        b_pred = ub.predictions[[order[c] for c in ua.ids]]
        # a video is identified within its partition: the same video id in two partitions
        # (impossible with grouped folds) would still be two clusters
        index = np.array([videos.setdefault(f"{key[1]}/{v}", len(videos)) for v in ua.video_ids])
        partition_videos.setdefault(key[1], set()).update(index.tolist())
        paired.append(PairedUnit(ua.labels, ua.predictions, b_pred, index, key[1]))
    names = list(videos)
    return paired, names, {p: sorted(v) for p, v in partition_videos.items()}


def _mean_over_units(
    units: list[PairedUnit], dataset: str, metrics: list[str],
    predictions: Callable[[PairedUnit], tuple[np.ndarray, np.ndarray]],
    weights: Callable[[PairedUnit], np.ndarray | None],
) -> dict[str, np.ndarray]:
    """``mean_u [metric(B_u) - metric(A_u)]`` for every metric, batched over the leading axis."""
    totals: dict[str, Any] = {m: 0.0 for m in metrics}
    for unit in units:
        a_pred, b_pred = predictions(unit)
        w = weights(unit)
        ma = weighted_metrics(a_pred, unit.labels, w, dataset)
        mb = weighted_metrics(b_pred, unit.labels, w, dataset)
        for m in metrics:
            totals[m] = totals[m] + (mb[m] - ma[m])
    return {m: np.asarray(v) / len(units) for m, v in totals.items()}


def paired_units_ci(
    units: list[PairedUnit], partition_videos: dict[str, list[int]], n_videos: int,
    dataset: str, metrics: Sequence[str], n_boot: int = 2000, seed: int = 0,
    confidence: float = 0.95,
) -> tuple[dict[str, float], dict[str, tuple[float, float, int]]]:
    """``D = mean_u [metric(b_u) - metric(a_u)]`` per metric and its cluster-bootstrap interval
    (videos resampled with replacement within each partition; see the module doc).

    Returns:
        ``({metric: D}, {metric: (ci_low, ci_high, replicates used)})``.
    """
    def observed_predictions(u):
        return u.a, u.b

    observed = _mean_over_units(units, dataset, list(metrics), observed_predictions,
                                lambda u: None)
    rng = np.random.default_rng(seed)
    video_counts = np.zeros((n_boot, n_videos))
    for partition in sorted(partition_videos):
        members = partition_videos[partition]
        video_counts[:, members] = rng.multinomial(
            len(members), np.full(len(members), 1.0 / len(members)), size=n_boot)
    boot = _mean_over_units(units, dataset, list(metrics), observed_predictions,
                            lambda u: video_counts[:, u.video])
    alpha = (1.0 - confidence) / 2.0
    intervals = {}
    for m in metrics:
        valid = boot[m][np.isfinite(boot[m])]
        low, high = (np.quantile(valid, [alpha, 1.0 - alpha]) if len(valid)
                     else (math.nan, math.nan))
        intervals[m] = (float(low), float(high), int(len(valid)))
    return {m: float(observed[m]) for m in metrics}, intervals


def compare_pair(
    a_dir: str | Path,
    b_dir: str | Path,
    metrics: Sequence[str] | None = None,
    n_boot: int = 2000,
    n_permutations: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Compare run B against run A (see the module doc for what is computed).

    Returns:
        ``{"a", "b", "dataset", "pairing": {...}, "metrics": {name: {"a_mean", "b_mean",
        "difference", "ci_low", "ci_high", "p_value", "better"}}}``; ``difference`` is
        ``b_mean - a_mean``, ``better`` names the run the observed difference favours.
    """
    a_dir, b_dir = Path(a_dir), Path(b_dir)
    a_units, b_units = load_units(a_dir), load_units(b_dir)
    a_record, b_record = _run_record(a_dir), _run_record(b_dir)
    check_pairable(a_dir, a_record, b_dir, b_record, a_units, b_units)
    dataset = a_record["dataset"]
    known = list(metric_names(dataset))
    metrics = list(metrics or known)
    unknown = [m for m in metrics if m not in known]
    if unknown:
        raise CompareError(f"unknown metric(s) {unknown} for {dataset}; choose from {known}")
    units, video_names, partition_videos = _pair(a_units, b_units)
    n_videos = len(video_names)

    observed, intervals = paired_units_ci(units, partition_videos, n_videos, dataset, metrics,
                                          n_boot, seed, confidence)

    # permutation: swap A and B for all clips of a video
    patterns = sign_flip_patterns(n_videos, n_permutations, seed)
    exact = len(patterns) == 2 ** n_videos and n_videos <= MAX_EXACT_VIDEOS

    def flipped(u):
        swap = patterns[:, u.video]
        return np.where(swap, u.b, u.a), np.where(swap, u.a, u.b)

    permuted = _mean_over_units(units, dataset, metrics, flipped, lambda u: None)

    table = {}
    for m in metrics:
        difference = float(observed[m])
        low, high, used = intervals[m]
        a_mean = float(_unit_mean(units, dataset, m, "a"))
        direction = metric_direction(m)
        better = ("none" if difference == 0 else
                  "b" if (difference > 0) == (direction == "max") else "a")
        table[m] = {
            "a_mean": a_mean, "b_mean": a_mean + difference, "difference": difference,
            "ci_low": float(low), "ci_high": float(high),
            "p_value": permutation_p_value(difference, permuted[m], exact),
            "better": better, "higher_is_better": direction == "max",
            "boot_replicates_used": used,
        }
    return {
        "a": str(a_dir), "b": str(b_dir),
        "a_model": a_record["model"], "b_model": b_record["model"],
        "dataset": dataset,
        "pairing": {
            "units": [f"seed{s}/{p}" for s, p in sorted(a_units)],
            "n_units": len(units),
            "n_clips": int(sum(len(u.labels) for u in units)),
            "n_videos": n_videos,
            "data_sha256": a_record["data_sha256"], "data_path": a_record["data_path"],
        },
        "method": {
            "statistic": "mean over (seed, partition) of metric(B) - metric(A), each metric "
                         "computed on the unit's whole test part",
            "ci": f"{confidence:.0%} percentile interval of a cluster bootstrap: videos "
                  f"resampled with replacement within each partition, {n_boot} replicates",
            "p_value": ("exact" if exact else f"{len(patterns) - 1} random") +
                       " paired sign-flip permutations of whole videos, two-sided",
            "seed": seed,
        },
        "metrics": table,
    }


def _unit_mean(units: list[PairedUnit], dataset: str, metric: str, side: str) -> float:
    values = [weighted_metrics(getattr(u, side), u.labels, None, dataset)[metric] for u in units]
    return float(np.mean(values))


def compare_runs(
    run_dirs: Sequence[str | Path],
    metrics: Sequence[str] | None = None,
    n_boot: int = 2000,
    n_permutations: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Compare every run in ``run_dirs[1:]`` against the baseline ``run_dirs[0]``.

    Returns:
        ``{"baseline": path, "comparisons": [compare_pair(baseline, other), ...]}``.

    Raises:
        CompareError: fewer than two runs, or runs that cannot be paired (what differs).
    """
    if len(run_dirs) < 2:
        raise CompareError("give at least two run folders: the baseline, then the others")
    baseline = Path(run_dirs[0])
    return {
        "baseline": str(baseline),
        "comparisons": [compare_pair(baseline, other, metrics, n_boot, n_permutations, seed,
                                     confidence) for other in run_dirs[1:]],
    }


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------

def _cells(metric: str, entry: dict[str, Any]) -> list[str]:
    def fmt(value):
        return format_value(metric, value)

    return [fmt(entry["a_mean"]), fmt(entry["b_mean"]),
            ("+" if entry["difference"] >= 0 else "") + fmt(entry["difference"]),
            f"[{fmt(entry['ci_low'])}, {fmt(entry['ci_high'])}]",
            f"{entry['p_value']:.3f}", {"a": "A", "b": "B", "none": "-"}[entry["better"]]]


COLUMNS = ("metric", "A", "B", "B - A", "95 % CI", "p", "favours")


def comparison_title(comparison: dict[str, Any]) -> str:
    pairing = comparison["pairing"]
    return (f"A = {comparison['a_model']} ({comparison['a']})  vs  "
            f"B = {comparison['b_model']} ({comparison['b']}): {pairing['n_units']} paired "
            f"training runs, {pairing['n_clips']} test predictions, {pairing['n_videos']} videos")


def comparison_table(comparison: dict[str, Any]):
    """A rich table of one :func:`compare_pair` result."""
    from rich.table import Table

    table = Table(title=comparison_title(comparison))
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for metric, entry in comparison["metrics"].items():
        table.add_row(metric + (" (%)" if is_percent(metric) else ""), *_cells(metric, entry))
    return table


def comparison_markdown(result: dict[str, Any]) -> str:
    """``compare.md``: one table per comparison, then how the numbers were computed."""
    lines = []
    for comparison in result["comparisons"]:
        lines += [f"### {comparison_title(comparison)}", "",
                  "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for metric, entry in comparison["metrics"].items():
            name = metric + (" (%)" if is_percent(metric) else "")
            lines.append("| " + " | ".join([name, *_cells(metric, entry)]) + " |")
        lines.append("")
    method = result["comparisons"][0]["method"]
    lines += ["B - A: " + method["statistic"] + ".", "",
              "95 % CI: " + method["ci"] + ".", "", "p: " + method["p_value"] + ".", ""]
    return "\n".join(lines)


def write_comparison(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``compare.json`` and ``compare.md`` into ``out_dir`` (never over existing ones)."""
    json_path, md_path = runfolder.unused_paths(out_dir, "compare", (".json", ".md"))
    runfolder.write_json(json_path, result)
    md_path.write_text(comparison_markdown(result))
    return json_path, md_path
