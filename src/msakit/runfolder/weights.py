"""The trained weights of a training folder: ``best.safetensors`` + ``best.json`` (the selected
weights) and ``last.pt`` (the resumable state). The one place that reads or writes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from msakit.runfolder.records import (
    BEST_METADATA,
    BEST_WEIGHTS,
    LAST_CHECKPOINT,
    LEGACY_BEST_CHECKPOINT,
    RunError,
    read_json,
    write_json,
    writing,
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, foreign, or not this model's."""


def last_checkpoint_path(folder: Path) -> Path:
    return Path(folder) / LAST_CHECKPOINT


def has_last_checkpoint(folder: Path) -> bool:
    return (Path(folder) / LAST_CHECKPOINT).exists()


def has_best_weights(folder: Path) -> bool:
    return (Path(folder) / BEST_WEIGHTS).is_file()


def save_last_checkpoint(folder: Path, payload: dict[str, Any]) -> None:
    """Write the resumable state as ``last.pt`` atomically (a temporary file renamed)."""
    import torch

    tmp = Path(folder) / (LAST_CHECKPOINT + ".tmp")
    with writing(Path(folder) / LAST_CHECKPOINT, tmp):
        torch.save(payload, tmp)
    tmp.replace(Path(folder) / LAST_CHECKPOINT)


def drop_last_checkpoint(folder: Path) -> None:
    """Delete ``last.pt`` (a finished training run needs no optimiser state)."""
    (Path(folder) / LAST_CHECKPOINT).unlink(missing_ok=True)


def drop_weights(folder: Path) -> None:
    """Delete every weights file of a training folder (``best.safetensors``, ``best.json``,
    ``last.pt``); its records stay. A tuning trial keeps no model copies nobody evaluates."""
    for name in (BEST_WEIGHTS, BEST_METADATA, LAST_CHECKPOINT):
        (Path(folder) / name).unlink(missing_ok=True)


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
