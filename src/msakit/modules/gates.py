"""Gated fusion blocks.

:class:`CrossGatedSum` is SAGE-Net's fusion (poster, "gated fusion" equations)::

    G_a = σ(W_a a + b_a),   W_t = G_a ⊙ t
    G_t = σ(W_t t + b_t),   W_a = G_t ⊙ a
    F   = W_t + W_a

Each modality decides, per feature, how much of the *other* modality passes; the two gated
vectors are summed, so the fused vector has the width of one input (half of a concatenation).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class CrossGatedSumOutput(NamedTuple):
    """Result of :class:`CrossGatedSum`.

    Attributes:
        fused: ``(B, D)`` F = G_a ⊙ t + G_t ⊙ a.
        gate_on_first: ``(B, D)`` G_a, computed from the second input, applied to the first.
        gate_on_second: ``(B, D)`` G_t, computed from the first input, applied to the second.
    """

    fused: torch.Tensor
    gate_on_first: torch.Tensor
    gate_on_second: torch.Tensor


class CrossGatedSum(nn.Module):
    """Two vectors gate each other and are summed (SAGE-Net's fusion).

    With ``first = t`` (text) and ``second = a`` (audio) this is the poster's equations
    exactly: ``gate_from_second`` holds (W_a, b_a), ``gate_from_first`` holds (W_t, b_t).

    Args:
        dim: width ``D`` of both inputs (and of the output).

    Shapes:
        ``first``, ``second``: ``(..., D)`` -> :class:`CrossGatedSumOutput` of ``(..., D)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.gate_from_second = nn.Linear(dim, dim)  # W_a, b_a
        self.gate_from_first = nn.Linear(dim, dim)  # W_t, b_t

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> CrossGatedSumOutput:
        if first.shape != second.shape or first.shape[-1] != self.dim:
            raise ValueError(
                f"CrossGatedSum expects two inputs of the same shape (..., {self.dim}); got "
                f"{tuple(first.shape)} and {tuple(second.shape)}"
            )
        gate_on_first = torch.sigmoid(self.gate_from_second(second))  # G_a
        gate_on_second = torch.sigmoid(self.gate_from_first(first))  # G_t
        fused = gate_on_first * first + gate_on_second * second  # F = W_t + W_a
        return CrossGatedSumOutput(fused, gate_on_first, gate_on_second)


def gate_values(extras: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    """Per-clip mean gate value of every ``gate_*`` extra over an evaluated split.

    Args:
        extras: a model's extras concatenated over the split; ``gate_*`` are ``(N,)`` or
            ``(N, D)`` values in [0, 1].

    Returns:
        ``{name: N floats}``, what ``msakit report`` draws as gate distributions.
    """
    out = {}
    for name, value in sorted(extras.items()):
        if name.startswith("gate_") and value.numel():
            value = value.float()
            per_clip = value.reshape(value.shape[0], -1).mean(dim=1)
            out[name.removeprefix("gate_")] = [round(v, 5) for v in per_clip.tolist()]
    return out
