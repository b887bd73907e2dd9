"""Provenance of a run: the software and hardware it ran on, and which data file it read.

:func:`file_sha256` is the one data-file hash of the package (run records, resume checks,
``msakit compare``'s same-data check all use it). :func:`environment_record` is what a run folder's
``env.json`` holds (written by :mod:`msakit.runfolder`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from msakit.cpu import cpuinfo_field


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes, or, for a folder (a ``label.csv`` dataset), of its
    ``label.csv``."""
    path = Path(path)
    if path.is_dir():
        path = path / "label.csv"
    return _cached_sha256(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns,
                          chunk_bytes)


@lru_cache(maxsize=32)
def _cached_sha256(path: str, size: int, mtime_ns: int, chunk_bytes: int) -> str:
    """Cached by (path, size, mtime): a multi-GB MOSEI pickle is hashed once per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


#: SHA-256 of the feature pickles MMSA publishes, as listed in thuiar/MMSA's README
#: (section "Datasets", commit a94e65d07fa1ae0d44e552390074b29b0898edfd).
MMSA_PUBLISHED_SHA256 = {
    "78e0f8b5ef8ff71558e7307848fc1fa929ecb078203f565ab22b9daab2e02524":
        "MMSA MOSI/Processed/unaligned_50.pkl",
    "d3994fd25681f9c7ad6e9c6596a6fe9b4beb85ff7d478ba978b124139002e5f9":
        "MMSA MOSI/Processed/aligned_50.pkl",
    "ad8b23d50557045e7d47959ce6c5b955d8d983f2979c7d9b7b9226f6dd6fec1f":
        "MMSA MOSEI/Processed/unaligned_50.pkl",
    "45eccfb748a87c80ecab9bfac29582e7b1466bf6605ff29d3b338a75120bf791":
        "MMSA MOSEI/Processed/aligned_50.pkl",
    "c9e20c13ec0454d98bb9c1e520e490c75146bfa2dfeeea78d84de047dbdd442f":
        "MMSA SIMS/Processed/unaligned_39.pkl",
}


def data_record(path: str | Path) -> dict[str, Any]:
    """The data file's path, size and SHA-256, and whether it is one of MMSA's published pickles.

    A packaged dataset's name (``mosi-demo``) is resolved to the file shipped in the package."""
    from msakit.data.packaged import is_packaged, packaged_path

    name = str(path)
    path = packaged_path(name) if is_packaged(name) else Path(path)
    digest = file_sha256(path)
    hashed = path / "label.csv" if path.is_dir() else path
    known = MMSA_PUBLISHED_SHA256.get(digest)
    if is_packaged(name):
        known = None
    return {
        "name": name,
        "path": str(path.resolve()),
        "hashed_file": str(hashed.resolve()),
        "bytes": hashed.stat().st_size,
        "sha256": digest,
        "mmsa_published": known,
        "identity": known or (f"msakit's packaged dataset {name!r}" if is_packaged(name) else
                              "not one of MMSA's published feature files (by SHA-256)"),
    }


def _git_commit(directory: Path) -> dict[str, Any] | None:
    """The checkout's commit and whether it has uncommitted changes; None outside a checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(directory), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    """The CPU's marketing name ("AMD EPYC 7B13", ...); ``platform.processor()`` is often empty."""
    return cpuinfo_field("model name") or platform.processor() or None


def cpu_record() -> dict[str, Any]:
    """The CPU a run computed on, including PyTorch's kernel path.

    ``capability`` is the instruction set PyTorch's CPU kernels dispatch to (``AVX512``, ``AVX2``,
    ``DEFAULT``, ...; forced with the environment variable ``ATEN_CPU_CAPABILITY``). float32
    results of the same seed are identical on the same path and differ in the last bits between
    paths, which a long training can amplify into a different selected epoch (docs/reproducibility.md).
    ``linear`` is the backend of the fully connected layers (``train.cpu_linear`` as resolved:
    ``onednn`` or ``torch``, :mod:`msakit.modules.linear`).
    """
    import torch

    from msakit.modules.linear import get_cpu_linear

    return {
        "model": _cpu_model(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "capability_forced": os.environ.get("ATEN_CPU_CAPABILITY"),
        "count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "linear": get_cpu_linear(),
    }


def environment_record(data_path: str | Path | None = None) -> dict[str, Any]:
    """What ``env.json`` holds: software, hardware and the data file of a run."""
    import torch

    import msakit

    package_dir = Path(msakit.__file__).resolve().parent
    cuda = torch.cuda.is_available()
    record: dict[str, Any] = {
        "msakit": {"version": msakit.__version__, "location": str(package_dir),
                   "git": _git_commit(package_dir)},
        "python": {"version": platform.python_version(),
                   "implementation": platform.python_implementation(),
                   "executable": sys.executable},
        "packages": {name: _version(name) for name in
                     ("torch", "transformers", "peft", "kernels", "tokenizers", "safetensors",
                      "numpy", "scipy", "scikit-learn", "optuna")},
        "torch": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available()
            else None,
            "cuda_available": cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda else [],
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
        },
        "cpu": cpu_record(),
        "os": {"platform": platform.platform(), "system": platform.system(),
               "release": platform.release()},
    }
    if data_path is not None:
        record["data"] = data_record(data_path)
    return record
