"""Shared fixtures. Real data lives in ../shared/data (beside the repository); tests that need it
skip with the reason when it is absent (e.g. on a user's machine)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MSAKIT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# One share of the cores per pytest-xdist worker: two workers with two threads each on two cores
# spend much of their time waiting on each other's threads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
TEST_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(TEST_THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(TEST_THREADS))  # the CLI processes tests start


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set MSAKIT_SHARED_DATA to its folder)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder holding the real datasets (``mosi/...``)."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def mosi_word_aligned(shared_data) -> Path:
    """CMU-SDK word-aligned pickle of the 229 MOSI valid clips."""
    return _require(shared_data / "mosi" / "word_aligned_valid.pkl")


@pytest.fixture(scope="session")
def mosi_label_dir(shared_data) -> Path:
    """Folder with MOSI's label.csv (transcripts, labels, standard split)."""
    return _require(shared_data / "mosi")


@pytest.fixture(scope="session")
def mosi_raw_dir(shared_data) -> Path:
    """Two raw MOSI clips (a .wav and an .mp4)."""
    return _require(shared_data / "mosi" / "raw")


@pytest.fixture
def seeded():
    """Seed every RNG for a deterministic test."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _private_msakit_cache(tmp_path_factory):
    """Trainings in tests keep their language-model cache in a temporary folder, not ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MSAKIT_CACHE", str(tmp_path_factory.mktemp("msakit-cache")))
        yield


def pytest_addoption(parser):
    parser.addoption(
        "--parity-report", metavar="FILE", default=None,
        help="record every comparison the parity tests (tests/parity) make, with its max abs "
             "difference, scale and tolerance, to FILE (JSON; read by tools/parity_report.py)")
