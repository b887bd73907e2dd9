"""MMILN: multi-task multimodal interactive learning network (Xue et al., CCL 2023).

Text-centred hierarchical fusion on top of Self-MM (paper 001, eqs. 1-36):

1. Encoders (eqs. 1-4): the fine-tuned language model's hidden states for text, one-layer LSTMs
   over the true lengths for audio and vision (Self-MM's sizes), then a Conv1d per modality to the
   common size ``d_s`` -> ``X_t^0, X_a^0, X_v^0`` (sequences).
2. ``fusion_layers`` modality fusion layers (Fig. 3). Layer ``i``: GateTransformers on audio and
   vision (eqs. 5-12) give ``X_a^i, X_v^i`` and their multi-head outputs ``X_mh,a^i, X_mh,v^i``;
   SAG-Transformers fuse them into the text-audio and text-video streams (eqs. 13-23),
   ``X_ta^0 = X_tv^0 = X_t^0``.
3. Re-fusion module (MRM, section 3.3): ``F*_m = FFN(concat(X_ta^l, X_tv^l))`` with the CMD
   similarity loss between the last layer's BiGRU summaries ``ĥ_ta^l, ĥ_tv^l`` (eqs. 24-25, with
   the ``1/|b-a|^k`` factors; ``cmd_interval: null`` drops them as MISA's code does) and the
   soft-orthogonality loss ``||ĥ_ta^T ĥ_a||_F² + ||ĥ_tv^T ĥ_v||_F²`` (eq. 26 as written;
   ``difference_loss: misa`` = MISA's batch-centred, normalised mean).
4. Multi-task learning (section 3.4): fusion head (MSE, eq. 35), audio and vision heads trained
   with weighted L1 against ULGM's generated labels (eqs. 28-35). Total loss eq. 36:
   ``task + task_a + task_v + α·sim + β·diff`` with ``α = loss_weights.sim``,
   ``β = loss_weights.diff``.

Sequences are pooled by a masked mean before the heads (the paper does not say how ``FFN`` maps a
sequence to a vector).

Ablations (Table 3, ``ablation``): ``-MFM`` removes every gate and BiGRU of the fusion layers and,
as the paper states, the MRM with them; ``-MRM`` drops the similarity and difference losses and
the re-fusion: the fusion head reads the mean of the pooled text-audio and text-video streams
(``d_s`` inputs instead of ``2·d_s``); ``-GateFusion`` removes the SAG-Transformers: the fusion
head reads the pooled unimodal features ``[X_t^0, X_a^l, X_v^l]`` (no sim/diff loss, whose inputs
come from the SAG-Transformers). ``fusion_layers`` gives the depth of Fig. 4.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from msakit.config_schema import ModalityOptimiserConfig, TrainConfig
from msakit.models import register_model
from msakit.models.base import (
    FeatureDims,
    ModelOutput,
    MSAModel,
    check_batch_sequence,
    modality_parameter_groups,
    require_modalities,
)
from msakit.modules.encoders import SequenceLSTM, masked_time_mean, recurrent_input
from msakit.modules.gated_attention import GateTransformer, SAGTransformer
from msakit.modules.losses import (
    cmd_loss,
    frobenius_orthogonality_loss,
    soft_orthogonality_loss,
)
from msakit.modules.text import PretrainedTextEncoder
from msakit.modules.ulgm import SentimentHead, ULGMHooks, UnimodalLabelGenerator

Ablation = Literal["none", "-MFM", "-MRM", "-GateFusion"]


class MMILNConfig(ModalityOptimiserConfig):
    """MMILN hyper-parameters. Those outside the fusion layers are Self-MM's (paper, 4.2)."""

    name: str = "mmiln"
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {"task": 1.0, "task_a": 1.0, "task_v": 1.0, "sim": 1.0,
                                 "diff": 0.3},
        description="alpha (sim) 1.0 and beta (diff) 0.3 are MISA's official weights for the "
        "same two losses (the paper gives none)")
    freeze_language_model: bool = False
    audio_lstm_hidden: int = Field(32, ge=1)
    vision_lstm_hidden: int = Field(64, ge=1)
    model_dim: int = Field(64, ge=2, description="d_s, the common size after the Conv1d (even)")
    n_heads: int = Field(4, ge=1)
    ffn_dim: int = Field(256, ge=1)
    attention_dropout: float = Field(0.1, ge=0, lt=1)
    conv_kernel_size: int = Field(1, ge=1, description="Conv1d of eq. 4 (odd, same padding)")
    fusion_layers: int = Field(3, ge=1, description="number of modality fusion layers (Fig. 4)")
    ablation: Ablation = Field("none", description="Table 3: '-MFM', '-MRM', '-GateFusion'")
    post_fusion_dim: int = Field(128, ge=1)
    post_audio_dim: int = Field(16, ge=1)
    post_vision_dim: int = Field(32, ge=1)
    post_fusion_dropout: float = Field(0.1, ge=0, lt=1)
    post_audio_dropout: float = Field(0.1, ge=0, lt=1)
    post_vision_dropout: float = Field(0.1, ge=0, lt=1)
    fusion_loss: Literal["mse", "l1"] = Field("mse", description="eq. 35 uses MSE for ŷ_m")
    cmd_moments: int = Field(5, ge=1, description="K of eq. 24")
    cmd_interval: float | None = Field(
        2.0, gt=0, description="|b-a| of eq. 24 (the k-th term is divided by |b-a|^k): the "
        "BiGRU summaries average tanh outputs, in [-1, 1] -> 2; null drops the factors (MISA's "
        "official CMD)")
    difference_loss: Literal["frobenius", "misa"] = Field(
        "frobenius", description="eq. 26: 'frobenius' = ||ĥ_1ᵀ ĥ_2||_F² as the paper writes it; "
        "'misa' = MISA's official form (batch-centred, row-normalised, mean over entries)")
    label_limit: float = Field(3.0, gt=0, description="H: generated labels lie in [-H, H]")

    @model_validator(mode="after")
    def _check_sizes(self) -> MMILNConfig:
        if self.model_dim % 2:
            raise ValueError(f"model_dim must be even (BiGRU with model_dim/2 units per "
                             f"direction), got {self.model_dim}")
        if self.model_dim % self.n_heads:
            raise ValueError(f"model_dim ({self.model_dim}) must be divisible by n_heads "
                             f"({self.n_heads})")
        if self.conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size must be odd, got {self.conv_kernel_size}")
        return self

    @property
    def gated(self) -> bool:
        return self.ablation != "-MFM"

    @property
    def bimodal_fusion(self) -> bool:
        return self.ablation != "-GateFusion"

    @property
    def refusion(self) -> bool:
        return self.ablation == "none"


class ModalityFusionLayer(nn.Module):
    """One modality fusion layer (Fig. 3): two GateTransformers and, unless ``-GateFusion``, two
    SAG-Transformers."""

    def __init__(self, config: MMILNConfig):
        super().__init__()
        args = (config.model_dim, config.n_heads, config.ffn_dim, config.attention_dropout)
        self.audio = GateTransformer(*args, gated=config.gated)
        self.vision = GateTransformer(*args, gated=config.gated)
        self.text_audio = SAGTransformer(*args, gated=config.gated) if config.bimodal_fusion else None
        self.text_vision = SAGTransformer(*args, gated=config.gated) if config.bimodal_fusion else None


@register_model
class MMILN(ULGMHooks, MSAModel):
    """MMILN. Loss terms: ``task`` (MSE of ŷ_m), ``task_a``, ``task_v`` (weighted L1 against
    ULGM labels), ``sim`` (CMD, eq. 25) and ``diff`` (eq. 26) unless an ablation removes the MRM.
    Extras: ``pred_a``, ``pred_v``, detached ``feature_<m|a|v>`` (ULGM), and the mean gate values
    of the last layer ``gate_<retain|compound>_<a|v|ta|tv>`` ``(B,)``."""

    name = "mmiln"
    paper = "Xue et al., CCL 2023 (MMILN)"
    config_class = MMILNConfig

    def __init__(self, config: MMILNConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, self.name)
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="none", freeze=config.freeze_language_model
        )
        d = config.model_dim
        self.audio_lstm = SequenceLSTM(dims.audio, config.audio_lstm_hidden)
        self.vision_lstm = SequenceLSTM(dims.vision, config.vision_lstm_hidden)
        k, pad = config.conv_kernel_size, config.conv_kernel_size // 2
        self.text_conv = nn.Conv1d(self.text_encoder.hidden_size, d, k, padding=pad)
        self.audio_conv = nn.Conv1d(config.audio_lstm_hidden, d, k, padding=pad)
        self.vision_conv = nn.Conv1d(config.vision_lstm_hidden, d, k, padding=pad)
        self.layers = nn.ModuleList(ModalityFusionLayer(config) for _ in range(config.fusion_layers))
        fusion_in = {"none": 2 * d, "-MRM": d, "-MFM": d, "-GateFusion": 3 * d}[config.ablation]
        self.heads = nn.ModuleDict({
            "m": SentimentHead(fusion_in, config.post_fusion_dim, config.post_fusion_dropout),
            "a": SentimentHead(d, config.post_audio_dim, config.post_audio_dropout),
            "v": SentimentHead(d, config.post_vision_dim, config.post_vision_dropout),
        })
        self.ulgm = UnimodalLabelGenerator(
            {"m": config.post_fusion_dim, "a": config.post_audio_dim,
             "v": config.post_vision_dim},
            fusion_key="m", label_limit=config.label_limit,
        )

    def parameter_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """Self-MM's five groups (paper 4.2: Self-MM's hyper-parameters); audio = the audio LSTM
        and its Conv1d (eqs. 2 and 4), vision likewise."""
        return modality_parameter_groups(self, train, ("audio_lstm", "audio_conv"),
                                         ("vision_lstm", "vision_conv"))

    @staticmethod
    def _conv(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
        return conv(x.transpose(1, 2)).transpose(1, 2)  # (B, L, D_in) -> (B, L, d_s)

    @staticmethod
    def _mask(lengths: torch.Tensor, length: int) -> torch.Tensor:
        steps = torch.arange(length, device=lengths.device)
        return steps.unsqueeze(0) < lengths.unsqueeze(1)  # (B, L) True = real step

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        config: MMILNConfig = self.config  # type: ignore[assignment]
        text_mask = batch["attention_mask"].bool()
        text = self.text_encoder.encode_batch(batch)  # (B, L_t, H_t)
        check_batch_sequence(batch, "audio", self.dims.audio)
        check_batch_sequence(batch, "vision", self.dims.vision)
        # one step per word on word-aligned data, as the Self-MM code MMILN builds on
        audio, vision = recurrent_input(batch, "audio"), recurrent_input(batch, "vision")
        audio_mask = self._mask(audio.lengths, audio.x.shape[1])
        vision_mask = self._mask(vision.lengths, vision.x.shape[1])
        audio_seq, _ = self.audio_lstm(audio.x, audio.host_lengths)  # (1)
        vision_seq, _ = self.vision_lstm(vision.x, vision.host_lengths)  # (2)
        # the LM's states at padding positions are not zero: with a kernel wider than 1 the
        # Conv1d would read them into the last real steps (a batch-dependent leak)
        text = text * text_mask.unsqueeze(-1).to(text.dtype)
        x_t = self._conv(self.text_conv, text)  # (3)-(4)
        x_a = self._conv(self.audio_conv, audio_seq)
        x_v = self._conv(self.vision_conv, vision_seq)

        x_ta = x_tv = x_t
        last: dict[str, Any] = {}
        for layer in self.layers:
            out_a = layer.audio(x_a, audio_mask)  # (5)
            out_v = layer.vision(x_v, vision_mask)  # (6)
            last = {"a": out_a, "v": out_v}
            if layer.text_audio is not None:
                out_ta = layer.text_audio(x_ta, text_mask, out_a.attention, audio_mask)  # (14)
                out_tv = layer.text_vision(x_tv, text_mask, out_v.attention, vision_mask)  # (13)
                last.update(ta=out_ta, tv=out_tv)
                x_ta, x_tv = out_ta.hidden, out_tv.hidden
            x_a, x_v = out_a.hidden, out_v.hidden

        pooled_a, pooled_v = masked_time_mean(x_a, audio_mask), masked_time_mean(x_v, vision_mask)
        if not config.bimodal_fusion:
            fusion_input = torch.cat([masked_time_mean(x_t, text_mask), pooled_a, pooled_v], dim=-1)
        elif config.refusion:
            fusion_input = torch.cat([masked_time_mean(x_ta, text_mask),
                                      masked_time_mean(x_tv, text_mask)], dim=-1)  # (27)
        else:
            fusion_input = 0.5 * (masked_time_mean(x_ta, text_mask) + masked_time_mean(x_tv, text_mask))

        inputs = {"m": fusion_input, "a": pooled_a, "v": pooled_v}
        predictions, extras = {}, {}
        for key, head in self.heads.items():
            predictions[key], representation = head(inputs[key])  # (27)-(28)
            extras[f"feature_{key}"] = representation.detach()
        extras["pred_a"] = predictions["a"].detach()
        extras["pred_v"] = predictions["v"].detach()
        for stream, out in last.items():
            if out.retain_gate is not None:
                extras[f"gate_retain_{stream}"] = out.retain_gate.mean(-1).detach()
                extras[f"gate_compound_{stream}"] = out.compound_gate.mean(-1).detach()

        losses: dict[str, torch.Tensor] = {}
        if batch.get("labels") is not None:
            losses = self.multitask_losses(batch, predictions, fusion_loss=config.fusion_loss)
            if config.refusion:
                losses["sim"] = cmd_loss(last["ta"].summary, last["tv"].summary,
                                         config.cmd_moments, config.cmd_interval)  # (24)-(25)
                difference = (frobenius_orthogonality_loss if config.difference_loss ==
                              "frobenius" else soft_orthogonality_loss)
                losses["diff"] = (difference(last["ta"].summary, last["a"].summary)
                                  + difference(last["tv"].summary, last["v"].summary))  # (26)
        return ModelOutput(prediction=predictions["m"], losses=losses, extras=extras)
