"""Gated transformer layers of MMILN (Xue et al., CCL 2023), sections 3.2.1-3.2.2.

- :class:`GateTransformer` (eqs. 7-12): multi-head self-attention whose residual block is
  controlled by a retain gate ``g_r`` and a compound gate ``g_c`` computed from a mean-pooled
  BiGRU summary of the layer's input.
- :class:`SAGTransformer` (eqs. 15-23): self-attention on the fused (text-centred) stream gives
  the queries of a cross-modal attention whose keys/values are the unimodal multi-head attention
  output, gated element-wise by ``g_s``; the residual block is gated like the GateTransformer's.

Choices the paper leaves open (documented in docs/self_mm_mmiln.md): the BiGRU has ``d/2`` units
per direction so that ``ĥ`` has the model size ``d`` (``W_r, W_c ∈ R^{d×d}``); gate matrices have
no bias, as written in the equations; ``LN`` is LayerNorm; ``FFN`` is Linear(d, d_ff) -> ReLU ->
Dropout -> Linear(d_ff, d) -> Dropout.

With ``gated=False`` (the ``-MFM`` ablation) the BiGRU and all gates are removed: the residual
blocks become a plain post-LN transformer (``LN(attention + x)``) and ``g_s = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from msakit.modules.dropout import Dropout, MultiheadAttention
from msakit.modules.encoders import masked_time_mean


class PooledBiGRU(nn.Module):
    """``ĥ = avgpool(BiGRU(X))`` over the real steps (eqs. 7 and 16).

    Equal to packing the real steps, without reading lengths on the host: the forward direction
    runs over the right-padded input (padding comes after every real step), the backward
    direction over a left-padded copy (padding comes after every real step in its reading
    order); both runs share one call on a doubled batch and the real steps of each are averaged.

    Shapes: ``x (B, L, d)``, ``mask (B, L)`` bool, real steps first -> ``(B, d)``.
    """

    def __init__(self, d_model: int):
        super().__init__()
        if d_model % 2:
            raise ValueError(f"PooledBiGRU: d_model must be even (d/2 units per direction), "
                             f"got {d_model}")
        self.gru = nn.GRU(d_model, d_model // 2, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, steps, width = x.shape
        half = width // 2
        shift = steps - mask.sum(1, keepdim=True)  # (B, 1) padding length
        positions = torch.arange(steps, device=x.device).unsqueeze(0)  # (1, L)
        source = (positions - shift) % steps  # left-padded copy: step j holds x[j - shift]
        left_padded = x.gather(1, source.unsqueeze(-1).expand(-1, -1, width))
        out, _ = self.gru(torch.cat([x, left_padded], dim=0))  # (2B, L, d)
        forward = masked_time_mean(out[:batch, :, :half], mask)
        backward = masked_time_mean(out[batch:, :, half:], positions >= shift)
        return torch.cat([forward, backward], dim=-1)


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__(
            nn.Linear(d_model, d_ff), nn.ReLU(), Dropout(dropout),
            nn.Linear(d_ff, d_model), Dropout(dropout),
        )


class ResidualGates(nn.Module):
    """``g_r = σ(W_r ĥ)``, ``g_c = σ(W_c ĥ)`` (eqs. 8-9 / 19-20). ``ĥ (B, d)`` -> two ``(B, 1, d)``."""

    def __init__(self, d_model: int):
        super().__init__()
        self.summary = PooledBiGRU(d_model)
        self.retain = nn.Linear(d_model, d_model, bias=False)
        self.compound = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        summary = self.summary(x, mask)
        g_r = torch.sigmoid(self.retain(summary)).unsqueeze(1)
        g_c = torch.sigmoid(self.compound(summary)).unsqueeze(1)
        return summary, g_r, g_c


@dataclass
class GatedLayerOutput:
    """Output of a gated layer.

    Attributes:
        hidden: ``(B, L, d)`` the layer output ``X^i``.
        attention: ``(B, L, d)`` the multi-head attention output (``X_mh^i`` of a GateTransformer,
            ``r^i`` of a SAG-Transformer).
        summary: ``(B, d)`` the pooled BiGRU summary ``ĥ^i`` of the layer input, or ``None`` when
            ungated.
        retain_gate, compound_gate: ``(B, d)`` gate values, or ``None`` when ungated.
    """

    hidden: torch.Tensor
    attention: torch.Tensor
    summary: torch.Tensor | None = None
    retain_gate: torch.Tensor | None = None
    compound_gate: torch.Tensor | None = None


class GateTransformer(nn.Module):
    """MMILN's unimodal layer (eqs. 5-12).

    Shapes: ``x (B, L, d)``, ``mask (B, L)`` bool (True = real step) -> :class:`GatedLayerOutput`.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, gated: bool = True):
        super().__init__()
        self.gated = gated
        self.gates = ResidualGates(d_model) if gated else None
        self.attention = MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm_attention = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.norm_ffn = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> GatedLayerOutput:
        attended, _ = self.attention(x, x, x, key_padding_mask=~mask, need_weights=False)  # (10)
        summary = g_r = g_c = None
        if self.gates is not None:
            summary, g_r, g_c = self.gates(x, mask)  # (7)-(9)
            mixed = self.norm_attention(g_c * attended + g_r * x)  # (11)
        else:
            mixed = self.norm_attention(attended + x)
        hidden = self.norm_ffn(mixed + self.ffn(mixed))  # (12)
        return GatedLayerOutput(hidden, attended, summary,
                                None if g_r is None else g_r.squeeze(1),
                                None if g_c is None else g_c.squeeze(1))


class SAGTransformer(nn.Module):
    """MMILN's text-centred bimodal layer (eqs. 13-23).

    Shapes:
        ``fused (B, L_f, d)`` the stream ``X_f^{i-1}`` with ``fused_mask (B, L_f)``;
        ``unimodal_attention (B, L_n, d)`` the GateTransformer's ``X_mh,n^i`` with
        ``unimodal_mask (B, L_n)`` -> :class:`GatedLayerOutput` with ``hidden (B, L_f, d)``.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float, gated: bool = True):
        super().__init__()
        self.gated = gated
        self.self_attention = MultiheadAttention(d_model, n_heads, dropout=dropout,
                                                 batch_first=True)
        self.source_gate = nn.Linear(d_model, d_model, bias=False) if gated else None
        self.gates = ResidualGates(d_model) if gated else None
        self.cross_attention = MultiheadAttention(d_model, n_heads, dropout=dropout,
                                                  batch_first=True)
        self.norm_attention = nn.LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff, dropout)
        self.norm_ffn = nn.LayerNorm(d_model)

    def forward(
        self, fused: torch.Tensor, fused_mask: torch.Tensor, unimodal_attention: torch.Tensor,
        unimodal_mask: torch.Tensor,
    ) -> GatedLayerOutput:
        queries, _ = self.self_attention(fused, fused, fused, key_padding_mask=~fused_mask,
                                         need_weights=False)  # (15)
        source = unimodal_attention
        if self.source_gate is not None:
            source = torch.sigmoid(self.source_gate(unimodal_attention)) * unimodal_attention  # (17)-(18)
        attended, _ = self.cross_attention(queries, source, source,
                                           key_padding_mask=~unimodal_mask,
                                           need_weights=False)  # (21)
        summary = g_r = g_c = None
        if self.gates is not None:
            summary, g_r, g_c = self.gates(fused, fused_mask)  # (16), (19), (20)
            mixed = self.norm_attention(g_c * attended + g_r * fused)  # (22)
        else:
            mixed = self.norm_attention(attended + fused)
        hidden = self.norm_ffn(mixed + self.ffn(mixed))  # (23)
        return GatedLayerOutput(hidden, attended, summary,
                                None if g_r is None else g_r.squeeze(1),
                                None if g_c is None else g_c.squeeze(1))
