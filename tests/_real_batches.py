"""Small real batches for model tests, built with the data layer.

``real_batch(dataset, rows)`` gives the documented batch dict (see :mod:`msakit.models.base`)
for the chosen clips of the 229 word-aligned MOSI clips.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from msakit.data import MSADataset, make_loader
from msakit.data.collate import ALL_MODALITIES


def real_batch(dataset: MSADataset, rows: Sequence[int],
               modalities: Sequence[str] = ALL_MODALITIES, extra_padding: int = 0) -> dict:
    """One batch of the clips at ``rows`` of the dataset's single split.

    ``extra_padding`` appends that many zero steps to audio/vision (and their masks), to check
    that a model reads only the real steps.
    """
    split = dataset.split("all").subset(rows)
    loader = make_loader(split, "all-MiniLM-L6-v2", batch_size=len(rows), modalities=modalities,
                         word_aligned=dataset.word_aligned)
    batch = next(iter(loader))
    if extra_padding:
        for modality in ("audio", "vision"):
            features = batch[modality]
            batch[modality] = torch.cat(
                [features, features.new_zeros(features.shape[0], extra_padding,
                                              features.shape[2])], dim=1)
            mask = batch[f"{modality}_mask"]
            batch[f"{modality}_mask"] = torch.cat(
                [mask, mask.new_zeros(mask.shape[0], extra_padding)], dim=1)
    return batch
