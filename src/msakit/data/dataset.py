"""The in-memory dataset every reader produces and every model consumes.

A dataset is a set of named splits (``train``/``valid``/``test``, or a single ``all`` split for
files that hold one split, which grouped cross-validation then divides). Each split stores one row
per clip. Audio and vision are kept per clip at their *true* length, so nothing downstream has to
guess which padding is real.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

SPLIT_NAMES = ("train", "valid", "test")
MODALITIES = ("text", "audio", "vision")

#: Label range per dataset family (SIMS labels are in [-1, 1], MOSI/MOSEI in [-3, 3]).
LABEL_RANGES: dict[str, tuple[float, float]] = {
    "mosi": (-3.0, 3.0),
    "mosei": (-3.0, 3.0),
    "sims": (-1.0, 1.0),
    "simsv2": (-1.0, 1.0),
    "custom": (-3.0, 3.0),
}


class DataError(ValueError):
    """Bad input data. The message names the file, split, field and what was expected."""


@dataclass
class Split:
    """One split of a dataset: ``N`` clips.

    Attributes:
        ids: ``N`` clip ids, ``"video$_$clip"`` (MMSA convention).
        video_ids: ``N`` video ids (the grouping key for speaker-independent folds).
        texts: ``N`` raw transcripts (never empty).
        labels: ``(N,)`` float32 sentiment intensities.
        audio: ``N`` arrays ``(L_a_i, D_a)`` float32 at their true length, or ``None`` when the
            dataset has no audio.
        vision: ``N`` arrays ``(L_v_i, D_v)`` float32, or ``None``.
        words: for word-aligned data, ``N`` word lists with ``len(words[i]) == L_a_i == L_v_i``
            (one acoustic/visual step per word); ``None`` otherwise.
        extra_labels: further per-clip labels, e.g. SIMS' unimodal ``"T"``, ``"A"``, ``"V"``
            ``(N,)`` arrays.
        positions: ``N`` positions of the clips in their videos (MOSI's clip numbers), for
            text context (:mod:`msakit.data.context`); ``None``: derived from the clip ids.
    """

    ids: list[str]
    video_ids: list[str]
    texts: list[str]
    labels: np.ndarray
    audio: list[np.ndarray] | None = None
    vision: list[np.ndarray] | None = None
    words: list[list[str]] | None = None
    extra_labels: dict[str, np.ndarray] = field(default_factory=dict)
    positions: list[int] | None = None
    #: tokenised items per tokenisation setting, filled by msakit.data.collate.SplitDataset so
    #: that a loader rebuilt every epoch does not tokenise again
    token_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices: Iterable[int]) -> Split:
        """A new split holding the rows at ``indices`` (in that order)."""
        idx = [int(i) for i in indices]

        def pick(values):
            return None if values is None else [values[i] for i in idx]

        return Split(
            ids=[self.ids[i] for i in idx],
            video_ids=[self.video_ids[i] for i in idx],
            texts=[self.texts[i] for i in idx],
            labels=self.labels[idx].copy(),
            audio=pick(self.audio),
            vision=pick(self.vision),
            words=pick(self.words),
            extra_labels={k: v[idx].copy() for k, v in self.extra_labels.items()},
            positions=pick(self.positions),
        )

    @classmethod
    def concat(cls, splits: list[Split]) -> Split:
        """One split holding the rows of ``splits`` in order (they must carry the same fields)."""
        if not splits:
            raise DataError("nothing to concatenate")
        first = splits[0]
        for other in splits[1:]:
            if ((other.audio is None) != (first.audio is None)
                    or (other.vision is None) != (first.vision is None)
                    or (other.words is None) != (first.words is None)
                    or (other.positions is None) != (first.positions is None)
                    or set(other.extra_labels) != set(first.extra_labels)):
                raise DataError("cannot concatenate splits with different fields")

        def join(attribute: str):
            if getattr(first, attribute) is None:
                return None
            return [v for s in splits for v in getattr(s, attribute)]

        return cls(
            ids=join("ids"),
            video_ids=join("video_ids"),
            texts=join("texts"),
            labels=np.concatenate([s.labels for s in splits]).astype(np.float32),
            audio=join("audio"),
            vision=join("vision"),
            words=join("words"),
            positions=join("positions"),
            extra_labels={k: np.concatenate([s.extra_labels[k] for s in splits])
                          for k in first.extra_labels},
        )


@dataclass
class MSADataset:
    """A multimodal sentiment dataset as read from one file or folder.

    Attributes:
        name: dataset family: ``mosi``, ``mosei``, ``sims``, ``simsv2`` or ``custom``.
        source: the file or folder it was read from (used in every error message).
        splits: split name -> :class:`Split`.
        word_aligned: True when audio/vision have one step per transcript word (CMU-SDK
            word-aligned pickles); the text pipeline then expands each step to the word's
            sub-word tokens.
        feature_dims: ``{"audio": D_a, "vision": D_v}`` (0 for an absent modality).
        replaced_nonfinite: how many NaN/±inf values were replaced, per ``"split/field"``.
        extractor: the feature extractor config recorded in the file, when there is one
            (``msakit extract`` writes it; MMSA's own pickles have none).
    """

    name: str
    source: str
    splits: dict[str, Split]
    word_aligned: bool = False
    feature_dims: dict[str, int] = field(default_factory=lambda: {"audio": 0, "vision": 0})
    replaced_nonfinite: dict[str, int] = field(default_factory=dict)
    extractor: dict | None = None

    @property
    def label_range(self) -> tuple[float, float]:
        return LABEL_RANGES.get(self.name, LABEL_RANGES["custom"])

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities present: text always, audio/vision when their dimension is non-zero."""
        return ("text",) + tuple(m for m in ("audio", "vision") if self.feature_dims.get(m, 0) > 0)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(
                f"{self.source}: no split {name!r}; the file holds {sorted(self.splits)}"
            )
        return self.splits[name]
