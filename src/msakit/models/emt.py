"""EMT-DLFR: Efficient Multimodal Transformer with Dual-Level Feature Restoration (Sun et al.,
IEEE TAC 2023).

Two views of every clip go through the same network: the *complete* view and an *incomplete*
view in which random positions of each modality are missing (text tokens replaced by ``[UNK]``,
audio/vision frames zeroed). The incomplete view's prediction is the model's prediction; DLFR
(dual-level feature restoration) pulls the incomplete view towards the complete one.

Architecture (as the authors' ``models/missingTask/EMT_DLFR.py`` and ``models/subNets/EMT.py``):

=========================  ===============================================  =================
block                      computation                                      output
=========================  ===============================================  =================
text                       fine-tuned LM, all last-layer states             ``(B, L_t, H_t)``
                           utterance u_t = state of [CLS], local h_t = the
                           states after it
audio / vision             one-layer LSTM over the real steps; u_m = its     ``(B, d_m)``,
                           final state (dropout) -> Linear; local h_m =      ``(B, L_m, d_m)``
                           every step's output -> the same Linear
equalisation               bias-free Linear(d_m -> D) (Identity if d_m = D)  ``D``
global context G^0         [P_t u_t, P_a u_a, P_v u_v] as 3 tokens           ``(B, 3, D)``
EMT (eqs. 3-8)             sinusoidal positions on h_m; per layer l and      ``(B, 3, D)``
                           modality m one MPU: h_m <- CST(h_m, G) and
                           G_m <- CST(G, h_m) (CST: PreNorm cross-attention,
                           PreNorm self-attention, PreNorm GEGLU feed-
                           forward, residuals); G = attention pooling of
                           [G_t, G_a, G_v] (Linear-tanh-Linear scores)
head                       [u_t, u_a, u_v, flatten(G)] -> Dropout -> Linear  ``(B,)``
                           -> ReLU -> Linear -> ReLU -> Linear
=========================  ===============================================  =================

Loss terms (the official ``trains/missingTask/EMT_DLFR.py``; weights in ``loss_weights``):

- ``task``: L1 of the incomplete view's prediction;
- ``task_complete``: L1 of the complete view's prediction (official: inside the attraction sum,
  so it takes the attraction weight);
- ``attraction_<gmc|text|audio|vision>``: high-level feature attraction (SimSiam, eq. 12):
  ``-(cos(p', sg(z)) + cos(p, sg(z'))) / 2`` between each view's predictor output ``p`` and the
  other view's stopped projector output ``z``, for the flattened global context and the three
  utterance vectors; projector ``Linear -> BatchNorm (no affine)``, predictor ``Linear (no bias)
  -> BatchNorm -> ReLU -> Linear``;
- ``reconstruction_<text|audio|vision>``: low-level feature reconstruction (eq. 10): a Linear
  maps the incomplete view's EMT output h'_m back to the complete view's input features (the
  LM states, detached, for text; the raw audio/vision features), SmoothL1 summed over the
  *missing* positions only, divided by their count times the feature size.

Missing positions (the official ``data/load_data.py`` ``generate_m``): each real position is
kept with probability ``1 - missing_rate`` independently ([CLS] and [SEP] always kept). The
official code draws one mask per clip when the data is loaded (seeds 111/1111/11111), the same
in every epoch; ``mask_draw="per_clip"`` (default) does the same from a counter-based hash of
(``mask_seed``, modality, the clip's row, position), so no random stream is consumed and nothing
waits for the device; ``"per_step"`` draws fresh masks every step (an msakit option).
Evaluation masks at ``eval_missing_rate`` (default 0: the complete view only, the setting of
the papers' tables; the official scripts evaluate at the training rate).

Where msakit differs from the official code (each documented in docs/models.md): the
``[UNK]`` id is ``unk_token_id`` (100 in BERT's and MiniLM's vocabularies, hard-coded
officially); a batch of one clip works (the official ``squeeze`` breaks on it; a training batch
of one is batch-normalised with the running statistics).
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msakit.config_schema import LengthGroupedLMConfig, ModalityOptimiserConfig, TrainConfig
from msakit.models import register_model
from msakit.models.base import (
    FeatureDims,
    ModelOutput,
    MSAModel,
    check_batch_sequence,
    check_loss_weights,
    modality_parameter_groups,
    require_modalities,
)
from msakit.modules.dropout import Dropout
from msakit.modules.encoders import RecurrentInput, SequenceLSTM, recurrent_input
from msakit.modules.text import PretrainedTextEncoder
from msakit.modules.ulgm import SentimentHead

MODALITIES = ("text", "audio", "vision")
LOSS_TERMS = ("task", "task_complete",
              *(f"attraction_{m}" for m in ("gmc", *MODALITIES)),
              *(f"reconstruction_{m}" for m in MODALITIES))


class EMTConfig(ModalityOptimiserConfig, LengthGroupedLMConfig):
    """EMT-DLFR hyper-parameters: the official MOSI values (sunlicai/EMT-DLFR,
    ``config/config_regression.py`` ``__EMT_DLFR``)."""

    name: str = "emt"
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {"task": 1.0, "task_complete": 1.0,
                                 **{f"attraction_{m}": 1.0 for m in ("gmc", *MODALITIES)},
                                 **{f"reconstruction_{m}": 1.0 for m in MODALITIES}},
        description="official: task 1; task_complete and attraction_* take loss_attra_weight, "
        "reconstruction_* loss_recon_weight (1 on MOSI/MOSEI, 0.5 on SIMS)")
    freeze_language_model: bool = False
    audio_lstm_hidden: int = Field(32, ge=1)
    vision_lstm_hidden: int = Field(64, ge=1)
    audio_out: int = Field(16, ge=1, description="d_a: audio utterance/local feature size")
    vision_out: int = Field(32, ge=1)
    audio_lstm_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the audio LSTM's "
                                      "final state (the utterance vector only)")
    vision_lstm_dropout: float = Field(0.0, ge=0, lt=1)
    d_model: int = Field(128, ge=1, description="D: EMT's width")
    fusion_layers: int = Field(3, ge=1)
    heads: int = Field(4, ge=1)
    learnable_pos_emb: bool = False
    max_seq_len: int = Field(1024, ge=1, description="longest sequence the positional table "
                             "covers (official 1024)")
    emb_dropout: float = Field(0.0, ge=0, lt=1)
    attn_dropout: float = Field(0.3, ge=0, lt=1)
    ff_dropout: float = Field(0.1, ge=0, lt=1)
    ff_expansion: int = Field(4, ge=1)
    mpu_share: bool = Field(True, description="one MPU half for both directions (G->h, h->G)")
    modality_share: bool = Field(True, description="the same MPU for the three modalities")
    layer_share: bool = Field(True, description="the same MPU and pooling in every layer")
    attn_act_fn: Literal["relu", "sigmoid", "tanh"] = "tanh"
    gmc_tokens_pred_dim: int = Field(128, ge=1)
    text_pred_dim: int = Field(256, ge=1)
    audio_pred_dim: int = Field(8, ge=1)
    vision_pred_dim: int = Field(16, ge=1)
    recon_loss: Literal["SmoothL1Loss", "L1Loss", "MSELoss"] = "SmoothL1Loss"
    post_fusion_dim: int = Field(256, ge=1)
    post_fusion_dropout: float = Field(0.3, ge=0, lt=1)
    missing_rate: float = Field(
        0.0, ge=0, le=1, description="share of each modality's positions missing in the "
        "incomplete view in training. The official scripts train and test one model per rate "
        "0.0, 0.1, ..., 1.0; 0.0 is the complete-data setting the comparison tables quote (the "
        "two views then differ by their dropout only, and the reconstruction terms are 0)")
    eval_missing_rate: float = Field(0.0, ge=0, le=1, description="the same in evaluation; 0: "
                                     "the complete view only")
    mask_draw: Literal["per_clip", "per_step"] = Field(
        "per_clip", description="per_clip (official): a clip's missing positions are the same "
        "every epoch; per_step: drawn afresh every training step")
    mask_seed: int = Field(111, ge=0, le=2**31 - 1)
    unk_token_id: int = Field(100, ge=0, description="token that replaces missing words "
                              "([UNK] of BERT's and MiniLM's vocabularies)")
    audio_lr: float | None = Field(1e-3, gt=0)
    audio_weight_decay: float | None = Field(0.01, ge=0)
    vision_lr: float | None = Field(1e-4, gt=0)
    vision_weight_decay: float | None = Field(1e-3, ge=0)

    @model_validator(mode="after")
    def _check(self) -> EMTConfig:
        check_loss_weights(self.loss_weights, LOSS_TERMS, self.name)
        if self.d_model % self.heads:
            raise ValueError(f"emt: model.d_model ({self.d_model}) must be divisible by "
                             f"model.heads ({self.heads})")
        return self


# --------------------------------------------------------------------------------------------
# Missing positions
# --------------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, constant: int) -> torch.Tensor:
    """``x * constant mod 2**32`` for int64 ``x`` in ``[0, 2**32)`` without int64 overflow."""
    low = (x * (constant & 0xFFFF)) & _MASK32
    high = ((x * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (Wellons' "lowbias32") on int64 tensors in ``[0, 2**32)``."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_uniform(seed: int, rows: torch.Tensor, steps: int) -> torch.Tensor:
    """Uniform numbers in ``[0, 1)`` that depend only on ``(seed, row, position)``.

    Args:
        seed: stream number (mask seed and modality).
        rows: ``(B,)`` long: each clip's row in its split.
        steps: ``L``.

    Returns:
        ``(B, L)`` float32.
    """
    positions = torch.arange(steps, device=rows.device, dtype=torch.int64)
    key = _hash32(torch.full_like(rows, seed & _MASK32, dtype=torch.int64))
    key = _hash32((key + (rows.to(torch.int64) & _MASK32)) & _MASK32)
    value = _hash32((key[:, None] + positions[None]) & _MASK32)
    return value.to(torch.float64).div(2.0**32).to(torch.float32)


def kept_positions(uniform: torch.Tensor, real: torch.Tensor, missing_rate: float) -> torch.Tensor:
    """``(B, L)`` bool: real positions kept in the incomplete view (the official
    ``(uniform > missing_rate) * input_mask``)."""
    return (uniform > missing_rate) & real


# --------------------------------------------------------------------------------------------
# EMT: global multimodal context <-> local unimodal features
# --------------------------------------------------------------------------------------------

class SinusoidalPositions(nn.Module):
    """Adds a sinusoidal (or learned) position table and applies dropout. ``(B, L, D)``."""

    def __init__(self, dim: int, max_len: int, dropout: float, learnable: bool):
        super().__init__()
        self.dropout = Dropout(dropout)
        if learnable:
            self.table = nn.Parameter(torch.randn(1, max_len, dim))
        else:
            table = torch.zeros(max_len, dim)
            position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
            frequency = torch.exp(torch.arange(0, dim, 2).float() * (-math.log(10000.0) / dim))
            table[:, 0::2] = torch.sin(position * frequency)
            table[:, 1::2] = torch.cos(position * frequency[:dim // 2])
            self.register_buffer("table", table.unsqueeze(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.table.shape[1]:
            raise ValueError(f"emt: a sequence of {x.shape[1]} steps is longer than "
                             f"model.max_seq_len={self.table.shape[1]}")
        return self.dropout(x + self.table[:, :x.shape[1]])


class Attention(nn.Module):
    """Multi-head attention with bias-free query/key-value maps and dropout on the weights.

    Shapes: ``x (B, T1, D)``, ``context (B, T2, D)``, ``mask (B, T2)`` bool (True = attend)
    -> ``(B, T1, D)``. A fully masked row attends uniformly (as the official ``-max`` fill).
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.dropout = Dropout(dropout)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, steps, dim = x.shape
        heads = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, T, D) -> (B*h, T, D/h), as official
            return t.reshape(batch, t.shape[1], heads, -1).transpose(1, 2).reshape(
                batch * heads, t.shape[1], -1)

        key, value = self.to_kv(context).chunk(2, dim=-1)
        scores = split(self.to_q(x)) @ split(key).transpose(-1, -2) * self.scale
        if mask is not None:  # (B, T2) -> (B*h, 1, T2)
            keep = mask[:, None, None, :].expand(batch, heads, 1, mask.shape[1])
            scores = scores.masked_fill(~keep.reshape(batch * heads, 1, -1),
                                        -torch.finfo(scores.dtype).max)
        weights = self.dropout(scores.softmax(dim=-1))  # (B*h, T1, T2)
        out = (weights @ split(value)).reshape(batch, heads, steps, -1).transpose(1, 2)
        return self.to_out(out.reshape(batch, steps, dim))


class FeedForward(nn.Module):
    """GEGLU feed-forward: ``Linear(D -> 2eD) -> a * gelu(b) -> Linear(eD -> D) -> Dropout``."""

    def __init__(self, dim: int, expansion: int, dropout: float):
        super().__init__()
        self.expand = nn.Linear(dim, dim * expansion * 2)
        self.project = nn.Linear(dim * expansion, dim)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.expand(x).chunk(2, dim=-1)
        return self.dropout(self.project(value * F.gelu(gate)))


class CrossSelfBlock(nn.Module):
    """Half an MPU (mutual promotion unit): the target attends to a source, then to itself,
    then a feed-forward; each pre-normalised with a residual (eqs. 4-6).

    Shapes: ``x (B, T1, D)``, ``source (B, T2, D)``, ``mask (B, T1)``, ``source_mask (B, T2)``
    (bool, or ``None``) -> ``(B, T1, D)``.
    """

    def __init__(self, dim: int, heads: int, expansion: int, attn_dropout: float,
                 ff_dropout: float):
        super().__init__()
        self.cross_norm = nn.LayerNorm(dim)
        self.source_norm = nn.LayerNorm(dim)
        self.cross_attention = Attention(dim, heads, attn_dropout)
        self.self_norm = nn.LayerNorm(dim)
        self.self_attention = Attention(dim, heads, attn_dropout)
        self.ff_norm = nn.LayerNorm(dim)
        self.feed_forward = FeedForward(dim, expansion, ff_dropout)

    def forward(self, x: torch.Tensor, source: torch.Tensor, mask: torch.Tensor | None,
                source_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.cross_attention(self.cross_norm(x), self.source_norm(source), source_mask) + x
        normed = self.self_norm(x)
        x = self.self_attention(normed, normed, mask) + x
        return self.feed_forward(self.ff_norm(x)) + x


class AttentionPooling(nn.Module):
    """Softmax-weighted sum over ``M`` vectors, scores ``Linear -> act -> Linear``:
    ``(B, M, D') -> (B, D')`` (eq. 7)."""

    def __init__(self, dim: int, activation: str):
        super().__init__()
        act = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[activation]
        self.score = nn.Sequential(nn.Linear(dim, dim), act(), nn.Linear(dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.score(x).softmax(dim=1)  # (B, M, 1)
        return (weights.transpose(1, 2) @ x).squeeze(1)


def _repeat(module: nn.Module, count: int, share: bool) -> nn.ModuleList:
    """``count`` references to ``module`` (shared) or ``count`` independent copies of it."""
    return nn.ModuleList([module if share else copy.deepcopy(module) for _ in range(count)])


class EfficientMultimodalTransformer(nn.Module):
    """EMT: ``layers[l][m][0]`` updates modality ``m``'s local features from the global
    context, ``layers[l][m][1]`` the global context from them; ``pools[l]`` merges the three
    updated contexts. Sharing (``mpu_share``, ``modality_share``, ``layer_share``) reuses one
    module where the official code does.

    Shapes: ``context (B, M, D)``, ``features`` M x ``(B, T_m, D)``, ``masks`` M x ``(B, T_m)``
    bool -> ``(context (B, M, D), features M x (B, T_m, D))``.
    """

    def __init__(self, config: EMTConfig, num_modalities: int = 3):
        super().__init__()
        dim = config.d_model
        self.num_modalities = num_modalities
        self.positions = SinusoidalPositions(dim, config.max_seq_len, config.emb_dropout,
                                             config.learnable_pos_emb)
        block = CrossSelfBlock(dim, config.heads, config.ff_expansion, config.attn_dropout,
                               config.ff_dropout)
        mpu = _repeat(block, 2, config.mpu_share)
        per_modality = _repeat(mpu, num_modalities, config.modality_share)
        self.layers = _repeat(per_modality, config.fusion_layers, config.layer_share)
        self.pools = _repeat(AttentionPooling(num_modalities * dim, config.attn_act_fn),
                             config.fusion_layers, config.layer_share)

    def forward(self, context: torch.Tensor, features: list[torch.Tensor],
                masks: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        batch = context.shape[0]
        features = [self.positions(x) for x in features]
        for layer, pool in zip(self.layers, self.pools):
            contexts = []
            for m, (x, mask) in enumerate(zip(features, masks)):
                features[m] = layer[m][0](x, context, mask=mask, source_mask=None)
                contexts.append(layer[m][1](context, x, mask=None, source_mask=mask))
            context = pool(torch.stack(contexts, dim=1).reshape(batch, self.num_modalities, -1))
            context = context.reshape(batch, self.num_modalities, -1)
        return context, features


class Projector(nn.Module):
    """SimSiam projector ``Linear -> BatchNorm1d (no affine)``: ``(B, d) -> (B, d)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.norm = nn.BatchNorm1d(dim, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _batch_norm(self.norm, self.linear(x))


class Predictor(nn.Module):
    """SimSiam predictor ``Linear (no bias) -> BatchNorm1d -> ReLU -> Linear``:
    ``(B, d) -> (B, d)`` through ``hidden``."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.hidden = nn.Linear(dim, hidden, bias=False)
        self.norm = nn.BatchNorm1d(hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(_batch_norm(self.norm, self.hidden(x))))


def _batch_norm(norm: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``; a training batch of one clip (no batch statistics; the official code
    raises) is normalised with the running statistics, as in evaluation."""
    if norm.training and x.shape[0] == 1:
        return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            training=False, eps=norm.eps)
    return norm(x)


def reconstruction_loss(kind: str, prediction: torch.Tensor, target: torch.Tensor,
                        missing: torch.Tensor) -> torch.Tensor:
    """Eq. 10 as the official ``ReconLoss``: the loss summed over the missing positions, divided
    by their count times the feature size (+1e-6). ``(B, T, d)``, ``(B, T, d)``, ``(B, T)``."""
    weights = missing.to(prediction.dtype).unsqueeze(-1).expand_as(prediction)
    loss = {"SmoothL1Loss": F.smooth_l1_loss, "L1Loss": F.l1_loss, "MSELoss": F.mse_loss}[kind]
    return loss(prediction * weights, target * weights, reduction="sum") / (weights.sum() + 1e-6)


@register_model
class EMT(MSAModel):
    """EMT-DLFR. Prediction: the incomplete view's (the complete view's when nothing is
    missing). Loss terms: see the module docstring. Extras: ``pred_complete`` ``(B,)``."""

    name = "emt"
    paper = "Sun et al., IEEE TAC 2023 (EMT-DLFR)"
    config_class = EMTConfig

    def __init__(self, config: EMTConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, self.name)
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="none", freeze=config.freeze_language_model,
            group_by_length=config.lm_group_by_length,
        )
        text_dim = self.text_encoder.hidden_size
        out_dims = {"text": text_dim, "audio": config.audio_out, "vision": config.vision_out}
        self.audio_lstm = SequenceLSTM(dims.audio, config.audio_lstm_hidden)
        self.vision_lstm = SequenceLSTM(dims.vision, config.vision_lstm_hidden)
        self.audio_dropout = Dropout(config.audio_lstm_dropout)
        self.vision_dropout = Dropout(config.vision_lstm_dropout)
        self.audio_out = _linear_or_identity(config.audio_lstm_hidden, config.audio_out)
        self.vision_out = _linear_or_identity(config.vision_lstm_hidden, config.vision_out)
        d = config.d_model
        self.equalise = nn.ModuleDict({
            m: (nn.Linear(out_dims[m], d, bias=False) if out_dims[m] != d else nn.Identity())
            for m in MODALITIES})
        self.fusion = EfficientMultimodalTransformer(config)
        attraction_dims = {"gmc": 3 * d, **out_dims}
        hidden = {"gmc": config.gmc_tokens_pred_dim, "text": config.text_pred_dim,
                  "audio": config.audio_pred_dim, "vision": config.vision_pred_dim}
        self.projectors = nn.ModuleDict({k: Projector(v) for k, v in attraction_dims.items()})
        self.predictors = nn.ModuleDict({k: Predictor(v, hidden[k])
                                         for k, v in attraction_dims.items()})
        self.reconstruct = nn.ModuleDict({
            "text": nn.Linear(d, text_dim), "audio": nn.Linear(d, dims.audio),
            "vision": nn.Linear(d, dims.vision)})
        self.head = SentimentHead(sum(out_dims.values()) + 3 * d, config.post_fusion_dim,
                                  config.post_fusion_dropout)

    def parameter_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """The official five Adam groups: LM (decay / no decay), audio sub-network (LSTM + its
        Linear), vision sub-network, the rest."""
        return modality_parameter_groups(self, train, ("audio_lstm", "audio_out"),
                                         ("vision_lstm", "vision_out"))

    # -- masks ---------------------------------------------------------------------------------
    def missing_masks(self, batch: dict[str, Any]) -> dict[str, torch.Tensor] | None:
        """``{modality: (B, L_m) bool}``, True where a real position is *kept* in the incomplete
        view (text over the token positions, audio/vision over the steps the LSTMs read), or
        ``None`` in evaluation at ``eval_missing_rate`` 0 (the incomplete view is then the
        complete one; in training the two passes differ by their dropout, as officially)."""
        config: EMTConfig = self.config  # type: ignore[assignment]
        rate = config.missing_rate if self.training else config.eval_missing_rate
        if rate == 0 and not self.training:
            return None
        attention = batch["attention_mask"].bool()
        real = {"text": attention}
        for m in ("audio", "vision"):
            seq = _trimmed(recurrent_input(batch, m))
            real[m] = torch.arange(seq.x.shape[1], device=seq.x.device)[None] < seq.lengths[:, None]
        masks = {}
        for i, m in enumerate(MODALITIES):
            shape = real[m].shape
            if config.mask_draw == "per_clip" or not self.training:
                rows = batch.get("index")
                if rows is None:
                    rows = torch.arange(shape[0], device=real[m].device)
                uniform = counter_uniform(config.mask_seed * 3 + i, rows, shape[1])
            else:
                uniform = torch.rand(shape, device=real[m].device)
            masks[m] = kept_positions(uniform, real[m], rate)
        # [CLS] and [SEP] stay (official): the first and the last real token
        last = attention.sum(1, keepdim=True) - 1
        positions = torch.arange(attention.shape[1], device=attention.device)[None]
        masks["text"] = masks["text"] | (positions == 0) | (positions == last)
        masks["text"] &= attention
        return masks

    # -- one view ------------------------------------------------------------------------------
    def _view(self, text_states: torch.Tensor, text_lengths: torch.Tensor,
              audio, vision, audio_x: torch.Tensor, vision_x: torch.Tensor,
              ) -> dict[str, Any]:
        """One pass of EMT and the heads over a view; ``text_states (B, L_t, H)``."""
        utterance = {"text": text_states[:, 0]}
        local = {"text": text_states[:, 1:]}
        for m, seq, x, lstm, dropout, out in (
                ("audio", audio, audio_x, self.audio_lstm, self.audio_dropout, self.audio_out),
                ("vision", vision, vision_x, self.vision_lstm, self.vision_dropout,
                 self.vision_out)):
            outputs, final = lstm(x, seq.host_lengths)
            utterance[m] = out(dropout(final))
            local[m] = out(outputs)
        context = torch.stack([self.equalise[m](utterance[m]) for m in MODALITIES], dim=1)
        features = [self.equalise[m](local[m]) for m in MODALITIES]
        steps = [f.shape[1] for f in features]
        masks = [torch.arange(t, device=context.device)[None] < length[:, None]
                 for t, length in zip(steps, (text_lengths, audio.lengths, vision.lengths))]
        context, features = self.fusion(context, features, masks)
        context = context.reshape(context.shape[0], -1)  # (B, 3D)
        vectors = {"gmc": context, **utterance}
        z = {k: self.projectors[k](v) for k, v in vectors.items()}
        p = {k: self.predictors[k](z[k]) for k, v in vectors.items()}
        prediction, _ = self.head(torch.cat([utterance["text"], utterance["audio"],
                                             utterance["vision"], context], dim=-1))
        return {"prediction": prediction, "z": z, "p": p, "features": features}

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        config: EMTConfig = self.config  # type: ignore[assignment]
        check_batch_sequence(batch, "audio", self.dims.audio)
        check_batch_sequence(batch, "vision", self.dims.vision)
        audio, vision = (_trimmed(recurrent_input(batch, m)) for m in ("audio", "vision"))
        attention_mask = batch["attention_mask"]
        text_lengths = attention_mask.sum(1) - 2  # the tokens between [CLS] and [SEP]
        text_states = self.text_encoder.encode_batch(batch)  # (B, L_t, H)
        complete = self._view(text_states, text_lengths, audio, vision, audio.x, vision.x)

        masks = self.missing_masks(batch)
        if masks is not None:  # audio/vision masks over the trimmed steps
            masks = {"text": masks["text"], "audio": masks["audio"][:, :audio.x.shape[1]],
                     "vision": masks["vision"][:, :vision.x.shape[1]]}
        if masks is None:
            incomplete = complete
        else:
            ids = torch.where(masks["text"] | ~attention_mask.bool(), batch["input_ids"],
                              torch.full_like(batch["input_ids"], config.unk_token_id))
            masked_states = self.text_encoder(ids, attention_mask, batch.get("token_type_ids"),
                                              lm_attention_mask=batch.get("lm_attention_mask"))
            incomplete = self._view(
                masked_states, text_lengths, audio, vision,
                audio.x * masks["audio"].unsqueeze(-1).to(audio.x.dtype),
                vision.x * masks["vision"].unsqueeze(-1).to(vision.x.dtype))

        losses = {}
        if batch.get("labels") is not None:
            labels = batch["labels"].to(complete["prediction"].dtype)
            losses["task"] = (incomplete["prediction"] - labels).abs().mean()
            losses["task_complete"] = (complete["prediction"] - labels).abs().mean()
            for k in ("gmc", *MODALITIES):
                losses[f"attraction_{k}"] = -0.5 * (
                    F.cosine_similarity(incomplete["p"][k], complete["z"][k].detach()).mean()
                    + F.cosine_similarity(complete["p"][k], incomplete["z"][k].detach()).mean())
            targets = {"text": text_states[:, 1:].detach(), "audio": audio.x,
                       "vision": vision.x}
            for i, m in enumerate(MODALITIES):
                if masks is None:  # nothing missing: the loss is 0 (official: 0 / 1e-6)
                    losses[f"reconstruction_{m}"] = labels.new_zeros(())
                    continue
                reconstruction = self.reconstruct[m](incomplete["features"][i])
                if m == "text":
                    missing = attention_mask[:, 1:].bool() & ~masks["text"][:, 1:]
                else:
                    seq = audio if m == "audio" else vision
                    real = (torch.arange(seq.x.shape[1], device=seq.x.device)[None]
                            < seq.lengths[:, None])
                    missing = real & ~masks[m]
                losses[f"reconstruction_{m}"] = reconstruction_loss(
                    config.recon_loss, reconstruction, targets[m], missing)
        return ModelOutput(prediction=incomplete["prediction"], losses=losses,
                           extras={"pred_complete": complete["prediction"].detach()})


def _trimmed(seq: RecurrentInput) -> RecurrentInput:
    """The sequence cut to its batch's longest clip, as the official ``pad_packed_sequence``
    leaves it (read from the CPU lengths; left whole when only device lengths exist)."""
    if seq.host_lengths.device.type != "cpu" or seq.x.shape[0] == 0:
        return seq
    return seq._replace(x=seq.x[:, :int(seq.host_lengths.max())])


def _linear_or_identity(in_dim: int, out_dim: int) -> nn.Module:
    return nn.Linear(in_dim, out_dim) if in_dim != out_dim else nn.Identity()
