"""The run folder's file names, its folders, and reading and writing its record files.

Every other module reaches a run folder through these functions (and :mod:`.weights` for the
trained weights); none of them spells a file name of the folder itself.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import math
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

# Files of the run folder (top level) and of each training folder ``seed<S>/<partition>/``.
CONFIG_FILE = "config.yaml"
DATA_FILE = "data.json"
ENV_FILE = "env.json"
EXPERIMENT_FILE = "experiment.json"
METRICS_FILE = "metrics.json"
RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
EPOCHS_FILE = "epochs.csv"
PREDICTIONS_FILE = "predictions.csv"
ARTIFACTS_FILE = "artifacts.json"
ERROR_FILE = "error.txt"
EVALUATION_FILE = "evaluation.json"
BEST_WEIGHTS = "best.safetensors"
BEST_METADATA = "best.json"
LEGACY_BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"

#: Columns of ``predictions.csv``.
PREDICTION_COLUMNS = ("id", "video_id", "label", "prediction")


# ----------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------

def new_run_dir(output_dir: str | Path, model: str, dataset: str, name: str | None = None) -> Path:
    """Create a fresh run directory. An existing one is never reused, except a named run's
    folder that a failed attempt left (``status: failed`` in ``experiment.json``, or nothing
    trained in it): the retry takes its place instead of going to ``name-2``."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    base = name or f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = root / base, 1
    if name and candidate.is_dir() and is_failed_run(candidate):
        shutil.rmtree(candidate)
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = root / f"{base}-{n}"


def sub_run_dir(run_dir: Path, seed: int, partition: str) -> Path:
    """The training folder of one (seed, partition) run: ``run_dir/seed<S>/<partition>``."""
    return Path(run_dir) / f"seed{seed}" / partition


def training_dirs(run_dir: Path, holding: str = EPOCHS_FILE) -> list[Path]:
    """Training folders ``seed*/<partition>`` of ``run_dir`` that hold the file ``holding``
    (default ``epochs.csv``: every training run that started), in a stable order."""
    return sorted(p.parent for p in Path(run_dir).glob(f"seed*/*/{holding}"))


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Training-run folders under ``run_dir`` (itself if it is one), in a stable order."""
    run_dir = Path(run_dir)
    if (run_dir / BEST_WEIGHTS).exists() or (run_dir / LEGACY_BEST_CHECKPOINT).exists():
        return [run_dir]
    found = sorted({p.parent for name in (BEST_WEIGHTS, LEGACY_BEST_CHECKPOINT)
                    for p in run_dir.glob(f"seed*/*/{name}")})
    if not found:
        raise FileNotFoundError(f"{run_dir}: no trained weights ({BEST_WEIGHTS}) found")
    return found


def unused_paths(out_dir: str | Path, stem: str, suffixes: tuple[str, ...]) -> list[Path]:
    """``out_dir/stem<suffix>`` for every suffix, or ``stem-2``, ``stem-3``, ... until none of
    them exists: written results are never overwritten. Creates ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name, n = stem, 1
    while any((out_dir / f"{name}{suffix}").exists() for suffix in suffixes):
        n += 1
        name = f"{stem}-{n}"
    return [out_dir / f"{name}{suffix}" for suffix in suffixes]


def folder_size(path: Path) -> int:
    """Bytes of the regular files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover


# ----------------------------------------------------------------------------------------------
# JSON
# ----------------------------------------------------------------------------------------------

def json_ready(value: Any) -> Any:
    """``value`` as JSON holds it: non-finite floats become ``None``, tensors and arrays lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return json_ready(value.item())
    if hasattr(value, "tolist"):
        return json_ready(value.tolist())
    return value


class RunError(ValueError):
    """A run folder that cannot be used as asked (not a run, unfinished, not valid, ...)."""


def _is_disk_full(err: BaseException, folder: Path) -> bool:
    """Whether ``err`` (or what it wraps) is a full disk: torch.save and safetensors report the
    OS error as their own RuntimeError / SafetensorError."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if "No space left on device" in text or "os error 28" in text:
            return True
        if isinstance(seen, RuntimeError) and "file write failed" in text:  # torch.save
            try:
                return shutil.disk_usage(folder).free < 64 * 2**20
            except OSError:
                return False
        seen = seen.__cause__ or seen.__context__
    return False


@contextlib.contextmanager
def writing(path: str | Path, partial: str | Path | None = None):
    """Write ``path`` inside the block; a full disk becomes ``OSError(ENOSPC)`` naming it (one
    clear line in the CLI) and the half-written ``partial`` file (default ``path``) is removed."""
    path = Path(path)
    try:
        yield
    except Exception as err:
        if not _is_disk_full(err, path.parent):
            raise
        Path(partial or path).unlink(missing_ok=True)
        raise OSError(errno.ENOSPC, "No space left on device", str(path)) from err


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (a crash never leaves half a file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with writing(path, tmp):
        tmp.write_text(json.dumps(json_ready(payload), indent=2))
    tmp.replace(path)


def read_json(path: Path) -> Any:
    """The JSON document in ``path``; :class:`RunError` naming the file if it is not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{path}: not valid JSON ({err}); expected the file msakit wrote "
                       "(restore it or rerun)") from None


def _read_json_or(path: Path, default: Any) -> Any:
    return read_json(path) if path.exists() else default


# ----------------------------------------------------------------------------------------------
# Records of the run folder
# ----------------------------------------------------------------------------------------------

def save_config(folder: Path, config) -> None:
    """The resolved experiment config as ``config.yaml``."""
    config.save(Path(folder) / CONFIG_FILE)


def load_config(folder: Path):
    """The re-validated ``config.yaml`` of a run or training folder."""
    from msakit.config import load_saved_config

    return load_saved_config(Path(folder) / CONFIG_FILE)


def has_config(folder: Path) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()


def config_path(folder: Path) -> Path:
    return Path(folder) / CONFIG_FILE


def read_config_tree(folder: Path, missing_ok: bool = False) -> dict[str, Any]:
    """``config.yaml`` as a plain tree, not validated (reading a run that an older msakit
    wrote); ``{}`` when absent and ``missing_ok``."""
    import yaml

    path = Path(folder) / CONFIG_FILE
    if missing_ok and not path.exists():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def read_config_text(folder: Path) -> str | None:
    """``config.yaml`` as written, or ``None`` when the folder has none."""
    path = Path(folder) / CONFIG_FILE
    return path.read_text() if path.exists() else None


def write_data_record(folder: Path, record: dict[str, Any]) -> None:
    write_json(Path(folder) / DATA_FILE, record)


def read_data_record(folder: Path, missing_ok: bool = False) -> dict[str, Any]:
    """``data.json``: what the model was trained on (``{}`` when absent and ``missing_ok``)."""
    path = Path(folder) / DATA_FILE
    return _read_json_or(path, {}) if missing_ok else read_json(path)


def data_record_path(folder: Path) -> Path:
    return Path(folder) / DATA_FILE


def copy_data_record(run_dir: Path, sub: Path) -> None:
    """Copy the run's ``data.json`` into a training folder, so that it stands alone."""
    shutil.copyfile(Path(run_dir) / DATA_FILE, Path(sub) / DATA_FILE)


def write_environment(folder: Path, record: dict[str, Any]) -> None:
    write_json(Path(folder) / ENV_FILE, record)


def read_environment(folder: Path) -> dict[str, Any] | None:
    """``env.json`` (software, hardware, data hash), or ``None`` when the run has none."""
    path = Path(folder) / ENV_FILE
    return read_json(path) if path.exists() else None


def read_experiment_record(run_dir: Path) -> dict[str, Any]:
    """``experiment.json``: seeds and status of the experiment."""
    return read_json(Path(run_dir) / EXPERIMENT_FILE)


def update_experiment_record(run_dir: Path, **fields: Any) -> None:
    """Set ``fields`` in the run's ``experiment.json`` (other keys are kept)."""
    path = Path(run_dir) / EXPERIMENT_FILE
    record = read_json(path) if path.exists() else {}
    record.update(fields)
    write_json(path, {k: v for k, v in record.items() if v is not None})


def is_failed_run(run_dir: Path) -> bool:
    """A run folder whose experiment failed, or a stub in which nothing was trained."""
    record = Path(run_dir) / EXPERIMENT_FILE
    if record.is_file():
        try:
            status = read_json(record).get("status")
        except (OSError, ValueError):
            return False
        if status in ("failed", "finished"):
            return status == "failed"
    # a stub: only the files written before training starts
    entries = {p.name for p in Path(run_dir).iterdir()}
    return bool(entries) and entries <= {CONFIG_FILE, DATA_FILE, EXPERIMENT_FILE, ENV_FILE}


def has_metrics(folder: Path) -> bool:
    return (Path(folder) / METRICS_FILE).exists()


def metrics_path(folder: Path) -> Path:
    return Path(folder) / METRICS_FILE


def read_metrics(folder: Path, missing_ok: bool = False) -> dict[str, Any]:
    """``metrics.json`` of a training folder (its result) or of a run (summary and runs);
    ``{}`` when absent and ``missing_ok``."""
    path = Path(folder) / METRICS_FILE
    return _read_json_or(path, {}) if missing_ok else read_json(path)


def write_metrics(folder: Path, result: dict[str, Any]) -> None:
    write_json(Path(folder) / METRICS_FILE, result)


def write_error_log(folder: Path, text: str) -> Path:
    """``error.txt``: the traceback of a training run that failed in a worker process."""
    path = Path(folder) / ERROR_FILE
    path.write_text(text)
    return path


def error_log_path(folder: Path) -> Path:
    return Path(folder) / ERROR_FILE


def write_artifacts(folder: Path, artifacts: dict[str, Any]) -> None:
    """``artifacts.json``: what a model exposes after training (generated labels, ...)."""
    write_json(Path(folder) / ARTIFACTS_FILE, artifacts)


def read_artifacts(folder: Path) -> dict[str, Any]:
    """``artifacts.json`` of a training folder or a run, ``{}`` when it has none."""
    return _read_json_or(Path(folder) / ARTIFACTS_FILE, {})


def write_predictions(folder: Path, ids: Sequence[str], video_ids: Sequence[str],
                      labels: Sequence[float], predictions: Sequence[float]) -> None:
    """``predictions.csv``: one row per test clip (``PREDICTION_COLUMNS``)."""
    with (Path(folder) / PREDICTIONS_FILE).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PREDICTION_COLUMNS)
        writer.writerows(zip(ids, video_ids, labels, predictions))


def predictions_files(run_dir: Path) -> list[Path]:
    """Every ``predictions.csv`` of a run in a stable order, or that of ``run_dir`` itself when
    it is one training folder."""
    run_dir = Path(run_dir)
    found = [folder / PREDICTIONS_FILE
             for folder in training_dirs(run_dir, holding=PREDICTIONS_FILE)]
    if not found and (run_dir / PREDICTIONS_FILE).exists():
        return [run_dir / PREDICTIONS_FILE]
    return found


def read_predictions(folder: Path) -> list[dict[str, str]]:
    """Rows of a training folder's ``predictions.csv`` (``[]`` when it has none)."""
    path = Path(folder) / PREDICTIONS_FILE
    return _read_csv(path) if path.exists() else []


def read_predictions_file(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and rows of one ``predictions.csv`` (a path from :func:`predictions_files`),
    for a reader that checks the columns itself."""
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def read_epochs(folder: Path) -> list[dict[str, str]]:
    """Rows of a training folder's ``epochs.csv``."""
    return _read_csv(Path(folder) / EPOCHS_FILE)


def append_epoch_row(folder: Path, row: dict[str, Any]) -> None:
    """Add one epoch's row to ``epochs.csv``; a column first reported now is added to every row
    (a model may report a new loss term from epoch 2)."""
    path = Path(folder) / EPOCHS_FILE
    if path.exists():
        with path.open() as handle:
            fieldnames = next(csv.reader(handle))
        missing = [k for k in row if k not in fieldnames]
        if missing:
            rows = _read_csv(path)
            fieldnames += missing
            with path.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)
    else:
        fieldnames = list(row)
        with path.open("w", newline="") as handle:
            csv.DictWriter(handle, fieldnames=fieldnames).writeheader()
    with path.open("a", newline="") as handle:
        csv.DictWriter(handle, fieldnames=fieldnames).writerow(row)


def keep_epoch_rows_up_to(folder: Path, epoch: int) -> None:
    """Drop ``epochs.csv`` rows after ``epoch`` (atomically; nothing when there is no log)."""
    path = Path(folder) / EPOCHS_FILE
    if not path.exists():
        return
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fieldnames = reader.fieldnames or []
        rows = [r for r in reader if int(r["epoch"]) <= epoch]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def discard_unfinished_training(folder: Path) -> None:
    """Delete what an interrupted first epoch left (epoch log, selected weights) in a training
    folder that holds no resumable ``last.pt``; nothing when it holds one."""
    folder = Path(folder)
    if (folder / LAST_CHECKPOINT).exists():
        return
    for stale in (EPOCHS_FILE, BEST_WEIGHTS, BEST_METADATA):
        (folder / stale).unlink(missing_ok=True)


def write_results_tables(run_dir: Path, header: Sequence[str], rows: Iterable[Sequence[Any]],
                         markdown: str, summary: dict, results: list[dict[str, Any]]) -> None:
    """The run's results: ``results.csv`` (``header`` then ``rows``), ``results.md``
    (``markdown``) and ``metrics.json`` (``summary`` and every run's ``results``)."""
    run_dir = Path(run_dir)
    with (run_dir / RESULTS_CSV).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    (run_dir / RESULTS_MD).write_text(markdown)
    write_metrics(run_dir, {"summary": summary, "runs": results})


def results_markdown_path(run_dir: Path) -> Path:
    return Path(run_dir) / RESULTS_MD


def evaluation_file_name(data_path: str | Path | None, split: str) -> str:
    """``evaluation.json`` for the run's own test parts; one file per other data and split, so
    scoring other data never overwrites an earlier evaluation."""
    if data_path is None:
        return EVALUATION_FILE
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(data_path).name)
    return f"evaluation-{stem}-{split}.json"


def write_evaluation(run_dir: Path, data_path: str | Path | None, split: str,
                     report: dict[str, Any]) -> Path:
    path = Path(run_dir) / evaluation_file_name(data_path, split)
    write_json(path, report)
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))
