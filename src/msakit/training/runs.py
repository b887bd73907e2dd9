"""Run directories: one per experiment, never overwritten.

Layout::

    runs/<model>-<dataset>-<YYYYmmdd-HHMMSS>/
        config.yaml          resolved experiment config
        data.json            what the model was trained on (file, dims, extractor, partitions)
        results.csv/.md      one row per (seed, partition) and mean ± std
        metrics.json         aggregate metrics
        seed<S>/<partition>/ one training run
            config.yaml, data.json   copies, so the folder is self-contained
            epochs.csv       per-epoch log (train/valid losses and metrics)
            best.safetensors selected weights (no optimiser state; read with load_best_state)
            best.json        what was selected: epoch, selection metric and value
            last.pt          resumable state (model, optimiser, scheduler, RNG, counters);
                             only while the training run is unfinished (train.keep_last keeps it)
            metrics.json     test metrics of the selected checkpoint
            predictions.csv  test predictions
            artifacts.json   what the model exposes after training (e.g. generated labels)
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
DATA_FILE = "data.json"
BEST_WEIGHTS = "best.safetensors"
BEST_METADATA = "best.json"
LEGACY_BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
METRICS_FILE = "metrics.json"


EXPERIMENT_FILE = "experiment.json"


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
    return bool(entries) and entries <= {CONFIG_FILE, DATA_FILE, EXPERIMENT_FILE, "env.json"}


def update_experiment_record(run_dir: Path, **fields: Any) -> None:
    """Set ``fields`` in the run's ``experiment.json`` (other keys are kept)."""
    path = Path(run_dir) / EXPERIMENT_FILE
    record = read_json(path) if path.exists() else {}
    record.update(fields)
    write_json(path, {k: v for k, v in record.items() if v is not None})


def sub_run_dir(run_dir: Path, seed: int, partition: str) -> Path:
    return Path(run_dir) / f"seed{seed}" / partition


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _clean(value.item())
    if hasattr(value, "tolist"):
        return _clean(value.tolist())
    return value


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
        tmp.write_text(json.dumps(_clean(payload), indent=2))
    tmp.replace(path)


def read_json(path: Path) -> Any:
    """The JSON document in ``path``; :class:`RunError` naming the file if it is not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{path}: not valid JSON ({err}); expected the file msakit wrote "
                       "(restore it or rerun)") from None


class RunError(ValueError):
    """A run folder that cannot be used as asked (resume with other settings, other data)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, foreign, or not this model's."""


def load_checkpoint(path: Path, device: Any = "cpu") -> dict[str, Any]:
    """Load a resumable ``last.pt`` with torch's restricted unpickler (``weights_only=True``).

    A file that would need arbitrary code to load (a hostile or foreign pickle) is refused
    with an error naming it; nothing in it runs.
    """
    import pickle

    import torch

    path = Path(path)
    _require_regular_file(path, "checkpoint")
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refused to load: not a plain msakit checkpoint (tensors, numbers, "
            f"strings and containers only); {str(err).splitlines()[0]}"
        ) from err
    except (EOFError, RuntimeError, OSError, ValueError, TypeError) as err:
        raise CheckpointError(
            f"{path}: unreadable checkpoint (truncated or corrupt): {err}") from err
    if not isinstance(saved, dict) or not isinstance(saved.get("model"), dict):
        raise CheckpointError(f"{path}: not an msakit checkpoint (no 'model' weights in it)")
    return saved


def _require_regular_file(path: Path, what: str) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such {what}")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a regular file, expected a {what}")


def save_best_state(run_dir: Path, state: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Write the selected weights as ``best.safetensors`` and ``metadata`` as ``best.json``.

    Both are written atomically (a temporary file renamed into place); the weights go first,
    so ``best.json`` always describes the weights beside it.
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    # safetensors refuses tensors sharing storage; a contiguous copy of each is what we store
    tensors = {name: value.detach().to("cpu").contiguous().clone()
               for name, value in state.items()}
    tmp = run_dir / (BEST_WEIGHTS + ".tmp")
    with writing(run_dir / BEST_WEIGHTS, tmp):
        save_file(tensors, str(tmp), metadata={"format": "msakit-best-weights"})
    tmp.chmod(0o644)  # safetensors writes 0600; the run folder's other files are 0644
    tmp.replace(run_dir / BEST_WEIGHTS)
    write_json(run_dir / BEST_METADATA, {"format": "msakit-best-weights", "version": 1,
                                         **metadata})


def load_best_state(run_dir: Path, device: Any = "cpu") -> dict[str, Any]:
    """The selected weights of a training-run folder: the one way to read ``best.safetensors``.

    No pickle is involved. Refuses (:class:`CheckpointError`, naming the file) a missing file,
    a directory, a file that is not safetensors, and weights holding NaN or infinity.

    Returns:
        ``{parameter name: tensor}`` on ``device``, as ``model.load_checkpoint_state_dict``
        takes it.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    path = run_dir / BEST_WEIGHTS
    if not path.exists() and (run_dir / LEGACY_BEST_CHECKPOINT).exists():
        raise CheckpointError(
            f"{run_dir}: holds a {LEGACY_BEST_CHECKPOINT} from an older msakit, which stored the "
            f"best weights as a pickle; this version reads {BEST_WEIGHTS} only: retrain the run"
        )
    _require_regular_file(path, "weights file (best.safetensors)")
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors weights file: {err}") from err
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: weight {name!r} holds NaN or infinite values")
    return state


def load_best_metadata(run_dir: Path) -> dict[str, Any]:
    """``best.json`` of a training-run folder (epoch, selection metric and value)."""
    path = Path(run_dir) / BEST_METADATA
    try:
        return read_json(path)
    except OSError as err:
        raise CheckpointError(f"{path}: unreadable: {err}") from err
    except RunError as err:  # not JSON; the message names the file
        raise CheckpointError(str(err)) from err


def load_state_into(model, state: dict[str, Any], source: Path) -> None:
    """``model.load_checkpoint_state_dict(state)`` with a clear error naming ``source`` when the
    weights do not fit the model (missing or unexpected names, other shapes)."""
    try:
        model.load_checkpoint_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(
            f"{source}: the weights do not fit the {type(model).__name__} model built from the "
            f"run's config: {' '.join(first[:3])[:600]}"
        ) from err


def load_best_into(model, run_dir: Path, device: Any = "cpu") -> None:
    """Load a training-run folder's selected weights onto ``model`` (:func:`load_best_state`)."""
    load_state_into(model, load_best_state(run_dir, device), Path(run_dir) / BEST_WEIGHTS)


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
