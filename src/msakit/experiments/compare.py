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
clips per video (one speaker each), and clips of one speaker are not independent, so the video
is the unit of the uncertainty. **One rule** gives the interval, the p-value and the decision
(:func:`jackknife_t_rule`):

* ``SE``: the delete-one-video jackknife. ``D`` is recomputed without each video in turn (its
  clips leave every seed's unit of its partition), and
  ``SE^2 = (G - 1) / G * sum_v (D_(v) - mean_v D_(v))^2`` over the ``G`` test videos.
* **95 % CI** ``D -+ t_{G-1}(0.975) SE`` and **p** ``= 2 P(t_{G-1} >= |D| / SE)``: the same
  statistic, so ``p < 0.05`` exactly when the interval excludes 0.
* **Decision**: "favours" / "outside the noise" only when ``p`` (Holm-adjusted over the models
  compared with one baseline, per metric) is below 0.05.

With few clusters (10 videos, 3-4 per fold) a percentile cluster bootstrap covers less than
its nominal 95 % and a permutation p can disagree with it; the jackknife-t rule was chosen
because its error rates, measured by simulation on data shaped like ``mosi-demo``
(:mod:`msakit.experiments.simulation`, ``benchmarks/decision_rule.py``), stay at or below 5 %
false "outside the noise" and at or above 95 % coverage with 5, 10 and 20 videos.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from msakit import runfolder
from msakit.metrics import metric_direction, metric_names, weighted_metrics
from msakit.summary import format_value, is_percent

#: ``predictions.csv`` columns: ``video_id`` is written by msakit >= this module; older run
#: folders get it from the clip id (``video$_$clip``).
CLIP_ID_SEPARATOR = "$_$"
#: ``compare.json`` / ``.md`` / ``.png`` (``compare-2.*``, ... beside existing ones)
COMPARISON_STEM = "compare"
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


def read_checked_predictions(path: Path) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
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
    for column, values in (("label", labels), ("prediction", predictions)):
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            row = int(bad[0])
            raise CompareError(f"{path}: line {row + 2}: {column} of clip {ids[row]!r} is "
                               f"{values[row]}, expected a finite number ({len(bad)} such row(s))")
    seen: dict[str, int] = {}
    for line, clip in enumerate(ids, start=2):
        if clip in seen:
            raise CompareError(f"{path}: line {line}: clip id {clip!r} appears more than once "
                               f"(first on line {seen[clip]}); expected one row per test clip")
        seen[clip] = line
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
        ids, videos, labels, predictions = read_checked_predictions(path)
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


def leave_one_video_out(
    units: list[PairedUnit], n_videos: int, dataset: str, metrics: Sequence[str],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``D`` and its ``n_videos`` leave-one-video-out recomputations, for every metric.

    ``D = mean_u [metric(b_u) - metric(a_u)]``; deleting video ``v`` removes its clips from
    every unit (every seed) of its partition, and a unit left without clips drops out of the
    mean over units. ``a`` and ``b`` of the units may carry leading batch axes (``(..., N)``,
    e.g. simulated replicates), which the results keep.

    Returns:
        ``({metric: D of shape (...)}, {metric: D_(-v) of shape (..., n_videos)})``.
    """
    metrics = list(metrics)
    observed: dict[str, Any] = {m: 0.0 for m in metrics}
    deleted_sum: dict[str, Any] = {m: 0.0 for m in metrics}
    deleted_count: Any = 0.0
    videos = np.arange(n_videos)
    for unit in units:
        ma = weighted_metrics(unit.a, unit.labels, None, dataset, metrics)
        mb = weighted_metrics(unit.b, unit.labels, None, dataset, metrics)
        keep = (unit.video[None, :] != videos[:, None]).astype(np.float64)   # (V, N)
        present = keep.sum(axis=1) > 0                                      # (V,) unit not empty
        with np.errstate(invalid="ignore", divide="ignore"):  # an emptied unit: nan, dropped
            ja = weighted_metrics(unit.a[..., None, :], unit.labels, keep, dataset, metrics)
            jb = weighted_metrics(unit.b[..., None, :], unit.labels, keep, dataset, metrics)
        for m in metrics:
            observed[m] = observed[m] + (mb[m] - ma[m])
            deleted_sum[m] = deleted_sum[m] + np.where(present, jb[m] - ja[m], 0.0)
        deleted_count = deleted_count + present
    return ({m: np.asarray(v) / len(units) for m, v in observed.items()},
            {m: deleted_sum[m] / deleted_count for m in metrics})


def jackknife_t_rule(
    observed: np.ndarray, deleted: np.ndarray, confidence: float = 0.95,
) -> dict[str, np.ndarray]:
    """The decision rule: a delete-one-video jackknife standard error and Student's t with
    ``G - 1`` degrees of freedom (``G`` = videos), for the interval *and* the p-value.

    With ``D_(v)`` the statistic without video ``v`` and ``D_(.)`` their mean,

        SE^2 = (G - 1) / G * sum_v (D_(v) - D_(.))^2,      T = D / SE,
        CI   = D -+ t_{G-1}(1 - alpha/2) * SE,               p = 2 P(t_{G-1} >= |T|).

    Both come from the same ``T``, so ``p < 1 - confidence`` exactly when the interval excludes
    0: they can never disagree. For a mean of per-clip differences the jackknife variance is
    the CR3 cluster-robust variance (Bell & McCaffrey 2002; MacKinnon, Nielsen & Webb 2023),
    which stays close to or above nominal coverage with few, unequal clusters where the
    percentile cluster bootstrap falls short; the t reference with ``G - 1`` degrees of freedom
    is the usual few-cluster correction (Cameron, Gelbach & Miller 2008). The jackknife also
    covers statistics that are not means (F1, Pearson correlation) without a linearisation.

    Args:
        observed: ``(...)`` the statistic ``D``.
        deleted: ``(..., G)`` leave-one-video-out values ``D_(v)``; ``nan`` entries (a metric
            undefined without that video) are left out, ``G`` counts the finite ones.
        confidence: coverage of the interval (the test's level is ``1 - confidence``).

    Returns:
        ``{"se", "df", "ci_low", "ci_high", "p_value"}``, arrays of ``observed``'s shape;
        ``nan`` where fewer than two finite ``D_(v)`` exist. With ``SE = 0``, ``p`` is 1 when
        ``D = 0`` (identical runs) and 0 otherwise.
    """
    from scipy import stats

    observed = np.asarray(observed, dtype=np.float64)
    deleted = np.asarray(deleted, dtype=np.float64)
    finite = np.isfinite(deleted)
    g = finite.sum(axis=-1).astype(np.float64)
    values = np.where(finite, deleted, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = values.sum(axis=-1) / g
        spread = (np.where(finite, values - centre[..., None], 0.0) ** 2).sum(axis=-1)
        se = np.sqrt((g - 1.0) / g * spread)
        df = np.where(g >= 2, g - 1.0, np.nan)
        t_crit = stats.t.ppf(0.5 + confidence / 2.0, df)
        scaled = np.abs(observed) / se
        p_value = np.where(se > 0, 2.0 * stats.t.sf(scaled, df),
                           np.where(observed == 0, 1.0, 0.0))
    p_value = np.where(np.isfinite(df) & np.isfinite(observed), p_value, np.nan)
    return {"se": se, "df": df, "ci_low": observed - t_crit * se,
            "ci_high": observed + t_crit * se, "p_value": p_value}


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (``nan`` entries are left out of the
    family and stay ``nan``): controls the chance of any false "outside the noise" among them."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full(len(p), np.nan)
    valid = np.flatnonzero(np.isfinite(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def paired_units_interval(
    units: list[PairedUnit], n_videos: int, dataset: str, metrics: Sequence[str],
    confidence: float = 0.95,
) -> dict[str, dict[str, float]]:
    """``D`` per metric with the decision rule's interval and p (:func:`jackknife_t_rule`).

    Returns:
        ``{metric: {"difference", "se", "df", "ci_low", "ci_high", "p_value"}}``.
    """
    observed, deleted = leave_one_video_out(units, n_videos, dataset, metrics)
    out = {}
    for m in metrics:
        rule = jackknife_t_rule(observed[m], deleted[m], confidence)
        out[m] = {"difference": float(observed[m])} | {k: float(v) for k, v in rule.items()}
    return out


def paired_units_ci(
    units: list[PairedUnit], partition_videos: dict[str, list[int]], n_videos: int,
    dataset: str, metrics: Sequence[str], n_boot: int = 2000, seed: int = 0,
    confidence: float = 0.95,
) -> tuple[dict[str, float], dict[str, tuple[float, float, int]]]:
    """``D = mean_u [metric(b_u) - metric(a_u)]`` per metric and its cluster-bootstrap
    percentile interval (videos resampled with replacement within each partition).

    Not the decision rule (:func:`paired_units_interval` is): with few videos this interval
    covers less than its nominal level. Kept for users who want the bootstrap distribution.

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


#: The level of every decision: "outside the noise" / "favours" when the (Holm-adjusted) p of
#: :func:`jackknife_t_rule` is below it, i.e. the 95 % interval excludes 0.
ALPHA = 0.05


def compare_pair(
    a_dir: str | Path,
    b_dir: str | Path,
    metrics: Sequence[str] | None = None,
    confidence: float = 1.0 - ALPHA,
) -> dict[str, Any]:
    """Compare run B against run A (see the module doc for what is computed).

    Returns:
        ``{"a", "b", "dataset", "pairing": {...}, "method": {...}, "metrics": {name:
        {"a_mean", "b_mean", "difference", "se", "df", "ci_low", "ci_high", "p_value",
        "p_holm", "outside_noise", "better"}}}``; ``difference`` is ``b_mean - a_mean``;
        ``p_holm`` equals ``p_value`` for one comparison (:func:`compare_runs` adjusts it over
        several); ``better`` names the run the rule favours (``"none"`` inside the noise).
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
    units, video_names, _ = _pair(a_units, b_units)
    n_videos = len(video_names)
    if n_videos < 2:
        raise CompareError(f"{a_dir} and {b_dir}: the test parts hold {n_videos} video; the "
                           "uncertainty over videos needs at least 2")
    rule = paired_units_interval(units, n_videos, dataset, metrics, confidence)
    table = {}
    for m in metrics:
        entry = rule[m]
        a_mean = float(_unit_mean(units, dataset, m, "a"))
        table[m] = {"a_mean": a_mean, "b_mean": a_mean + entry["difference"], **entry,
                    "higher_is_better": metric_direction(m) == "max"}
    _decide(table, 1.0 - confidence)
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
        "method": method_record(n_videos, confidence),
        "metrics": table,
    }


def method_record(n_videos: int, confidence: float = 1.0 - ALPHA) -> dict[str, str]:
    """The sentences that say how a comparison was computed and decided."""
    return {
        "statistic": "mean over (seed, partition) of metric(B) - metric(A), each metric "
                     "computed on the unit's whole test part",
        "ci": f"{confidence:.0%} interval D ± t(df={n_videos - 1}) × SE, SE the delete-one-"
              f"video jackknife over the {n_videos} test videos",
        "p_value": f"two-sided, from the same t = D / SE with {n_videos - 1} degrees of freedom "
                   "(p < 0.05 exactly when the interval excludes 0)",
        "decision": f"'favours' / 'outside the noise' only when p (Holm-adjusted over the "
                    f"models compared with one baseline) < {1.0 - confidence:g}",
    }


def _decide(table: dict[str, dict[str, Any]], alpha: float) -> None:
    """Fill ``outside_noise`` and ``better`` of each metric's entry from its ``p_holm`` (or
    ``p_value`` when not adjusted yet)."""
    for entry in table.values():
        entry.setdefault("p_holm", entry["p_value"])
        p = entry["p_holm"]
        # p < alpha implies the interval excludes 0; the second test guards rounding only
        outside = bool(np.isfinite(p) and p < alpha
                       and not entry["ci_low"] <= 0.0 <= entry["ci_high"])
        entry["outside_noise"] = outside
        higher = entry["higher_is_better"]
        entry["better"] = (("b" if (entry["difference"] > 0) == higher else "a")
                           if outside else "none")


def _unit_mean(units: list[PairedUnit], dataset: str, metric: str, side: str) -> float:
    values = [weighted_metrics(getattr(u, side), u.labels, None, dataset)[metric] for u in units]
    return float(np.mean(values))


def compare_runs(
    run_dirs: Sequence[str | Path],
    metrics: Sequence[str] | None = None,
    confidence: float = 1.0 - ALPHA,
) -> dict[str, Any]:
    """Compare every run in ``run_dirs[1:]`` against the baseline ``run_dirs[0]``.

    With several runs, each metric's p-values are Holm-adjusted over the comparisons
    (``p_holm``), and the decision uses the adjusted value.

    Returns:
        ``{"baseline": path, "comparisons": [compare_pair(baseline, other), ...]}``.

    Raises:
        CompareError: fewer than two runs, or runs that cannot be paired (what differs).
    """
    if len(run_dirs) < 2:
        raise CompareError("give at least two run folders: the baseline, then the others")
    baseline = Path(run_dirs[0])
    comparisons = [compare_pair(baseline, other, metrics, confidence) for other in run_dirs[1:]]
    for m in comparisons[0]["metrics"]:
        adjusted = holm_adjust([c["metrics"][m]["p_value"] for c in comparisons])
        for comparison, p in zip(comparisons, adjusted):
            comparison["metrics"][m]["p_holm"] = p
    for comparison in comparisons:
        _decide(comparison["metrics"], 1.0 - confidence)
        comparison["method"]["n_comparisons"] = len(comparisons)
    return {"baseline": str(baseline), "comparisons": comparisons}


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------

def comparison_cells(metric: str, entry: dict[str, Any]) -> list[str]:
    def fmt(value):
        return format_value(metric, value)

    return [fmt(entry["a_mean"]), fmt(entry["b_mean"]),
            ("+" if entry["difference"] >= 0 else "") + fmt(entry["difference"]),
            f"[{fmt(entry['ci_low'])}, {fmt(entry['ci_high'])}]",
            format_p(entry["p_value"]), format_p(entry["p_holm"]),
            {"a": "A", "b": "B", "none": "neither (noise)"}[entry["better"]]]


def format_p(value: float) -> str:
    """A p-value with three decimals (``< 0.001`` below that)."""
    if not np.isfinite(value):
        return "n/a"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


COLUMNS = ("metric", "A", "B", "B - A", "95 % CI", "p", "p (Holm)", "favours")


def comparison_title(comparison: dict[str, Any]) -> str:
    pairing = comparison["pairing"]
    return (f"A = {comparison['a_model']} ({comparison['a']})  vs  "
            f"B = {comparison['b_model']} ({comparison['b']}): {pairing['n_units']} paired "
            f"training runs, {pairing['n_clips']} test predictions, {pairing['n_videos']} videos")


def comparison_table(comparison: dict[str, Any]):
    """A rich table of one :func:`compare_pair` result."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(comparison_title(comparison)))
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "metric" else "right")
    for metric, entry in comparison["metrics"].items():
        table.add_row(metric + (" (%)" if is_percent(metric) else ""), *comparison_cells(metric, entry))
    return table


def method_notes(comparison: dict[str, Any]) -> list[str]:
    """How the numbers of a comparison were computed and decided, one sentence each."""
    method = comparison["method"]
    n = method.get("n_comparisons", 1)
    holm = (f"p (Holm): adjusted over the {n} comparisons with the baseline, per metric."
            if n > 1 else "p (Holm): one comparison, equal to p.")
    return ["B - A: " + method["statistic"] + ".", "95 % CI: " + method["ci"] + ".",
            "p: " + method["p_value"] + ".", holm, "Decision: " + method["decision"] + "."]


def comparison_markdown(result: dict[str, Any]) -> str:
    """``compare.md``: one table per comparison, then how the numbers were computed."""
    lines = []
    for comparison in result["comparisons"]:
        lines += [f"### {comparison_title(comparison)}", "",
                  "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        for metric, entry in comparison["metrics"].items():
            name = metric + (" (%)" if is_percent(metric) else "")
            lines.append("| " + " | ".join([name, *comparison_cells(metric, entry)]) + " |")
        lines.append("")
    lines += [note + "\n" for note in method_notes(result["comparisons"][0])]
    return "\n".join(lines)


def forest_plot(rows: Sequence[tuple[str, dict[str, dict[str, Any]]]], metrics: Sequence[str],
                path: str | Path | IO[bytes], title: str) -> str | Path | IO[bytes]:
    """Each model's difference to the baseline with its interval, one panel per metric.

    Args:
        rows: ``[(label, {metric: entry of compare_pair's "metrics"})]``, top to bottom.
        metrics: the panels, left to right.
        path: the PNG to write (matplotlib, Agg), a path or a binary file.
        title: the figure's title.

    A filled marker is a difference outside the noise (the decision rule), a hollow one inside
    it; the dashed line at 0 is the baseline.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from msakit.summary import is_percent

    columns = min(FOREST_COLUMNS, len(metrics))
    grid_rows = math.ceil(len(metrics) / columns)
    panel_height = 0.9 + 0.45 * len(rows)
    fig, axes = plt.subplots(grid_rows, columns, squeeze=False,
                             figsize=(3.4 * columns + 1.5, panel_height * grid_rows + 0.5))
    positions = np.arange(len(rows))[::-1]
    for index, ax in enumerate(axes.flat):
        if index >= len(metrics):
            ax.set_visible(False)
            continue
        metric = metrics[index]
        scale = 100.0 if is_percent(metric) else 1.0
        for y, (_, entries) in zip(positions, rows):
            entry = entries[metric]
            colour = "tab:blue" if entry["outside_noise"] else "tab:gray"
            ax.plot([scale * entry["ci_low"], scale * entry["ci_high"]], [y, y], color=colour,
                    linewidth=2)
            ax.plot([scale * entry["difference"]], [y], marker="o", markersize=7,
                    color=colour, markerfacecolor=colour if entry["outside_noise"] else "white")
        ax.axvline(0.0, color="black", linestyle="--", linewidth=1)
        better = "higher" if metric_direction(metric) == "max" else "lower"
        ax.set_xlabel(f"Δ {metric}" + (" (points)" if is_percent(metric) else "")
                      + f"\n{better} is better", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        if index % columns == 0:
            ax.set_yticks(positions, [label for label, _ in rows])
        else:
            ax.set_yticks(positions, [])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


def comparison_forest_plot(result: dict[str, Any],
                           path: str | Path | IO[bytes]) -> str | Path | IO[bytes]:
    """:func:`forest_plot` of a :func:`compare_runs` result (each B against the baseline)."""
    comparisons = result["comparisons"]
    metrics = list(comparisons[0]["metrics"])
    rows = [(f"{c['b_model']} ({Path(c['b']).name})", c["metrics"]) for c in comparisons]
    first = comparisons[0]
    title = (f"B − A, A = {first['a_model']} ({Path(first['a']).name}); "
             f"{CI_LEGEND.format(n=first['pairing']['n_videos'])}")
    return forest_plot(rows, metrics, path, title)


#: Panels per row of a forest plot (more metrics wrap onto further rows).
FOREST_COLUMNS = 4
#: The legend of every forest plot.
CI_LEGEND = ("95 % CI over {n} videos (jackknife t); filled = outside the noise "
             "(Holm p < 0.05), dashed = no difference")


def write_comparison(result: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path, Path]:
    """Write ``compare.json``, ``compare.md`` and the forest plot ``compare.png`` into
    ``out_dir`` (never over existing ones)."""
    json_path, md_path, png_path = runfolder.unused_paths(out_dir, COMPARISON_STEM,
                                                     (".json", ".md", ".png"))
    runfolder.write_json(json_path, result)
    md_path.write_text(comparison_markdown(result))
    comparison_forest_plot(result, png_path)
    return json_path, md_path, png_path
