"""LF-DNN: late fusion of unimodal deep networks (Williams et al., 2018; MMSA's ``LF_DNN``).

The simple floor every fusion model must beat. Each modality is summarised on its own, then the
summaries are concatenated and regressed:

=================  =============================================================  ===============
block              computation                                                    output
=================  =============================================================  ===============
text               LM (fine-tuned by default), mean or [CLS] pooling              ``(B, 384)``
                   -> Dropout -> Linear(384 -> text_hidden) -> ReLU
                   -> Linear(text_hidden -> text_out)                             ``(B, 256)``
audio / vision     masked mean over the real steps -> BatchNorm -> Dropout
                   -> 3 x (Linear + ReLU) (MMSA's ``SubNet``)                     ``(B, 16/128)``
post-fusion        concat -> Dropout -> Linear + ReLU -> Linear + ReLU -> Linear  ``(B,)``
=================  =============================================================  ===============

MMSA's text sub-network is an LSTM over frozen BERT token features whose final state goes
through Dropout and one Linear layer; ours pools the (fine-tuned) LM instead and keeps a hidden
layer of MMSA's LSTM size. Mean pooling is the default because the packaged MiniLM
(a sentence-transformers model) was trained with it. Audio and vision are averaged over time, as
MMSA's loader does for LF-DNN (``need_normalized``). The loss is L1, as MMSA trains LF-DNN.

``model.modalities`` picks the modalities: ``--set model.modalities=[text]`` is the text-only
floor, and then the batch needs no audio or vision at all.

A training batch of a single sample cannot be normalised with batch statistics; BatchNorm then
uses its running statistics for that batch (as in evaluation) instead of failing.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from msakit.config_schema import ModelConfig, TrainConfig
from msakit.models import register_model
from msakit.models.base import (
    FeatureDims,
    ModelOutput,
    MSAModel,
    check_loss_weights,
    ordered_modalities,
)
from msakit.modules.dropout import LSTM, Dropout
from msakit.modules.encoders import masked_time_mean
from msakit.modules.mmsa_subnets import lstm_final_state
from msakit.modules.text import PretrainedTextEncoder

Modality = Literal["text", "audio", "vision"]


class LFDNNConfig(ModelConfig):
    """LF-DNN's hyper-parameters; defaults are MMSA's MOSI settings."""

    name: str = "lf_dnn"
    modalities: list[Modality] = Field(
        default_factory=lambda: ["text", "audio", "vision"],
        description="modalities to fuse, e.g. [text] for the text-only floor",
    )
    text_pooling: Literal["mean", "cls"] = "mean"
    text_subnet: Literal["pooled", "lstm"] = Field(
        "pooled", description="'pooled': the pooled LM vector -> Dropout -> Linear -> ReLU -> "
        "Linear; 'lstm': MMSA's TextSubNet, a one-layer LSTM (text_hidden units) over the LM's "
        "token states whose final state goes through Linear(text_hidden -> text_out) (MMSA's "
        "one-layer TextSubNet sets its dropout to 0, so text_dropout does not apply)")
    text_lstm_reads_padding: bool = Field(
        False, description="lstm: run over every position up to the batch's padded length, as "
        "MMSA's unpacked LSTM does over its fixed-length arrays (then a prediction depends on "
        "the batch's padding); False: only the real tokens")
    time_average_steps: int | None = Field(
        None, ge=1, description="audio/vision summaries: None = mean over the real steps; N = "
        "sum over the real steps / N, as MMSA averages its N-step zero-padded arrays (50 for "
        "MOSI/MOSEI aligned_50/unaligned_50)")
    exempt_biases_from_decay: bool = Field(
        True, description="False: weight decay on every trainable parameter (MMSA's single Adam "
        "group); True: biases and norm weights do not decay")
    freeze_language_model: bool = False
    text_hidden: int = Field(128, ge=1)
    text_out: int = Field(256, ge=1)
    audio_hidden: int = Field(16, ge=1)
    vision_hidden: int = Field(128, ge=1)
    post_fusion_dim: int = Field(128, ge=1)
    text_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    audio_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    vision_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    post_fusion_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    loss: Literal["l1", "mse"] = Field("l1", description="task loss (MMSA trains LF-DNN with L1)")
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"task": 1.0})

    @field_validator("modalities")
    @classmethod
    def _unique_nonempty(cls, value: list[str]) -> list[str]:
        return ordered_modalities(value)

    @model_validator(mode="after")
    def _check_weights(self) -> LFDNNConfig:
        check_loss_weights(self.loss_weights, ("task",), "lf_dnn")
        return self


class _FeatureSubNet(nn.Module):
    """MMSA's ``SubNet``: BatchNorm -> Dropout -> 3 x (Linear + ReLU). ``(B, D) -> (B, H)``."""

    def __init__(self, in_dim: int, hidden: int, dropout: float):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim)
        self.layers = nn.Sequential(
            Dropout(dropout),
            nn.Linear(in_dim, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            # Batch statistics of one sample are undefined: use the running ones (module doc).
            normed = F.batch_norm(
                x, self.norm.running_mean, self.norm.running_var, self.norm.weight,
                self.norm.bias, training=False, eps=self.norm.eps,
            )
        else:
            normed = self.norm(x)
        return self.layers(normed)


@register_model
class LFDNN(MSAModel):
    """Late-fusion DNN (see the module docstring for blocks and sizes)."""

    name = "lf_dnn"
    paper = "Williams et al. Recognizing emotions in video using multimodal DNN feature fusion. 2018"
    config_class = LFDNNConfig

    def __init__(self, config: LFDNNConfig, dims: FeatureDims):
        super().__init__(config, dims)
        self.modalities = tuple(config.modalities)
        for modality in ("audio", "vision"):
            if modality in self.modalities and getattr(dims, modality) < 1:
                others = [m for m in self.modalities if m != modality]
                raise ValueError(
                    f"model.modalities includes {modality!r} but the data has no {modality} "
                    f"features; use e.g. --set model.modalities=[{','.join(others)}]"
                )
        fused = 0
        if "text" in self.modalities:
            self.text_encoder = PretrainedTextEncoder(
                config.language_model, pooling=config.text_pooling,
                freeze=config.freeze_language_model,
            )
            if config.text_subnet == "lstm":
                self.text_encoder.pooling = "none"
                self.text_lstm = LSTM(self.text_encoder.hidden_size, config.text_hidden,
                                         batch_first=True)
                self.text_subnet = nn.Linear(config.text_hidden, config.text_out)
            else:
                self.text_subnet = nn.Sequential(
                    Dropout(config.text_dropout),
                    nn.Linear(self.text_encoder.hidden_size, config.text_hidden), nn.ReLU(),
                    nn.Linear(config.text_hidden, config.text_out),
                )
            fused += config.text_out
        if "audio" in self.modalities:
            self.audio_subnet = _FeatureSubNet(dims.audio, config.audio_hidden,
                                               config.audio_dropout)
            fused += config.audio_hidden
        if "vision" in self.modalities:
            self.vision_subnet = _FeatureSubNet(dims.vision, config.vision_hidden,
                                                config.vision_dropout)
            fused += config.vision_hidden
        self.fused_dim = fused
        self.post_fusion = nn.Sequential(
            Dropout(config.post_fusion_dropout),
            nn.Linear(fused, config.post_fusion_dim), nn.ReLU(),
            nn.Linear(config.post_fusion_dim, config.post_fusion_dim), nn.ReLU(),
            nn.Linear(config.post_fusion_dim, 1),
        )

    def unimodal_features(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{modality: (B, d_m)}`` for the configured modalities (text 256, audio 16, vision 128)."""
        features = {}
        if "text" in self.modalities:
            # (B, H) pooled, or (B, L_t, H) token states for the LSTM
            encoded = self.text_encoder.encode_batch(batch)
            if self.config.text_subnet == "lstm":
                encoded = lstm_final_state(self.text_lstm, encoded, batch["attention_mask"],
                                           self.config.text_lstm_reads_padding)
            features["text"] = self.text_subnet(encoded)
        for modality in ("audio", "vision"):
            if modality not in self.modalities:
                continue
            for key in (modality, f"{modality}_mask"):
                if key not in batch:
                    raise KeyError(
                        f"lf_dnn with model.modalities={list(self.modalities)} needs "
                        f"batch[{key!r}]"
                    )
            averaged = self._time_average(batch[modality], batch[f"{modality}_mask"])
            features[modality] = getattr(self, f"{modality}_subnet")(averaged)
        return features

    def _time_average(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, D)`` -> ``(B, D)``: the mean over real steps, or their sum / N."""
        return masked_time_mean(x, mask, self.config.time_average_steps)

    def parameter_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        if self.config.exempt_biases_from_decay:
            return super().parameter_groups(train)
        groups = []
        lm_prefixes = self.language_model_prefixes()
        for is_lm in (True, False):
            params = [p for n, p in self.named_parameters() if p.requires_grad
                      and bool(lm_prefixes and n.startswith(lm_prefixes)) == is_lm]
            groups.append({"name": "language_model" if is_lm else "other", "params": params,
                           "lr": train.lm_lr if is_lm else train.lr,
                           "weight_decay": train.lm_weight_decay if is_lm else train.weight_decay})
        return groups

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        features = self.unimodal_features(batch)
        fused = torch.cat([features[m] for m in self.modalities], dim=-1)  # (B, fused_dim)
        prediction = self.post_fusion(fused).squeeze(-1)  # (B,)
        losses = {}
        if "labels" in batch:
            labels = batch["labels"].to(prediction.dtype).reshape(-1)
            loss_fn = F.l1_loss if self.config.loss == "l1" else F.mse_loss
            losses["task"] = loss_fn(prediction, labels)
        return ModelOutput(prediction=prediction, losses=losses)
