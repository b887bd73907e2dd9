"""TFR-Net: Transformer-based Feature Reconstruction Network (Yuan et al., ACM MM 2021).

MMSA v2.2.1's port (``models/missingTask/TFR_NET/`` and ``trains/missingTask/TFR_NET.py`` of
thuiar/MMSA@a94e65d), which equals the authors' thuiar/TFR-Net@00f06a6 up to settings (below).
Training drops random time steps of every modality (:mod:`msakit.modules.missing`) and learns
to reconstruct them.

Pipeline (``d`` = ``embed_dim``, ``L_m`` = ``seq_lens`` of modality ``m``; every sequence is
zero-padded or truncated to its fixed ``L_m`` first, as MMSA's arrays are):

1. missing steps: ``kept_m (B, L_m)`` (given in the batch as ``<m>_missing_mask``, or drawn at
   ``missing_rate``); dropped tokens become ``[UNK]`` (first and last real token kept), dropped
   audio/vision steps zero rows. The LM runs on the masked tokens (``T_m``) and on the complete
   ones (``T``, the text's reconstruction target), both ``(B, L_t, H)``;
2. alignment (the paper's intra- and inter-modal transformers, eq. 1-4): text dropout, a
   same-length temporal ``Conv1d`` to ``d`` per modality (no bias); per target ``m``:
   ``h_m = [SA_m(x_m); CA_{s1->m}(x_m, x_s1); CA_{s2->m}(x_m, x_s2)]`` ``(B, L_m, 3d)`` with MulT's
   encoder (:class:`~msakit.modules.crossmodal.CrossModalTransformerEncoder`, official future
   mask, padded steps attended to); ``SA`` has ``max(nlevels, 3)`` layers, ``CA`` ``nlevels``;
3. reconstruction (eq. 5-6): a "temporal" transformer ``TT_m`` whose embedding is the time
   axis (``L_m``, ``num_temporal_head`` heads, no positions) over ``h_m``, then a linear
   generator ``G_m: 3d -> D_m``: ``X'_m = G_m(TT_m(h_m))`` ``(B, L_m, D_m)``;
4. fusion (c_gate): per modality a BiGRU over the real steps, a ``Conv1d(k=3)`` sigmoid gate,
   ``r = max_t tanh(W [h_m; tanh(GRU) * gate])`` ``(B, hid_m)``, dropout; then
   ``BatchNorm -> Linear -> LeakyReLU -> Dropout -> Linear`` -> ``ŷ``.

Losses: ``task`` = L1(ŷ, y); ``reconstruction_<m>`` (eq. 7) over the dropped steps ``M`` only:
``SmoothL1_sum(X'_m M, X_m M) / (|M| + 1e-4) + w_sim CMD_3(X'_m M, X_m M) / (|M| + 1e-4)`` with
``|M|`` the number of masked *elements* (steps x D_m) and the official CMD (norms
``sqrt(sum + 1e-12)``). ``model.loss_weights`` holds MMSA's ``weight_gen_loss`` per modality.
As the official loop, the reconstruction terms enter the loss from epoch 2
(``reconstruction_from_epoch``): before that they are reported, detached.

Official settings this port keeps, each a named option whose default is MMSA's:

* ``temporal_attention``: ``across_batch`` (official: ``TT_m`` reads ``h_m`` permuted to
  ``(B, 3d, L_m)`` as ``(seq, batch, embed)``, so it attends across the clips of the batch, with
  the future mask over the batch order; only the reconstruction depends on it, the prediction
  does not) or ``per_clip`` (attention over the ``3d`` channels of each clip).
* ``missing_masks``: ``per_clip`` (each clip's masks fixed for the run, a function of its id and
  ``missing_seed``, as MMSA's seeded masks) or ``per_batch`` (fresh masks every call);
  ``missing_splits``: ``all`` (MMSA masks valid and test too, at the same rates) or ``train``.
* the training loop: ``train.accumulation: running_sum`` with ``grad_accumulation: 4``
  (MMSA's ``update_epochs``), ``grad_clip_value: 0.8`` (``configs/tfr_net.yaml``).

The authors' repository (thuiar/TFR-Net@00f06a6) has the same model and loop; it differs only in
settings: MOSI learning rates 1e-5 (LM) / 2e-3 (rest) (MMSA: 2e-6 / 1e-3), ``missing_seed``
(111, 1111, 11111) (MMSA: 1111 for all three), ``num_temporal_head`` fixed at 25 (MMSA: a
setting, 25). See docs/models.md.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from msakit.config_schema import ModelConfig, TrainConfig
from msakit.models import register_model
from msakit.models.base import (
    FeatureDims,
    ModelOutput,
    MSAModel,
    check_loss_weights,
    require_modalities,
    takes_no_decay,
)
from msakit.modules.crossmodal import CrossModalTransformerEncoder, fit_length
from msakit.modules.dropout import Dropout, dropout
from msakit.modules.missing import clip_keys, clip_uniforms, draw_kept_steps, keep_text_ends
from msakit.modules.text import PretrainedTextEncoder

MODALITIES = ("text", "audio", "vision")
TERMS = ("task", "reconstruction_text", "reconstruction_audio", "reconstruction_vision")


class TFRNetConfig(ModelConfig):
    """TFR-Net hyper-parameters: MMSA's ``tfr_net`` MOSI values (config_regression.json)."""

    name: str = "tfr_net"
    freeze_language_model: bool = Field(False, description="MMSA fine-tunes BERT")
    lm_group_by_length: bool = Field(
        True, description="On the CPU, run the language model's pass over the complete tokens "
        "(read only at real dropped steps, as the text's reconstruction target) on groups of "
        "clips of similar length (msakit.modules.text.length_groups): the same loss, fewer "
        "padded tokens computed; with LM dropout its masks are drawn per group. The pass over "
        "the masked tokens always runs on the padded batch: the transformers read its padding "
        "steps. false: both passes padded, as MMSA")
    seq_lens: tuple[int, int, int] = Field(
        (50, 500, 375), description="fixed text/audio/vision lengths every sequence is padded "
        "or truncated to (MMSA's array lengths; unaligned MOSI: 50, 500, 375); the temporal "
        "transformers' embedding sizes")
    embed_dim: int = Field(30, ge=1, description="d (official dst_feature_dim_nheads[0])")
    num_heads: int = Field(6, ge=1, description="official dst_feature_dim_nheads[1]")
    nlevels: int = Field(3, ge=1, description="layers of the cross-modal transformers; the "
                         "self-attention and temporal ones have max(nlevels, 3)")
    num_temporal_head: int = Field(25, ge=1, description="heads of the temporal transformers; "
                                   "must divide every seq_lens entry")
    conv_kernel_text: int = Field(1, ge=1)
    conv_kernel_audio: int = Field(5, ge=1)
    conv_kernel_vision: int = Field(3, ge=1)
    text_dropout: float = Field(0.2, ge=0, lt=1)
    attn_dropout: float = Field(0.2, ge=0, lt=1, description="attention dropout with text as "
                                "the source, and of the self-attention and temporal encoders")
    attn_dropout_audio: float = Field(0.1, ge=0, lt=1)
    attn_dropout_vision: float = Field(0.0, ge=0, lt=1)
    relu_dropout: float = Field(0.2, ge=0, lt=1)
    embed_dropout: float = Field(0.2, ge=0, lt=1)
    res_dropout: float = Field(0.2, ge=0, lt=1)
    attn_mask: bool = Field(True, description="official future mask in every transformer")
    temporal_attention: Literal["across_batch", "per_clip"] = Field(
        "across_batch", description="what the temporal transformers attend over: the clips of "
        "the batch (official) or each clip's 3d channels")
    fusion_text_hidden: int = Field(36, ge=1)
    fusion_audio_hidden: int = Field(20, ge=1)
    fusion_vision_hidden: int = Field(48, ge=1)
    fusion_gru_layers: int = Field(3, ge=1)
    fusion_dropout: float = Field(0.2, ge=0, lt=1)
    cls_hidden: int = Field(128, ge=1)
    cls_dropout: float = Field(0.0, ge=0, lt=1)
    reconstruction_loss: Literal["combine", "smooth_l1", "mse", "cmd"] = Field(
        "combine", description="official recloss_type: combine = SmoothL1 + weight_sim_loss CMD")
    weight_sim_loss: float = Field(5.0, ge=0)
    reconstruction_from_epoch: int = Field(2, ge=1, description="first epoch whose loss has the "
                                           "reconstruction terms (official: epochs > 1)")
    missing_rate: tuple[float, float, float] = Field(
        (0.2, 0.2, 0.2), description="probability that a real text/audio/vision step is dropped")
    missing_seed: int = Field(1111, ge=0, description="seed of the per-clip masks")
    missing_masks: Literal["per_clip", "per_batch"] = Field(
        "per_clip", description="fixed masks per clip (MMSA's seeded masks) or fresh ones per call")
    missing_splits: Literal["all", "train"] = Field(
        "all", description="'all': evaluation drops steps too (MMSA masks every split); 'train'")
    unk_token_id: int | None = Field(None, ge=0, description="token of a dropped word "
                                     "(None: the tokenizer's unknown token; MMSA: 100)")
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {"task": 1.0, "reconstruction_text": 5.0,
                                 "reconstruction_audio": 2.0, "reconstruction_vision": 20.0},
        description="task and MMSA's weight_gen_loss (text, audio, vision)")

    @model_validator(mode="after")
    def _check(self) -> TFRNetConfig:
        check_loss_weights(self.loss_weights, TERMS, "tfr_net")
        if any(not 0 <= r < 1 for r in self.missing_rate):
            raise ValueError(f"model.missing_rate must be in [0, 1), got {self.missing_rate}")
        if any(length < 1 or length % self.num_temporal_head for length in self.seq_lens):
            raise ValueError(f"model.num_temporal_head {self.num_temporal_head} must divide every "
                             f"model.seq_lens entry {list(self.seq_lens)}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"model.num_heads {self.num_heads} must divide model.embed_dim "
                             f"{self.embed_dim}")
        return self


def official_cmd(x: torch.Tensor, y: torch.Tensor, n_moments: int = 3) -> torch.Tensor:
    """TFR-Net's CMD: ``||E x - E y|| + sum_k ||c_k(x) - c_k(y)||`` over the rows of ``(N, D)``,
    each norm ``sqrt(sum + 1e-12)`` (so two zero inputs give ``n_moments * 1e-6``, not 0)."""
    def norm(difference):
        return (difference.pow(2).sum() + 1e-12).sqrt()

    mean_x, mean_y = x.mean(0), y.mean(0)
    total = norm(mean_x - mean_y)
    for order in range(2, n_moments + 1):
        total = total + norm((x - mean_x).pow(order).mean(0) - (y - mean_y).pow(order).mean(0))
    return total


class GatedRecurrentPooling(nn.Module):
    """TFR-Net's C_GATE: BiGRU over the real steps, a convolutional sigmoid gate, a tanh
    projection of ``[x; tanh(h) * gate]``, max over all ``L`` steps (padding included, as the
    official code), dropout. ``x (B, L, D)``, CPU ``lengths (B,)`` -> ``(B, hidden)``."""

    def __init__(self, input_dim: int, hidden: int, num_layers: int, dropout: float):
        super().__init__()
        self.gru = nn.GRU(input_dim, hidden, num_layers=num_layers, bidirectional=True,
                          batch_first=True)
        self.gate = nn.Conv1d(2 * hidden, 1, kernel_size=3, padding=1)
        self.projection = nn.Linear(2 * hidden + input_dim, hidden)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor, host_lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, host_lengths, batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True,
                                        total_length=x.shape[1])  # (B, L, 2 hidden)
        gate = torch.sigmoid(self.gate(states.transpose(1, 2)).transpose(1, 2))  # (B, L, 1)
        projected = torch.tanh(self.projection(torch.cat([x, torch.tanh(states) * gate], -1)))
        return self.dropout(projected.max(dim=1).values)


@register_model
class TFRNet(MSAModel):
    """TFR-Net; see the module docstring. Loss terms: ``task``, ``reconstruction_<m>``.
    Extras: ``kept_<m>`` ``(B, L_m)`` float, the missing masks used (1 = kept real step)."""

    name = "tfr_net"
    paper = "Yuan et al., Transformer-based Feature Reconstruction Network, ACM MM 2021"
    config_class = TFRNetConfig

    def __init__(self, config: TFRNetConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, self.name)
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="none", freeze=config.freeze_language_model,
            group_by_length=config.lm_group_by_length)
        self.unk_token_id = (config.unk_token_id if config.unk_token_id is not None
                             else _unknown_token_id(config.language_model))
        d = config.embed_dim
        feature = {"text": self.text_encoder.hidden_size, "audio": dims.audio,
                   "vision": dims.vision}
        kernels = {"text": config.conv_kernel_text, "audio": config.conv_kernel_audio,
                   "vision": config.conv_kernel_vision}
        self.projections = nn.ModuleDict({
            m: nn.Conv1d(feature[m], d, kernels[m], padding=(kernels[m] - 1) // 2, bias=False)
            if feature[m] != d else nn.Identity() for m in MODALITIES})
        source_dropout = {"text": config.attn_dropout, "audio": config.attn_dropout_audio,
                          "vision": config.attn_dropout_vision}
        shared = dict(relu_dropout=config.relu_dropout, res_dropout=config.res_dropout,
                      embed_dropout=config.embed_dropout, attn_mask=config.attn_mask,
                      zero_step_positions=False)
        deep = max(config.nlevels, 3)
        self.self_attention = nn.ModuleDict({
            m: CrossModalTransformerEncoder(d, config.num_heads, deep,
                                            attn_dropout=config.attn_dropout, **shared)
            for m in MODALITIES})
        self.cross_attention = nn.ModuleDict({
            f"{s}_to_{m}": CrossModalTransformerEncoder(
                d, config.num_heads, config.nlevels, attn_dropout=source_dropout[s], **shared)
            for m in MODALITIES for s in _sources(m)})
        self.temporal = nn.ModuleDict({
            m: CrossModalTransformerEncoder(
                length, config.num_temporal_head, deep, attn_dropout=config.attn_dropout,
                position_embedding=False, **shared)
            for m, length in zip(MODALITIES, config.seq_lens)})
        self.generators = nn.ModuleDict({m: nn.Linear(3 * d, feature[m]) for m in MODALITIES})
        hidden = {"text": config.fusion_text_hidden, "audio": config.fusion_audio_hidden,
                  "vision": config.fusion_vision_hidden}
        self.fusion = nn.ModuleDict({
            m: GatedRecurrentPooling(3 * d, hidden[m], config.fusion_gru_layers,
                                     config.fusion_dropout) for m in MODALITIES})
        fused = sum(hidden.values())
        self.classifier = nn.Sequential(
            nn.BatchNorm1d(fused), nn.Linear(fused, config.cls_hidden), nn.LeakyReLU(),
            Dropout(config.cls_dropout), nn.Linear(config.cls_hidden, 1))
        self.epoch = 0  # set by on_epoch_start; 0 outside training

    # -- hooks and optimisation ------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def parameter_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """The official three Adam groups: the LM with decay and without (biases and LayerNorm
        weights; ``lm_lr``), everything else with ``weight_decay``, biases included (``lr``)."""
        lm = self.language_model_prefixes()
        groups = {"language_model": [], "language_model/no_decay": [], "other": []}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            key = ("other" if not name.startswith(lm) else
                   "language_model/no_decay" if takes_no_decay(name) else "language_model")
            groups[key].append(parameter)
        settings = {"language_model": (train.lm_lr, train.lm_weight_decay),
                    "language_model/no_decay": (train.lm_lr, 0.0),
                    "other": (train.lr, train.weight_decay)}
        return [{"name": k, "params": v, "lr": settings[k][0], "weight_decay": settings[k][1]}
                for k, v in groups.items()]

    # -- forward -------------------------------------------------------------------------------
    def kept_steps(self, batch: dict[str, Any], modality: str, real: torch.Tensor,
                   rate: float, seed_offset: int) -> torch.Tensor:
        """``(B, L)`` bool missing mask: the batch's ``<modality>_missing_mask`` if given (fitted
        to ``L``), else drawn (``missing_masks``); all real steps in evaluation with
        ``missing_splits=train``."""
        given = batch.get(f"{modality}_missing_mask")
        if given is not None:
            given = given.bool()[:, :real.shape[1]]
            return F.pad(given, (0, real.shape[1] - given.shape[1])) & real
        if rate == 0 or (not self.training and self.config.missing_splits == "train"):
            return real
        uniforms = None
        if self.config.missing_masks == "per_clip":
            if "ids" not in batch:
                raise KeyError("tfr_net with model.missing_masks=per_clip needs the batch's clip "
                               "'ids' (or given '<modality>_missing_mask' tensors)")
            keys = clip_keys(batch["ids"], real.device)
            uniforms = clip_uniforms(keys, real.shape[1], self.config.missing_seed + seed_offset)
        return draw_kept_steps(real, rate, uniforms)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        cfg = self.config
        length = dict(zip(MODALITIES, cfg.seq_lens))
        rate = dict(zip(MODALITIES, cfg.missing_rate))
        host = batch.get("host_lengths") or {}

        # 1. fixed lengths, missing steps
        steps = torch.arange(length["text"], device=batch["input_ids"].device)
        ids = _fit_tokens(batch["input_ids"], length["text"])
        text_mask = _fit_tokens(batch["attention_mask"], length["text"])
        token_types = (None if batch.get("token_type_ids") is None
                       else _fit_tokens(batch["token_type_ids"], length["text"]))
        text_lengths = text_mask.sum(1)
        real = {"text": steps.view(1, -1) < text_lengths.view(-1, 1)}
        features, lengths = {}, {"text": text_lengths}
        # CPU lengths for packing: the collated batch has them (no device-to-host copy)
        host_lengths = {"text": host["text"].clamp(max=length["text"]) if "text" in host
                        else text_lengths.cpu()}
        for m in ("audio", "vision"):
            features[m], lengths[m] = fit_length(batch[m], batch[f"{m}_lengths"], length[m])
            real[m] = (torch.arange(length[m], device=lengths[m].device).view(1, -1)
                       < lengths[m].view(-1, 1))
            host_lengths[m] = host.get(m, lengths[m]).clamp(max=length[m]).cpu()
        kept = {m: self.kept_steps(batch, m, real[m], rate[m], i)
                for i, m in enumerate(MODALITIES)}
        if batch.get("text_missing_mask") is None:
            kept["text"] = keep_text_ends(kept["text"], text_lengths) & real["text"]
        masked_ids = torch.where(real["text"] & ~kept["text"],
                                 torch.full_like(ids, self.unk_token_id), ids)
        # (B, L_t, H) each; the masked tokens' states at padding feed the transformers (one
        # padded batch), the complete tokens' are read at real steps only (length groups)
        text_missing = self.text_encoder(masked_ids, text_mask, token_types, padded=True)
        text_complete = self.text_encoder(ids, text_mask, token_types)
        complete = {"text": text_complete, **features}
        missing = {"text": text_missing,
                   **{m: features[m] * kept[m].unsqueeze(-1).to(features[m].dtype)
                      for m in ("audio", "vision")}}

        # 2. alignment: (B, D_m, L_m) -> (B, L_m, d) -> h_m (B, L_m, 3d)
        inputs = {"text": dropout(missing["text"].transpose(1, 2), p=cfg.text_dropout,
                                  training=self.training),
                  "audio": missing["audio"].transpose(1, 2),
                  "vision": missing["vision"].transpose(1, 2)}
        projected = {m: self.projections[m](inputs[m]).transpose(1, 2) for m in MODALITIES}
        aligned, reconstructed = {}, {}
        for m in MODALITIES:
            streams = [self.self_attention[m](projected[m])]
            streams += [self.cross_attention[f"{s}_to_{m}"](projected[m], projected[s])
                        for s in _sources(m)]
            aligned[m] = torch.cat(streams, dim=-1)
            # 3. temporal transformer (embedding = time) and generator
            reconstructed[m] = self.generators[m](self._temporal(m, aligned[m]))

        # 4. fusion
        pooled = [self.fusion[m](aligned[m], host_lengths[m]) for m in MODALITIES]
        prediction = self.classifier(torch.cat(pooled, dim=-1)).squeeze(-1)

        losses = {}
        if batch.get("labels") is not None:
            losses["task"] = F.l1_loss(prediction, batch["labels"].to(prediction.dtype))
            with_reconstruction = (not self.training
                                   or self.epoch >= cfg.reconstruction_from_epoch)
            for m in MODALITIES:
                term = self.reconstruction_loss(reconstructed[m], complete[m],
                                                real[m] & ~kept[m])
                losses[f"reconstruction_{m}"] = term if with_reconstruction else term.detach()
        extras = {f"kept_{m}": kept[m].float() for m in MODALITIES}
        return ModelOutput(prediction=prediction, losses=losses, extras=extras)

    def _temporal(self, modality: str, h: torch.Tensor) -> torch.Tensor:
        """``TT_m``: ``h (B, L, 3d)`` -> ``(B, L, 3d)`` with the time axis as the embedding."""
        encoder = self.temporal[modality]
        if self.config.temporal_attention == "per_clip":
            return encoder(h.transpose(1, 2)).transpose(1, 2)
        return encoder(h.permute(2, 0, 1)).permute(1, 2, 0)  # (3d, B, L): the batch attends

    def reconstruction_loss(self, predicted: torch.Tensor, target: torch.Tensor,
                            dropped: torch.Tensor) -> torch.Tensor:
        """Eq. 7 over the dropped steps: ``predicted``/``target`` ``(B, L, D)``, ``dropped``
        ``(B, L)`` bool -> scalar (see the module docstring; official ``RECLoss``)."""
        mask = dropped.unsqueeze(-1).expand_as(predicted).to(predicted.dtype)
        count = mask.sum() + 1e-4
        p, t = predicted * mask, target * mask
        kind = self.config.reconstruction_loss
        if kind == "cmd":
            return official_cmd(p.reshape(-1, p.shape[-1]), t.reshape(-1, t.shape[-1])) / count
        loss = (F.mse_loss(p, t, reduction="sum") if kind == "mse"
                else F.smooth_l1_loss(p, t, reduction="sum")) / count
        if kind == "combine" and self.config.weight_sim_loss:
            loss = loss + self.config.weight_sim_loss * official_cmd(
                p.reshape(-1, p.shape[-1]), t.reshape(-1, t.shape[-1])) / count
        return loss


def _sources(target: str) -> list[str]:
    return [m for m in MODALITIES if m != target]


def _fit_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, L)`` token ids / masks zero-padded or truncated to ``length``."""
    return x[:, :length] if x.shape[1] >= length else F.pad(x, (0, length - x.shape[1]))


def _unknown_token_id(language_model: str) -> int:
    from msakit.lm import load_tokenizer

    tokenizer = load_tokenizer(language_model)
    if tokenizer.unk_token_id is None:
        raise ValueError(f"the tokenizer of {language_model!r} has no unknown token; set "
                         "model.unk_token_id")
    return int(tokenizer.unk_token_id)
