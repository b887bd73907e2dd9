"""Small batches from the real word-aligned MOSI pickle, built by hand for model tests.

Temporary: once ``msakit.data`` lands, tests switch to ``load_dataset`` + the collate function.
The pickle is read with a restricted unpickler that admits only NumPy arrays.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from msakit.lm import load_tokenizer


class _NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load_clips(path: Path) -> list[dict]:
    with open(path, "rb") as handle:
        rows = _NumpyOnlyUnpickler(handle).load()
    clips = []
    for (word_ids, facet, covarep, words), label, segment in rows:
        clips.append({
            "words": list(words),
            "vision": np.nan_to_num(np.asarray(facet, dtype=np.float32)),
            "audio": np.nan_to_num(np.asarray(covarep, dtype=np.float32)),
            "label": float(np.asarray(label).reshape(-1)[0]),
            "id": segment,
        })
    return clips


def make_batch(clips: list[dict], language_model: str = "all-MiniLM-L6-v2",
               modalities=("text", "audio", "vision"), extra_padding: int = 0) -> dict:
    """The documented batch dict (see msakit.models.base) for ``clips``; one step per word."""
    batch: dict = {
        "labels": torch.tensor([c["label"] for c in clips], dtype=torch.float32),
        "index": torch.arange(len(clips)),
        "ids": [c["id"] for c in clips],
    }
    if "text" in modalities:
        tokens = load_tokenizer(language_model)(
            [" ".join(c["words"]) for c in clips], padding=True, truncation=True,
            max_length=64, return_tensors="pt",
        )
        batch["input_ids"] = tokens["input_ids"]
        batch["attention_mask"] = tokens["attention_mask"]
        batch["token_type_ids"] = tokens.get(
            "token_type_ids", torch.zeros_like(tokens["input_ids"])
        )
    for modality in ("audio", "vision"):
        if modality not in modalities:
            continue
        lengths = torch.tensor([len(c[modality]) for c in clips])
        steps = int(lengths.max()) + extra_padding
        dim = clips[0][modality].shape[1]
        padded = torch.zeros(len(clips), steps, dim)
        for i, c in enumerate(clips):
            padded[i, : len(c[modality])] = torch.from_numpy(c[modality])
        batch[modality] = padded
        batch[f"{modality}_lengths"] = lengths
        batch[f"{modality}_mask"] = torch.arange(steps)[None, :] < lengths[:, None]
    return batch
