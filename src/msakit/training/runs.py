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
            best.pt          selected checkpoint ({"model": state, "epoch": ..., ...})
            last.pt          resumable state (model, optimiser, scheduler, RNG, counters)
            metrics.json     test metrics of the selected checkpoint
            predictions.csv  test predictions
            artifacts.json   what the model exposes after training (e.g. generated labels)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
DATA_FILE = "data.json"
BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
METRICS_FILE = "metrics.json"


def new_run_dir(output_dir: str | Path, model: str, dataset: str, name: str | None = None) -> Path:
    """Create a fresh run directory; an existing one is never reused."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    base = name or f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, n = root / base, 1
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


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (a crash never leaves half a file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=2))
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def load_checkpoint(path: Path, device: str | "torch.device" = "cpu") -> dict[str, Any]:
    """Load a checkpoint with torch's restricted unpickler (``weights_only=True``).

    A file that would need arbitrary code to load (a hostile or foreign pickle) is refused
    with an error naming it; nothing in it runs.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused to load: not a plain msakit checkpoint (tensors, numbers, "
            f"strings and containers only); {str(err).splitlines()[0]}"
        ) from err
    except (EOFError, RuntimeError) as err:
        raise ValueError(f"{path}: unreadable checkpoint (truncated or corrupt): {err}") from err


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Training-run folders under ``run_dir`` (itself if it is one), in a stable order."""
    run_dir = Path(run_dir)
    if (run_dir / BEST_CHECKPOINT).exists():
        return [run_dir]
    found = sorted(p.parent for p in run_dir.glob(f"seed*/*/{BEST_CHECKPOINT}"))
    if not found:
        raise FileNotFoundError(f"{run_dir}: no trained checkpoint ({BEST_CHECKPOINT}) found")
    return found
