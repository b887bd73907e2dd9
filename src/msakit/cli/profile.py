"""``msakit profile``: parameters, FLOPs, peak memory and latency of models at their configs."""

from __future__ import annotations

from pathlib import Path

import click


def parse_model_spec(spec: str) -> tuple[str, list[str]]:
    """``"sagenet@model.encoder_layers=3@model.hidden_size=64"`` -> name and its overrides."""
    name, *overrides = spec.split("@")
    if not name:
        raise click.BadParameter(f"{spec!r}: expected MODEL or MODEL@section.key=value...")
    return name, overrides


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _flops(value: float) -> str:
    return f"{value / 1e9:,.2f}"


@click.command("profile")
@click.argument("models", nargs=-1, required=True)
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Config override applied to every model (repeatable). Per-model overrides: "
                   "MODEL@section.key=value, e.g. sagenet@model.encoder_layers=3.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--text-len", default=50, show_default=True, type=click.IntRange(1),
              help="Tokens per transcript (including special tokens).")
@click.option("--audio-len", default=50, show_default=True, type=click.IntRange(1))
@click.option("--vision-len", default=50, show_default=True, type=click.IntRange(1))
@click.option("--audio-dim", default=74, show_default=True, type=click.IntRange(1),
              help="Audio feature size (74 = COVAREP of CMU-SDK MOSI; MMSA MOSI: 5).")
@click.option("--vision-dim", default=47, show_default=True, type=click.IntRange(1),
              help="Vision feature size (47 = FACET of CMU-SDK MOSI; MMSA MOSI: 20).")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(0),
              help="Timed runs per latency figure (median reported); 0 skips latency.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N")
@click.option("--no-memory", is_flag=True, help="Skip the peak-memory measurements.")
@click.option("--threads", default=None, type=click.IntRange(1),
              help="torch CPU threads (default: torch's own choice).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the figures to this CSV file.")
def profile(models, overrides, batch_size, text_len, audio_len, vision_len, audio_dim,
            vision_dim, repeats, device, no_memory, threads, csv_path) -> None:
    """Measure MODELS on a synthetic batch: parameters, FLOPs per sample, peak memory of an
    inference batch and of a training step, and median latency of each.

    Memory on CPU is the peak process RSS during the step minus the RSS before it, each step
    measured in a fresh process; on CUDA, torch.cuda.max_memory_allocated. See docs/profile.md.
    """
    import torch
    from rich.console import Console
    from rich.table import Table

    from msakit.config import ConfigError
    from msakit.profiling import SyntheticShape, profile_model, write_csv

    if threads:
        torch.set_num_threads(threads)
    shape = SyntheticShape(batch_size, text_len, audio_len, vision_len, audio_dim, vision_dim)
    console = Console()
    if not console.is_terminal:  # files and pipes: do not squeeze the table into 80 columns
        console = Console(width=220)
    results = []
    for spec in models:
        name, own_overrides = parse_model_spec(spec)
        with console.status(f"profiling {spec} ..."):
            try:
                results.append(profile_model(
                    name, list(overrides) + own_overrides, shape, repeats=repeats,
                    device=device, memory=not no_memory, label=spec,
                ))
            except (ConfigError, KeyError) as err:
                raise click.ClickException(f"{spec}: {err}") from err

    memory_note = results[0].memory_method if results else ""
    table = Table(title=(
        f"batch {batch_size}, text {text_len} tokens, audio {audio_len}x{audio_dim}, "
        f"vision {vision_len}x{vision_dim}, device {results[0].device}; memory: {memory_note}"
    ))
    for column in ("model", "params (M)", "trainable (M)", "of which LM (M)", "GFLOPs/sample fwd",
                   "GFLOPs/sample train", "infer peak / +step MiB", "train peak / +step MiB",
                   "infer ms/batch", "train ms/step"):
        table.add_column(column, justify="left" if column == "model" else "right",
                         no_wrap=column == "model")
    for r in results:
        table.add_row(
            r.model,
            f"{r.params_total / 1e6:,.2f}",
            f"{r.params_trainable / 1e6:,.2f}",
            f"{r.params_language_model / 1e6:,.2f}",
            _flops(r.flops_inference_per_sample),
            _flops(r.flops_train_per_sample),
            f"{_mib(r.memory_inference_peak_mib)} / {_mib(r.memory_inference_extra_mib)}",
            f"{_mib(r.memory_train_peak_mib)} / {_mib(r.memory_train_extra_mib)}",
            _ms(r.latency_inference_ms),
            _ms(r.latency_train_ms),
        )
    console.print(table)
    if csv_path:
        write_csv(results, csv_path)
        console.print(f"wrote {csv_path}")


def register(main: click.Group) -> None:
    main.add_command(profile)
