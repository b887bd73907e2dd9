"""``msakit compare``: paired comparison of finished runs."""

from __future__ import annotations

from pathlib import Path

import click

from msakit.cli._options import MultiValueCommand
from msakit.cli.train import make_console


def print_comparison(result: dict, console) -> None:
    from msakit.experiments.compare import comparison_table

    for comparison in result["comparisons"]:
        console.print(comparison_table(comparison))
    method = result["comparisons"][0]["method"]
    console.print(f"B - A: {method['statistic']}.\n95 % CI: {method['ci']}.\n"
                  f"p: {method['p_value']}.", style="dim")


@click.command(cls=MultiValueCommand, multi_value_options=("--metric",))
@click.argument("run_dirs", nargs=-1, required=True,
                type=click.Path(exists=True, file_okay=False))
@click.option("--metric", "metrics", multiple=True,
              help="Metrics to compare (default: all of the dataset's), e.g. --metric MAE Corr "
              "(after the run folders).")
@click.option("--n-boot", default=2000, show_default=True, type=click.IntRange(100),
              help="Cluster-bootstrap replicates.")
@click.option("--n-permutations", default=10_000, show_default=True, type=click.IntRange(100),
              help="Random sign-flip patterns when there are too many videos to enumerate all.")
@click.option("--seed", default=0, show_default=True, help="Seed of the resampling.")
@click.option("--output-dir", default="runs", show_default=True,
              type=click.Path(file_okay=False),
              help="compare.json / compare.md go into a new folder compare-<timestamp> here.")
def compare(run_dirs, metrics, n_boot, n_permutations, seed, output_dir):
    """Paired comparison of RUN_DIRS against the first one (the baseline).

    Predictions are paired by (seed, partition, clip id); for every metric: the difference of
    the runs' means, a 95 % CI from a cluster bootstrap over videos, and a paired permutation
    p-value (whole videos swapped). Runs on different data, partitions or clips are refused.

    \b
    Example:
      msakit compare runs/lf_dnn-mosi-20261130-010000 runs/misa-mosi-20261130-020000
    """
    from msakit.experiments.compare import CompareError, compare_runs, write_comparison
    from msakit.training import runs

    console = make_console()
    try:
        result = compare_runs(list(run_dirs), metrics=list(metrics) or None, n_boot=n_boot,
                              n_permutations=n_permutations, seed=seed)
    except CompareError as err:
        raise click.ClickException(str(err)) from None
    print_comparison(result, console)
    out_dir = runs.new_run_dir(output_dir, "compare", Path(run_dirs[0]).name)
    json_path, md_path = write_comparison(result, out_dir)
    console.print(f"written: {json_path}, {md_path}")


def register(main: click.Group) -> None:
    main.add_command(compare)
