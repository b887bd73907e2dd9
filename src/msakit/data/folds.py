"""Speaker-independent cross-validation: folds grouped by video.

MOSI-style data has many clips per video (one speaker per video), so clips of one video must never
sit on both sides of a split: ``grouped_folds`` assigns whole videos to the K test folds
(scikit-learn's ``GroupKFold``, shuffled by ``seed``) and then holds out whole training videos as
the validation part (``GroupShuffleSplit``) used to select the checkpoint.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from msakit.data.dataset import SPLIT_NAMES, DataError, MSADataset, Split


class Fold(NamedTuple):
    """One train/valid/test partition of the data (a CV fold, or the file's own split).

    A named tuple, so ``name, train, valid, test = fold`` works too.

    Attributes:
        name: ``"fold0"`` ... ``"fold{K-1}"``, or ``"standard"`` for the file's own splits.
        train, valid, test: the clips of each part.
    """

    name: str
    train: Split
    valid: Split
    test: Split


def grouped_folds(
    split: Split, k: int, valid_fraction: float = 0.2, seed: int = 0
) -> list[Fold]:
    """K folds of ``split`` with no video in two parts of a fold.

    Every clip is in the test part of exactly one fold. Within each fold, ``valid_fraction`` of
    the training videos (rounded up, at least one) form the validation part.

    Args:
        split: the clips to divide (``split.video_ids`` are the groups).
        k: number of folds, 2 <= k <= number of videos.
        valid_fraction: share of a fold's training videos held out for validation.
        seed: shuffles the assignment of videos to folds and to validation.
    """
    from sklearn.model_selection import GroupKFold, GroupShuffleSplit

    groups = np.asarray(split.video_ids)
    n_videos = len(np.unique(groups))
    if k < 2:
        raise DataError(f"folds must be at least 2, got {k}")
    if n_videos < k + 1:
        raise DataError(
            f"{k} grouped folds need at least {k + 1} videos (each fold's test part needs one, "
            f"its validation part another); the data has {n_videos}"
        )
    if not 0.0 < valid_fraction < 1.0:
        raise DataError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    try:
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    except TypeError as err:  # scikit-learn < 1.6
        raise DataError("grouped folds need scikit-learn >= 1.6 (GroupKFold(shuffle=...))") \
            from err

    positions = np.arange(len(split))
    folds = []
    for number, (train_part, test_part) in enumerate(splitter.split(positions, groups=groups), 1):
        train_groups = groups[train_part]
        if len(np.unique(train_groups)) < 2:
            raise DataError(
                f"fold {number}: its training part has one video, nothing to hold out for "
                "validation; use fewer folds"
            )
        carve = GroupShuffleSplit(n_splits=1, test_size=valid_fraction, random_state=seed + number)
        fit_rows, valid_rows = next(carve.split(train_part, groups=train_groups))
        folds.append(Fold(
            name=f"fold{number - 1}",
            train=split.subset(np.sort(train_part[fit_rows])),
            valid=split.subset(np.sort(train_part[valid_rows])),
            test=split.subset(np.sort(test_part)),
        ))
    return folds


def dataset_splits(
    dataset: MSADataset,
    folds: int | None = None,
    valid_fraction: float = 0.2,
    seed: int = 0,
) -> list[Fold]:
    """The train/valid/test partitions to run an experiment on.

    * ``folds=None``: the file's own ``train``/``valid``/``test`` as one partition named
      ``"standard"``; a file with a single split (``all``) needs ``folds``.
    * ``folds=K``: K grouped folds (see :func:`grouped_folds`) of the ``all`` split, or of
      train+valid+test merged when the file has the standard splits.
    """
    names = set(dataset.splits)
    if folds is None:
        if set(SPLIT_NAMES) <= names:
            return [Fold("standard", *(dataset.splits[s] for s in SPLIT_NAMES))]
        raise DataError(
            f"{dataset.source}: holds split(s) {sorted(names)}, not train/valid/test; pass "
            "--folds K (data.folds) to cross-validate with K folds grouped by video"
        )
    if "all" in names:
        pool = dataset.splits["all"]
    else:
        pool = Split.concat([dataset.splits[s] for s in SPLIT_NAMES if s in names])
    return grouped_folds(pool, folds, valid_fraction, seed)
