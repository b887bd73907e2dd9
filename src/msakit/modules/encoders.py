"""Sequence encoders for the acoustic and visual streams.

Every encoder takes a zero-padded ``(B, L, D)`` batch with its ``(B,)`` true lengths and only
ever reads the real steps (packed sequences or masks), so padding never changes a result.
Recurrent encoders pack with lengths on the CPU: pass the batch's ``host_lengths`` (see
:func:`recurrent_input`) so that no device-to-host copy happens on the training path.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from msakit.modules.dropout import LSTM, Dropout


def _host_lengths(x: torch.Tensor, lengths: torch.Tensor, input_dim: int, name: str
                  ) -> torch.Tensor:
    """Check shapes and return the lengths as a CPU int64 tensor (what packing needs).

    Pass CPU lengths (the batch's ``host_lengths``) to avoid a device-to-host copy; the range
    check then reads host memory only.
    """
    if x.dim() != 3 or x.shape[-1] != input_dim:
        raise ValueError(
            f"{name}: expected a (B, L, {input_dim}) batch, got {tuple(x.shape)}"
        )
    if lengths.shape != (x.shape[0],):
        raise ValueError(
            f"{name}: expected ({x.shape[0]},) lengths, got {tuple(lengths.shape)}"
        )
    host = lengths.detach().to("cpu", torch.int64)
    if x.shape[0] and (int(host.min()) < 1 or int(host.max()) > x.shape[1]):
        raise ValueError(
            f"{name}: lengths must lie in [1, {x.shape[1]}], got min {int(host.min())} "
            f"and max {int(host.max())}"
        )
    return host


class RecurrentInput(NamedTuple):
    """A sequence for a recurrent encoder: ``x (B, L, D)``, ``lengths (B,)`` on ``x``'s device,
    ``host_lengths (B,)`` the same lengths on the CPU (for packing)."""

    x: torch.Tensor
    lengths: torch.Tensor
    host_lengths: torch.Tensor


def recurrent_input(batch: dict, modality: str) -> RecurrentInput:
    """``audio``/``vision`` of a batch as a recurrent encoder should read it.

    On word-aligned data this is one step per word (``word_<modality>``, ``word_lengths``), as
    the official MISA and Self-MM code reads it, not the sequence expanded to sub-word tokens
    (which repeats a word's row per sub-word and has zero rows for special tokens). The CPU
    lengths come from the batch's ``host_lengths`` when present, so packing needs no
    device-to-host copy.
    """
    host = batch.get("host_lengths") or {}
    key, length_key = ((f"word_{modality}", "word") if f"word_{modality}" in batch
                       else (modality, modality))
    lengths = batch[f"{length_key}_lengths"]
    return RecurrentInput(batch[key], lengths, host.get(length_key, lengths))


def _check_input_dim(input_dim: int, name: str) -> None:
    if input_dim < 1:
        raise ValueError(
            f"{name}: input dimension must be >= 1, got {input_dim} (is the modality absent "
            "from the data? then the model must not build an encoder for it)"
        )


def _pack(x: torch.Tensor, host_lengths: torch.Tensor):
    return pack_padded_sequence(x, host_lengths, batch_first=True, enforce_sorted=False)


class StackedBiLSTMEncoder(nn.Module):
    """MISA's "sLSTM": biLSTM -> LayerNorm -> biLSTM over the real steps.

    The first biLSTM (hidden size ``H``) reads the sequence; its outputs ``(B, L, 2H)`` are
    layer-normalised and read by the second biLSTM (hidden ``H``). The utterance vector is the
    final hidden states of both layers and both directions, ordered as the official code
    (``[h1_fwd, h2_fwd, h1_bwd, h2_bwd]``).

    Args:
        input_dim: ``D``, the feature size per step.
        hidden_dim: ``H``; ``None`` = ``D`` (MISA's choice).
        orthogonal_init: initialise the recurrent weights orthogonally (MISA's solver does).

    Shapes:
        ``x (B, L, D)``, ``lengths (B,)`` -> ``(B, 4H)``.
    """

    def __init__(self, input_dim: int, hidden_dim: int | None = None, orthogonal_init: bool = True):
        super().__init__()
        _check_input_dim(input_dim, "StackedBiLSTMEncoder")
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim or input_dim
        self.rnn1 = LSTM(input_dim, self.hidden_dim, bidirectional=True, batch_first=True)
        self.layer_norm = nn.LayerNorm(2 * self.hidden_dim)
        self.rnn2 = LSTM(2 * self.hidden_dim, self.hidden_dim, bidirectional=True,
                            batch_first=True)
        if orthogonal_init:
            for name, parameter in self.named_parameters():
                if "weight_hh" in name:
                    nn.init.orthogonal_(parameter)

    @property
    def output_dim(self) -> int:
        return 4 * self.hidden_dim

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = _host_lengths(x, lengths, self.input_dim, "StackedBiLSTMEncoder")
        packed_out1, (final1, _) = self.rnn1(_pack(x, lengths))  # final1: (2, B, H)
        out1, _ = pad_packed_sequence(packed_out1, batch_first=True, total_length=x.shape[1])
        _, (final2, _) = self.rnn2(_pack(self.layer_norm(out1), lengths))  # (2, B, H)
        # (2 directions, B, 2H) -> (B, 2 directions, 2H) -> (B, 4H)
        return torch.cat((final1, final2), dim=2).permute(1, 0, 2).reshape(x.shape[0], -1)


class LSTMEncoder(nn.Module):
    """One LSTM over the real steps; its final hidden state -> Dropout -> Linear.

    The audio/vision sub-network of Self-MM (MMSA's ``AuViSubNet``), also used by other models.

    Args:
        input_dim: ``D`` per step.
        hidden_dim: LSTM hidden size.
        output_dim: size of the returned vector.
        dropout: dropout on the final state before the linear layer.
        num_layers: stacked LSTM layers (the last layer's final state is used).
        bidirectional: if True, the forward and backward final states are concatenated.

    Shapes:
        ``x (B, L, D)``, ``lengths (B,)`` -> ``(B, output_dim)``.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        dropout: float = 0.0,
        num_layers: int = 1,
        bidirectional: bool = False,
    ):
        super().__init__()
        _check_input_dim(input_dim, "LSTMEncoder")
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.bidirectional = bidirectional
        self.rnn = LSTM(
            input_dim, hidden_dim, num_layers=num_layers, batch_first=True,
            bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = Dropout(dropout)
        self.linear = nn.Linear(hidden_dim * (2 if bidirectional else 1), output_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        lengths = _host_lengths(x, lengths, self.input_dim, "LSTMEncoder")
        _, (final, _) = self.rnn(_pack(x, lengths))  # (layers * directions, B, hidden)
        if self.bidirectional:
            last = torch.cat((final[-2], final[-1]), dim=-1)
        else:
            last = final[-1]
        return self.linear(self.dropout(last))


class SequenceLSTM(nn.Module):
    """One-layer unidirectional LSTM over packed sequences (Self-MM's ``AuViSubNet`` core).

    Shapes:
        ``x (B, L, D_in)``, ``lengths (B,)`` -> ``(outputs (B, L, H), final (B, H))``; outputs are
        zero beyond each sequence's length.
    """

    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.rnn = LSTM(in_dim, hidden_dim, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # lengths on the CPU (the batch's host_lengths) avoid a device-to-host copy here
        packed = pack_padded_sequence(x, lengths.to("cpu", torch.int64), batch_first=True,
                                      enforce_sorted=False)
        packed_out, (final, _) = self.rnn(packed)
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=x.shape[1])
        return outputs, final[-1]


def masked_time_mean(x: torch.Tensor, mask: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """Average over the real time steps.

    Args:
        x: ``(B, L, D)`` zero-padded sequences.
        mask: ``(B, L)`` bool (or 0/1), True for real steps.
        steps: ``None``: divide the sum over the real steps by their count; ``N``: by ``N``,
            which is MMSA's ``need_normalized`` mean over its ``N``-long zero-padded arrays (50
            for MOSI/MOSEI ``aligned_50``/``unaligned_50``).

    Returns:
        ``(B, D)``; a row with no real step averages to zeros.
    """
    if x.dim() != 3 or mask.shape != x.shape[:2]:
        raise ValueError(
            f"masked_time_mean: expected x (B, L, D) and mask (B, L), got {tuple(x.shape)} and "
            f"{tuple(mask.shape)}"
        )
    weights = mask.to(x.dtype).unsqueeze(-1)
    total = (x * weights).sum(1)
    return total / (weights.sum(1).clamp_min(1.0) if steps is None else steps)


__all__ = ["StackedBiLSTMEncoder", "LSTMEncoder", "SequenceLSTM", "masked_time_mean",
           "recurrent_input", "RecurrentInput"]
