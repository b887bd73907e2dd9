"""SAGE-Net: Single-layer Augmented Gated Encoder Network (Zhou, poster; no public code).

What the poster fixes, and what this implementation decides where it is silent:

* **Single-layer encoders** (poster: complexity O(n²·d) instead of O(n²·d·L)). Every modality
  goes through ``Linear(D_m -> d)`` and then ``encoder_layers`` Transformer encoder layers
  (default 1; the key exists so the single-layer claim can be checked against L layers), then a
  masked mean over time. Text enters as the hidden states of the pretrained language model
  (fine-tuned unless ``freeze_language_model``); audio and vision get sinusoidal positions.
* **Gated fusion**, exactly the poster's equations (see :mod:`msakit.modules.gates`)::

      G_a = σ(W_a a + b_a), W_t = G_a ⊙ t;  G_t = σ(W_t t + b_t), W_a = G_t ⊙ a;  F = W_t + W_a

  so the fused vector has width ``d``, half of a concatenation.
* **Vision** (the poster's equations use text and audio only). Decision: vision is fused with
  text by a second, separately parameterised copy of the same block, and the two gated sums are
  added: ``F = CGS_ta(t, a) + CGS_tv(t, v)``. Text stays the anchor each non-verbal modality
  exchanges gates with, and the fused width stays ``d``. ``modalities=[text, audio]`` gives the
  equations as written (``--set model.modalities=[text,audio]``).
* **Head**: Dropout -> Linear(d, h) -> ReLU -> Linear(h, 1) (``head_hidden_size=0``: one Linear).
* **Augmentation** is not part of the network: it is the data transform of
  :mod:`msakit.augment`, enabled with the ``augment`` config section (training only).

Returned extras (per sample, ``(B, d)``): ``gate_text_by_audio`` (G_a), ``gate_audio_by_text``
(G_t), and with vision ``gate_text_by_vision`` / ``gate_vision_by_text`` — how much of each
modality's features the other let through.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.nn import functional as F

from msakit.config_schema import ModelConfig
from msakit.models import register_model
from msakit.models.base import FeatureDims, ModelOutput, MSAModel, require_modalities
from msakit.modules.dropout import Dropout, use_fast_dropout
from msakit.modules.encoders import masked_time_mean
from msakit.modules.gates import CrossGatedSum, gate_values
from msakit.modules.text import PretrainedTextEncoder


class SAGENetConfig(ModelConfig):
    name: str = "sagenet"
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"task": 1.0})
    modalities: list[Literal["text", "audio", "vision"]] = Field(
        default_factory=lambda: ["text", "audio", "vision"],
        description="Must include text and audio (the poster's gated pair); vision is optional.",
    )
    hidden_size: int = Field(128, ge=8, description="Width d of every encoder and of F")
    encoder_layers: int = Field(1, ge=1, description="Transformer layers per modality (poster: 1)")
    attention_heads: int = Field(4, ge=1)
    feedforward_size: int = Field(256, ge=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    head_hidden_size: int = Field(128, ge=0, description="0 = a single Linear head")
    freeze_language_model: bool = False
    task_loss: Literal["l1", "mse"] = "l1"

    @field_validator("modalities")
    @classmethod
    def _text_and_audio(cls, value: list[str]) -> list[str]:
        if "text" not in value or "audio" not in value:
            raise ValueError(
                "SAGE-Net's gated fusion pairs text with audio: modalities must contain both "
                f"'text' and 'audio' (got {value}); 'vision' is optional"
            )
        if len(set(value)) != len(value):
            raise ValueError(f"modalities has duplicates: {value}")
        return value

    @model_validator(mode="after")
    def _heads_divide_width(self) -> SAGENetConfig:
        if self.hidden_size % self.attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by attention_heads "
                f"({self.attention_heads})"
            )
        return self


def sinusoidal_positions(length: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """``(length, dim)`` sine/cosine position table (Vaswani et al. 2017, §3.5)."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )
    table = torch.zeros(length, dim, device=device, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table.to(dtype or torch.float32)


class SequenceEncoder(nn.Module):
    """Linear(D_in -> d) -> [+ positions] -> ``layers`` Transformer layers -> masked mean.

    Shapes: ``sequence (B, L, D_in)``, ``mask (B, L)`` bool (True = real) -> ``(B, d)``.
    """

    def __init__(self, input_size: int, config: SAGENetConfig, add_positions: bool):
        super().__init__()
        self.project = nn.Linear(input_size, config.hidden_size)
        self.add_positions = add_positions
        layer = use_fast_dropout(nn.TransformerEncoderLayer(
            d_model=config.hidden_size,
            nhead=config.attention_heads,
            dim_feedforward=config.feedforward_size,
            dropout=config.dropout,
            batch_first=True,
        ))
        self.layers = nn.TransformerEncoder(
            layer, num_layers=config.encoder_layers, enable_nested_tensor=False
        )

    def forward(self, sequence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.project(sequence)
        if self.add_positions:
            hidden = hidden + sinusoidal_positions(
                hidden.shape[1], hidden.shape[2], hidden.device, hidden.dtype
            )
        hidden = self.layers(hidden, src_key_padding_mask=~mask)
        return masked_time_mean(hidden, mask)


@register_model
class SAGENet(MSAModel):
    """SAGE-Net (see the module docstring for the design and its open points)."""

    name = "sagenet"
    paper = "Zhou, SAGE-Net: Single-layer Augmented Gated Encoder Network (poster)"
    config_class = SAGENetConfig

    def __init__(self, config: SAGENetConfig, dims: FeatureDims):
        super().__init__(config, dims)
        self.use_vision = "vision" in config.modalities
        require_modalities(dims, "SAGE-Net", ("audio", "vision") if self.use_vision else ("audio",),
                           hint="For text and audio only: --set model.modalities=[text,audio]")
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="none", freeze=config.freeze_language_model
        )
        self.text_branch = SequenceEncoder(self.text_encoder.hidden_size, config, False)
        self.audio_branch = SequenceEncoder(dims.audio, config, True)
        self.fuse_audio = CrossGatedSum(config.hidden_size)
        if self.use_vision:
            self.vision_branch = SequenceEncoder(dims.vision, config, True)
            self.fuse_vision = CrossGatedSum(config.hidden_size)
        width = config.hidden_size
        if config.head_hidden_size:
            self.head = nn.Sequential(
                Dropout(config.dropout),
                nn.Linear(width, config.head_hidden_size),
                nn.ReLU(),
                nn.Linear(config.head_hidden_size, 1),
            )
        else:
            self.head = nn.Sequential(Dropout(config.dropout), nn.Linear(width, 1))

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        attention_mask = batch["attention_mask"]
        text_states = self.text_encoder.encode_batch(batch)  # (B, L_t, H)
        text = self.text_branch(text_states, attention_mask.bool())  # (B, d)
        audio = self.audio_branch(batch["audio"], batch["audio_mask"])  # (B, d)
        text_audio = self.fuse_audio(text, audio)
        fused = text_audio.fused
        extras = {
            "gate_text_by_audio": text_audio.gate_on_first.detach(),
            "gate_audio_by_text": text_audio.gate_on_second.detach(),
        }
        if self.use_vision:
            vision = self.vision_branch(batch["vision"], batch["vision_mask"])
            text_vision = self.fuse_vision(text, vision)
            fused = fused + text_vision.fused
            extras["gate_text_by_vision"] = text_vision.gate_on_first.detach()
            extras["gate_vision_by_text"] = text_vision.gate_on_second.detach()
        prediction = self.head(fused).squeeze(-1)  # (B,)
        losses = {}
        if "labels" in batch:
            labels = batch["labels"].to(prediction.dtype)
            if self.config.task_loss == "l1":
                losses["task"] = F.l1_loss(prediction, labels)
            else:
                losses["task"] = F.mse_loss(prediction, labels)
        return ModelOutput(prediction=prediction, losses=losses, extras=extras)

    def evaluation_artifacts(self, extras: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Gate statistics over an evaluated split: mean and std of each gate over clips and
        features, and each clip's mean gate (``gate_values``, for ``msakit report``)."""
        values = gate_values(extras)
        summary: dict[str, Any] = {
            "gates": {name: float(torch.tensor(v).mean()) for name, v in values.items()}}
        summary["gate_values"] = values
        return summary
