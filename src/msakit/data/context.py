"""Conversational context: the neighbouring utterances of the same video, as a second segment.

A MOSI/MOSEI clip is one utterance of a longer monologue; the utterances before and after it
often make its sentiment clearer (MMML, Wu et al., NAACL 2024, reads the previous and next
utterances). With ``model.text_context`` other than ``none`` each clip is tokenised as

    [CLS] clip [SEP] neighbours [SEP]              (BERT-like; the tokenizer's own pair template)

the clip's tokens first, as segment A (token type 0), at the same positions as without context,
and the neighbours' transcripts, in reading order, as segment B (token type 1); with ``both``
the previous and the next utterances are parted by the separator token. Only the neighbours'
*text* is read, never their labels. The clip's own tokens (its special tokens included) are a
prefix of the sequence: the batch's ``attention_mask`` covers them alone, so every model pools
and attends over the clip as before, while ``lm_attention_mask`` lets the language model read the
whole sequence (see :mod:`msakit.data.collate`).

Neighbours come from the same split only (MOSI's standard split and msakit's folds are by video,
so a video is never split between train and test), ordered by each clip's position in its video
(:attr:`msakit.data.dataset.Split.positions`). Where the data lacks a clip (a user's folder, the
four MOSI clips without a transcript), the nearest clips that exist are used and the clip is
counted in :func:`context_report`.

Token budget: the whole sequence fits ``data.max_text_tokens``. The clip keeps what it would get
without context; the neighbours fill what is left (previous utterances lose their earliest
tokens, next ones their latest; with ``both`` each side gets half, and what one side leaves goes
to the other).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from msakit.data.dataset import DataError, Split

ContextMode = Literal["none", "previous", "next", "both"]
CONTEXT_MODES: tuple[str, ...] = ("none", "previous", "next", "both")
_SHORTHAND = re.compile(r"^(?P<mode>none|previous|prev|next|both)(?::(?P<k>\d+))?$")


@dataclass(frozen=True)
class TextContext:
    """Which neighbours a clip's text is read with.

    Attributes:
        mode: ``none`` (the clip alone), ``previous``, ``next`` or ``both``.
        k: how many utterances on each side that ``mode`` names (ignored for ``none``).
    """

    mode: ContextMode = "none"
    k: int = 1

    def __post_init__(self) -> None:
        if self.mode not in CONTEXT_MODES:
            raise ValueError(f"text context mode {self.mode!r}; use one of {', '.join(CONTEXT_MODES)}")
        if self.k < 1:
            raise ValueError(f"text context k={self.k}; use k >= 1")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def previous(self) -> int:
        return self.k if self.mode in ("previous", "both") else 0

    @property
    def next(self) -> int:
        return self.k if self.mode in ("next", "both") else 0

    def key(self) -> tuple[str, int]:
        """Part of every cache key of tokenised text (``("none", 0)`` without context)."""
        return (self.mode, self.k if self.enabled else 0)

    def __str__(self) -> str:
        return "none" if not self.enabled else f"{self.mode}:{self.k}"

    @classmethod
    def parse(cls, value: TextContext | str | dict | None) -> TextContext:
        """From ``none``, ``previous:2`` (``prev:2``), ``next:1``, ``both:1`` (``k`` defaults to
        1), a mapping ``{mode, k}`` or a :class:`TextContext`."""
        if value is None:
            return cls()
        if isinstance(value, TextContext):
            return value
        if isinstance(value, dict):
            return cls(**value)
        if hasattr(value, "mode") and hasattr(value, "k"):  # the config's pydantic model
            return cls(value.mode, value.k)
        match = _SHORTHAND.match(str(value).strip().lower())
        if not match:
            raise ValueError(f"text context {value!r}; use none, previous:K, next:K or both:K")
        mode = "previous" if match["mode"] == "prev" else match["mode"]
        return cls(mode, int(match["k"] or 1))


def video_positions(split: Split) -> list[int]:
    """Each clip's position in its video: ``split.positions`` when the reader kept them, else
    the clip number of an integer clip id (``video$_$3`` -> 3), else the order of the clips of
    that video in the split."""
    if split.positions is not None:
        return [int(p) for p in split.positions]
    return clip_positions(split.video_ids, [i.rpartition("$_$")[2] for i in split.ids])


def clip_positions(video_ids: list[str], clip_ids: list[str]) -> list[int]:
    """Positions from clip ids: their integer values when every clip id is an integer (MOSI's
    ``clip_id``), else 1, 2, ... in the given order within each video."""
    try:
        return [int(c) for c in clip_ids]
    except ValueError:
        seen: dict[str, int] = {}
        positions = []
        for video in video_ids:
            seen[video] = seen.get(video, 0) + 1
            positions.append(seen[video])
        return positions


@dataclass
class Neighbours:
    """The context rows of every clip of a split.

    Attributes:
        previous: per clip, the rows of its previous neighbours in reading order (nearest last).
        next: per clip, the rows of its next neighbours in reading order (nearest first).
        gaps: rows of clips some of whose neighbours skip a position the data lacks.
        short: rows of clips with fewer neighbours than asked (the start or end of a video).
    """

    previous: list[list[int]]
    next: list[list[int]]
    gaps: list[int] = field(default_factory=list)
    short: list[int] = field(default_factory=list)


def find_neighbours(split: Split, context: TextContext) -> Neighbours:
    """The ``context.previous`` clips before and ``context.next`` clips after each clip in its
    video (same split), by position; missing positions are skipped (the nearest existing clips
    are used) and reported in ``gaps``."""
    positions = video_positions(split)
    by_video: dict[str, list[int]] = {}
    for row, video in enumerate(split.video_ids):
        by_video.setdefault(video, []).append(row)
    previous: list[list[int]] = [[] for _ in range(len(split))]
    following: list[list[int]] = [[] for _ in range(len(split))]
    gaps, short = [], []
    for video, rows in by_video.items():
        rows = sorted(rows, key=positions.__getitem__)
        ordered = [positions[r] for r in rows]
        if len(set(ordered)) != len(ordered):
            raise DataError(f"video {video!r} has two clips at the same position; clip ids must "
                            "number each video's clips uniquely for text context")
        for i, row in enumerate(rows):
            before = rows[max(0, i - context.previous):i] if context.previous else []
            after = rows[i + 1:i + 1 + context.next]
            previous[row], following[row] = before, after
            here = positions[row]
            used_before = [positions[r] for r in before]
            used_after = [positions[r] for r in after]
            if (used_before != list(range(here - len(before), here))
                    or used_after != list(range(here + 1, here + 1 + len(after)))):
                gaps.append(row)  # a neighbour's position is absent: the next one was used
            elif len(before) < context.previous or len(after) < context.next:
                short.append(row)
    return Neighbours(previous, following, sorted(gaps), sorted(short))


def context_report(split: Split, context: TextContext) -> dict:
    """What the context of a split's clips is made of (written to the run folder)."""
    if not context.enabled:
        return {"text_context": "none", "clips": len(split)}
    found = find_neighbours(split, context)
    counts = [len(p) + len(n) for p, n in zip(found.previous, found.next)]
    return {
        "text_context": str(context),
        "clips": len(split),
        "clips_with_all_neighbours": len(split) - len(found.gaps) - len(found.short),
        "clips_at_video_edge": len(found.short),
        "clips_with_missing_neighbours": len(found.gaps),
        "missing_neighbour_examples": [split.ids[r] for r in found.gaps[:10]],
        "mean_neighbours": float(np.mean(counts)) if counts else 0.0,
        "note": "missing neighbours (positions absent from the data) fall back to the nearest "
                "clips of the same video that exist; only the neighbours' transcripts are read",
    }


def context_texts(split: Split, context: TextContext) -> list[tuple[list[str], list[str]]]:
    """Per clip, the transcripts of its previous and next neighbours (reading order)."""
    found = find_neighbours(split, context)
    return [([split.texts[r] for r in before], [split.texts[r] for r in after])
            for before, after in zip(found.previous, found.next)]

