"""Error rates of the decision rule of :mod:`msakit.experiments.compare`, by simulation.

Data shaped like the main job: the clips of ``mosi-demo`` (their real labels and per-video
clip counts) in 3 folds grouped by video, as ``msakit train --folds 3`` makes them. Two models'
test predictions are drawn from a latent Gaussian model with per-video random effects, so the
paired difference of a video's clips is correlated, as it is for real speakers:

    z_{M,i} = c_v + m_{M,v} + s_i + e_{M,i}      (clip i of video v, model M in {A, B})

with ``c_v`` the video's difficulty shared by both models, ``m_{M,v}`` the model's own video
effect (what makes the *paired difference* vary by video), ``s_i`` the clip's difficulty shared
by both models and ``e_{M,i}`` independent noise, all centred normal with the standard
deviations of :class:`LatentModel`. With ``sigma^2`` the sum of the four variances:

* **MAE** (continuous): prediction ``y_i + lambda_M z_{M,i}``, so the error is
  ``|lambda_M z_{M,i}|`` and the expected MAE is ``lambda_M sigma sqrt(2 / pi)``; the true
  difference is ``(lambda_B - lambda_A) sigma sqrt(2 / pi)``.
* **Non0 Acc-2** (binary): the prediction has the label's sign when ``mu_M + z_{M,i} > 0``
  (else the other sign), so the expected accuracy is ``Phi(mu_M / sigma)``; the true
  difference is ``Phi(mu_B / sigma) - Phi(mu_A / sigma)``.

Under the null (``lambda_B = lambda_A``, ``mu_B = mu_A``) a correct rule declares "outside the
noise" in at most 5 % of the replicates; with a true difference its interval covers it in about
95 %. Every replicate goes through the same code as ``msakit compare``
(:func:`~msakit.experiments.compare.leave_one_video_out` and
:func:`~msakit.experiments.compare.jackknife_t_rule`), vectorised over replicates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from msakit.experiments.compare import PairedUnit, jackknife_t_rule, leave_one_video_out


@dataclass(frozen=True)
class LatentModel:
    """Standard deviations of the latent terms and the two models' parameters."""

    video_shared: float = 0.6     # c_v: a video hard for both models
    video_model: float = 0.35     # m_{M,v}: a video hard for one model only
    clip_shared: float = 0.6      # s_i
    clip_model: float = 0.5       # e_{M,i}
    mae_scale: tuple[float, float] = (1.0, 1.0)          # lambda_A, lambda_B
    acc_location: tuple[float, float] = (0.6, 0.6)       # mu_A, mu_B

    @property
    def sigma(self) -> float:
        return math.sqrt(self.video_shared ** 2 + self.video_model ** 2 + self.clip_shared ** 2
                         + self.clip_model ** 2)

    def true_difference(self, metric: str) -> float:
        if metric == "MAE":
            return (self.mae_scale[1] - self.mae_scale[0]) * self.sigma * math.sqrt(2 / math.pi)
        a, b = self.acc_location
        return float(stats.norm.cdf(b / self.sigma) - stats.norm.cdf(a / self.sigma))


def demo_videos(n_videos: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Labels and video index of ``n_videos`` videos of ``mosi-demo``: its 10 real videos in
    their order (the first ``n_videos``; beyond 10 they repeat as new videos, same clips)."""
    from msakit.data.packaged import load_demo_arrays

    arrays = load_demo_arrays("mosi-demo")
    names = np.array([str(s).rsplit("[", 1)[0] for s in arrays["segment_ids"]])
    _, first, index = np.unique(names, return_index=True, return_inverse=True)
    order = np.argsort(first)                      # videos in file order
    labels, videos = [], []
    for k in range(n_videos):
        members = np.flatnonzero(index == order[k % len(order)])
        labels.append(arrays["labels"][members].astype(np.float64))
        videos.append(np.full(len(members), k))
    return np.concatenate(labels), np.concatenate(videos)


def fold_units(labels: np.ndarray, videos: np.ndarray, folds: int = 3,
               seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """The test parts of ``folds`` grouped folds (scikit-learn's ``GroupKFold``, shuffled, as
    :func:`msakit.data.folds.grouped_folds`): ``[(clip positions, video index), ...]``."""
    from sklearn.model_selection import GroupKFold

    splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [(test, videos[test]) for _, test in splitter.split(labels, groups=videos)]


def simulate(metric: str, model: LatentModel, n_videos: int = 10, replicates: int = 2000,
             folds: int = 3, seed: int = 0, confidence: float = 0.95,
             rule: str = "jackknife_t", n_boot: int = 1000) -> dict[str, float]:
    """Run the rule on ``replicates`` simulated pairs of runs.

    ``rule="jackknife_t"`` is msakit's rule; ``"percentile_bootstrap"`` is the rule msakit used
    before (a percentile interval of a cluster bootstrap stratified by fold, ``n_boot``
    replicates; "outside the noise" when it excludes 0), for comparison.

    Returns:
        ``{"metric", "n_videos", "n_clips", "replicates", "true_difference", "declared"
        (share of replicates whose interval excludes 0), "covered" (share whose interval
        contains the true difference), "mc_se_declared", "mc_se_covered" (Monte Carlo
        standard errors), "mean_difference", "mean_half_width"}``.
    """
    if metric not in ("MAE", "Non0_acc_2"):
        raise ValueError(f"simulate: metric must be MAE or Non0_acc_2, got {metric!r}")
    rng = np.random.default_rng(seed)
    labels, videos = demo_videos(n_videos)
    n = len(labels)
    shape = (replicates, n)
    shared = (rng.normal(0, model.video_shared, (replicates, n_videos))[:, videos]
              + rng.normal(0, model.clip_shared, shape))
    latent = [shared + rng.normal(0, model.video_model, (replicates, n_videos))[:, videos]
              + rng.normal(0, model.clip_model, shape) for _ in range(2)]
    if metric == "MAE":
        predictions = [labels + scale * z for scale, z in zip(model.mae_scale, latent)]
    else:
        sign = np.where(labels > 0, 1.0, -1.0)
        predictions = [np.where(loc + z > 0, sign, -sign)
                       for loc, z in zip(model.acc_location, latent)]
    units = [PairedUnit(labels[rows], predictions[0][:, rows], predictions[1][:, rows],
                        unit_videos, f"fold{k}")
             for k, (rows, unit_videos) in enumerate(fold_units(labels, videos, folds, seed))]
    if rule == "jackknife_t":
        observed, deleted = leave_one_video_out(units, n_videos, "mosi", [metric])
        interval = jackknife_t_rule(observed[metric], deleted[metric], confidence)
        observed = observed[metric]
    elif rule == "percentile_bootstrap":
        observed, interval = _percentile_bootstrap(units, metric, n_boot, confidence, rng)
    else:
        raise ValueError(f"simulate: rule must be jackknife_t or percentile_bootstrap, got {rule!r}")
    truth = model.true_difference(metric)
    declared = (interval["ci_low"] > 0) | (interval["ci_high"] < 0)
    covered = (interval["ci_low"] <= truth) & (truth <= interval["ci_high"])
    return {
        "metric": metric, "n_videos": n_videos, "n_clips": n, "replicates": replicates,
        "true_difference": truth,
        "declared": float(declared.mean()), "covered": float(covered.mean()),
        "mc_se_declared": float(np.sqrt(declared.mean() * (1 - declared.mean()) / replicates)),
        "mc_se_covered": float(np.sqrt(covered.mean() * (1 - covered.mean()) / replicates)),
        "mean_difference": float(np.mean(observed)),
        "mean_half_width": float(np.mean(interval["ci_high"] - interval["ci_low"]) / 2),
    }


def _percentile_bootstrap(units: list[PairedUnit], metric: str, n_boot: int, confidence: float,
                          rng: np.random.Generator, chunk: int = 25):
    """The former rule, batched: videos drawn with replacement within each fold's test part."""
    from msakit.metrics import weighted_metrics

    counts = []
    for unit in units:
        members = np.unique(unit.video)
        draws = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), n_boot)
        counts.append(draws[:, np.searchsorted(members, unit.video)].astype(np.float64))
    observed = sum(weighted_metrics(u.b, u.labels, None, "mosi", [metric])[metric]
                   - weighted_metrics(u.a, u.labels, None, "mosi", [metric])[metric]
                   for u in units) / len(units)
    alpha = (1 - confidence) / 2
    low, high = [], []
    for start in range(0, len(observed), chunk):
        rows = slice(start, start + chunk)
        boot = sum(weighted_metrics(u.b[rows, None, :], u.labels, w, "mosi", [metric])[metric]
                   - weighted_metrics(u.a[rows, None, :], u.labels, w, "mosi", [metric])[metric]
                   for u, w in zip(units, counts)) / len(units)
        low.append(np.nanquantile(boot, alpha, axis=-1))
        high.append(np.nanquantile(boot, 1 - alpha, axis=-1))
    return observed, {"ci_low": np.concatenate(low), "ci_high": np.concatenate(high)}


#: The scenarios of ``docs/experiments.md``: no difference, and a true difference of about
#: -0.10 MAE / +7 points Non0 Acc-2.
NULL = LatentModel()
ALTERNATIVE = LatentModel(mae_scale=(1.0, 0.9), acc_location=(0.6, 0.85))
