"""``msakit predict`` and ``msakit export``: apply and package trained models."""

from __future__ import annotations

import json

import click
from rich.console import Console


def resolve_model(run_dir: str | None, model_dir: str | None, checkpoint: str | None = None):
    """The model to predict with: a run folder, an exported folder, or the shipped model.

    Raises:
        click.ClickException: with the reason.
    """
    from msakit.predict import RunIncompatibleError, load_trained_run
    from msakit.pretrained import ExportError, from_pretrained

    if run_dir and model_dir:
        raise click.ClickException("give --run or --model, not both")
    if checkpoint and not run_dir:
        raise click.ClickException("--checkpoint picks a training folder of a --run")
    try:
        if run_dir:
            return load_trained_run(run_dir, checkpoint)
        return from_pretrained(model_dir)
    except (RunIncompatibleError, ExportError) as err:
        raise click.ClickException(str(err)) from err


@click.command()
@click.argument("clips", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False),
              help="A run folder written by `msakit train` (on features from `msakit extract`, "
              "or text only).")
@click.option("--model", "model_dir", metavar="DIR|HUB_ID",
              help="A model folder written by `msakit export`, or a Hugging Face Hub id "
              "(owner/name, extra msakit[hub]). Default (no --run, no --model): the pretrained "
              "text model shipped with msakit (also `--model default`).")
@click.option("--text", "texts", multiple=True,
              help="Transcript of a clip; repeat once per clip, in order. Without clips: the "
              "texts to score. Without it: <clip>.txt beside the clip, else speech recognition.")
@click.option("--features", "feature_files", multiple=True,
              type=click.Path(exists=True, dir_okay=False),
              help="A precomputed feature file (.npz with arrays 'audio' (L, D_audio), 'vision' "
              "(L, D_vision), optional 'text'/'words'), instead of a clip; repeat per clip. The "
              "way to use a model trained on features msakit cannot compute (MMSA's "
              "COVAREP/FACET).")
@click.option("--texts", "texts_file", type=click.Path(exists=True, dir_okay=False),
              help="A CSV of transcripts (video_id, clip_id, text; each video's clips in "
              "order): every clip is scored, with its video's neighbouring utterances when the "
              "model reads text context (model.text_context).")
@click.option("--out", "out_file", type=click.Path(dir_okay=False),
              help="With --texts: also write the predictions to this new .csv or .json file.")
@click.option("--checkpoint", help="Use one training folder of the run, e.g. seed1/fold0 "
              "(default: the mean over all of them).")
@click.option("--asr/--no-asr", default=None,
              help="Transcribe clips without a transcript with pocketsphinx (default: as the "
              "training extraction did; on for text-only models). Flagged low quality.")
@click.option("--strict", is_flag=True, help="Refuse clips with no video track or no face.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one list of objects).")
def predict(clips, run_dir, model_dir, texts, feature_files, texts_file, out_file, checkpoint,
            asr, strict, as_json):
    """Predict the sentiment of CLIPS (video or audio files), or of --text alone.

    \b
    Prints per clip the score (on the training labels' scale, [-3, 3] for MOSI-like data),
    polarity, 7-class label and the model's per-modality contributions when it has them.

    \b
    Examples:
      msakit predict --text "i loved every minute of it"          # the shipped model
      msakit predict interview.mp4 --text "i loved every minute of it"
      msakit predict interview.mp4 --run runs/lf_dnn-custom-20261125-101500
      msakit predict interview.mp4 --model exported/lf_dnn
      msakit predict --model exported/dmd --features clip1.npz --text "what was said"
      msakit predict --texts transcripts.csv --out scores.csv     # clips with their context
    """
    from msakit.extract import ExtractionError
    from msakit.predict import (
        RunIncompatibleError,
        predict_clips,
        predict_features,
        predict_texts,
    )

    if texts_file is not None:
        if clips or texts or feature_files:
            raise click.ClickException("--texts FILE.csv is scored on its own: give no clips, "
                                       "no --features and no --text with it")
        _predict_table(texts_file, out_file, resolve_model(run_dir, model_dir, checkpoint),
                       as_json)
        return
    if out_file is not None:
        raise click.ClickException("--out goes with --texts FILE.csv")
    if not clips and not texts and not feature_files:
        raise click.ClickException("nothing to predict: give media files, --features and/or "
                                   "--text")
    if clips and feature_files:
        raise click.ClickException("give media files or --features files, not both")
    inputs, kind = (clips, "clip(s)") if clips else (feature_files, "feature file(s)")
    if inputs and texts and len(texts) != len(inputs):
        raise click.ClickException(
            f"{len(texts)} --text for {len(inputs)} {kind}: give one per clip, in order, or "
            "none")
    model = resolve_model(run_dir, model_dir, checkpoint)
    try:
        if feature_files:
            results = predict_features(feature_files, model, list(texts) if texts else None)
        elif clips:
            results = predict_clips(clips, model, list(texts) if texts else None, asr=asr,
                                    strict=strict)
        else:
            results = predict_texts(list(texts), model)
    except (RunIncompatibleError, ExtractionError, ValueError) as err:
        raise click.ClickException(str(err)) from err

    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    console = Console(soft_wrap=True)
    for r in results:
        spread = f" ± {r.score_std:.3f} over {r.checkpoints} checkpoints" if r.checkpoints > 1 \
            else ""
        console.print(f"[bold]{r.clip or 'text'}[/]", highlight=False)
        console.print(f"  text ({r.text_source}): {r.text!r}", markup=False, highlight=False)
        console.print(f"  score {r.score:+.3f}{spread}  polarity {r.polarity}  "
                      f"7-class {r.class7:+d} ({r.class7_name})  reads {'+'.join(r.modalities)}",
                      highlight=False)
        if r.low_quality:
            console.print("  [red]low quality:[/] the transcript is machine-made (ASR)",
                          highlight=False)
        for name, value in r.contributions.items():
            console.print(f"  {name}: {_short(value)}", markup=False, highlight=False)
        for warning in r.warnings:
            console.print(f"  [yellow]note:[/] {warning}", highlight=False)


def _predict_table(texts_file: str, out_file: str | None, model, as_json: bool) -> None:
    """``--texts FILE.csv``: score every row, print a table (or JSON), optionally write it."""
    import csv
    from pathlib import Path

    from msakit.predict import RunIncompatibleError, predict_utterances, read_utterances

    out = Path(out_file) if out_file else None
    if out is not None:
        if out.suffix.lower() not in (".csv", ".json"):
            raise click.ClickException(f"--out {out}: use a .csv or .json file name")
        if out.exists():
            raise click.ClickException(f"--out {out}: already exists; it is never overwritten")
        if not out.parent.is_dir():
            raise click.ClickException(f"--out {out}: no folder {out.parent}")
    try:
        results = predict_utterances(read_utterances(texts_file), model)
    except (RunIncompatibleError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    rows = [{"video_id": r.info["video_id"], "clip_id": r.info["clip_id"], "score": r.score,
             "score_std": r.score_std, "polarity": r.polarity, "class7": r.class7,
             "context": r.info["context"]["mode"],
             "context_previous": r.info["context"]["previous"],
             "context_next": r.info["context"]["next"], "text": r.text} for r in results]
    if out is not None:
        try:
            with out.open("x", newline="", encoding="utf-8") as handle:
                if out.suffix.lower() == ".json":
                    json.dump([r.to_dict() for r in results], handle, indent=2)
                else:
                    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(rows)
        except OSError as err:
            raise click.ClickException(f"--out {out}: cannot write ({err})") from err
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
        return
    console = Console(soft_wrap=True)
    for row, r in zip(rows, results):
        console.print(f"{row['video_id']}/{row['clip_id']}  score {r.score:+.3f}  "
                      f"{r.polarity}  context {row['context']} "
                      f"({row['context_previous']} previous, {row['context_next']} next)",
                      highlight=False, markup=False)
    for note in sorted({w for r in results for w in r.warnings}):
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if out is not None:
        console.print(f"written: {out}", highlight=False, markup=False)


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--checkpoint", help="Export one training folder of the run, e.g. seed1/fold0 "
              "(default: all of them, as an ensemble).")
@click.option("--with-run", "more_runs", multiple=True,
              type=click.Path(exists=True, file_okay=False),
              help="Another run of the same experiment (e.g. a seed trained separately) whose "
              "checkpoints join the ensemble; repeatable. Configs must match except run.*.")
@click.option("--push-to-hub", "repo_id", metavar="REPO_ID",
              help="Also upload the folder to the Hugging Face Hub (extra msakit[hub]).")
def export(run_dir, out_dir, checkpoint, more_runs, repo_id):
    """Write the model of RUN_DIR to OUT_DIR: model.safetensors, config.json,
    feature_spec.json, metrics.json and a model card (README.md).

    \b
    Load it with `msakit predict --model OUT_DIR` or msakit.from_pretrained("OUT_DIR").
    """
    from msakit.pretrained import (
        FEATURE_SPEC_FILE,
        ExportError,
        describe_serving,
        export_run,
        push_to_hub,
    )

    try:
        folder = export_run(run_dir, out_dir, checkpoint, more_runs=list(more_runs))
        spec = json.loads((folder / FEATURE_SPEC_FILE).read_text())
        click.echo(f"exported {run_dir} -> {folder}: {describe_serving(spec)}")
        if repo_id:
            click.echo(f"pushed to {push_to_hub(folder, repo_id)}")
    except ExportError as err:
        raise click.ClickException(str(err)) from err


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
    main.add_command(export)
