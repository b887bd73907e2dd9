"""EF-LSTM: early fusion with an LSTM (Williams et al., 2018; MMSA's ``EF_LSTM``).

The three feature sequences are concatenated step by step and one LSTM reads the fused sequence:

=================  ================================================================  ===============
block              computation                                                       output
=================  ================================================================  ===============
inputs             frozen LM token states, audio, vision; each zeroed past its real  ``(B, T, H+Da+Dv)``
                   steps and padded/truncated to ``seq_len`` = T steps, concatenated
norm               BatchNorm1d over the T positions (MMSA's ``BatchNorm1d(seq_len)``:  ``(B, T, D)``
                   statistics per step over the batch and features)
LSTM               ``num_layers`` layers, inter-layer dropout, over all T steps      ``(B, hidden)``
                   (MMSA's unpacked LSTM), last layer's final state
head               Dropout -> Linear + ReLU -> Dropout -> Linear                     ``(B,)``
=================  ================================================================  ===============

Defaults are MMSA's MOSI settings (``config_regression.json``: hidden 128, 4 layers, dropout
0.5; Adam at 1e-3 with weight decay 0.005 on every parameter; batch 32; L1 loss; T = 50, the
length of MMSA's ``aligned_50`` arrays).

MMSA reads word-aligned arrays of fixed length (``need_data_aligned``): its BERT features and
audio/vision share the same T steps. msakit's word-aligned batches do too (each sub-word token
carries its word's audio/vision row). With unaligned data the steps are concatenated by position
(the t-th token with the t-th audio and vision step), which is not an alignment: use word-aligned
data, or set ``audio_steps``/``vision_steps`` to MMSA's array lengths: then, as MMSA's
``need_model_aligned`` models do (``AlignSubNet``, ``avg_pool``), the audio/vision arrays of
that fixed length are average-pooled to ``seq_len`` steps. Every sequence is zero past its real
steps and padded to ``seq_len``, so a clip's prediction does not depend on its batch (the LM's
states at padding positions, which do, are zeroed). MMSA squeezes the final state, which drops
the batch dimension of a one-clip batch; msakit keeps it.
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
from msakit.modules.dropout import LSTM, Dropout
from msakit.modules.mmsa_subnets import (
    SingleAdamGroupMixin,
    avg_pool_align,
    fixed_length,
    frozen_language_model_field,
    task_losses,
)
from msakit.modules.text import PretrainedTextEncoder


class EFLSTMConfig(ModelConfig):
    """EF-LSTM's hyper-parameters; defaults are MMSA's MOSI settings."""

    name: str = "ef_lstm"
    freeze_language_model: bool = frozen_language_model_field()
    seq_len: int = Field(50, ge=1, description="steps T every sequence is padded/truncated to "
                         "(MMSA: the length of its aligned arrays, 50 for MOSI/MOSEI)")
    audio_steps: int | None = Field(
        None, ge=1, description="unaligned data: audio is zero-padded/truncated to this many "
        "steps (MMSA's fixed array length, e.g. 400 on SIMS), then average-pooled to seq_len "
        "(MMSA's AlignSubNet avg_pool); None: padded/truncated to seq_len directly")
    vision_steps: int | None = Field(
        None, ge=1, description="the same for vision (e.g. 55 on SIMS)")
    hidden_dim: int = Field(128, ge=1)
    num_layers: int = Field(4, ge=1)
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="LSTM inter-layer and head dropout")
    exempt_biases_from_decay: bool = Field(
        False, description="False: weight decay on every parameter (MMSA's single Adam group); "
        "True: biases and norm weights do not decay")
    loss: Literal["l1", "mse"] = Field("l1", description="task loss (MMSA trains EF-LSTM with L1)")
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"task": 1.0})

    @model_validator(mode="after")
    def _check_weights(self) -> EFLSTMConfig:
        check_loss_weights(self.loss_weights, ("task",), "ef_lstm")
        return self


@register_model
class EFLSTM(SingleAdamGroupMixin, MSAModel):
    """Early-fusion LSTM (see the module docstring for blocks and sizes)."""

    name = "ef_lstm"
    paper = ("Williams et al., Recognizing emotions in video using multimodal DNN feature fusion, "
             "2018 (MMSA's EF_LSTM)")
    config_class = EFLSTMConfig

    def __init__(self, config: EFLSTMConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, "ef_lstm", hint="For text-only or two-modality data use lf_dnn "
                           "with model.modalities")
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="none", freeze=config.freeze_language_model)
        in_dim = self.text_encoder.hidden_size + dims.audio + dims.vision
        self.norm = nn.BatchNorm1d(config.seq_len)
        self.lstm = LSTM(in_dim, config.hidden_dim, num_layers=config.num_layers,
                         dropout=config.dropout if config.num_layers > 1 else 0.0,
                         batch_first=True)
        self.dropout = Dropout(config.dropout)
        self.linear = nn.Linear(config.hidden_dim, config.hidden_dim)
        self.out = nn.Linear(config.hidden_dim, 1)

    def fused_sequence(self, batch: dict[str, Any]) -> torch.Tensor:
        """``(B, seq_len, H + D_a + D_v)``: text, audio, vision concatenated step by step."""
        steps = self.config.seq_len
        text = self.text_encoder.encode_batch(batch)  # (B, L_t, H)
        parts = [fixed_length(text, batch["attention_mask"], steps)]
        for modality in ("audio", "vision"):
            array_steps = getattr(self.config, f"{modality}_steps") or steps
            x = fixed_length(batch[modality], batch[f"{modality}_mask"], array_steps)
            parts.append(avg_pool_align(x, steps))
        return torch.cat(parts, dim=-1)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        x = self.norm(self.fused_sequence(batch))
        _, (final, _) = self.lstm(x)  # final: (num_layers, B, hidden)
        hidden = F.relu(self.linear(self.dropout(final[-1])))
        prediction = self.out(self.dropout(hidden)).squeeze(-1)  # (B,)
        return ModelOutput(prediction=prediction,
                           losses=task_losses(prediction, batch, self.config.loss))


__all__ = ["EFLSTM", "EFLSTMConfig"]
