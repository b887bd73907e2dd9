"""Datasets shipped inside the package, addressable by name wherever a data path is taken.

``mosi-demo``: the 229 clips of CMU-MOSI's validation videos (10 speakers) with word-aligned
FACET and COVAREP features, the same clips as the CMU-SDK ``word_aligned_valid.pkl`` (features
stored as float16, see ``tools/make_mosi_demo.py``). Cite Zadeh et al. (2016) when you use it;
terms in ``msakit/data/demo/README.md``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from msakit.data.dataset import DataError

#: name -> (file inside msakit/data/demo, dataset family)
PACKAGED_DATASETS: dict[str, tuple[str, str]] = {"mosi-demo": ("mosi_demo.npz", "mosi")}
DEMO_FIELDS = ("segment_ids", "labels", "lengths", "words", "facet", "covarep")


def is_packaged(name: str | Path) -> bool:
    return str(name) in PACKAGED_DATASETS


def packaged_path(name: str) -> Path:
    """The file holding packaged dataset ``name``."""
    file_name, _ = PACKAGED_DATASETS[name]
    return Path(str(resources.files("msakit") / "data" / "demo" / file_name))


def load_demo_arrays(name: str = "mosi-demo") -> dict[str, np.ndarray]:
    """The packaged arrays (see ``tools/make_mosi_demo.py`` for their layout); no pickle."""
    path = packaged_path(name)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: the packaged dataset {name!r} is unreadable ({err}); "
                        "reinstall msakit") from err
    missing = [f for f in DEMO_FIELDS if f not in arrays]
    if missing:
        raise DataError(f"{path}: packaged dataset {name!r} lacks {missing}; reinstall msakit")
    return arrays


def packaged_entries(name: str) -> tuple[list[tuple], str]:
    """Packaged dataset ``name`` as CMU-SDK word-aligned entries and its dataset family.

    The entries are ``((word_ids, facet (L, 47), covarep (L, 74), words), [[label]], segment_id)``,
    the layout of the pickle they came from, so the CMU-SDK reader validates them exactly as it
    validates that pickle (``msakit.data.readers.load_dataset`` does).
    """
    arrays = load_demo_arrays(name)
    ends = np.cumsum(arrays["lengths"])
    starts = ends - arrays["lengths"]
    entries = []
    for i, (start, end) in enumerate(zip(starts, ends)):
        words = [str(w) for w in arrays["words"][start:end]]
        entries.append((
            (np.arange(len(words)), arrays["facet"][start:end].astype(np.float32),
             arrays["covarep"][start:end].astype(np.float32), words),
            [[float(arrays["labels"][i])]],
            str(arrays["segment_ids"][i]),
        ))
    _, family = PACKAGED_DATASETS[name]
    return entries, family
