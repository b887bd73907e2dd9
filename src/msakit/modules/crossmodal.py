"""MulT's cross-modal transformer encoder (Tsai et al., ACL 2019), batch-first.

One module serves three uses:

* cross-modal attention ``source -> target``: queries from the target sequence, keys and values
  from the source sequence (MulT's crossmodal transformer);
* self-attention memory (``x_key=None``), as MulT and DMD use after concatenating streams;
* any later model that needs cross-modal attention (e.g. LRCMT).

Faithful to the official implementation (``yaohungt/Multimodal-Transformer``, reused unchanged in
``mdswyz/DMD``):

* inputs multiplied by ``sqrt(embed_dim)`` before adding fixed sinusoidal positions (positions
  start at 1; sines in the first half of the channels, cosines in the second half, as in
  tensor2tensor), then embedding dropout; keys and values get the same treatment as queries, the
  source scaled and embedded once and then dropped twice, so that keys and values get independent
  dropout masks in training (the official code embeds ``x_in_k`` and ``x_in_v`` separately);
* pre-LN layers: ``x + Dropout_res(MHA(LN(x), LN(k), LN(v)))`` with one LayerNorm shared by query,
  key and value, then ``x + Dropout_res(W2 Dropout_relu(ReLU(W1 LN(x))))`` with a ``4 d`` hidden layer;
* a final LayerNorm after the last layer;
* optional "future" mask: query ``i`` sees keys ``j <= i + |L_k - L_q|`` (the official
  ``buffered_future_mask``, which also works when the two lengths differ). The official code
  takes ``L_q``/``L_k`` from the tensors, which in its data all have one fixed length; in a
  batch padded to its longest clip that would make a clip's result depend on its batch, so with
  ``query_lengths``/``key_lengths`` given the offset comes from each sample's real lengths;
* Xavier-uniform linear layers with zero biases.

Difference from the official code, on purpose: padding is given explicitly by
``key_padding_mask`` (the official code has none: it attends to padded steps, and only leaves out
the positional embedding of steps whose first feature is exactly 0). The official behaviour is
available for parity: no ``key_padding_mask``, no lengths, and ``zero_step_positions=False``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from msakit.modules.dropout import Dropout, MultiheadAttention


def sinusoidal_positions(length: int, dim: int, *, device=None, dtype=None) -> torch.Tensor:
    """Fixed sinusoidal embeddings of positions ``1..length``, shape ``(length, dim)``.

    Channel ``k < dim // 2`` is ``sin(p * w_k)``, channel ``dim // 2 + k`` is ``cos(p * w_k)``,
    ``w_k = 10000 ** (-k / (dim // 2 - 1))``; an odd ``dim`` gets a zero last channel.
    """
    if dim < 4:
        raise ValueError(f"sinusoidal positions need embed_dim >= 4, got {dim}")
    half = dim // 2
    rates = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    angles = torch.arange(1, length + 1, dtype=torch.float32).unsqueeze(1) * rates.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table.to(device=device, dtype=dtype)


def future_mask(query_length: int, key_length: int, device=None) -> torch.Tensor:
    """``(L_q, L_k)`` bool, True where attention is forbidden: key ``j > i + |L_k - L_q|``."""
    offset = 1 + abs(key_length - query_length)
    ones = torch.ones(query_length, key_length, dtype=torch.bool, device=device)
    return torch.triu(ones, diagonal=offset)


def per_sample_future_mask(query_lengths: torch.Tensor, key_lengths: torch.Tensor,
                           query_steps: int, key_steps: int) -> torch.Tensor:
    """:func:`future_mask` with each sample's real lengths: ``(B,)``, ``(B,)`` -> ``(B, L_q, L_k)``.

    True where query ``i`` of sample ``b`` may not see key ``j``: ``j > i + |K_b - Q_b|`` with
    ``Q_b``/``K_b`` the real lengths (not the padded ``L_q``/``L_k``). Key 0 is always visible, so
    no row is fully masked. Computed on the lengths' device without a host sync.
    """
    offset = (key_lengths - query_lengths).abs().view(-1, 1, 1)  # (B, 1, 1)
    query = torch.arange(query_steps, device=query_lengths.device).view(1, -1, 1)
    key = torch.arange(key_steps, device=query_lengths.device).view(1, 1, -1)
    return key > query + offset


def _xavier_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class CrossModalTransformerLayer(nn.Module):
    """One pre-LN layer: (cross-)attention block then a ``d -> 4d -> d`` ReLU feed-forward block.

    Shapes: ``x (B, L_q, d)``, ``key (B, L_k, d)`` or None (self-attention), ``value (B, L_k,
    d)`` or None (= ``key``), ``attn_mask (L_q, L_k)`` bool, ``key_padding_mask (B, L_k)`` bool
    -> ``(B, L_q, d)``.
    """

    def __init__(self, embed_dim: int, num_heads: int, attn_dropout: float = 0.0,
                 relu_dropout: float = 0.0, res_dropout: float = 0.0):
        super().__init__()
        self.attention = MultiheadAttention(
            embed_dim, num_heads, dropout=attn_dropout, batch_first=True
        )
        # PyTorch already gives in_proj Xavier and zero biases; the official code also gives
        # the output projection Xavier weights.
        nn.init.xavier_uniform_(self.attention.out_proj.weight)
        self.attention_norm = nn.LayerNorm(embed_dim)  # shared by query, key, value (official)
        self.ffn_norm = nn.LayerNorm(embed_dim)
        self.fc1 = _xavier_linear(embed_dim, 4 * embed_dim)
        self.fc2 = _xavier_linear(4 * embed_dim, embed_dim)
        self.relu_dropout = Dropout(relu_dropout)
        self.res_dropout = Dropout(res_dropout)

    def forward(
        self,
        x: torch.Tensor,
        key: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
    ) -> torch.Tensor:
        query = self.attention_norm(x)
        if key is None:
            key = value = query
        elif value is None or value is key:
            key = value = self.attention_norm(key)
        else:
            key, value = self.attention_norm(key), self.attention_norm(value)
        attended, _ = self.attention(
            query, key, value, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
            need_weights=False,
        )
        x = x + self.res_dropout(attended)
        hidden = self.relu_dropout(F.relu(self.fc1(self.ffn_norm(x))))
        return x + self.res_dropout(self.fc2(hidden))


class CrossModalTransformerEncoder(nn.Module):
    """MulT's transformer encoder; cross-modal when ``x_key`` is given, self-attention otherwise.

    Args:
        embed_dim: model width ``d`` (query and key inputs must already have it).
        num_heads: attention heads (must divide ``embed_dim``).
        num_layers: number of pre-LN layers.
        attn_dropout: dropout on the attention weights.
        relu_dropout: dropout after the feed-forward ReLU.
        res_dropout: dropout on each block's output before the residual addition.
        embed_dropout: dropout on the scaled, position-embedded inputs (queries; keys and values
            of a cross-modal encoder each with their own mask, as the official code).
        attn_mask: apply the official future ("causal") mask.
        zero_step_positions: add the positional embedding to every step (default). ``False`` is
            the official heuristic: a step whose first input feature is exactly 0 is taken for
            padding and gets no positional embedding.
        position_embedding: add the sinusoidal positions at all (official ``False`` for
            TFR-Net's temporal encoders, whose "sequence" is not time).

    Shapes:
        ``x_query (B, L_q, d)``, ``x_key (B, L_k, d)`` or None,
        ``key_padding_mask (B, L_k)`` bool with True = padding (with ``x_key=None`` it masks
        ``x_query``'s own steps), ``query_lengths``/``key_lengths`` ``(B,)`` real lengths for
        the future mask's offset (give both whenever the batch is padded; without them the
        offset comes from ``L_q``/``L_k`` as in the official code) -> ``(B, L_q, d)``. Rows of
        padded query steps are computed but meaningless; the caller ignores them.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_layers: int,
        attn_dropout: float = 0.0,
        relu_dropout: float = 0.0,
        res_dropout: float = 0.0,
        embed_dropout: float = 0.0,
        attn_mask: bool = False,
        zero_step_positions: bool = True,
        position_embedding: bool = True,
    ):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.embed_dim = embed_dim
        self.embed_scale = math.sqrt(embed_dim)
        self.use_future_mask = attn_mask
        self.num_heads = num_heads
        self.zero_step_positions = zero_step_positions
        self.position_embedding = position_embedding
        self.embed_dropout = Dropout(embed_dropout)
        self.layers = nn.ModuleList(
            CrossModalTransformerLayer(
                embed_dim, num_heads, attn_dropout, relu_dropout, res_dropout
            )
            for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(embed_dim)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """``sqrt(d) x + positions`` ``(B, L, d)`` (no positions with ``position_embedding``
        off), before the embedding dropout."""
        if not self.position_embedding:
            return self.embed_scale * x
        positions = sinusoidal_positions(x.shape[1], self.embed_dim, device=x.device, dtype=x.dtype)
        positions = positions.unsqueeze(0)  # (1, L, d)
        if not self.zero_step_positions:
            positions = positions * (x[:, :, :1] != 0).to(x.dtype)  # (B, L, d)
        return self.embed_scale * x + positions

    def forward(
        self,
        x_query: torch.Tensor,
        x_key: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
        query_lengths: torch.Tensor | None = None,
        key_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        self._check(x_query, "x_query")
        if x_key is not None:
            self._check(x_key, "x_key")
            if x_key.shape[0] != x_query.shape[0]:
                raise ValueError(
                    f"x_key batch size {x_key.shape[0]} != x_query batch size {x_query.shape[0]}"
                )
        key_length = (x_key if x_key is not None else x_query).shape[1]
        if key_padding_mask is not None:
            expected = (x_query.shape[0], key_length)
            if tuple(key_padding_mask.shape) != expected or key_padding_mask.dtype != torch.bool:
                raise ValueError(
                    f"key_padding_mask must be a bool tensor of shape {expected} (True = padding), "
                    f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
                )
        if (query_lengths is None) != (key_lengths is None):
            raise ValueError("give both query_lengths and key_lengths, or neither")
        mask = None
        if self.use_future_mask:
            if x_key is not None and query_lengths is not None:
                mask = per_sample_future_mask(
                    query_lengths, key_lengths, x_query.shape[1], key_length
                ).repeat_interleave(self.num_heads, dim=0)  # (B * heads, L_q, L_k)
            else:  # self-attention: the offset is 0 whatever the lengths
                mask = future_mask(x_query.shape[1], key_length, device=x_query.device)
        x = self.embed_dropout(self._embed(x_query))
        key = value = None
        if x_key is not None:
            source = self._embed(x_key)
            key = self.embed_dropout(source)
            # the official code drops keys and values independently; in eval mode both are
            # ``source``, so the second call is left out there
            value = self.embed_dropout(source) if self.training else key
        for layer in self.layers:
            x = layer(x, key, attn_mask=mask, key_padding_mask=key_padding_mask, value=value)
        return self.final_norm(x)

    def _check(self, tensor: torch.Tensor, name: str) -> None:
        if tensor.dim() != 3 or tensor.shape[-1] != self.embed_dim:
            raise ValueError(
                f"{name} must have shape (B, L, {self.embed_dim}), got {tuple(tensor.shape)}"
            )


# --------------------------------------------------------------------------------------------
# Sequence helpers shared by MulT-style models (temporal projection, padding, read-out)
# --------------------------------------------------------------------------------------------

def padding_mask_from_lengths(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """``(B,)`` true lengths -> ``(B, max_length)`` bool, True at padded steps."""
    steps = torch.arange(max_length, device=lengths.device)
    return steps.unsqueeze(0) >= lengths.unsqueeze(1)


def last_valid_step(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The state at each sample's last real step: ``(B, L, D)``, ``(B,)`` -> ``(B, D)``."""
    index = (lengths.clamp(min=1, max=x.shape[1]) - 1).long()
    return x[torch.arange(x.shape[0], device=x.device), index]


def fit_length(x: torch.Tensor, lengths: torch.Tensor, length: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad or truncate ``(B, L, D)`` along time to exactly ``length`` steps.

    Returns the fitted ``(B, length, D)`` tensor (steps beyond each sample's true length set to
    zero) and the lengths clamped to ``length``. Models whose heads flatten a fixed number of
    steps (DMD) need this; truncation keeps the first ``length`` steps.
    """
    steps = x.shape[1]
    if steps >= length:
        x = x[:, :length]
    else:
        x = F.pad(x, (0, 0, 0, length - steps))
    lengths = lengths.clamp(max=length)
    keep = ~padding_mask_from_lengths(lengths, length)
    return x * keep.unsqueeze(-1).to(x.dtype), lengths


class TemporalConvProjection(nn.Module):
    """MulT/DMD's input projection: ``Conv1d(D_in -> d, kernel, no padding, no bias)`` over time.

    Without padding the sequence shrinks by ``kernel - 1`` steps; an output step counts as real
    when its window starts at a real input step, so new lengths are ``min(L_i, L - k + 1)``.
    With zero-padded inputs and no bias, padded outputs past a window that sees only padding
    stay exactly zero.

    Shapes: ``x (B, L, D_in)``, ``lengths (B,)`` -> ``(B, L - k + 1, d)``, ``(B,)``.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 1):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(in_features, out_features, kernel_size, padding=0, bias=False)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.conv.in_channels:
            raise ValueError(
                f"expected input of shape (B, L, {self.conv.in_channels}), got {tuple(x.shape)}"
            )
        if x.shape[1] < self.kernel_size:
            raise ValueError(
                f"sequence of {x.shape[1]} steps is shorter than the conv kernel "
                f"{self.kernel_size}; pad the inputs to at least {self.kernel_size} steps"
            )
        out = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return out, lengths.clamp(max=out.shape[1])


class CrossModalFusion(nn.Module):
    """MulT's fusion: every ordered pair ``source -> target`` of modalities gets a cross-modal
    encoder; per target, the streams from all other sources are concatenated along features and
    passed through a self-attention "memory" encoder; the target's read-out step is returned.

    As the official code: the attention dropout of ``source -> target`` is the *source*
    modality's, the memory encoders use ``memory_attn_dropout`` (official: the text value), and
    the read-out is a single time step (``readout="last_position"``: the final, possibly padded
    step as the official code; ``"last_valid"``: each sample's last real step).

    Args:
        modalities: names, in the order used to concatenate streams (official ``l, a, v``).
        embed_dim: ``d``; each target's memory works at ``(M - 1) d``.
        attn_dropout: per *source* modality name.
        padding: ``"masked"`` (default): padded steps are masked out of every attention and the
            future mask's offset uses each sample's real lengths, so a clip's result does not
            depend on its batch. ``"official"``: as the official code, no padding mask (padded
            steps are attended to), the offset from the padded lengths, and no positional
            embedding at steps whose first feature is exactly 0.

    Shapes:
        ``sequences[m] (B, L_m, d)``, ``lengths[m] (B,)`` -> ``{target: (B, (M - 1) d)}``;
        with ``return_sequences=True`` also ``{target: (B, L_target, (M - 1) d)}``.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        embed_dim: int,
        num_heads: int,
        num_layers: int,
        memory_layers: int,
        attn_dropout: dict[str, float],
        memory_attn_dropout: float = 0.0,
        relu_dropout: float = 0.0,
        res_dropout: float = 0.0,
        embed_dropout: float = 0.0,
        attn_mask: bool = False,
        readout: str = "last_valid",
        padding: str = "masked",
    ):
        super().__init__()
        self.modalities = tuple(modalities)
        if len(self.modalities) < 2:
            raise ValueError("cross-modal fusion needs at least two modalities")
        if readout not in ("last_valid", "last_position"):
            raise ValueError(f"readout must be 'last_valid' or 'last_position', got {readout!r}")
        if padding not in ("masked", "official"):
            raise ValueError(f"padding must be 'masked' or 'official', got {padding!r}")
        missing = [m for m in self.modalities if m not in attn_dropout]
        if missing:
            raise ValueError(f"attn_dropout has no value for source modality(ies) {missing}")
        self.readout = readout
        self.masked = padding == "masked"
        shared = dict(relu_dropout=relu_dropout, res_dropout=res_dropout,
                      embed_dropout=embed_dropout, attn_mask=attn_mask,
                      zero_step_positions=self.masked)
        self.streams = nn.ModuleDict()
        self.memories = nn.ModuleDict()
        for target in self.modalities:
            for source in self.sources(target):
                self.streams[f"{source}_to_{target}"] = CrossModalTransformerEncoder(
                    embed_dim, num_heads, num_layers, attn_dropout=attn_dropout[source], **shared
                )
            self.memories[target] = CrossModalTransformerEncoder(
                (len(self.modalities) - 1) * embed_dim, num_heads, memory_layers,
                attn_dropout=memory_attn_dropout, **shared,
            )

    def sources(self, target: str) -> list[str]:
        return [m for m in self.modalities if m != target]

    def forward(
        self,
        sequences: dict[str, torch.Tensor],
        lengths: dict[str, torch.Tensor],
        return_sequences: bool = False,
    ):
        masks = {
            m: padding_mask_from_lengths(lengths[m], sequences[m].shape[1]) if self.masked
            else None
            for m in self.modalities
        }
        pooled, full = {}, {}
        for target in self.modalities:
            streams = [
                self.streams[f"{source}_to_{target}"](
                    sequences[target], sequences[source], key_padding_mask=masks[source],
                    query_lengths=lengths[target] if self.masked else None,
                    key_lengths=lengths[source] if self.masked else None,
                )
                for source in self.sources(target)
            ]
            memory = self.memories[target](
                torch.cat(streams, dim=-1), key_padding_mask=masks[target]
            )
            full[target] = memory
            pooled[target] = (
                memory[:, -1] if self.readout == "last_position"
                else last_valid_step(memory, lengths[target])
            )
        return (pooled, full) if return_sequences else pooled


# ----------------------------------------------------------------------------------------------
# MulT-style fusion from a config (MulT, DMD)
# ----------------------------------------------------------------------------------------------

#: The modalities of a MulT-style fusion, in the order of its read-outs.
FUSION_MODALITIES = ("text", "audio", "vision")

#: ``readout`` of a MulT-style fusion (MulT, DMD), passed on to :class:`CrossModalFusion`.
ReadoutOption = Annotated[Literal["last_valid", "last_position"], Field(
    description="step read out of each sequence encoder: each sample's last real step, or the "
    "last (possibly padded) position as the official code"
)]
#: ``padding`` of a MulT-style fusion (MulT, DMD), passed on to :class:`CrossModalFusion`.
PaddingOption = Annotated[Literal["masked", "official"], Field(
    description="'masked': padded steps are masked out of every attention and the future "
    "mask's offset uses each clip's real lengths (a clip's result does not depend on its batch); "
    "'official': as the official code, padded steps are attended to, the offset comes from the "
    "padded lengths, and steps whose first feature is 0 get no positional embedding"
)]


def attention_dropout_by_source(config: Any) -> dict[str, float]:
    """``{modality: attention dropout when it is the source}`` of a config with MulT's fields
    (MulT's config, DMD's): ``attn_dropout`` is the text's."""
    return {"text": config.attn_dropout, "audio": config.attn_dropout_audio,
            "vision": config.attn_dropout_vision}


def cross_modal_fusion(config: Any) -> CrossModalFusion:
    """MulT's fusion over text, audio and vision (each ``(B, L_m, embed_dim)``) from a config
    with MulT's fields (MulT's config, DMD's); the memories use the text's attention
    dropout, as the official code."""
    return CrossModalFusion(
        FUSION_MODALITIES, config.embed_dim, config.num_heads, config.num_layers,
        config.memory_layers,
        attn_dropout=attention_dropout_by_source(config), memory_attn_dropout=config.attn_dropout,
        relu_dropout=config.relu_dropout, res_dropout=config.res_dropout,
        embed_dropout=config.embed_dropout, attn_mask=config.attn_mask,
        readout=config.readout, padding=config.padding,
    )


def modality_lengths(batch: dict[str, Any], modality: str) -> torch.Tensor:
    """True lengths of ``audio``/``vision`` from the batch (``*_lengths``, else ``*_mask``)."""
    if f"{modality}_lengths" in batch:
        return batch[f"{modality}_lengths"].long()
    if f"{modality}_mask" in batch:
        return batch[f"{modality}_mask"].sum(1).long()
    raise KeyError(f"batch has neither '{modality}_lengths' nor '{modality}_mask'")
