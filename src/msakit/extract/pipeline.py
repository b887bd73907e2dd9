"""``msakit extract``: a folder of clips + ``label.csv`` -> an MMSA-format pickle.

Work folder (default ``<output>.extract/`` beside the pickle):

* ``cache/<video>$_$<clip>.npz``: each finished clip's features, keyed by the extractor config
  and the media file's size and modification time; a re-run reuses them and extracts only the
  rest.
* ``errors.csv``: ``video_id, clip_id, stage, reason`` for every clip that failed (it is left out
  of the pickle; the other clips go on).
* ``warnings.csv``: ``video_id, clip_id, warning`` for kept clips worth a look (frames without a
  face, audio-only files, machine transcripts).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import zipfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from msakit.data.csv_table import read_table, split_of_mode
from msakit.data.dataset import DataError
from msakit.extract.config import ExtractorConfig
from msakit.extract.features import ClipFeatureExtractor, ClipFeatures
from msakit.extract.media import MEDIA_SUFFIXES, ExtractionError

REQUIRED_COLUMNS = ("video_id", "clip_id")


@dataclass
class ClipSpec:
    """One row of ``label.csv``.

    Attributes:
        key: ``"video_id$_$clip_id"`` (the MMSA id).
        label: the sentiment label, NaN when the row has none (prediction-only clips).
        split: ``train``/``valid``/``test`` from the ``mode`` column; rows without one go to
            ``train`` when labelled and ``test`` when not.
        media: the clip's media file.
    """

    video_id: str
    clip_id: str
    text: str | None
    label: float
    split: str
    media: Path | None = None
    row: int = 0

    @property
    def key(self) -> str:
        return f"{self.video_id}$_${self.clip_id}"


@dataclass
class ClipFailure:
    video_id: str
    clip_id: str
    stage: str
    reason: str


@dataclass
class ExtractionReport:
    """What :func:`extract_folder` did."""

    output: Path
    work_dir: Path
    extracted: int = 0
    reused: int = 0
    failures: list[ClipFailure] = field(default_factory=list)
    warnings: list[tuple[str, str, str]] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)
    feature_dims: dict[str, int] = field(default_factory=dict)
    unlabelled: int = 0


# --------------------------------------------------------------------------------------------
# label.csv and media files
# --------------------------------------------------------------------------------------------

def is_plain_name(name: str) -> bool:
    """Whether ``name`` can only name an entry of a folder (never a path out of it)."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def find_media(folder: Path, video_id: str, clip_id: str) -> Path:
    """The media file of a clip: ``<folder>[/Raw]/<video_id>/<clip_id>.<ext>`` (MMSA-FET layout)
    or ``<folder>[/raw]/<video_id>_<clip_id>.<ext>`` (flat layout).

    Raises:
        ExtractionError: an id that is a path, no file, or several candidates.
    """
    if not (is_plain_name(video_id) and is_plain_name(clip_id)):
        raise ExtractionError(f"clip {video_id}/{clip_id}: ids must be plain file names; media "
                              f"files are looked up inside {folder} only", "label")
    stems = []
    for base in (folder, folder / "Raw", folder / "raw"):
        stems += [base / video_id / clip_id, base / f"{video_id}_{clip_id}"]
    found = [stem.with_name(stem.name + suffix) for stem in stems for suffix in MEDIA_SUFFIXES
             if stem.with_name(stem.name + suffix).is_file()]
    if not found:
        raise ExtractionError(
            f"no media file for clip {video_id}/{clip_id}: looked for "
            f"{video_id}/{clip_id}.<ext> and {video_id}_{clip_id}.<ext> under {folder} "
            f"(and its Raw/ or raw/ folder), ext one of {', '.join(s[1:] for s in MEDIA_SUFFIXES)}",
            "media",
        )
    if len(found) > 1:
        raise ExtractionError(
            f"clip {video_id}/{clip_id}: several media files match ({', '.join(map(str, found))});"
            " keep one", "media"
        )
    return found[0]


def read_clip_list(folder: Path) -> tuple[list[ClipSpec], list[ClipFailure]]:
    """Rows of ``<folder>/label.csv`` as :class:`ClipSpec` with their media located.

    Columns: ``video_id, clip_id`` (required), ``text``, ``label``, ``mode`` (optional). A row
    that cannot be used becomes a :class:`ClipFailure`; the others go on.

    Raises:
        ExtractionError: ``label.csv`` is missing, lacks the required columns, or has a row
            with more or fewer fields than columns (named by line).
    """
    table = folder / "label.csv"
    if not table.is_file():
        raise ExtractionError(
            f"{folder}: no label.csv (columns video_id, clip_id, text, label, mode)", "label"
        )
    try:
        _, raw_rows = read_table(table, REQUIRED_COLUMNS)
    except DataError as err:
        raise ExtractionError(str(err), "label") from err

    specs, failures, seen = [], [], {}
    for number, row in raw_rows:
        video_id, clip_id = row.get("video_id", ""), row.get("clip_id", "")
        where = f"{table} line {number}"
        try:
            if not video_id or not clip_id:
                raise ExtractionError(f"{where}: empty video_id or clip_id", "label")
            if "$_$" in video_id or "$_$" in clip_id:
                raise ExtractionError(f"{where}: ids may not contain '$_$'", "label")
            for column, value in (("video_id", video_id), ("clip_id", clip_id)):
                if not is_plain_name(value):
                    raise ExtractionError(
                        f"{where}: {column} {value!r} is not a plain file name (no '/', '\\', "
                        "'.' or '..'): media files are looked up inside the clip folder only",
                        "label")
            key = f"{video_id}$_${clip_id}"
            if key in seen:
                raise ExtractionError(f"{where}: clip {video_id}/{clip_id} already on line "
                                      f"{seen[key]}", "label")
            seen[key] = number
            label_text = row.get("label") or ""
            try:
                label = float(label_text) if label_text else math.nan
            except ValueError:
                raise ExtractionError(
                    f"{where}: label {label_text!r} of clip {video_id}/{clip_id} is not a number",
                    "label") from None
            if label_text and not math.isfinite(label):
                raise ExtractionError(f"{where}: label {label_text!r} is not finite", "label")
            try:
                split = split_of_mode(row.get("mode") or "", f"{where}: clip {video_id}/{clip_id}")
            except DataError as err:
                raise ExtractionError(str(err), "label") from None
            if split is None:
                split = "test" if math.isnan(label) else "train"
            text = row.get("text") or None
            media = find_media(folder, video_id, clip_id)
            specs.append(ClipSpec(video_id, clip_id, text, label, split, media, number))
        except ExtractionError as err:
            failures.append(ClipFailure(video_id or "?", clip_id or f"line{number}",
                                        err.stage, str(err)))
    return specs, failures


# --------------------------------------------------------------------------------------------
# Per-clip cache
# --------------------------------------------------------------------------------------------

def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._$-]", "_", key)


def cache_signature(spec: ClipSpec, config: ExtractorConfig) -> str:
    """Changes when the extractor config, the media file or the given transcript changes."""
    from msakit.extract.text import sidecar_transcript

    stat = spec.media.stat()
    sidecar = None if spec.text else sidecar_transcript(spec.media)
    payload = json.dumps([config.model_dump(mode="json"), str(spec.media.resolve()),
                          stat.st_size, stat.st_mtime_ns, spec.text, sidecar], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def save_cached(path: Path, features: ClipFeatures, signature: str) -> None:
    meta = {"signature": signature, "text": features.text, "text_source": features.text_source,
            "info": features.info, "warnings": features.warnings}
    temporary = path.with_name(path.name + ".tmp.npz")
    np.savez(temporary, audio=features.audio, vision=features.vision,
             meta=np.array(json.dumps(meta)))
    os.replace(temporary, path)  # atomic: an interrupted run never leaves half a file


def load_cached(path: Path, signature: str) -> ClipFeatures | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            if meta.get("signature") != signature:
                return None
            return ClipFeatures(audio=stored["audio"], vision=stored["vision"],
                                text=meta["text"], text_source=meta["text_source"],
                                info=meta["info"], warnings=meta["warnings"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable (e.g. truncated) cache entry: extract again


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------

_WORKER: ClipFeatureExtractor | None = None


def _init_worker(config_json: str, strict: bool) -> None:
    global _WORKER
    _WORKER = ClipFeatureExtractor(ExtractorConfig.model_validate_json(config_json), strict)


def _extract_one(spec: ClipSpec, cache_path: Path, signature: str):
    """Runs in a worker: extract, cache, and return ``(key, features or failure)``."""
    assert _WORKER is not None
    where = f"clip {spec.video_id}/{spec.clip_id} ({spec.media})"
    try:
        features = _WORKER.extract(spec.media, spec.text, "label.csv", where=where)
    except ExtractionError as err:
        return spec.key, ClipFailure(spec.video_id, spec.clip_id, err.stage, str(err))
    except Exception as err:  # a library failing on odd input must not stop the batch
        return spec.key, ClipFailure(spec.video_id, spec.clip_id, "internal",
                                     f"{where}: {type(err).__name__}: {err}")
    save_cached(cache_path, features, signature)
    return spec.key, features


def check_output_paths(folder: Path, output: Path, work_dir: Path, specs: list[ClipSpec],
                       force: bool) -> None:
    """Refuse to write over an input: ``output`` or ``work_dir`` being ``label.csv``, a clip's
    media file, or (without ``force``) lying anywhere inside the clip folder."""
    root = folder.resolve()
    inputs = {(folder / "label.csv").resolve(), *(s.media.resolve() for s in specs if s.media)}
    for what, path in (("output", output), ("work folder", work_dir)):
        resolved = path.resolve()
        if resolved in inputs or any(resolved in p.parents for p in inputs):
            raise ExtractionError(f"{what} {path} is an input of the extraction (label.csv or a "
                                  "clip); choose another path", "output")
        if resolved == root:
            raise ExtractionError(f"{what} {path} is the clip folder itself", "output")
        if root in resolved.parents and not force:
            raise ExtractionError(
                f"{what} {path} is inside the clip folder {folder}; write it elsewhere (e.g. "
                f"-o {folder.name}.pkl beside the folder) or pass --force", "output")
    if output.exists() and not output.is_file():
        raise ExtractionError(f"output {output} exists and is not a file", "output")


def extract_folder(
    folder: str | Path,
    output: str | Path,
    config: ExtractorConfig | None = None,
    workers: int = 1,
    work_dir: str | Path | None = None,
    strict: bool = False,
    progress: bool = True,
    force: bool = False,
) -> ExtractionReport:
    """Extract every clip listed in ``<folder>/label.csv`` and write the MMSA pickle ``output``.

    Args:
        config: the feature recipe (default :class:`ExtractorConfig()`).
        workers: processes extracting in parallel (1: in this process).
        work_dir: cache and reports (default ``<output>.extract``).
        strict: fail clips with no video track or no face at all instead of warning.
        progress: show a progress bar.
        force: allow ``output`` (or the work folder) inside the clip folder; an input file
            (``label.csv``, a clip) is never overwritten.

    Returns:
        What was done; failing clips are listed in ``errors.csv`` and left out of the pickle.

    Raises:
        ExtractionError: ``label.csv`` unusable, or no clip could be extracted at all.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from msakit.extract.writer import write_mmsa_pickle

    folder, output = Path(folder), Path(output)
    config = config or ExtractorConfig()
    work_dir = Path(work_dir) if work_dir else output.with_name(output.name + ".extract")
    specs, failures = read_clip_list(folder)
    check_output_paths(folder, output, work_dir, specs, force)
    cache_dir = work_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)
    report = ExtractionReport(output=output, work_dir=work_dir)
    report.failures = failures
    results: dict[str, ClipFeatures] = {}
    todo = []
    for spec in specs:
        path = cache_dir / f"{_safe_name(spec.key)}.npz"
        signature = cache_signature(spec, config)
        cached = load_cached(path, signature)
        if cached is not None:
            results[spec.key] = cached
            report.reused += 1
        else:
            todo.append((spec, path, signature))

    by_key = {spec.key: spec for spec in specs}
    bar = Progress(TextColumn("extracting"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress or not todo)
    task = bar.add_task("extracting", total=len(todo))

    def collect(key, outcome):
        if isinstance(outcome, ClipFailure):
            report.failures.append(outcome)
        else:
            results[key] = outcome
            report.extracted += 1
        bar.advance(task)

    with bar:  # the live display ends also when a clip raises
        if todo and workers <= 1:
            _init_worker(config.model_dump_json(), strict)
            for spec, path, signature in todo:
                collect(*_extract_one(spec, path, signature))
        elif todo:
            with ProcessPoolExecutor(
                max_workers=min(workers, len(todo)), mp_context=get_context("spawn"),
                initializer=_init_worker, initargs=(config.model_dump_json(), strict),
            ) as pool:
                futures = [pool.submit(_extract_one, *job) for job in todo]
                for future in as_completed(futures):
                    collect(*future.result())

    _write_reports(work_dir, report, results, by_key)
    kept = [spec for spec in specs if spec.key in results]
    if not kept:
        raise ExtractionError(
            f"{folder}: no clip could be extracted ({len(report.failures)} failed; see "
            f"{work_dir / 'errors.csv'})", "media"
        )
    write_mmsa_pickle(output, kept, results, config, report)
    return report


def _write_reports(work_dir: Path, report: ExtractionReport, results: dict[str, ClipFeatures],
                   by_key: dict[str, ClipSpec]) -> None:
    with (work_dir / "errors.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "clip_id", "stage", "reason"])
        for failure in report.failures:
            writer.writerow([failure.video_id, failure.clip_id, failure.stage, failure.reason])
    with (work_dir / "warnings.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "clip_id", "warning"])
        for key, features in results.items():
            spec = by_key[key]
            for warning in features.warnings:
                writer.writerow([spec.video_id, spec.clip_id, warning])
                report.warnings.append((spec.video_id, spec.clip_id, warning))
