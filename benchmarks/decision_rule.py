"""Error rates of ``msakit compare``'s decision rule, by simulation (docs/experiments.md).

Data shaped like the main job (the real labels and per-video clip counts of ``mosi-demo``,
3 folds grouped by video), predictions from the latent model of
:mod:`msakit.experiments.simulation`. For 5, 10 and 20 videos and for MAE and Non0 Acc-2 it
prints how often "outside the noise" is declared with no true difference (should be <= 5 %) and
how often the 95 % interval covers a true difference (should be about 95 %), with Monte Carlo
standard errors; ``--compare-bootstrap`` also runs the former rule (percentile cluster
bootstrap) on the same data.

    python benchmarks/decision_rule.py [--replicates 2000] [--compare-bootstrap]
"""

from __future__ import annotations

import argparse
import time

from msakit.experiments.simulation import ALTERNATIVE, NULL, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--compare-bootstrap", action="store_true")
    parser.add_argument("--bootstrap-replicates", type=int, default=1000)
    args = parser.parse_args()
    rules = ["jackknife_t"] + (["percentile_bootstrap"] if args.compare_bootstrap else [])
    print("| rule | videos (clips) | metric | false 'outside the noise' (null) | "
          "coverage of the true Δ | true Δ | mean CI half-width | power |")
    print("|---|---|---|---|---|---|---|---|")
    for rule in rules:
        for n_videos in (5, 10, 20):
            for metric in ("MAE", "Non0_acc_2"):
                start = time.perf_counter()
                null = simulate(metric, NULL, n_videos, args.replicates, rule=rule,
                                n_boot=args.bootstrap_replicates)
                alt = simulate(metric, ALTERNATIVE, n_videos, args.replicates, rule=rule,
                               n_boot=args.bootstrap_replicates, seed=1)
                scale = 100.0 if metric != "MAE" else 1.0
                print(f"| {rule} | {n_videos} ({null['n_clips']}) | {metric} | "
                      f"{100 * null['declared']:.1f} % ± {100 * null['mc_se_declared']:.1f} | "
                      f"{100 * alt['covered']:.1f} % ± {100 * alt['mc_se_covered']:.1f} | "
                      f"{scale * alt['true_difference']:+.3g} | "
                      f"{scale * alt['mean_half_width']:.3g} | {100 * alt['declared']:.0f} % |",
                      f"<!-- {time.perf_counter() - start:.1f} s -->", flush=True)
    print(f"\n{args.replicates} replicates per cell; ± one Monte Carlo standard error; "
          "Non0 Acc-2 in points.")


if __name__ == "__main__":
    main()
