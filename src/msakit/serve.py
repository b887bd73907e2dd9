"""``msakit serve``: a small HTTP service around one trained model (FastAPI + uvicorn).

Endpoints:

* ``POST /v1/predict`` — multipart form with ``file`` (a media file) and/or ``text`` (its
  transcript, or the text alone). Answers the prediction object ``msakit predict --json``
  prints for one clip (score, polarity, 7-class, contributions, warnings, ``low_quality``).
  Or a JSON body ``{"utterances": ["...", "..."]}``: the transcripts of one video, in order;
  answers a list of prediction objects in the same order, each utterance read with its
  neighbours when the model reads text context (``info.context`` says how many; one
  utterance alone is scored without context, and its ``warnings`` say so).
* ``GET /healthz`` — ``{"status": "ok", ...}`` with the model's name, modalities and what it
  serves (``transcripts`` or ``clips``, :data:`msakit.predict.SERVES`) and its
  ``text_context`` (``none``, or e.g. ``next:1``). A model that scores only
  precomputed features (MMSA's COVAREP/FACET) cannot answer uploads: :func:`create_app` and
  ``msakit serve`` refuse it (:func:`unservable_reason`).
* ``GET /`` — a page to upload a clip (and an optional transcript) and see the score on the
  [-3, 3] scale with the modality contributions; for a text-only model also a list of one
  video's utterances (one per line), scored each with its neighbours when the model reads them.

Errors are JSON ``{"detail": "..."}``: 413 upload over the size limit or a transcript over the
character limit, 415 unsupported media
type, 422 unreadable media or missing input (naming the problem), 504 over the per-request time
limit, 503 when the work queue is full. Feature extraction and inference run in a thread pool
so the event loop keeps answering (``/healthz`` stays fast during long predictions); uploads
go to a private temporary folder that the worker removes when it finishes, whatever happens.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from msakit.extract.media import MEDIA_SUFFIXES
from msakit.predict import SERVES, SERVES_FEATURES, TrainedRun, features_only_message

CHUNK = 1 << 20
#: utterances of one video per JSON request
MAX_UTTERANCES = 512


def unservable_reason(model: TrainedRun) -> str | None:
    """Why ``model`` cannot answer uploads (``None``: it can)."""
    if model.serves == SERVES_FEATURES:
        return (features_only_message(model) + "; an upload (clip and/or text) cannot be "
                "scored, so msakit serve does not start it")
    return None


#: The answer when every worker slot is taken (HTTP 503).
BUSY = "busy: too many predictions in progress; retry later"


@dataclass
class ServeLimits:
    """Per-request limits.

    Attributes:
        max_upload_bytes: larger uploads are refused with 413.
        timeout_s: a prediction taking longer is answered with 504.
        workers: threads doing extraction and inference.
        max_queue: requests waiting or running at once; more get 503.
        max_text_chars: longer transcripts (field ``text``) are refused with 413 before they
            are tokenized; the language model reads at most 512 tokens (a few thousand
            characters), so the default keeps every text a model can use.
    """

    max_upload_bytes: int = 50 * 1024 * 1024
    max_text_chars: int = 10_000
    timeout_s: float = 120.0
    workers: int = 2
    max_queue: int = 16


def _safe_name(name: str | None) -> str:
    base = Path(name or "upload").name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"
    return cleaned[-100:]


def create_app(model: TrainedRun, limits: ServeLimits | None = None, model_name: str = ""):
    """The FastAPI application serving ``model``.

    Raises:
        RunIncompatibleError: the model cannot answer uploads (:func:`unservable_reason`).
    """
    from msakit.extract.media import ExtractionError
    from msakit.predict import (
        RunIncompatibleError,
        predict_clips,
        predict_texts,
        predict_utterances,
    )

    reason = unservable_reason(model)
    if reason:
        raise RunIncompatibleError(reason)

    limits = limits or ServeLimits()
    executor = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="msakit-serve")
    in_flight = threading.BoundedSemaphore(limits.max_queue)
    temp_root = Path(tempfile.mkdtemp(prefix="msakit-serve-"))
    page = (resources.files("msakit") / "static" / "index.html").read_text()
    modalities = model.modalities

    @asynccontextmanager
    async def lifespan(_app):
        yield
        executor.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(temp_root, ignore_errors=True)

    app = FastAPI(title="msakit", version=_version(), lifespan=lifespan)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": model_name or model.config.model.name,
                "modalities": modalities, "serves": model.serves,
                "serves_description": SERVES[model.serves], "members": model.members,
                "text_context": str(model.config.model.text_context)}

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    def work_utterances(utterances: list[str]) -> list[dict[str, Any]]:
        try:
            return [r.to_dict() for r in predict_utterances(utterances, model)]
        finally:
            in_flight.release()

    async def in_worker(function, *args):
        """``function(*args)`` on the worker threads, abandoned (HTTP 504) after the timeout;
        the caller holds an ``in_flight`` slot, which ``function`` releases."""
        future = asyncio.get_running_loop().run_in_executor(executor, function, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(future), limits.timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(504, f"the prediction took longer than {limits.timeout_s:g} s "
                                "and was abandoned") from None

    async def predict_json(request: Request):
        """``{"utterances": [...]}``: one video's transcripts, in order."""
        try:
            body = await request.json()
        except ValueError as err:
            raise HTTPException(422, f"the JSON body is not valid JSON ({err})") from None
        utterances = body.get("utterances") if isinstance(body, dict) else None
        if (not isinstance(utterances, list) or not utterances
                or not all(isinstance(u, str) and u.strip() for u in utterances)):
            raise HTTPException(422, "a JSON body must be {\"utterances\": [...]}: a non-empty "
                                "list of non-empty transcripts of one video, in order")
        if len(utterances) > MAX_UTTERANCES:
            raise HTTPException(413, f"{len(utterances)} utterances; at most {MAX_UTTERANCES} "
                                "per request")
        longest = max(range(len(utterances)), key=lambda i: len(utterances[i]))
        if len(utterances[longest]) > limits.max_text_chars:
            raise HTTPException(413, f"utterance {longest + 1} is over the limit of "
                                f"{limits.max_text_chars} characters (msakit serve "
                                "--max-text-chars)")
        if not model.text_only:
            raise HTTPException(422, "this model also reads audio/vision: upload the clip "
                                "(field 'file') as well")
        if not in_flight.acquire(blocking=False):
            raise HTTPException(503, BUSY)
        try:
            return await in_worker(work_utterances, utterances)
        except (RunIncompatibleError, ValueError) as err:
            return JSONResponse({"detail": str(err)}, status_code=422)

    def work(folder: Path | None, clip: Path | None, text: str | None,
             original: str) -> dict[str, Any]:
        try:
            if clip is not None:
                result = predict_clips([clip], model, [text] if text else None)[0]
                result.clip = original
            else:
                result = predict_texts([text or ""], model)[0]
            return result.to_dict()
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            in_flight.release()

    @app.post("/v1/predict")
    async def predict(request: Request):
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limits.max_upload_bytes + CHUNK:
            raise HTTPException(413, f"upload of {int(length)} bytes is over the limit of "
                                f"{limits.max_upload_bytes} bytes")
        if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
            return await predict_json(request)
        too_long = (f"field 'text' is over the limit of {limits.max_text_chars} characters "
                    "(msakit serve --max-text-chars)")
        try:
            # max_part_size bounds the non-file fields (the transcript), in UTF-8 bytes: parsing
            # stops there, so an over-long text is never held in memory whole
            form = await request.form(max_part_size=4 * limits.max_text_chars + 4)
        except Exception as err:  # starlette raises its own MultiPartException types
            message = str(getattr(err, "message", err))
            if "exceeded maximum size" in message.lower():
                raise HTTPException(413, too_long) from err
            status = 413 if "exceed" in message.lower() else 422
            raise HTTPException(status, f"unreadable form: {message}") from err
        upload = form.get("file")
        text = form.get("text")
        text = text.strip() if isinstance(text, str) and text.strip() else None
        if text is not None and len(text) > limits.max_text_chars:
            raise HTTPException(413, too_long)
        if isinstance(upload, str) or (upload is not None and not upload.filename):
            upload = None
        if upload is None and text is None:
            raise HTTPException(422, "give a media file (field 'file') and/or a transcript "
                                "(field 'text')")
        if upload is None and not model.text_only:
            raise HTTPException(422, "this model also reads audio/vision: upload the clip "
                                "(field 'file') as well")
        folder = clip = None
        original = ""
        if upload is not None:
            original = _safe_name(upload.filename)
            suffix = Path(original).suffix.lower()
            if suffix not in MEDIA_SUFFIXES:
                await upload.close()
                raise HTTPException(415, f"unsupported media type {suffix or '(no suffix)'!r} "
                                    f"for {original!r}; send one of {', '.join(MEDIA_SUFFIXES)}")
            folder = Path(tempfile.mkdtemp(dir=temp_root))
            clip = folder / original
            size = 0
            try:
                with clip.open("wb") as handle:
                    while chunk := await upload.read(CHUNK):
                        size += len(chunk)
                        if size > limits.max_upload_bytes:
                            raise HTTPException(413, f"{original}: over the upload limit of "
                                                f"{limits.max_upload_bytes} bytes")
                        handle.write(chunk)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            finally:
                await upload.close()
            if size == 0:
                shutil.rmtree(folder, ignore_errors=True)
                raise HTTPException(422, f"{original}: the uploaded file is empty")
        if not in_flight.acquire(blocking=False):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            raise HTTPException(503, BUSY)
        try:
            # on a timeout the worker keeps its temp folder until it finishes, then removes it
            result = await in_worker(work, folder, clip, text, original)
        except (ExtractionError, RunIncompatibleError, ValueError) as err:
            message = str(err)
            if folder is not None:
                message = message.replace(str(clip), original).replace(str(folder), "")
            return JSONResponse({"detail": message}, status_code=422)
        return result

    app.state.temp_root = temp_root
    app.state.executor = executor
    return app


def _version() -> str:
    from msakit import __version__

    return __version__


def serve(model: TrainedRun, host: str = "127.0.0.1", port: int = 8000,
          limits: ServeLimits | None = None, model_name: str = "") -> None:
    """Run the server until interrupted."""
    import uvicorn

    app = create_app(model, limits, model_name)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    finally:
        app.state.executor.shutdown(wait=False, cancel_futures=True)
        shutil.rmtree(app.state.temp_root, ignore_errors=True)
