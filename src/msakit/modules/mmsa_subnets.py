"""The unimodal sub-networks MMSA's tensor-fusion family shares (TFN, LMF; MMSA's
``models/subNets/FeatureNets.py``), MMSA's time average of audio/vision and its ``avg_pool``
alignment (``models/subNets/AlignNets.py``).

Parameter names follow MMSA's (``norm``, ``drop``, ``linear_1`` ...), so an MMSA state dict maps
onto them by module prefix alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence


def time_average(x: torch.Tensor, mask: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """``(B, L, D), (B, L) -> (B, D)``: the mean over the real steps (``steps=None``), or the sum
    over the real steps divided by ``steps``, which is MMSA's ``need_normalized`` mean over its
    ``steps``-long zero-padded arrays (50 for MOSI/MOSEI ``aligned_50``/``unaligned_50``)."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    total = (x * weights).sum(1)
    if steps is None:
        return total / weights.sum(1).clamp_min(1.0)
    return total / steps


def fixed_length(x: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """``(B, L, D), (B, L) -> (B, steps, D)``: zero past the real steps, then zero-padded or
    truncated to ``steps`` (MMSA's fixed-length arrays)."""
    x = (x * mask.to(x.dtype).unsqueeze(-1))[:, :steps]
    return F.pad(x, (0, 0, 0, steps - x.shape[1]))


def single_adam_group(model: nn.Module, train) -> list[dict]:
    """MMSA's optimiser layout for most of its models: one Adam group, ``train.lr`` and
    ``train.weight_decay`` on every trainable parameter, biases and norm weights included
    (a pretrained LM, if it trains, in its own group at ``train.lm_lr``)."""
    prefixes = tuple(name + "." for name, module in model.named_modules()
                     if getattr(module, "is_pretrained_language_model", False))
    groups = []
    for is_lm in (True, False):
        params = [p for n, p in model.named_parameters() if p.requires_grad
                  and bool(prefixes and n.startswith(prefixes)) == is_lm]
        if params:
            groups.append({"name": "language_model" if is_lm else "other", "params": params,
                           "lr": train.lm_lr if is_lm else train.lr,
                           "weight_decay": train.lm_weight_decay if is_lm
                           else train.weight_decay})
    return groups


def avg_pool_align(x: torch.Tensor, steps: int) -> torch.Tensor:
    """``(B, L, D) -> (B, steps, D)``: MMSA's ``AlignSubNet`` in ``avg_pool`` mode, which fits an
    audio/vision array to the text length for its ``need_model_aligned`` models. ``L`` is padded
    to the next multiple of ``steps`` by repeating the last step, then every
    ``ceil(L / steps)`` consecutive steps are averaged; ``L == steps`` is returned as is."""
    length = x.shape[1]
    if length == steps:
        return x
    pool = -(-length // steps)  # ceil
    pad = pool * steps - length
    x = torch.cat([x, x[:, -1:].expand(-1, pad, -1)], dim=1)
    return x.reshape(x.shape[0], steps, pool, x.shape[-1]).mean(dim=2)


class RegressionHead(nn.Module):
    """MMSA's post-fusion / unimodal heads: Dropout -> Linear + ReLU -> Linear + ReLU -> Linear.
    ``(B, D) -> (B,)``."""

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.layer_1 = nn.Linear(in_dim, hidden)
        self.layer_2 = nn.Linear(hidden, hidden)
        self.layer_3 = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.layer_2(F.relu(self.layer_1(self.dropout(x)))))
        return self.layer_3(x).squeeze(-1)


def subnet_decay_groups(model: nn.Module, train, groups_by_prefix: dict[str, tuple[float, float]],
                        other_decay: float) -> list[dict]:
    """MMSA's multi-task optimiser layout: the trainable parameters under each prefix of
    ``groups_by_prefix`` (e.g. ``"text_subnet."``, or an exact parameter name) in one group with
    that ``(lr, weight_decay)``, the rest at ``train.lr`` with ``other_decay`` (a fine-tuned LM
    in its own group at ``train.lm_lr``)."""
    prefixes = tuple(name + "." for name, module in model.named_modules()
                     if getattr(module, "is_pretrained_language_model", False))
    groups: dict[str, dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if prefixes and name.startswith(prefixes):
            key, (lr, wd) = "language_model", (train.lm_lr, train.lm_weight_decay)
        else:
            key = next((p for p in groups_by_prefix if name.startswith(p)), "other")
            lr, wd = groups_by_prefix.get(key, (train.lr, other_decay))
        groups.setdefault(key, {"name": key.rstrip("."), "params": [], "lr": lr,
                                "weight_decay": wd})["params"].append(parameter)
    return list(groups.values())


class FeatureSubNet(nn.Module):
    """MMSA's ``SubNet``: BatchNorm -> Dropout -> 3 x (Linear + ReLU). ``(B, D) -> (B, H)``.

    A training batch of one sample has no batch statistics (MMSA's BatchNorm raises); it is then
    normalised with the running statistics, as in evaluation.
    """

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim)
        self.drop = nn.Dropout(dropout)
        self.linear_1 = nn.Linear(in_dim, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)
        self.linear_3 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            normed = F.batch_norm(x, self.norm.running_mean, self.norm.running_var,
                                  self.norm.weight, self.norm.bias, training=False,
                                  eps=self.norm.eps)
        else:
            normed = self.norm(x)
        hidden = F.relu(self.linear_1(self.drop(normed)))
        return F.relu(self.linear_3(F.relu(self.linear_2(hidden))))


class TextLSTMSubNet(nn.Module):
    """MMSA's ``TextSubNet``: a one-layer LSTM over token states, its final hidden state ->
    Linear. ``(B, L, D), (B, L) -> (B, out)``.

    ``dropout`` applies to the final state. MMSA's one-layer ``TextSubNet`` sets it to 0 whatever
    the config says; the authors' ``TextSubNet`` (Justin1904's TFN and LMF code) applies the text
    dropout there. ``reads_padding=True`` runs the LSTM over every position up to the batch's
    padded length, as MMSA's unpacked LSTM does (a prediction then depends on the batch's
    padding); ``False`` packs the real tokens.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, reads_padding: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.reads_padding = reads_padding
        self.rnn = nn.LSTM(in_dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.linear_1 = nn.Linear(hidden, out_dim)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.reads_padding:
            _, (final, _) = self.rnn(states)
        else:
            lengths = mask.sum(1).clamp_min(1).cpu()  # pack_padded_sequence wants CPU lengths
            packed = pack_padded_sequence(states, lengths, batch_first=True, enforce_sorted=False)
            _, (final, _) = self.rnn(packed)
        return self.linear_1(self.dropout(final[-1]))


__all__ = ["FeatureSubNet", "RegressionHead", "TextLSTMSubNet", "avg_pool_align", "fixed_length",
           "single_adam_group", "subnet_decay_groups", "time_average"]
