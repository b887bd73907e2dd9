"""``msakit serve``: the model behind an HTTP API and an upload page."""

from __future__ import annotations

import click


@click.command()
@click.option("--model", "model_dir", metavar="DIR|HUB_ID",
              help="A folder written by `msakit export` or a Hugging Face Hub id (default: the "
              "shipped text model).")
@click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False),
              help="A run folder written by `msakit train`.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-upload-mb", default=50.0, show_default=True, type=click.FloatRange(0.01),
              help="Larger uploads get HTTP 413.")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True,
              type=click.FloatRange(0.1), help="Seconds per prediction before HTTP 504.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Threads for feature extraction and inference.")
@click.option("--max-text-chars", default=10_000, show_default=True, type=click.IntRange(1),
              help="Longer transcripts (field text) get HTTP 413 before tokenizing.")
def serve(model_dir, run_dir, host, port, max_upload_mb, timeout_s, workers, max_text_chars):
    """Serve a model over HTTP: POST /v1/predict (multipart: file and/or text), GET /healthz,
    and GET / (a page to upload a clip and see its score).

    \b
    Example:
      msakit serve --model exported/lrcmt --port 8000
      curl -F file=@clip.mp4 -F text="what was said" http://127.0.0.1:8000/v1/predict
    """
    from msakit.cli.predict import resolve_model

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401

        from msakit.serve import ServeLimits
        from msakit.serve import serve as run_server
    except ImportError as err:
        raise click.ClickException(f"msakit serve needs FastAPI and uvicorn: pip install "
                                   f"'msakit[serve]' ({err})") from err
    from msakit.serve import unservable_reason

    model = resolve_model(run_dir, model_dir)
    reason = unservable_reason(model)
    if reason:
        raise click.ClickException(f"not serving {model_dir or run_dir}: {reason}")
    limits = ServeLimits(max_upload_bytes=int(max_upload_mb * 1024 * 1024), timeout_s=timeout_s,
                         workers=workers, max_text_chars=max_text_chars)
    run_server(model, host, port, limits, model_name=str(model_dir or run_dir or "default"))


def register(main: click.Group) -> None:
    main.add_command(serve)
