"""``msakit train``, ``msakit evaluate`` and ``msakit models``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from msakit import runfolder
from msakit.cli._options import DATA_PATH, MultiValueCommand, make_console, shortcut_overrides


def _fail(message: str) -> None:
    raise click.ClickException(message)


@click.command(cls=MultiValueCommand, multi_value_options=("--seeds",))
@click.argument("model")
@click.option("--data", "data_path", type=DATA_PATH,
              help="MMSA pickle, CMU-SDK word-aligned pickle, a folder with label.csv, or "
              "mosi-demo (229 MOSI clips shipped with msakit).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML file with model/data/train/run sections, applied over the defaults.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one config value (YAML syntax), e.g. --set train.lr=1e-4. Repeatable.")
@click.option("--preset", help="The paper's settings for a dataset, e.g. --preset mosi "
              "(msakit models --presets lists them); --config and --set apply on top.")
@click.option("--folds", type=int, help="Grouped (by video) K-fold cross-validation.")
@click.option("--seeds", multiple=True, type=click.IntRange(0, 2**32 - 1),
              help="Seeds to run, e.g. --seeds 1 2 3.")
@click.option("--epochs", type=int, help="Shortcut for --set train.epochs=N.")
@click.option("--output-dir", type=click.Path(file_okay=False), help="Where run folders go.")
@click.option("--resume", "resume_dir", type=click.Path(exists=True, file_okay=False),
              help="Continue an interrupted run folder exactly as it was started; options that "
              "would change it are refused.")
@click.option("--no-progress", is_flag=True, help="No progress bars (e.g. in logs).")
@click.option("--baseline", "baseline_dir", type=click.Path(exists=True, file_okay=False),
              help="After training, compare against this finished run (as `msakit compare "
              "BASELINE NEW`); writes compare.json/.md into the new run folder.")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train this many (seed, fold) runs at a time, each in its own process (one "
              "GPU each where several are visible).")
def train(model, data_path, config_file, overrides, preset, folds, seeds, epochs, output_dir,
          resume_dir, no_progress, baseline_dir, jobs):
    """Train MODEL, select on validation, test once; prints the results table.

    \b
    Examples:
      msakit train misa --data ../shared/data/mosi/word_aligned_valid.pkl --folds 5 --seeds 1 2 3
      msakit train lf_dnn --data ../shared/data/mosi --set model.modalities=[text]
      msakit train misa --preset mosi --data aligned_50.pkl --set model.language_model=./bert
      msakit train misa --resume runs/misa-mosi-20261125-101500
      msakit train sagenet --data ../shared/data/mosi/word_aligned_valid.pkl --folds 5 --jobs 2
    """
    from msakit.config import build_config, load_yaml_file
    from msakit.training import distributed, run_experiment
    from msakit.training.experiment import JobsFailed, check_resume_request
    from msakit.training.results import results_table

    console = make_console()
    try:
        base = load_yaml_file(config_file)
        extra = shortcut_overrides(overrides, {"data.folds": ("--folds", folds),
                                               "train.epochs": ("--epochs", epochs)})
        if data_path:
            # a packaged name (mosi-demo) is not a path: only real paths are made absolute
            resolved = Path(data_path).resolve() if Path(data_path).exists() else data_path
            extra.append(f"data.path={json.dumps(str(resolved))}")
        if output_dir:
            extra.append(f"run.output_dir={json.dumps(str(output_dir))}")
        if resume_dir:
            check_resume_request(resume_dir, model, extra, base, list(seeds) if seeds else None)
            config = None
        else:
            config = build_config(model, extra, base=base, preset=preset)
        run_dir, summary = run_experiment(
            config, seeds=list(seeds) if seeds else None, resume_dir=resume_dir,
            progress=not no_progress, console=console, jobs=jobs,
        )
    except JobsFailed as err:  # user errors (msakit.errors and the like) are the CLI group's
        _fail(str(err))
    finally:
        is_main = distributed.current().is_main
        distributed.shutdown()  # under torchrun: leave the process group
    if not is_main:  # process 0 prints the results
        return
    results = runfolder.read_metrics(run_dir)["runs"]
    console.print(results_table(f"{model}: test metrics ({run_dir})", results, summary))
    _print_paper_row(console, run_dir, summary)
    console.print(f"results: {runfolder.results_markdown_path(run_dir)}")
    console.print(f"run folder: {run_dir} "
                  f"({runfolder.human_size(runfolder.folder_size(run_dir))})")
    if baseline_dir:
        from msakit.cli.experiments import print_comparison
        from msakit.experiments.compare import CompareError, compare_runs, write_comparison

        try:
            result = compare_runs([baseline_dir, run_dir])
        except CompareError as err:
            _fail(f"training finished ({run_dir}), but the comparison is refused: {err}")
        print_comparison(result, console)
        _, md_path, png_path = write_comparison(result, run_dir)
        console.print(f"comparison: {md_path}, forest plot {png_path.name}")


def _print_paper_row(console: Console, run_dir: Path, summary: dict) -> None:
    """With a preset, the paper's reported row beside this run's mean ± std."""
    from msakit.presets import load_preset
    from msakit.training.results import paper_table

    config = runfolder.load_config(run_dir)
    if not config.run.preset:
        return
    preset = load_preset(config.model.name, config.run.preset)
    if preset.paper is not None:
        console.print(paper_table(preset, summary, config.model.language_model))


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--data", "data_path", type=DATA_PATH,
              help="Score on this file's split instead of each run's own test partition.")
@click.option("--split", default="test", show_default=True, help="Split of --data to score.")
@click.option("--robustness", is_flag=True, help="Score each checkpoint on its test part under "
              "test-time perturbations (modalities removed, feature noise, time-step masking, "
              "word dropout); writes robustness.json/.md/.csv and a plot per metric.")
@click.option("--robustness-seed", default=0, show_default=True, type=click.IntRange(0),
              help="Seed of the perturbations (the same clips get the same ones in any run).")
def evaluate(run_dir, data_path, split, robustness, robustness_seed):
    """Re-evaluate the trained checkpoints of RUN_DIR; writes RUN_DIR/evaluation.json (or,
    with --data, evaluation-<file>-<split>.json)."""
    from msakit.training import evaluate_run
    from msakit.training.results import artifacts_table, results_table

    console = make_console()
    if robustness:
        if data_path:
            _fail("--robustness scores each checkpoint's own test part; it takes no --data")
        _print_robustness(console, run_dir, robustness_seed)
        return
    report = evaluate_run(run_dir, data_path=data_path, split=split)
    console.print(results_table(f"evaluation of {run_dir} on {report['data']} ({split})",
                                report["runs"], report["summary"]))
    if report.get("artifacts_summary"):
        console.print(artifacts_table("model artifacts (test split), mean ± std over runs",
                                      report["artifacts_summary"]))
    console.print(f"written: {Path(run_dir) / runfolder.evaluation_file_name(data_path, split)}")


def _print_robustness(console: Console, run_dir: str, seed: int) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from msakit.robustness import (
        TABLE_METRICS,
        condition_label,
        evaluate_robustness,
        format_cell,
        metric_header,
    )

    with Progress(TextColumn("scoring under perturbations"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.description}"), console=console,
                  transient=True) as bar:
        task = bar.add_task("", total=None)

        def advance(done: int, total: int, what: str) -> None:
            bar.update(task, completed=done, total=total, description=what)

        report = evaluate_robustness(run_dir, seed=seed, progress=advance)
    present = report["conditions"][0]["metrics"]
    metrics = [m for m in TABLE_METRICS if m in present]
    table = Table(title=f"robustness of {report['model']} ({run_dir}): mean ± std over "
                  f"{report['n_units']} checkpoints; Δ to clean [95 % CI]")
    table.add_column("condition")
    for m in metrics:
        table.add_column(metric_header(m), justify="right")
    for row in report["conditions"]:
        cells = [format_cell(row["metrics"][m], row["family"], "\nΔ {}", metric=m)
                 for m in metrics]
        table.add_row(condition_label(row), *cells)
    console.print(table)
    console.print(f"written: {Path(run_dir) / 'robustness.md'} (.json, .csv, "
                  "robustness-<metric>.png)")


@click.command()
@click.option("--presets", "show_presets", is_flag=True,
              help="List the presets (papers' settings) instead: model, dataset, source, numbers.")
@click.option("--markdown", is_flag=True, help="With --presets: print a markdown table.")
@click.option("--no-params", is_flag=True, help="Skip building models to count parameters.")
@click.option("--audio-dim", default=74, show_default=True, help="Audio feature size for counts.")
@click.option("--vision-dim", default=47, show_default=True, help="Vision feature size for counts.")
def models(show_presets, markdown, no_params, audio_dim, vision_dim):
    """List registered models: name, paper, parameters at the default config."""
    if show_presets:
        _list_presets(markdown)
        return
    import torch

    from msakit.config import build_config
    from msakit.models import FeatureDims, create_model, get_model_class, list_models

    console = make_console()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    table = Table(title=f"msakit models (parameters for audio {audio_dim}-d, vision {vision_dim}-d)")
    for column in ("name", "paper", "parameters", "trainable"):
        table.add_column(column, justify="right" if column in ("parameters", "trainable") else "left")
    for name in list_models():
        cls = get_model_class(name)
        total = trainable = "-"
        if not no_params:
            torch.manual_seed(0)
            model = create_model(build_config(name).model, FeatureDims(audio_dim, vision_dim))
            counts = model.parameter_counts()
            total, trainable = f"{counts['total']:,}", f"{counts['trainable']:,}"
        table.add_row(name, cls.paper, total, trainable)
    console.print(table)


def _list_presets(markdown: bool) -> None:
    from msakit.presets import list_presets, presets_markdown

    presets = list_presets()
    if markdown:
        click.echo(presets_markdown(presets), nl=False)
        return
    table = Table(title="msakit presets (msakit train MODEL --preset NAME)")
    for column in ("model", "preset", "language model", "description", "paper's numbers"):
        table.add_column(column)
    for p in presets:
        numbers = ", ".join(f"{k} {v:g}" for k, v in p.paper.metrics.items()) if p.paper else "-"
        table.add_row(p.model, p.name, p.language_model or "default", p.description, numbers)
    make_console().print(table)


def register(main: click.Group) -> None:
    main.add_command(train)
    main.add_command(evaluate)
    main.add_command(models)
