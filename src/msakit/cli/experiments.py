"""``msakit compare`` (paired comparison of finished runs), ``msakit tune`` (Optuna search on
validation) and ``msakit report`` (a run as one HTML page)."""

from __future__ import annotations

from pathlib import Path

import click

from msakit.cli._options import DATA_PATH, MultiValueCommand, make_console


def print_comparison(result: dict, console) -> None:
    from msakit.experiments.compare import comparison_table

    for comparison in result["comparisons"]:
        console.print(comparison_table(comparison))
    method = result["comparisons"][0]["method"]
    console.print(f"B - A: {method['statistic']}.\n95 % CI: {method['ci']}.\n"
                  f"p: {method['p_value']}.", style="dim")


def _metric_option(help_text: str):
    return click.option("--metric", "metrics", multiple=True, help=help_text)


def _n_boot_option(help_text: str):
    return click.option("--n-boot", default=2000, show_default=True, type=click.IntRange(100),
                        help=help_text)


def _output_dir_option(help_text: str):
    return click.option("--output-dir", default="runs", show_default=True,
                        type=click.Path(file_okay=False), help=help_text)


#: Shared by ``compare`` and ``leaderboard``: the run folders (for ``leaderboard``, those after
#: BASELINE) and the seed of the bootstrap / permutation resampling.
_RUN_DIRS = click.argument("run_dirs", nargs=-1, required=True,
                           type=click.Path(exists=True, file_okay=False))
_RESAMPLING_SEED = click.option("--seed", default=0, show_default=True,
                                help="Seed of the resampling.")


@click.command(cls=MultiValueCommand, multi_value_options=("--metric",))
@_RUN_DIRS
@_metric_option("Metrics to compare (default: all of the dataset's), e.g. --metric MAE Corr "
                "(after the run folders).")
@_n_boot_option("Cluster-bootstrap replicates.")
@click.option("--n-permutations", default=10_000, show_default=True, type=click.IntRange(100),
              help="Random sign-flip patterns when there are too many videos to enumerate all.")
@_RESAMPLING_SEED
@_output_dir_option("compare.json / compare.md go into a new folder compare-<timestamp> here.")
def compare(run_dirs, metrics, n_boot, n_permutations, seed, output_dir):
    """Paired comparison of RUN_DIRS against the first one (the baseline).

    Predictions are paired by (seed, partition, clip id); for every metric: the difference of
    the runs' means, a 95 % CI from a cluster bootstrap over videos, and a paired permutation
    p-value (whole videos swapped). Runs on different data, partitions or clips are refused.

    \b
    Example:
      msakit compare runs/lf_dnn-mosi-20261130-010000 runs/misa-mosi-20261130-020000
    """
    from msakit import runfolder
    from msakit.experiments.compare import CompareError, compare_runs, write_comparison

    console = make_console()
    try:
        result = compare_runs(list(run_dirs), metrics=list(metrics) or None, n_boot=n_boot,
                              n_permutations=n_permutations, seed=seed)
    except CompareError as err:
        raise click.ClickException(str(err)) from None
    print_comparison(result, console)
    out_dir = runfolder.new_run_dir(output_dir, "compare", Path(run_dirs[0]).name)
    json_path, md_path = write_comparison(result, out_dir)
    console.print(f"written: {json_path}, {md_path}")


@click.command(cls=MultiValueCommand, multi_value_options=("--metric",))
@click.argument("baseline", type=click.Path(exists=True, file_okay=False))
@_RUN_DIRS
@_metric_option("Metrics to show (default: Non0_acc_2 Non0_F1_score MAE Corr), after the "
                "run folders.")
@_n_boot_option("Cluster-bootstrap replicates of each difference's CI.")
@_RESAMPLING_SEED
@_output_dir_option("leaderboard.json / leaderboard.md go into this folder.")
def leaderboard(baseline, run_dirs, metrics, n_boot, seed, output_dir):
    """One table of BASELINE and RUN_DIRS: each model's mean ± std (n), its paired difference to
    BASELINE (95 % CI, p, as msakit compare), the majority-class rate of the test clips and the
    selected epochs.

    \b
    Example:
      msakit leaderboard runs/text-floor runs/misa runs/sagenet --output-dir runs
    """
    from msakit.experiments.compare import CompareError
    from msakit.experiments.leaderboard import (
        DEFAULT_METRICS,
        build_leaderboard,
        leaderboard_notes,
        leaderboard_table,
        write_leaderboard,
    )

    console = make_console()
    try:
        board = build_leaderboard(baseline, list(run_dirs), metrics=list(metrics) or
                                  DEFAULT_METRICS, n_boot=n_boot, seed=seed)
    except CompareError as err:
        raise click.ClickException(str(err)) from None
    console.print(leaderboard_table(board))
    for note in leaderboard_notes(board):
        console.print(note, markup=False)
    json_path, md_path = write_leaderboard(board, output_dir)
    console.print(f"written: {json_path}, {md_path}")


@click.command()
@click.argument("model")
@click.option("--data", "data_path", required=True, type=DATA_PATH,
              help="Data file or folder, or mosi-demo, as for msakit train.")
@click.option("--folds", type=int, help="Grouped K-fold CV: the objective is the mean over folds.")
@click.option("--trials", required=True, type=click.IntRange(1),
              help="Finished (complete or pruned) trials the study should reach.")
@click.option("--storage", help="SQLAlchemy URL of the study database, e.g. "
              "postgresql://user:pw@host/db (default: SQLite file study.db in the study folder).")
@click.option("--study", "study_name", help="Study name (default: <model>-<data>-<K>folds).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1),
              help="Local worker processes sharing the study.")
@click.option("--timeout", type=float, help="Stop starting new trials after this many seconds.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML over the model's defaults; its search: section replaces/adds ranges.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Fixed setting for every trial, e.g. --set train.epochs=10. Repeatable.")
@click.option("--epochs", type=int, help="Shortcut for --set train.epochs=N.")
@click.option("--seed", default=0, show_default=True, help="Seed of the TPE sampler.")
@click.option("--output-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
              help="The study folder tune-<study> goes here.")
def tune(model, data_path, folds, trials, storage, study_name, jobs, timeout, config_file,
         overrides, epochs, seed, output_dir):
    """Search MODEL's hyper-parameters on validation (Optuna TPE, median pruning).

    Never evaluates the test split. Rerun the same command to continue a study. Writes
    best_config.yaml (for msakit train --config), trials.csv/.md and importance into
    <output-dir>/tune-<study>/.

    \b
    Example:
      msakit tune sagenet --data ../shared/data/mosi/word_aligned_valid.pkl --folds 5 \\
          --trials 20 --epochs 8 --set train.num_threads=1
    """
    import yaml

    from msakit.config import ConfigError
    from msakit.data import DataError
    from msakit.experiments.tune import tune as run_tune

    console = make_console()
    extra = list(overrides) + ([f"train.epochs={epochs}"] if epochs else [])
    try:
        user = yaml.safe_load(Path(config_file).read_text()) if config_file else {}
        summary = run_tune(model, data_path, trials, folds=folds, storage=storage,
                           study_name=study_name, jobs=jobs, timeout=timeout,
                           user_config=user or {}, overrides=extra, output_dir=output_dir,
                           seed=seed, progress=jobs == 1)
    except (ConfigError, DataError, KeyError, ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    study_dir = Path(summary["study_dir"])
    console.print((study_dir / "trials.md").read_text())
    counts = ", ".join(f"{k} {v}" for k, v in summary["trials"].items() if v)
    console.print(f"study {summary['study']} ({summary['storage']}): {counts}")
    if "best" in summary:
        console.print(f"best config: {summary['best']['config']}  "
                      f"(msakit train {model} --config {summary['best']['config']})")


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Where to write the HTML (default: RUN_DIR/report.html).")
def report(run_dir, output):
    """Write RUN_DIR/report.html: curves, predictions, confusion matrix, model artifacts,
    provenance; one self-contained file (images embedded) that opens offline."""
    from msakit.experiments.report import build_report

    try:
        path = build_report(run_dir, output)
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    make_console().print(f"written: {path}")


def register(main: click.Group) -> None:
    main.add_command(compare)
    main.add_command(leaderboard)
    main.add_command(tune)
    main.add_command(report)
