"""DMD: Decoupled Multimodal Distilling for emotion recognition (Li et al., CVPR 2023).

Faithful to the official implementation (``mdswyz/DMD``: ``trains/singleTask/model/dmd.py``,
``DMD.py``, ``distillnets/``, ``HingeLoss.py``, ``run.py``), batch-first and with explicit padding.

Blocks (shapes batch-first; ``d`` = ``embed_dim``, ``T'_m`` = fixed length minus kernel + 1):

- inputs: LM hidden states (padded tokens zeroed) with dropout, audio, vision, each zero-padded
  or truncated to a fixed length ``T_m`` -> ``(B, T_m, D_m)``;
- projection ``X̃_m``: bias-free ``Conv1d(D_m -> d, k_m)``, no padding -> ``(B, T'_m, d)``;
- exclusive ``s_m = Conv1d_m(d -> d, 1)`` (one per modality) and common
  ``c_m = Conv1d_c(d -> d, 1)`` (shared) -> ``(B, T'_m, d)``;
- self-regression: ``recon_m = Dec_m([s_m; c_m])``, ``s_m^r = Conv1d_m(recon_m)``;
- margin projection ``c_m^sim = Linear_m(flatten c_m)`` -> ``(B, d)``;
- homogeneous heads: ``r_m = ReLU(Linear(flatten c_m))`` ``(B, d)``,
  ``ŷ_m^homo = Linear(flatten c_m + Linear(Dropout(r_m)))`` ``(B,)``;
- common head: a self-attention encoder per ``c_m``, one read-out step each,
  ``c_fus = [c_L; c_V; c_A]`` ``(B, 3d)`` -> residual MLP -> ``ŷ_c``;
- heterogeneous branch: MulT cross-modal streams on the exclusive ``s_m``
  (:class:`~msakit.modules.crossmodal.CrossModalFusion`) -> ``h_m`` ``(B, 2d)``;
  ``r_m^hetero = h_m + W2 Dropout(ReLU(W1 h_m))`` -> ``ŷ_m^hetero``;
- output: ``[σ(W h_L); σ(W h_V); σ(W h_A); σ(W c_fus)]`` ``(B, 9d)`` -> residual MLP -> ``ŷ``;
- HomoGD on ``(ŷ^homo, r^homo)`` and HeteroGD on ``(ŷ^hetero, r^hetero)``
  (:class:`~msakit.modules.graph_distillation.GraphDistillationUnit`) -> edges ``(B, 6)``.

Loss terms (each weighted by ``loss_weights``; official values are :class:`DMDConfig`'s defaults):

- ``task``: L1 on ŷ; ``task_common``: L1 on ŷ_c; ``task_homo`` / ``task_hetero``: the sum over the
  three modalities of the L1 of their homogeneous / heterogeneous heads;
- ``distill_homo`` / ``distill_hetero``: edge-weighted L1 between each student's prediction and
  the detached teacher prediction, summed over the six pairs; ``distill_hetero_repr``: the
  official HeteroGD representation term (weighted ``max(0, cos)``); ``distill_homo_prior`` /
  ``distill_hetero_prior``: squared distance of the batch-mean edges to the fixed prior;
- ``recon``: ``sum_m MSE(recon_m, X̃_m)``; ``self_regression``: ``sum_m MSE(s_m, s_m^r)``;
- ``margin``: hinge on the cosine similarities of the ``c_m^sim`` of all modalities and samples;
- ``ortho``: ``sum_m`` of the clamped cosine between ``s_m`` and ``c_m``.

Where the official code and the paper disagree (both selectable):

- ``ortho_reduction="batch"`` (default, official): ``nn.CosineEmbeddingLoss`` is fed
  ``(T, B, d)`` tensors with a 1-D target, so in the PyTorch the code was written for the
  cosine is taken *over the batch axis* for every (time step, channel) and the loss is the mean
  of ``max(0, cos)``. ``"feature"`` (the paper's reading): the cosine of each sample's ``s_m``
  and ``c_m`` vectors over channels at each real time step, ``max(0, cos)``, averaged.
- ``margin_triplets="official"`` (default): for every anchor row (a sample's ``c^sim`` of any
  modality), positives are all other rows with exactly the same label and negatives all rows with
  a different label, whatever their modality. ``"paper"`` (the paper's triplet set): positives
  share the label but come from a *different* modality, negatives share the anchor's modality
  but not its label.
  Margin ``margin_base + margin_scale |y_anchor - y_negative|`` (official: 0 + 0.15 |Δy|; the
  paper's constant margin is ``margin_base=α, margin_scale=0``). Anchors without both a
  positive and a negative are skipped; the loss is the mean over anchors of the mean hinge over
  their (positive, negative) pairs.

Other deliberate differences, each a config option (the official setting in brackets):

- ``padding="masked"`` (``"official"``): padded steps are masked out of every transformer's keys
  and the future mask's offset uses each clip's real lengths; the official code attends to padded
  steps and leaves out the positional embedding only where a step's first feature is exactly 0;
- ``readout="last_valid"`` (``"last_position"``): each sample's last real step is read out, not
  the final padded position;
- ``zero_padded_text=True`` (``False``): LM states of padded tokens are zeroed before the
  projection, so padded steps stay zero through the bias-free convs; with ``False`` the text is
  padded to ``text_length`` tokens before the LM (as the official pickles are) and every state is
  kept;
- ``hetero_repr_weighting="batch_mean"`` is the official HeteroGD representation term (the
  batch-mean clamped cosine times the batch-mean edge weight); ``"per_sample"`` weights each
  sample's cosine by its own edge.

Ablations of the paper (Table 4): ``feature_decoupling=False`` (no exclusive/common encoders:
both branches read the projected ``X̃_m``, and the decoupling losses ``recon``,
``self_regression``, ``margin``, ``ortho`` are not computed) and ``cross_modal_attention=False``
(the heterogeneous branch reads each ``s_m`` through its own self-attention encoder instead of
the cross-modal transformers, so ``h_m`` is ``(B, d)``). A GD unit is removed by setting its
``distill_*`` loss weights to 0.

The fixed lengths ``T_m`` (official aligned MOSI: 50 for every modality; unaligned MOSI: text 50,
audio 375, vision 500) exist because the homogeneous heads flatten ``T'_m · d`` features.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msakit.config_schema import ModelConfig
from msakit.models import register_model
from msakit.models.base import (
    FeatureDims,
    ModelOutput,
    MSAModel,
    check_loss_weights,
    require_modalities,
)
from msakit.modules.crossmodal import (
    CrossModalTransformerEncoder,
    PaddingOption,
    ReadoutOption,
    TemporalConvProjection,
    attention_dropout_by_source,
    cross_modal_fusion,
    fit_length,
    last_valid_step,
    modality_lengths,
    padding_mask_from_lengths,
)
from msakit.modules.dropout import dropout
from msakit.modules.graph_distillation import GraphDistillationUnit, prior_from_scores
from msakit.modules.losses import reconstruction_loss
from msakit.modules.text import PretrainedTextEncoder, text_states

MODALITIES = ("text", "audio", "vision")
#: Order of the modalities in the GD units and the fusion (official: l, v, a).
GD_ORDER = ("text", "vision", "audio")
GD_NAMES = ("L", "V", "A")
DMD_LOSS_TERMS = (
    "task", "task_common", "task_homo", "task_hetero",
    "distill_homo", "distill_homo_prior", "distill_hetero", "distill_hetero_repr",
    "distill_hetero_prior", "recon", "self_regression", "margin", "ortho",
)


def _default_loss_weights() -> dict[str, float]:
    # official: L_task (all L1 heads) + 0.05 (logit + 10 reg) homo + 0.05 (logit + 10 repr
    # + 10 reg) hetero + 0.1 (self-regression + recon + 0.1 (margin + ortho))
    return {
        "task": 1.0, "task_common": 1.0, "task_homo": 1.0, "task_hetero": 1.0,
        "distill_homo": 0.05, "distill_homo_prior": 0.5,
        "distill_hetero": 0.05, "distill_hetero_repr": 0.5, "distill_hetero_prior": 0.5,
        "recon": 0.1, "self_regression": 0.1, "margin": 0.01, "ortho": 0.01,
    }


class DMDConfig(ModelConfig):
    """DMD's hyper-parameters; defaults are the official aligned-MOSI ones (config.json, run.py)."""

    name: str = "dmd"
    embed_dim: int = Field(50, ge=4, description="d (dst_feature_dim)")
    num_heads: int = Field(10, ge=1)
    num_layers: int = Field(4, ge=1, description="nlevels: layers of each cross-modal and "
                            "common-space transformer")
    memory_layers: int = Field(4, ge=1, description="official: max(nlevels, 3)")
    conv_kernel_text: int = Field(5, ge=1)
    conv_kernel_audio: int = Field(5, ge=1)
    conv_kernel_vision: int = Field(5, ge=1)
    text_length: int = Field(50, ge=1, description="fixed text length T_text (tokens)")
    audio_length: int = Field(50, ge=1, description="fixed audio length (official unaligned 375)")
    vision_length: int = Field(50, ge=1, description="fixed vision length (official unaligned 500)")
    text_dropout: float = Field(0.5, ge=0, lt=1)
    attn_dropout: float = Field(0.3, ge=0, lt=1, description="text-source / memory attention")
    attn_dropout_audio: float = Field(0.2, ge=0, lt=1)
    attn_dropout_vision: float = Field(0.0, ge=0, lt=1)
    relu_dropout: float = Field(0.0, ge=0, lt=1)
    res_dropout: float = Field(0.0, ge=0, lt=1)
    embed_dropout: float = Field(0.2, ge=0, lt=1)
    output_dropout: float = Field(0.5, ge=0, lt=1)
    attn_mask: bool = True
    readout: ReadoutOption = "last_valid"
    padding: PaddingOption = "masked"
    zero_padded_text: bool = Field(
        True, description="zero the LM states of padded tokens (official: text padded to "
        "text_length before the LM and every state kept)"
    )
    hetero_repr_weighting: Literal["batch_mean", "per_sample"] = Field(
        "batch_mean", description="HeteroGD representation term: official batch-mean cosine x "
        "batch-mean edge, or each sample's cosine x its own edge"
    )
    feature_decoupling: bool = Field(True, description="ablation 'w/o FD' when false")
    cross_modal_attention: bool = Field(True, description="ablation 'w/o CA' when false")
    homo_gd_hidden: int = Field(64, ge=1, description="gd_size_low")
    hetero_gd_hidden: int = Field(32, ge=1, description="gd_size_high")
    gd_temperature: float = Field(8.0, gt=0, description="edge softmax temperature (1/alpha)")
    homo_prior_scores: list[float] = Field(
        [0, 0, 1, 0, 1, 0], description="prior = softmax(scores / prior_temperature), pairs "
        "V->L, A->L, L->V, A->V, L->A, V->A (official: favour L->V, L->A)"
    )
    hetero_prior_scores: list[float] = Field(
        [0, 0, 1, 0, 1, 1], description="same order (official: favour L->V, L->A, V->A)"
    )
    prior_temperature: float = Field(0.25, gt=0)
    detach_edge_inputs: bool = Field(
        False, description="edges from detached predictions/representations (official: not)"
    )
    ortho_reduction: Literal["batch", "feature"] = Field(
        "batch", description="batch (official): cosine over the batch axis; feature: the "
        "paper's per-sample cosine")
    margin_triplets: Literal["official", "paper"] = Field(
        "official", description="official triplets, or paper: positives from other "
        "modalities, negatives from the anchor's modality")
    margin_scale: float = Field(0.15, ge=0)
    margin_base: float = Field(0.0, ge=0)
    freeze_language_model: bool = Field(False, description="official: BERT fine-tuned")
    loss_weights: dict[str, float] = Field(default_factory=_default_loss_weights)

    @model_validator(mode="after")
    def _check(self) -> DMDConfig:
        check_loss_weights(self.loss_weights, DMD_LOSS_TERMS, "dmd")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} must divide embed_dim {self.embed_dim}")
        for m in MODALITIES:
            length, kernel = getattr(self, f"{m}_length"), getattr(self, f"conv_kernel_{m}")
            if length < kernel:
                raise ValueError(f"{m}_length {length} is shorter than conv_kernel_{m} {kernel}")
        for key in ("homo_prior_scores", "hetero_prior_scores"):
            if len(getattr(self, key)) != 6:
                raise ValueError(f"{key} needs 6 values (V->L, A->L, L->V, A->V, L->A, V->A)")
        return self


class _ResidualHead(nn.Module):
    """``x + W2 Dropout(ReLU(W1 x))`` then ``Linear -> 1``: DMD/MulT's output block.

    Shapes: ``(B, D)`` -> representation ``(B, D)`` and prediction ``(B,)``.
    """

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.proj1, self.proj2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 1)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = x + self.proj2(dropout(F.relu(self.proj1(x)), self.dropout, self.training))
        return hidden, self.out(hidden).squeeze(-1)


class _HomogeneousHead(nn.Module):
    """Official low-level head on the flattened common features ``c_m`` (``F = T' d``).

    ``r = ReLU(W1 f)`` (``(B, d)``, the HomoGD representation),
    ``ŷ = w · (f + W2 Dropout(r))``. Shapes: ``(B, F)`` -> ``r (B, d)``, ``ŷ (B,)``.
    """

    def __init__(self, flat_dim: int, dim: int, dropout: float):
        super().__init__()
        self.proj1, self.proj2 = nn.Linear(flat_dim, dim), nn.Linear(dim, flat_dim)
        self.out = nn.Linear(flat_dim, 1)
        self.dropout = dropout

    def forward(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        representation = F.relu(self.proj1(flat))
        hidden = flat + self.proj2(dropout(representation, self.dropout, self.training))
        return representation, self.out(hidden).squeeze(-1)


def orthogonality_loss(exclusive: torch.Tensor, common: torch.Tensor, lengths: torch.Tensor,
                       reduction: str) -> torch.Tensor:
    """``max(0, cos(s_m, c_m))`` averaged; see the module docstring for the two reductions.

    Shapes: ``exclusive``, ``common`` ``(B, T, d)``, ``lengths (B,)`` -> scalar.
    """
    if reduction == "batch":
        dot = (exclusive * common).sum(0)
        norms = ((exclusive.pow(2).sum(0) + 1e-12) * (common.pow(2).sum(0) + 1e-12)).sqrt()
        return (dot / norms).clamp(min=0).mean()
    if reduction == "feature":
        cosine = F.cosine_similarity(exclusive, common, dim=-1, eps=1e-8).clamp(min=0)
        valid = ~padding_mask_from_lengths(lengths, exclusive.shape[1])
        return (cosine * valid).sum() / valid.sum().clamp(min=1)
    raise ValueError(f"ortho_reduction must be 'batch' or 'feature', got {reduction!r}")


def margin_loss(features: torch.Tensor, labels: torch.Tensor, modality: torch.Tensor,
                triplets: str = "official", scale: float = 0.15, base: float = 0.0) -> torch.Tensor:
    """DMD's margin (hinge) loss on cosine similarities; see the module docstring.

    For each anchor ``a`` with positives ``P_a`` and negatives ``N_a``:
    ``mean_{p, n} max(0, base + scale |y_a - y_n| - cos(a, p) + cos(a, n))``, averaged over the
    anchors that have at least one of each (0 when none has).

    Shapes: ``features (N, D)``, ``labels (N,)``, ``modality (N,)`` long -> scalar.
    """
    norms = (features.pow(2).sum(-1) + 1e-8).sqrt().clamp(min=1e-8)
    cosine = (features @ features.t()) / (norms.unsqueeze(1) * norms.unsqueeze(0))
    same_label = labels.unsqueeze(1) == labels.unsqueeze(0)
    not_self = ~torch.eye(len(labels), dtype=torch.bool, device=features.device)
    if triplets == "official":
        positive, negative = same_label & not_self, ~same_label
    elif triplets == "paper":
        same_modality = modality.unsqueeze(1) == modality.unsqueeze(0)
        positive, negative = same_label & ~same_modality, ~same_label & same_modality
    else:
        raise ValueError(f"margin_triplets must be 'official' or 'paper', got {triplets!r}")
    margin = base + scale * (labels.unsqueeze(1) - labels.unsqueeze(0)).abs()
    # hinge[a, p, n] = margin[a, n] - cos[a, p] + cos[a, n]
    hinge = (margin + cosine).unsqueeze(1) - cosine.unsqueeze(2)
    valid = positive.unsqueeze(2) & negative.unsqueeze(1)
    counts = valid.sum((1, 2))
    per_anchor = (hinge.clamp(min=0) * valid).sum((1, 2)) / counts.clamp(min=1)
    anchors = (counts > 0).to(per_anchor.dtype)
    # mean over anchors with at least one (positive, negative) pair; 0 when there is none
    return (per_anchor * anchors).sum() / anchors.sum().clamp(min=1)


@register_model
class DMD(MSAModel):
    """Decoupled multimodal distillation; see the module docstring.

    Extras: ``homo_edges`` / ``hetero_edges`` ``(B, 6)`` edge weights in the order
    :attr:`edge_names` (``V->L, A->L, L->V, A->V, L->A, V->A``, teacher->student, rows sum to
    one), ``prediction_common`` ``(B,)``, ``prediction_homo`` / ``prediction_hetero`` ``(B, 3)``
    in the order L, V, A.
    """

    name = "dmd"
    paper = "Li et al., Decoupled Multimodal Distilling for Emotion Recognition, CVPR 2023"
    config_class = DMDConfig

    def __init__(self, config: DMDConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, "DMD")
        d = config.embed_dim
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="none", freeze=config.freeze_language_model
        )
        in_dims = {"text": self.text_encoder.hidden_size, "audio": dims.audio,
                   "vision": dims.vision}
        self.fixed_lengths = {m: getattr(config, f"{m}_length") for m in MODALITIES}
        kernels = {m: getattr(config, f"conv_kernel_{m}") for m in MODALITIES}
        steps = {m: self.fixed_lengths[m] - kernels[m] + 1 for m in MODALITIES}
        attn_dropout = attention_dropout_by_source(config)
        masked = config.padding == "masked"
        encoder_options = dict(relu_dropout=config.relu_dropout, res_dropout=config.res_dropout,
                               embed_dropout=config.embed_dropout, attn_mask=config.attn_mask,
                               zero_step_positions=masked)
        hetero_dim = 2 * d if config.cross_modal_attention else d

        self.projections = nn.ModuleDict(
            {m: TemporalConvProjection(in_dims[m], d, kernels[m]) for m in MODALITIES}
        )
        if config.feature_decoupling:
            # decoupling: kernel-1 bias-free Conv1d == bias-free Linear over the feature axis
            self.exclusive_encoders = nn.ModuleDict(
                {m: nn.Linear(d, d, bias=False) for m in MODALITIES}
            )
            self.common_encoder = nn.Linear(d, d, bias=False)
            self.decoders = nn.ModuleDict(
                {m: nn.Linear(2 * d, d, bias=False) for m in MODALITIES}
            )
            self.margin_projections = nn.ModuleDict(
                {m: nn.Linear(steps[m] * d, d) for m in MODALITIES}
            )
        # homogeneous branch
        self.homo_heads = nn.ModuleDict(
            {m: _HomogeneousHead(steps[m] * d, d, config.output_dropout) for m in MODALITIES}
        )
        self.common_encoders = nn.ModuleDict({
            m: CrossModalTransformerEncoder(d, config.num_heads, config.num_layers,
                                            attn_dropout=attn_dropout[m], **encoder_options)
            for m in MODALITIES
        })
        self.common_head = _ResidualHead(3 * d, config.output_dropout)
        # heterogeneous branch
        if config.cross_modal_attention:
            self.fusion = cross_modal_fusion(config)
        else:  # ablation: one self-attention encoder per exclusive s_m
            self.exclusive_self_encoders = nn.ModuleDict({
                m: CrossModalTransformerEncoder(d, config.num_heads, config.num_layers,
                                                attn_dropout=attn_dropout[m], **encoder_options)
                for m in MODALITIES
            })
        self.hetero_heads = nn.ModuleDict(
            {m: _ResidualHead(hetero_dim, config.output_dropout) for m in MODALITIES}
        )
        # final fusion of the four gated representations
        self.gates = nn.ModuleDict(
            {m: nn.Linear(hetero_dim, hetero_dim) for m in MODALITIES}
        )
        self.gate_common = nn.Linear(3 * d, 3 * d)
        self.output_head = _ResidualHead(3 * hetero_dim + 3 * d, config.output_dropout)
        # graph distillation units
        gd = dict(modality_names=GD_NAMES, temperature=config.gd_temperature,
                  detach_edge_inputs=config.detach_edge_inputs)
        self.homo_gd = GraphDistillationUnit(
            d, config.homo_gd_hidden,
            prior_from_scores(config.homo_prior_scores, config.prior_temperature), **gd
        )
        self.hetero_gd = GraphDistillationUnit(
            hetero_dim, config.hetero_gd_hidden,
            prior_from_scores(config.hetero_prior_scores, config.prior_temperature), **gd
        )
        self.on_epoch_start(0)  # per-epoch edge sums, see epoch_statistics

    @property
    def edge_names(self) -> list[str]:
        return self.homo_gd.pair_names

    # -- per-epoch edge trajectory (train_homo_gd_<pair> / train_hetero_gd_<pair> in epochs.csv) --
    def on_epoch_start(self, epoch: int) -> None:
        self._edge_sums: dict[str, torch.Tensor] = {}
        self._edge_count = 0

    def on_train_batch_end(self, batch: dict[str, Any], output: ModelOutput, epoch: int) -> None:
        for unit in ("homo", "hetero"):
            # summed on the model's device: no host sync per step
            edges = output.extras[f"{unit}_edges"].detach().float().sum(0)
            self._edge_sums[unit] = self._edge_sums.get(unit, 0) + edges
        self._edge_count += output.prediction.shape[0]

    def epoch_statistics(self) -> dict[str, float]:
        """Mean HomoGD / HeteroGD edge weights over the epoch's training samples.

        Edges are taken from the training-mode forward of each batch (before that batch's
        optimiser step), so the row shows how the distillation graph moved during the epoch.
        """
        if not self._edge_count:
            return {}
        stats = {}
        for unit, sums in self._edge_sums.items():
            for name, value in zip(self.edge_names, (sums / self._edge_count).tolist()):
                stats[f"{unit}_gd_{name}"] = value
        return stats

    def _readout(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.config.readout == "last_position":
            return x[:, -1]
        return last_valid_step(x, lengths)

    def _text(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """LM states fitted to ``text_length``, the lengths used to fit them, the real lengths."""
        if self.config.zero_padded_text:
            text, lengths = text_states(self.text_encoder, batch)
            return text, lengths, lengths
        # official: the token ids are padded to the fixed length and every LM state is kept
        extra = max(0, self.fixed_lengths["text"] - batch["input_ids"].shape[1])
        ids, mask = F.pad(batch["input_ids"], (0, extra)), F.pad(batch["attention_mask"], (0, extra))
        types = batch.get("token_type_ids")
        types = None if types is None else F.pad(types, (0, extra))
        lm_mask = batch.get("lm_attention_mask")  # text context: the LM reads the neighbours too
        text = (self.text_encoder(ids, mask, types) if lm_mask is None else
                self.text_encoder(ids, mask, types, lm_attention_mask=F.pad(lm_mask, (0, extra))))
        return text, torch.full_like(mask[:, 0], text.shape[1]).long(), mask.sum(1).long()

    def _mask(self, lengths: torch.Tensor, steps: int) -> torch.Tensor | None:
        if self.config.padding == "official":
            return None
        return padding_mask_from_lengths(lengths, steps)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        cfg = self.config
        text, text_fit_lengths, text_lengths = self._text(batch)
        text = dropout(text, p=cfg.text_dropout, training=self.training)
        raw = {
            "text": (text, text_fit_lengths),
            "audio": (batch["audio"], modality_lengths(batch, "audio")),
            "vision": (batch["vision"], modality_lengths(batch, "vision")),
        }
        projected, lengths = {}, {}
        for m in MODALITIES:
            x, n = fit_length(*raw[m], self.fixed_lengths[m])
            projected[m], lengths[m] = self.projections[m](x, n)
        if not cfg.zero_padded_text:  # the real token counts, for masks and the read-out
            lengths["text"] = text_lengths.clamp(max=projected["text"].shape[1])

        if cfg.feature_decoupling:
            exclusive = {m: self.exclusive_encoders[m](projected[m]) for m in MODALITIES}
            common = {m: self.common_encoder(projected[m]) for m in MODALITIES}
            recon = {m: self.decoders[m](torch.cat([exclusive[m], common[m]], -1))
                     for m in MODALITIES}
            exclusive_again = {m: self.exclusive_encoders[m](recon[m]) for m in MODALITIES}
        else:  # ablation 'w/o FD': both branches read the projected features
            exclusive = common = projected

        # homogeneous branch: per-modality heads on flattened c_m, and the common-space head
        homo_repr, homo_pred, common_states = {}, {}, {}
        for m in MODALITIES:
            homo_repr[m], homo_pred[m] = self.homo_heads[m](common[m].flatten(1))
            encoded = self.common_encoders[m](
                common[m], key_padding_mask=self._mask(lengths[m], common[m].shape[1]))
            common_states[m] = self._readout(encoded, lengths[m])
        common_fusion = torch.cat([common_states[m] for m in GD_ORDER], dim=-1)
        _, common_pred = self.common_head(common_fusion)

        # heterogeneous branch: cross-modal transformers on the exclusive features
        if cfg.cross_modal_attention:
            hetero_states = self.fusion(exclusive, lengths)
        else:
            hetero_states = {
                m: self._readout(self.exclusive_self_encoders[m](
                    exclusive[m], key_padding_mask=self._mask(lengths[m], exclusive[m].shape[1])),
                    lengths[m])
                for m in MODALITIES
            }
        hetero_repr, hetero_pred = {}, {}
        for m in MODALITIES:
            hetero_repr[m], hetero_pred[m] = self.hetero_heads[m](hetero_states[m])

        gated = [torch.sigmoid(self.gates[m](hetero_states[m])) for m in GD_ORDER]
        gated.append(torch.sigmoid(self.gate_common(common_fusion)))
        _, prediction = self.output_head(torch.cat(gated, dim=-1))

        homo_logits = torch.stack([homo_pred[m] for m in GD_ORDER]).unsqueeze(-1)
        homo_reprs = torch.stack([homo_repr[m] for m in GD_ORDER])
        hetero_logits = torch.stack([hetero_pred[m] for m in GD_ORDER]).unsqueeze(-1)
        hetero_reprs = torch.stack([hetero_repr[m] for m in GD_ORDER])
        homo_edges = self.homo_gd(homo_logits, homo_reprs)
        hetero_edges = self.hetero_gd(hetero_logits, hetero_reprs)

        extras = {
            "homo_edges": homo_edges.detach(),
            "hetero_edges": hetero_edges.detach(),
            "prediction_common": common_pred.detach(),
            "prediction_homo": homo_logits.squeeze(-1).t().detach(),
            "prediction_hetero": hetero_logits.squeeze(-1).t().detach(),
        }
        losses: dict[str, torch.Tensor] = {}
        labels = batch.get("labels")
        if labels is not None:
            labels = labels.to(prediction.dtype)
            losses["task"] = F.l1_loss(prediction, labels)
            losses["task_common"] = F.l1_loss(common_pred, labels)
            losses["task_homo"] = sum(F.l1_loss(homo_pred[m], labels) for m in MODALITIES)
            losses["task_hetero"] = sum(F.l1_loss(hetero_pred[m], labels) for m in MODALITIES)
            losses["distill_homo"] = self.homo_gd.logit_loss(homo_logits, homo_edges)
            losses["distill_homo_prior"] = self.homo_gd.prior_loss(homo_edges)
            losses["distill_hetero"] = self.hetero_gd.logit_loss(hetero_logits, hetero_edges)
            losses["distill_hetero_repr"] = self.hetero_gd.representation_cosine_loss(
                hetero_reprs, hetero_edges, cfg.hetero_repr_weighting
            )
            losses["distill_hetero_prior"] = self.hetero_gd.prior_loss(hetero_edges)
            if not cfg.feature_decoupling:
                return ModelOutput(prediction=prediction, losses=losses, extras=extras)
            losses["recon"] = sum(reconstruction_loss(recon[m], projected[m]) for m in MODALITIES)
            losses["self_regression"] = sum(
                reconstruction_loss(exclusive[m], exclusive_again[m]) for m in MODALITIES
            )
            losses["ortho"] = sum(
                orthogonality_loss(exclusive[m], common[m], lengths[m], cfg.ortho_reduction)
                for m in MODALITIES
            )
            similar = {m: self.margin_projections[m](common[m].flatten(1)) for m in MODALITIES}
            features = torch.cat([similar[m] for m in GD_ORDER])
            modality = torch.arange(3, device=features.device).repeat_interleave(len(labels))
            losses["margin"] = margin_loss(
                features, labels.repeat(3), modality, cfg.margin_triplets, cfg.margin_scale,
                cfg.margin_base,
            )
        return ModelOutput(prediction=prediction, losses=losses, extras=extras)

    def evaluation_artifacts(self, extras: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Mean edge weights of HomoGD and HeteroGD over an evaluated split (the paper's Fig. 5).

        Args:
            extras: this model's extras concatenated over the split (``homo_edges`` and
                ``hetero_edges`` ``(N, 6)``).

        Returns:
            ``{"pair_order": [...], "num_samples": N, "homo_gd": {"V->L": mean, ...},
            "hetero_gd": {...}, "homo_prior": {...}, "hetero_prior": {...}}``.
        """
        names = self.edge_names
        out: dict[str, Any] = {"pair_order": names}
        for unit in ("homo", "hetero"):
            key = f"{unit}_edges"
            if key not in extras:
                raise KeyError(f"evaluation_artifacts needs extras[{key!r}] of shape (N, 6)")
            edges = extras[key].detach().float().cpu()
            if edges.dim() != 2 or edges.shape[1] != len(names):
                raise ValueError(f"extras[{key!r}] must be (N, {len(names)}), got "
                                 f"{tuple(edges.shape)}")
            out["num_samples"] = int(edges.shape[0])
            out[f"{unit}_gd"] = dict(zip(names, edges.mean(0).tolist()))
            prior = getattr(self, f"{unit}_gd").prior.cpu().tolist()
            out[f"{unit}_prior"] = dict(zip(names, prior))
        return out
