"""``msakit extract``: a folder of raw clips + label.csv -> an MMSA-format feature pickle."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console

console = Console(soft_wrap=True)


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="The pickle to write (e.g. features.pkl).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML file with the extractor config (audio/vision/text/alignment/...).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one extractor setting (YAML value), e.g. --set vision.fps=15, "
              "--set audio.extractors=[opensmile]. Repeatable.")
@click.option("--aligned", "aligned_length", type=int, default=None,
              help="Average audio and vision into this many equal time bins per clip "
              "(default: unaligned, each modality at its own frame rate).")
@click.option("--asr", is_flag=True, help="Transcribe clips without a transcript with "
              "pocketsphinx (English; poor accuracy).")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Clips extracted in parallel (processes).")
@click.option("--work-dir", type=click.Path(file_okay=False),
              help="Cache and errors.csv/warnings.csv (default: OUTPUT.extract).")
@click.option("--strict", is_flag=True, help="Fail clips with no video track or no face "
              "instead of keeping them with a warning.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--force", is_flag=True, help="Allow the output inside the clip folder (an input "
              "file such as label.csv is never overwritten).")
def extract(folder, output, config_file, overrides, aligned_length, asr, workers, work_dir,
            strict, no_progress, force):
    """Extract audio, vision and text features from the clips listed in FOLDER/label.csv.

    \b
    label.csv columns: video_id, clip_id, text, label, mode (label and mode optional; rows
    without a mode go to train when labelled, to test otherwise). Media: FOLDER/<video_id>/
    <clip_id>.<ext> or FOLDER/<video_id>_<clip_id>.<ext> (also under Raw/ or raw/).
    Clips that fail are listed in errors.csv; the rest are written. A re-run reuses the
    clips already extracted with the same settings.

    \b
    Example:
      msakit extract my_clips/ -o my_clips.pkl --workers 2
      msakit train lf_dnn --data my_clips.pkl
    """
    from msakit.config import ConfigError, load_yaml_file
    from msakit.extract import ExtractionError, build_extractor_config
    from msakit.extract.pipeline import extract_folder

    base = load_yaml_file(config_file)
    extra = list(overrides)
    if aligned_length is not None:
        extra += ["alignment=fixed", f"aligned_length={aligned_length}"]
    if asr:
        extra.append("text.asr=true")
    try:
        config = build_extractor_config(base, extra)
        report = extract_folder(folder, output, config, workers=workers, work_dir=work_dir,
                                strict=strict, progress=not no_progress, force=force)
    except (ConfigError, ExtractionError) as err:
        raise click.ClickException(str(err)) from err

    sizes = ", ".join(f"{k} {v}" for k, v in report.split_sizes.items())
    console.print(f"[bold]wrote[/] {report.output}: {sizes} clips; audio "
                  f"{report.feature_dims['audio']}-d, vision {report.feature_dims['vision']}-d "
                  f"({report.extracted} extracted, {report.reused} reused from the cache)")
    if report.unlabelled:
        console.print(f"[yellow]{report.unlabelled} clip(s) have no label (NaN): the pickle "
                      "can be inspected but not trained or evaluated on")
    if report.warnings:
        console.print(f"[yellow]{len(report.warnings)} warning(s)[/], see "
                      f"{report.work_dir / 'warnings.csv'}")
    if report.failures:
        console.print(f"[red]{len(report.failures)} clip(s) failed[/], see "
                      f"{report.work_dir / 'errors.csv'}:")
        for failure in report.failures[:10]:
            console.print(f"  {failure.video_id}/{failure.clip_id} [{failure.stage}]: "
                          f"{failure.reason}", markup=False, highlight=False)
        if len(report.failures) > 10:
            console.print(f"  ... and {len(report.failures) - 10} more")


def register(main: click.Group) -> None:
    main.add_command(extract)
