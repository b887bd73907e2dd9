"""``msakit data ...``: look at dataset files."""

from __future__ import annotations

import json

import click

from msakit.cli._options import DATA_PATH


@click.group("data")
def data() -> None:
    """Inspect dataset files (MMSA pickles, CMU-SDK pickles, label.csv folders)."""


@data.command("inspect")
@click.argument("path", type=DATA_PATH)
@click.option("--format", "format_", default="auto", show_default=True,
              type=click.Choice(["auto", "mmsa", "cmu_sdk", "label_csv"]))
@click.option("--dataset", default="auto", show_default=True,
              type=click.Choice(["auto", "mosi", "mosei", "sims", "simsv2", "custom"]))
@click.option("--nonfinite", default="replace", show_default=True,
              type=click.Choice(["replace", "error"]),
              help="NaN/inf in features: replace by 0 and report, or refuse the file")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON")
def inspect_command(path: str, format_: str, dataset: str, nonfinite: str, as_json: bool) -> None:
    """Splits, counts, feature dims, sequence lengths, label statistics and clips shared
    between splits (leakage) of PATH."""
    from msakit.data.dataset import DataError  # torch: imported by the command, not --help
    from msakit.data.inspect import render_summary, summarize_dataset
    from msakit.data.readers import load_dataset

    try:
        loaded = load_dataset(path, format=format_, dataset=dataset, nonfinite=nonfinite,
                              allow_overlap=True)  # reported below, not refused
    except DataError as err:
        raise click.ClickException(str(err)) from err
    summary = summarize_dataset(loaded)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        render_summary(summary)


def register(main: click.Group) -> None:
    main.add_command(data)
