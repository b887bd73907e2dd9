"""``msakit predict``: sentiment of raw clips with a trained run."""

from __future__ import annotations

import json

import click
from rich.console import Console


@click.command()
@click.argument("clips", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A run folder written by `msakit train` on features from `msakit extract`.")
@click.option("--text", "texts", multiple=True,
              help="Transcript of a clip; repeat once per clip, in order. Without it: "
              "<clip>.txt beside the clip, else speech recognition when enabled.")
@click.option("--checkpoint", help="Use one training folder of the run, e.g. seed1/fold0 "
              "(default: the mean over all of them).")
@click.option("--asr/--no-asr", default=None,
              help="Transcribe clips without a transcript with pocketsphinx (default: as the "
              "training extraction did).")
@click.option("--strict", is_flag=True, help="Refuse clips with no video track or no face.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one list of objects).")
def predict(clips, run_dir, texts, checkpoint, asr, strict, as_json):
    """Predict the sentiment of CLIPS (video or audio files) with the model of RUN.

    \b
    Prints per clip the score (on the training labels' scale, [-3, 3] for MOSI-like data),
    polarity, 7-class label and the model's per-modality contributions when it has them.

    \b
    Example:
      msakit predict interview.mp4 --run runs/lf_dnn-custom-20261125-101500 \\
          --text "i loved every minute of it"
    """
    from msakit.extract import ExtractionError
    from msakit.predict import RunIncompatibleError, load_trained_run, predict_clips

    if texts and len(texts) != len(clips):
        raise click.ClickException(
            f"{len(texts)} --text for {len(clips)} clip(s): give one per clip, in order, or none")
    try:
        run = load_trained_run(run_dir, checkpoint)
        results = predict_clips(clips, run, list(texts) if texts else None, asr=asr,
                                strict=strict)
    except (RunIncompatibleError, ExtractionError, ValueError) as err:
        raise click.ClickException(str(err)) from err

    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    console = Console(soft_wrap=True)
    for r in results:
        spread = f" ± {r.score_std:.3f} over {r.checkpoints} checkpoints" if r.checkpoints > 1 \
            else ""
        console.print(f"[bold]{r.clip}[/]", highlight=False)
        console.print(f"  text ({r.text_source}): {r.text!r}", markup=False, highlight=False)
        console.print(f"  score {r.score:+.3f}{spread}  polarity {r.polarity}  "
                      f"7-class {r.class7:+d} ({r.class7_name})", highlight=False)
        for name, value in r.contributions.items():
            console.print(f"  {name}: {_short(value)}", markup=False, highlight=False)
        for warning in r.warnings:
            console.print(f"  [yellow]note:[/] {warning}", highlight=False)


def _short(value) -> str:
    flat = []

    def walk(v):
        if isinstance(v, list):
            for x in v:
                walk(x)
        else:
            flat.append(v)

    walk(value)
    text = ", ".join(f"{x:.3f}" for x in flat[:8])
    return f"[{text}{', ...' if len(flat) > 8 else ''}]" if isinstance(value, list) else text


def register(main: click.Group) -> None:
    main.add_command(predict)
