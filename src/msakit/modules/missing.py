"""Random missing time steps for missing-modality training (TFR-Net; MMSA's ``data_missing``).

MMSA drops each real step of a modality with probability ``r`` (``missing_rate``): a dropped
audio/vision step becomes a zero row, a dropped token becomes ``[UNK]`` (the first and the last
real token, ``[CLS]`` and ``[SEP]``, are always kept). It draws the masks once per split with
NumPy seeded by ``missing_seed``, so each clip keeps its masks for the whole run, in every split.

Here a mask is drawn on the device without a host sync, either

* per clip (:func:`clip_uniforms`): a fixed function of the clip's id, the step and the seed, so a
  clip has the same masks in every epoch and whatever its batch (MMSA's fixed masks), or
* per batch: fresh uniforms from the global RNG at every call (masking as augmentation).

Shapes: ``real (B, L)`` bool, True at real steps -> ``kept (B, L)`` bool, True at real steps
that are kept (MMSA's ``missing_mask``); ``real & ~kept`` are the dropped steps.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch

_MASK31 = 0x7FFFFFFF
_MIX = (0x2C1B3C6D, 0x297A2D39, 0x5BD1E995 & _MASK31)


def clip_keys(ids: Sequence[str], device: torch.device | str) -> torch.Tensor:
    """``(B,)`` int64: a 31-bit key of each clip id (CRC-32), for :func:`clip_uniforms`."""
    keys = [zlib.crc32(str(clip_id).encode()) & _MASK31 for clip_id in ids]
    return torch.tensor(keys, dtype=torch.long).to(device, non_blocking=True)


def clip_uniforms(keys: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
    """``(B,)`` clip keys -> ``(B, steps)`` float64 pseudo-uniforms in ``[0, 1)``, a fixed
    function of (key, step, seed): integer hashing (xor-shift and multiply, 31-bit) on the
    keys' device."""
    step = torch.arange(steps, device=keys.device, dtype=torch.long)
    x = (keys.view(-1, 1) * 1_000_003 + step.view(1, -1) + seed * 0x9E3779B1) & _MASK31
    for factor in _MIX:
        x = ((x ^ (x >> 15)) * factor) & _MASK31
    x = x ^ (x >> 16)
    return x.double() / float(_MASK31 + 1)


def draw_kept_steps(real: torch.Tensor, rate: float, uniforms: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """MMSA's ``missing_mask``: ``real & (u > rate)``, ``u`` the given ``uniforms`` ``(B, L)``
    (:func:`clip_uniforms`) or fresh ``torch.rand`` values."""
    if uniforms is None:
        uniforms = torch.rand(real.shape, device=real.device, dtype=torch.float64)
    return real & (uniforms > rate)


def keep_text_ends(kept: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Keep the first and the last real token of each clip (MMSA: ``[CLS]`` and ``[SEP]`` are
    never dropped): ``kept (B, L)`` bool, ``lengths (B,)`` -> ``(B, L)`` bool."""
    steps = torch.arange(kept.shape[1], device=kept.device).view(1, -1)
    ends = (steps == 0) | (steps == (lengths.view(-1, 1) - 1))
    return kept | (ends & (lengths.view(-1, 1) > 0))
