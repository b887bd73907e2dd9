"""MFN: Memory Fusion Network (Zadeh et al., AAAI 2018), as MMSA ports it (``MFN``).

The recurrent core (LSTMs, DMAN, gated memory) is ``modules/mfn_core.py``'s, shared with MFM.
Three LSTM cells (one per modality) step through the word-aligned sequence; at every step a
Delta-memory Attention Network looks at the cell states of the previous and the current step and
writes into a Multi-view Gated Memory:

=====================  ==========================================================  ============
block                  computation (paper section 3)                               output
=====================  ==========================================================  ============
System of LSTMs        h_m[t], c_m[t] = LSTMCell_m(x_m[t], h_m[t-1], c_m[t-1])    ``(B, d_m)``
c* (window 2)          [c[t-1]; c[t]], c = [c_l; c_a; c_v]                         ``(B, 2 d)``
DMAN                   a = softmax(D_a(c*)); c^ = c* (.) a  (D_a: att1)            ``(B, 2 d)``
proposed memory        u^ = tanh(D_u(c^))  (att2)                                  ``(B, mem)``
gates                  g1 = sigmoid(D_g1([c^; u[t-1]])), g2 = same with D_g2       ``(B, mem)``
memory update          u[t] = g1 (.) u[t-1] + g2 (.) u^                            ``(B, mem)``
head                   [h_l; h_a; h_v; u] at T -> Linear + ReLU -> Dropout -> Lin  ``(B,)``
=====================  ==========================================================  ============

each ``D`` is Linear -> ReLU -> Dropout -> Linear. Defaults are MMSA's MOSI settings
(``config_regression.json``: hidden (text 256, audio 32, video 256), memory 400, window 2,
att1 32 / 0.2, att2 64 / 0.0, gamma1 256 / 0.7, gamma2 32 / 0.5, out 128 / 0.0; Adam 2e-3 without
weight decay; batch 128; L1 loss).

The text is the (frozen) LM's token states; every sequence is zero past its real steps and
padded/truncated to ``seq_len`` = T steps, and the cells run over all T steps, as MMSA runs over
its fixed-length arrays (so a clip's prediction does not depend on its batch).

MMSA's configuration sets ``need_normalized`` for MFN: its loader averages audio and vision over
time, and the model-alignment step (``AlignSubNet``, ``avg_pool``) then repeats that average at
every step. ``audio_vision_input: time_average`` (the default) is that (the cells' input
projection of the average is computed once, the same values); ``sequence`` feeds the
word-aligned audio/vision step by step, as the authors' code (pliang279/MFN) does. Only a window
of 2 steps is implemented, as in MMSA and the authors' code.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from msakit.config_schema import ModelConfig
from msakit.models import register_model
from msakit.models.base import (
    FeatureDims,
    ModelOutput,
    MSAModel,
    check_loss_weights,
    require_modalities,
)
from msakit.modules.encoders import masked_time_mean
from msakit.modules.mfn_core import MemoryFusionMixin
from msakit.modules.mmsa_subnets import (
    SingleAdamGroupMixin,
    fixed_length,
    frozen_language_model_field,
    task_losses,
)
from msakit.modules.text import PretrainedTextEncoder


class MFNConfig(ModelConfig):
    """MFN's hyper-parameters; defaults are MMSA's MOSI settings (``config_regression.json``)."""

    name: str = "mfn"
    freeze_language_model: bool = frozen_language_model_field()
    seq_len: int = Field(50, ge=1, description="steps T every sequence is padded/truncated to "
                         "(MMSA: the length of its aligned arrays, 50 for MOSI/MOSEI)")
    audio_vision_input: Literal["time_average", "sequence"] = Field(
        "time_average", description="time_average: audio/vision averaged over time and repeated "
        "at every step (MMSA's need_normalized + avg_pool alignment); sequence: the aligned "
        "features step by step (the authors' code)")
    audio_average_steps: int | None = Field(
        None, ge=1, description="time_average: None = mean over the real steps; N = sum / N, "
        "MMSA's mean over its N-step zero-padded array")
    vision_average_steps: int | None = Field(None, ge=1, description="the same for vision")
    text_hidden: int = Field(256, ge=1)
    audio_hidden: int = Field(32, ge=1)
    vision_hidden: int = Field(256, ge=1)
    mem_dim: int = Field(400, ge=1, description="multi-view gated memory size (memsize)")
    att1_hidden: int = Field(32, ge=1)
    att1_dropout: float = Field(0.2, ge=0.0, lt=1.0)
    att2_hidden: int = Field(64, ge=1)
    att2_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    gamma1_hidden: int = Field(256, ge=1)
    gamma1_dropout: float = Field(0.7, ge=0.0, lt=1.0)
    gamma2_hidden: int = Field(32, ge=1)
    gamma2_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    out_hidden: int = Field(128, ge=1)
    out_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    exempt_biases_from_decay: bool = Field(
        False, description="False: weight decay on every parameter (MMSA's single Adam group); "
        "True: biases and norm weights do not decay")
    loss: Literal["l1", "mse"] = Field("l1", description="task loss (MMSA trains MFN with L1)")
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"task": 1.0})

    @model_validator(mode="after")
    def _check_weights(self) -> MFNConfig:
        check_loss_weights(self.loss_weights, ("task",), "mfn")
        return self


@register_model
class MFN(MemoryFusionMixin, SingleAdamGroupMixin, MSAModel):
    """Memory Fusion Network (see the module docstring for blocks and sizes)."""

    name = "mfn"
    paper = ("Zadeh et al., Memory Fusion Network for Multi-view Sequential Learning, AAAI 2018 "
             "(MMSA's port)")
    config_class = MFNConfig

    def __init__(self, config: MFNConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, "mfn", hint="For text-only or two-modality data use lf_dnn "
                           "with model.modalities")
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="none", freeze=config.freeze_language_model)
        # the core's parameters sit on the model with MMSA's names (lstm_l, att1_fc1, ...)
        self.add_memory_fusion(config, (self.text_encoder.hidden_size, dims.audio, dims.vision))

    def input_sequences(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """Text, audio, vision as ``(T, B, D_m)`` step-major sequences of ``seq_len`` steps;
        with ``time_average``, audio and vision are their averages ``(B, D_m)``, the input at
        every step (the core projects them once)."""
        steps = self.config.seq_len
        text = fixed_length(self.text_encoder.encode_batch(batch), batch["attention_mask"], steps)
        others = []
        for modality in ("audio", "vision"):
            x, mask = batch[modality], batch[f"{modality}_mask"]
            if self.config.audio_vision_input == "time_average":
                others.append(masked_time_mean(x, mask, getattr(self.config,
                                                                f"{modality}_average_steps")))
            else:
                others.append(fixed_length(x, mask, steps).transpose(0, 1))
        return (text.transpose(0, 1), *others)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        states, memory = self.memory_fusion(*self.input_sequences(batch))
        prediction = self.memory_head([h for h, _ in states], memory)
        return ModelOutput(prediction=prediction,
                           losses=task_losses(prediction, batch, self.config.loss))
