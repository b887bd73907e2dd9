"""``msakit compare`` (paired comparison of finished runs), ``msakit tune`` (Optuna search on
validation) and ``msakit report`` (a run as one HTML page)."""

from __future__ import annotations

from pathlib import Path

import click

from msakit.cli._options import (
    DATA_PATH,
    MultiValueCommand,
    make_console,
    shortcut_overrides,
)


def print_comparison(result: dict, console) -> None:
    from msakit.experiments.compare import comparison_table, method_notes

    for comparison in result["comparisons"]:
        console.print(comparison_table(comparison))
    console.print("\n".join(method_notes(result["comparisons"][0])), style="dim", markup=False)


def _metric_option(help_text: str):
    return click.option("--metric", "metrics", multiple=True, help=help_text)


def _output_dir_option(help_text: str):
    return click.option("--output-dir", default="runs", show_default=True,
                        type=click.Path(file_okay=False), help=help_text)


#: Shared by ``compare`` and ``leaderboard``: the run folders (for ``leaderboard``, those after
#: BASELINE).
_RUN_DIRS = click.argument("run_dirs", nargs=-1, required=True,
                           type=click.Path(exists=True, file_okay=False))


@click.command(cls=MultiValueCommand, multi_value_options=("--metric",))
@_RUN_DIRS
@_metric_option("Metrics to compare (default: all of the dataset's), e.g. --metric MAE Corr "
                "(after the run folders).")
@_output_dir_option("compare.json / .md / .png go into a new folder compare-<timestamp> here.")
def compare(run_dirs, metrics, output_dir):
    """Paired comparison of RUN_DIRS against the first one (the baseline).

    Predictions are paired by (seed, partition, clip id); for every metric: the difference of
    the runs' means, its 95 % CI and p from one rule (delete-one-video jackknife, t with
    videos - 1 degrees of freedom; p Holm-adjusted over several runs), "favours" only when the
    adjusted p < 0.05, and a forest plot. Runs on different data, partitions or clips are
    refused.

    \b
    Example:
      msakit compare runs/lf_dnn-mosi-20261130-010000 runs/misa-mosi-20261130-020000
    """
    from msakit import runfolder
    from msakit.experiments.compare import CompareError, compare_runs, write_comparison

    console = make_console()
    try:
        result = compare_runs(list(run_dirs), metrics=list(metrics) or None)
    except CompareError as err:
        raise click.ClickException(str(err)) from None
    print_comparison(result, console)
    out_dir = runfolder.new_run_dir(output_dir, "compare", Path(run_dirs[0]).name)
    written = write_comparison(result, out_dir)
    console.print("written: " + ", ".join(str(p) for p in written))


@click.command(cls=MultiValueCommand, multi_value_options=("--metric",))
@click.argument("baseline", type=click.Path(exists=True, file_okay=False))
@click.argument("run_dirs", nargs=-1, type=click.Path(exists=True, file_okay=False))
@_metric_option("Metrics to show (default: Non0_acc_2 Non0_F1_score MAE Corr), after the "
                "run folders.")
@_output_dir_option("leaderboard.json / .md / .png go into this folder.")
@click.option("--floor", "floor_row", help="With a suite folder: the row (id) to compare "
              "against (default: the suite's baseline row, else its first finished row).")
def leaderboard(baseline, run_dirs, metrics, output_dir, floor_row):
    """One table of BASELINE and RUN_DIRS: each model's mean ± std (n), its paired difference to
    BASELINE (95 % CI, p and Holm-adjusted p, as msakit compare), the majority-class rate of the
    test clips and the selected epochs; a forest plot of the differences. BASELINE may be a
    suite folder (msakit suite run) alone: its finished rows.

    \b
    Example:
      msakit leaderboard runs/text-floor runs/misa runs/sagenet --output-dir runs
      msakit leaderboard runs/suite-mmsa-mosi-20261207-020000 [--floor lf_dnn]
    """
    from msakit.experiments.suites import SUITE_JSON, leaderboard_runs, suite_run_notes

    run_notes = None
    if (Path(baseline) / SUITE_JSON).is_file() and not run_dirs:
        run_notes = suite_run_notes(baseline)
        baseline, run_dirs = leaderboard_runs(baseline, floor_row)
    elif floor_row:
        raise click.UsageError("--floor names a row of a suite folder; give the suite folder "
                               "alone")
    elif not run_dirs:
        raise click.UsageError("give the baseline run folder and at least one other run "
                               "folder (or one suite folder)")
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
                                  DEFAULT_METRICS, run_notes=run_notes)
    except CompareError as err:
        raise click.ClickException(str(err)) from None
    console.print(leaderboard_table(board))
    for note in leaderboard_notes(board):
        console.print(note, markup=False)
    written = write_leaderboard(board, output_dir)
    console.print("written: " + ", ".join(str(p) for p in written))


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
    try:
        extra = shortcut_overrides(overrides, {"train.epochs": ("--epochs", epochs)})
        user = yaml.safe_load(Path(config_file).read_text()) if config_file else {}
        summary = run_tune(model, data_path, trials, folds=folds, storage=storage,
                           study_name=study_name, jobs=jobs, timeout=timeout,
                           user_config=user or {}, overrides=extra, output_dir=output_dir,
                           seed=seed, progress=jobs == 1, config_file=config_file)
    except (ConfigError, DataError, KeyError, ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    study_dir = Path(summary["study_dir"])
    console.print((study_dir / "trials.md").read_text())
    counts = ", ".join(f"{k} {v}" for k, v in summary["trials"].items() if v)
    console.print(f"study {summary['study']} ({summary['storage']}): {counts}")
    if "best" in summary:
        console.print(f"best config: {summary['best']['config']}  "
                      f"(msakit train {model} --config {summary['best']['config']})")
    if summary.get("figures"):
        console.print("figures: " + ", ".join(str(study_dir / f) for f in summary["figures"]))


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
