"""Self-MM: self-supervised multi-task multimodal sentiment analysis (Yu et al., AAAI 2021).

Faithful to the official implementation (thuiar/Self-MM): a fine-tuned language model's
last-layer [CLS] vector for text, one-layer LSTMs over the true lengths for audio and vision, a
fusion head and three unimodal heads, the weighted L1 multi-task loss, and ULGM generating the
unimodal labels (:mod:`msakit.modules.ulgm`).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import nn

from msakit.config_schema import LengthGroupedLMConfig, ModalityOptimiserConfig, TrainConfig
from msakit.models import register_model
from msakit.models.base import (
    FeatureDims,
    ModelOutput,
    MSAModel,
    check_batch_sequence,
    modality_parameter_groups,
    require_modalities,
)
from msakit.modules.dropout import Dropout
from msakit.modules.encoders import SequenceLSTM, recurrent_input
from msakit.modules.text import PretrainedTextEncoder
from msakit.modules.ulgm import SentimentHead, ULGMHooks, UnimodalLabelGenerator


class SelfMMConfig(ModalityOptimiserConfig, LengthGroupedLMConfig):
    """Self-MM hyper-parameters (official MOSI values)."""

    name: str = "self_mm"
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {"task": 1.0, "task_t": 1.0, "task_a": 1.0, "task_v": 1.0},
        description="the fused and the three unimodal tasks, equally weighted (official)")
    freeze_language_model: bool = False
    audio_lstm_hidden: int = Field(32, ge=1)
    vision_lstm_hidden: int = Field(64, ge=1)
    audio_out: int = Field(16, ge=1, description="F_a size after the LSTM's final state")
    vision_out: int = Field(32, ge=1)
    lstm_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the LSTM final state")
    post_fusion_dim: int = Field(128, ge=1)
    post_text_dim: int = Field(64, ge=1)
    post_audio_dim: int = Field(16, ge=1)
    post_vision_dim: int = Field(32, ge=1)
    post_fusion_dropout: float = Field(0.1, ge=0, lt=1)
    post_text_dropout: float = Field(0.0, ge=0, lt=1)
    post_audio_dropout: float = Field(0.1, ge=0, lt=1)
    post_vision_dropout: float = Field(0.1, ge=0, lt=1)
    label_limit: float = Field(3.0, gt=0, description="H: generated labels are clipped to "
                               "[-H, H] (3 for MOSI/MOSEI, 1 for SIMS)")


@register_model
class SelfMM(ULGMHooks, MSAModel):
    """Self-MM. Loss terms: ``task`` (fusion, L1), ``task_t``, ``task_a``, ``task_v`` (weighted L1
    against ULGM's generated labels). Extras: unimodal predictions ``pred_<t|a|v>`` ``(B,)`` and
    the detached representations ``feature_<m|t|a|v>`` ``(B, d)`` that feed ULGM."""

    name = "self_mm"
    paper = "Yu et al., AAAI 2021 (Self-MM)"
    config_class = SelfMMConfig

    def __init__(self, config: SelfMMConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, self.name)
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="cls", freeze=config.freeze_language_model,
            group_by_length=config.lm_group_by_length,
        )
        text_dim = self.text_encoder.hidden_size
        self.audio_lstm = SequenceLSTM(dims.audio, config.audio_lstm_hidden)
        self.vision_lstm = SequenceLSTM(dims.vision, config.vision_lstm_hidden)
        self.lstm_dropout = Dropout(config.lstm_dropout)
        self.audio_out = nn.Linear(config.audio_lstm_hidden, config.audio_out)
        self.vision_out = nn.Linear(config.vision_lstm_hidden, config.vision_out)
        self.heads = nn.ModuleDict({
            "m": SentimentHead(text_dim + config.audio_out + config.vision_out,
                               config.post_fusion_dim, config.post_fusion_dropout),
            "t": SentimentHead(text_dim, config.post_text_dim, config.post_text_dropout),
            "a": SentimentHead(config.audio_out, config.post_audio_dim, config.post_audio_dropout),
            "v": SentimentHead(config.vision_out, config.post_vision_dim,
                               config.post_vision_dropout),
        })
        self.ulgm = UnimodalLabelGenerator(
            {"m": config.post_fusion_dim, "t": config.post_text_dim,
             "a": config.post_audio_dim, "v": config.post_vision_dim},
            fusion_key="m", label_limit=config.label_limit,
        )

    def parameter_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """The official five groups; audio = LSTM + ``audio_out`` (the official ``AuViSubNet``)."""
        return modality_parameter_groups(self, train, ("audio_lstm", "audio_out"),
                                         ("vision_lstm", "vision_out"))

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        text = self.text_encoder.encode_batch(batch)  # (B, H_t)
        check_batch_sequence(batch, "audio", self.dims.audio)
        check_batch_sequence(batch, "vision", self.dims.vision)
        audio, vision = recurrent_input(batch, "audio"), recurrent_input(batch, "vision")
        _, audio_final = self.audio_lstm(audio.x, audio.host_lengths)  # one step per word
        _, vision_final = self.vision_lstm(vision.x, vision.host_lengths)
        audio = self.audio_out(self.lstm_dropout(audio_final))  # (B, audio_out)
        vision = self.vision_out(self.lstm_dropout(vision_final))  # (B, vision_out)

        inputs = {"m": torch.cat([text, audio, vision], dim=-1), "t": text, "a": audio,
                  "v": vision}
        predictions, extras = {}, {}
        for key, head in self.heads.items():
            predictions[key], representation = head(inputs[key])
            extras[f"feature_{key}"] = representation.detach()
        for key in ("t", "a", "v"):
            extras[f"pred_{key}"] = predictions[key].detach()
        losses = {}
        if batch.get("labels") is not None:
            losses = self.multitask_losses(batch, predictions, fusion_loss="l1")
        return ModelOutput(prediction=predictions["m"], losses=losses, extras=extras)
