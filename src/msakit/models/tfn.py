"""TFN: Tensor Fusion Network (Zadeh et al., EMNLP 2017), as MMSA ports it (``TFN``).

Each modality is summarised by its own sub-network; the three summaries, each with a 1 appended,
are fused by their outer product (paper eq. 1), which holds the unimodal, bimodal and trimodal
interactions, and a small network regresses the flattened tensor:

=================  ================================================================  ============
block              computation                                                       output
=================  ================================================================  ============
text               frozen LM token states -> one-layer LSTM (MMSA's ``TextSubNet``)  ``(B, 32)``
                   -> final state -> Linear(text_hidden -> text_out)
audio / vision     time average -> BatchNorm -> Dropout -> 3 x (Linear + ReLU)       ``(B, 32/128)``
fusion (eq. 1)     z = [1; z_a] (x) [1; z_v] (x) [1; z_t], flattened                 ``(B, 33*129*33)``
post-fusion        Dropout -> Linear + ReLU -> Linear + ReLU -> Linear               ``(B, 1)``
output             6 * sigmoid(y) - 3 (the label range, as the authors' code)        ``(B,)``
=================  ================================================================  ============

Sizes are MMSA's MOSI settings (``config_regression.json``: hidden (text 128, audio 32, video
128), text_out 32, post-fusion 64, dropouts 0.3 / 0.3 / 0.3 / 0.5). The flattening order is
MMSA's: audio outermost, then vision, then text (index ``(i_a * (d_v + 1) + i_v) * (d_t + 1) +
i_t``). MMSA's one-layer ``TextSubNet`` sets its dropout to 0, so ``text_dropout`` applies only
with ``text_final_dropout`` (the authors' code).

Differences of MMSA's port to the authors' PyTorch code (Justin1904/TensorFusionNetworks, which
MMSA cites), each an option whose default is MMSA's: ``text_final_dropout`` (the authors drop out
the final text LSTM state), ``loss_reduction`` (the authors sum the L1 loss over the batch).

Text: MMSA's non-BERT models read fixed BERT token features; msakit computes the token states
with the (frozen by default) language model and runs the same LSTM over them. By default the LSTM
reads only the real tokens and audio/vision are true means over their real steps, so a clip's
prediction does not depend on its batch; ``text_lstm_reads_padding`` and
``audio_average_steps``/``vision_average_steps`` reproduce MMSA's reading of its zero-padded
arrays (the parity test sets them).

The loss is L1 (MMSA trains TFN with ``nn.L1Loss``); MMSA's optimiser is Adam without weight
decay over every parameter.
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
from msakit.modules.dropout import Dropout
from msakit.modules.mmsa_subnets import (
    UnimodalFeaturesMixin,
    average_steps_field,
    frozen_language_model_field,
    task_losses,
    tensor_fusion,
    text_lstm_reads_padding_field,
    unimodal_subnets,
)


class TFNConfig(ModelConfig):
    """TFN's hyper-parameters; defaults are MMSA's MOSI settings (``config_regression.json``)."""

    name: str = "tfn"
    freeze_language_model: bool = frozen_language_model_field()
    text_hidden: int = Field(128, ge=1, description="text LSTM units")
    audio_hidden: int = Field(32, ge=1)
    vision_hidden: int = Field(128, ge=1)
    text_out: int = Field(32, ge=1)
    post_fusion_dim: int = Field(64, ge=1)
    audio_dropout: float = Field(0.3, ge=0.0, lt=1.0)
    vision_dropout: float = Field(0.3, ge=0.0, lt=1.0)
    text_dropout: float = Field(
        0.3, ge=0.0, lt=1.0, description="used only with text_final_dropout (MMSA's one-layer "
        "TextSubNet sets its dropout to 0)")
    text_final_dropout: bool = Field(
        False, description="True: text_dropout on the final LSTM state, as the authors' code "
        "(Justin1904/TensorFusionNetworks); False: MMSA's dropout 0")
    post_fusion_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    output_bound: float | None = Field(
        3.0, gt=0.0, description="prediction = 2b * sigmoid(y) - b (MMSA and the authors: b = 3, "
        "also on SIMS); null: the linear output y")
    text_lstm_reads_padding: bool = text_lstm_reads_padding_field()
    audio_average_steps: int | None = average_steps_field("audio")
    vision_average_steps: int | None = average_steps_field("vision")
    loss: Literal["l1", "mse"] = Field("l1", description="task loss (MMSA trains TFN with L1)")
    loss_reduction: Literal["mean", "sum"] = Field(
        "mean", description="mean over the batch (MMSA); sum (the authors' L1Loss(size_average="
        "False))")
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"task": 1.0})

    @model_validator(mode="after")
    def _check_weights(self) -> TFNConfig:
        check_loss_weights(self.loss_weights, ("task",), "tfn")
        return self


@register_model
class TFN(UnimodalFeaturesMixin, MSAModel):
    """Tensor Fusion Network (see the module docstring for blocks and sizes)."""

    name = "tfn"
    paper = ("Zadeh et al., Tensor Fusion Network for Multimodal Sentiment Analysis, EMNLP 2017 "
             "(MMSA's port)")
    config_class = TFNConfig

    def __init__(self, config: TFNConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, "tfn", hint="For text-only or two-modality data use lf_dnn "
                           "with model.modalities")
        self.text_encoder, self.text_subnet, self.audio_subnet, self.vision_subnet = (
            unimodal_subnets(config, dims, config.text_out,
                             config.text_dropout if config.text_final_dropout else 0.0))
        fused = (config.audio_hidden + 1) * (config.vision_hidden + 1) * (config.text_out + 1)
        self.post_fusion_dropout = Dropout(config.post_fusion_dropout)
        self.post_fusion_layer_1 = nn.Linear(fused, config.post_fusion_dim)
        self.post_fusion_layer_2 = nn.Linear(config.post_fusion_dim, config.post_fusion_dim)
        self.post_fusion_layer_3 = nn.Linear(config.post_fusion_dim, 1)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        features = self.unimodal_features(batch)
        fused = tensor_fusion(features["audio"], features["vision"], features["text"])
        hidden = F.relu(self.post_fusion_layer_1(self.post_fusion_dropout(fused)))
        output = self.post_fusion_layer_3(F.relu(self.post_fusion_layer_2(hidden))).squeeze(-1)
        bound = self.config.output_bound
        prediction = output if bound is None else torch.sigmoid(output) * (2 * bound) - bound
        losses = task_losses(prediction, batch, self.config.loss, self.config.loss_reduction)
        return ModelOutput(prediction=prediction, losses=losses)
