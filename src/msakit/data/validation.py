"""Checks shared by the readers, and the feature-dimension check used at evaluation time."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import numpy as np

from msakit.data.dataset import DataError, MSADataset

NonfinitePolicy = Literal["replace", "error"]
ID_SEPARATOR = "$_$"


def split_clip_id(clip_id: str, where: str, row: int) -> str:
    """The video id of an MMSA clip id ``"video$_$clip"``."""
    video, separator, clip = clip_id.rpartition(ID_SEPARATOR)
    if not separator or not video or not clip:
        raise DataError(
            f"{where}: id of row {row} is {clip_id!r}, expected 'video{ID_SEPARATOR}clip' (the "
            "video id groups clips for speaker-independent folds)"
        )
    return video


def check_texts(
    texts: list[str], ids: list[str], where: str,
    row_label: Callable[[int], str] | None = None,
) -> list[str]:
    """Strip transcripts; refuse empty ones (a clip with no words has nothing to tokenise)."""
    cleaned = [str(t).strip() for t in texts]
    for i, text in enumerate(cleaned):
        if not text:
            at = row_label(i) if row_label else f"row {i}"
            raise DataError(f"{where}: empty transcript for clip {ids[i]!r} ({at})")
    return cleaned


def check_labels(
    labels: np.ndarray, label_range: tuple[float, float], dataset_name: str, where: str,
    field: str, ids: list[str],
) -> None:
    """Refuse NaN/inf labels and labels outside the dataset family's range."""
    low, high = label_range
    bad = np.flatnonzero(~np.isfinite(labels))
    if bad.size:
        row = int(bad[0])
        raise DataError(
            f"{where}: {field} of clip {ids[row]!r} (row {row}) is {labels[row]}; labels must "
            "be finite"
        )
    # labels are float32: allow rounding at the bounds
    outside = np.flatnonzero((labels < low - 1e-5) | (labels > high + 1e-5))
    if outside.size:
        row = int(outside[0])
        raise DataError(
            f"{where}: {field} of clip {ids[row]!r} (row {row}) is {labels[row]:g}, outside "
            f"[{low:g}, {high:g}] of dataset {dataset_name!r} ({outside.size} such clips); pass "
            "the right dataset (e.g. --dataset) if the family was detected wrongly"
        )


#: The largest feature magnitude whose square is finite in float32 (about 1.8e19).
LARGEST_FEATURE = float(np.sqrt(np.finfo(np.float32).max))


def clean_features(
    clips: list[np.ndarray], where: str, count_key: str, nonfinite: NonfinitePolicy,
    replaced: dict[str, int], ids: list[str], copy: bool = True,
) -> list[np.ndarray]:
    """Per-clip ``(L_i, D)`` contiguous float32 arrays with NaN/±inf handled.

    Only the true-length part of each clip is inspected (padding is discarded before this).
    A finite value above :data:`LARGEST_FEATURE` in magnitude is refused whatever the policy.
    With ``nonfinite="replace"`` the values become 0 and their number is added to
    ``replaced[count_key]``; with ``"error"`` the first one is reported. ``copy=False`` keeps
    clips that are already contiguous float32 (views into a caller-owned array, whose
    non-finite values are then replaced in place) instead of copying them.
    """
    out = []
    total = 0
    for i, clip in enumerate(clips):
        if copy:
            array = np.array(clip, dtype=np.float32, copy=True)
        else:
            array = np.ascontiguousarray(clip, dtype=np.float32)
        finite = np.isfinite(array)
        if not finite.all():
            count = int(array.size - finite.sum())
            if nonfinite == "error":
                step, dim = (int(v) for v in np.argwhere(~finite)[0])
                raise DataError(
                    f"{where}: clip {ids[i]!r} (row {i}) has {count} non-finite value(s), first "
                    f"{array[step, dim]} at step {step}, dim {dim}; load with "
                    "nonfinite='replace' to replace them by 0"
                )
            array[~finite] = 0.0
            total += count
        if array.size and float(np.abs(array).max()) > LARGEST_FEATURE:
            step, dim = (int(v) for v in np.argwhere(np.abs(array) > LARGEST_FEATURE)[0])
            raise DataError(
                f"{where}: clip {ids[i]!r} (row {i}) has the value {array[step, dim]:.4g} at "
                f"step {step}, dim {dim}; expected features below {LARGEST_FEATURE:.3g} in "
                "magnitude (larger ones overflow float32 when squared, e.g. in normalisation "
                "and losses): rescale the features"
            )
        out.append(array)
    if total:
        replaced[count_key] = replaced.get(count_key, 0) + total
    return out


def check_feature_dims(dataset: MSADataset, dims, modalities=("text", "audio", "vision")) -> None:
    """Refuse a dataset whose feature dimensions differ from what a model was built for.

    Args:
        dataset: the data about to be fed to the model.
        dims: the model's :class:`~msakit.models.base.FeatureDims` (or a mapping with ``audio`` and
            ``vision``). A model dim of 0 means the model does not use that modality, so any
            dataset dim is accepted for it.
        modalities: the modalities the model is fed (``data.modalities``); others are not
            checked.
    """
    wanted = dict(dims) if isinstance(dims, Mapping) else {
        "audio": int(dims.audio), "vision": int(dims.vision)
    }
    problems = []
    for modality in ("audio", "vision"):
        if modality not in modalities:
            continue
        expected = int(wanted.get(modality, 0))
        found = int(dataset.feature_dims.get(modality, 0))
        if expected and found != expected:
            problems.append(
                f"{modality} is {found}-d but the model expects {expected}-d"
                if found else f"it has no {modality} but the model expects {expected}-d {modality}"
            )
    if problems:
        raise DataError(
            f"{dataset.source}: wrong feature dimensions for the model: {'; '.join(problems)} "
            "(the model was trained on features from another extractor or dataset)"
        )


def feature_dims_for(dataset: MSADataset, modalities=("text", "audio", "vision")):
    """The :class:`~msakit.models.base.FeatureDims` to build a model for ``dataset`` when only
    ``modalities`` are fed (an excluded or absent modality has dim 0, matching the ``(B, 1, 0)``
    tensors :func:`msakit.data.collate.collate` gives it)."""
    from msakit.models.base import FeatureDims

    def dim(modality: str) -> int:
        return int(dataset.feature_dims.get(modality, 0)) if modality in modalities else 0

    return FeatureDims(audio=dim("audio"), vision=dim("vision"))
