"""``msakit suite list|show|run``: a paper's comparison table as one command."""

from __future__ import annotations

import click

from msakit.cli._options import DATA_PATH, MultiValueCommand, make_console


@click.group()
def suite():
    """Papers' comparison tables: run a table's models, print the paper's figures beside the
    measured ones (docs/suites.md).

    \b
    Examples:
      msakit suite list
      msakit suite show dmd
      msakit suite run mmsa --data mosi-demo --folds 3 --epochs 2
      msakit suite run mmsa --resume runs/suite-mmsa-mosi-20261207-020000
      msakit suite run mmsa --resume runs/suite-mmsa-mosi-20261207-020000 --rows cenet
      msakit leaderboard runs/suite-mmsa-mosi-20261207-020000
    """


@suite.command("list")
def list_suites():
    """The packaged suites: name, title, rows (available now / all)."""
    from rich.table import Table

    from msakit.experiments.suites import AVAILABLE, load_suite, suite_names
    from msakit.models import list_models

    registered = list_models()
    table = Table(title="msakit suites (msakit suite run NAME --data FILE)")
    for column in ("suite", "title", "datasets", "rows available / all"):
        table.add_column(column)
    for name in suite_names():
        s = load_suite(name)
        available = sum(r.status(registered) == AVAILABLE for r in s.rows)
        table.add_row(name, s.title, ", ".join(s.datasets), f"{available} / {len(s.rows)}")
    make_console().print(table)


@suite.command("show")
@click.argument("name")
def show(name):
    """The rows of suite NAME: label, model, status, presets and the paper's figures."""
    from rich.markup import escape
    from rich.table import Table

    from msakit.experiments.suites import load_suite
    from msakit.models import list_models

    s = load_suite(name)
    registered = list_models()
    console = make_console()
    table = Table(title=escape(f"suite {s.name}: {s.title}"), caption=escape(
        f"source: {s.source}" + (f"; {s.note}" if s.note else "")))
    for column in ("row", "model", "status", "code", "presets", *s.datasets):
        table.add_column(escape(column))
    for row in s.rows:
        figures = [", ".join(f"{m} {v:g}" for m, v in row.paper.get(d, {}).items()) or "–"
                   for d in s.datasets]
        presets = ", ".join(f"{d}: {p}" for d, p in row.presets.items()) or "–"
        cells = [row.label, row.model or "–", row.status(registered), row.code or "–", presets,
                 *figures]
        table.add_row(*(escape(c) for c in cells))
    console.print(table)


@suite.command("run", cls=MultiValueCommand, multi_value_options=("--seeds",))
@click.argument("name")
@click.option("--data", "data_path", type=DATA_PATH,
              help="Data as for msakit train (a file, a folder with label.csv, or mosi-demo).")
@click.option("--dataset", help="The suite's dataset whose figures to compare with (default: "
              "the first that matches the data, e.g. mosi or mosi-aligned).")
@click.option("--folds", type=int, help="Grouped (by video) K-fold cross-validation, every row.")
@click.option("--seeds", multiple=True, type=click.IntRange(0, 2**32 - 1),
              help="Seeds to run, e.g. --seeds 1 2 3.")
@click.option("--epochs", type=int, help="Epoch cap of every row (--set train.epochs=N).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one config value in every row, after its preset. Repeatable.")
@click.option("--output-dir", default="runs", show_default=True,
              type=click.Path(file_okay=False), help="Where the suite folder goes.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False),
              help="Continue a suite folder: finished rows are kept, unfinished or failed ones "
              "continue, the rest are trained; options that would change it are refused.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train this many (seed, fold) runs of a row at a time.")
@click.option("--rows", "row_ids", metavar="ID,ID...",
              help="Train only these rows (ids, comma-separated; msakit suite show NAME lists "
              "them). With --resume: add or rerun rows in that suite folder, the others kept.")
@click.option("--no-progress", is_flag=True, help="No progress bars (e.g. in logs).")
def run(name, data_path, dataset, folds, seeds, epochs, overrides, output_dir, resume_dir, jobs,
        row_ids, no_progress):
    """Run the models of suite NAME with their presets and print the paper's table beside the
    measured one (mean ± std, n); writes suite.json and suite.md into the suite folder.

    Rows whose model is not registered are reported as not run, with the reason. Where a preset
    names a language model that cannot be loaded here (no model hub), the packaged
    all-MiniLM-L6-v2 stands in, and the output says so. Where a preset's
    train.partial_accumulation=drop would leave a partition without any optimiser step (fewer
    training batches than train.grad_accumulation), the row runs with =step, and the output says
    so. A row that fails is recorded and the others run; the exit status is then 1.
    """
    from msakit.experiments.suites import load_suite, run_suite, suite_notes, suite_table

    console = make_console()
    s = load_suite(name)
    if resume_dir is None and not data_path:
        raise click.UsageError("give --data (or --resume SUITE_DIR)")
    suite_dir, record = run_suite(
        s, data_path, dataset=dataset, folds=folds, epochs=epochs,
        seeds=list(seeds) if seeds else None, overrides=list(overrides), output_dir=output_dir,
        resume_dir=resume_dir, progress=not no_progress, jobs=jobs, console=console,
        rows=[r.strip() for r in row_ids.split(",") if r.strip()] if row_ids else None)
    console.print(suite_table(record))
    for note in suite_notes(record):
        console.print(note, markup=False)
    console.print(f"written: {suite_dir / 'suite.md'}, {suite_dir / 'suite.json'}")
    failed = [e["label"] for e in record["rows"] if e.get("state") == "failed"]
    if failed:
        bug = any(e.get("kind", "").startswith("internal") for e in record["rows"]
                  if e.get("state") == "failed")
        err = click.ClickException(
            f"{len(failed)} row(s) failed ({', '.join(failed)}); the others are kept. "
            f"`msakit suite run {name} --resume {suite_dir}` continues with the same settings "
            "(after an interruption or a fixed cause outside the settings); a failure the "
            "settings cause needs a new suite run with other --set values"
            + (" (an internal error is a bug in msakit: rerun with msakit --debug and report "
               "it)" if bug else ""))
        err.exit_code = 2 if bug else 1
        raise err


def register(main: click.Group) -> None:
    main.add_command(suite)
