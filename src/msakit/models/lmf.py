"""LMF: Low-rank Multimodal Fusion (Liu et al., ACL 2018), as MMSA ports it (``LMF``).

TFN's outer product of ``[1; z_a]``, ``[1; z_v]``, ``[1; z_t]`` followed by a linear layer ``W``
is computed without building the tensor: ``W`` is a sum of ``r`` rank-one terms, one factor per
modality (paper eqs. 4-6), so

    h = sum_i lambda_i * prod_m ([1; z_m] . W_m^(i)) + b

=================  ================================================================  ============
block              computation                                                       output
=================  ================================================================  ============
text               frozen LM token states -> one-layer LSTM (MMSA's ``TextSubNet``)  ``(B, 64)``
                   -> final state -> Linear(text_hidden -> text_hidden // 2)
audio / vision     time average -> BatchNorm -> Dropout -> 3 x (Linear + ReLU)       ``(B, 16/128)``
factors            [1; z_m] @ W_m, W_m: ``(r, d_m + 1, 1)``                          ``(r, B, 1)``
fusion (eq. 6)     fusion_weights ``(1, r)`` @ (prod_m of the three) + fusion_bias   ``(B,)``
=================  ================================================================  ============

Sizes are MMSA's MOSI settings (``config_regression.json``: hidden (text 128, audio 16, video
128), rank 3, dropouts 0.3; Adam with the factors at ``factor_lr`` 1e-3 and the sub-networks at
``train.lr`` 1e-3, weight decay 0.005 on every parameter of both groups; L1 loss). The factors
and ``fusion_weights`` are Xavier-normal initialised, ``fusion_bias`` zero.

MMSA's optimiser takes ``parameters()[:3]`` (the three factors) and ``parameters()[5:]`` (the
sub-networks): ``fusion_weights`` and ``fusion_bias`` are never trained and keep their initial
values. ``train_fusion_weights: false`` (the default) reproduces that by freezing them;
``true`` trains them at ``train.lr``, as the authors' code (Justin1904/Low-rank-Multimodal-Fusion,
``parameters()[3:]``) does. MMSA's ``post_fusion``
dropout is built but never called, as in the authors' code; ``post_fusion_dropout`` is kept for
the config's shape and does nothing.

Text and audio/vision are read as in msakit's TFN (``text_lstm_reads_padding``,
``audio_average_steps``/``vision_average_steps`` reproduce MMSA's reading of its zero-padded arrays).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from msakit.config_schema import ModelConfig, TrainConfig
from msakit.models import register_model
from msakit.models.base import (
    FeatureDims,
    ModelOutput,
    MSAModel,
    check_loss_weights,
    require_modalities,
)
from msakit.modules.mmsa_subnets import (
    LOW_RANK_FACTORS,
    UnimodalFeaturesMixin,
    average_steps_field,
    frozen_language_model_field,
    low_rank_fusion,
    low_rank_parameters,
    task_losses,
    text_lstm_reads_padding_field,
    unimodal_subnets,
)


class LMFConfig(ModelConfig):
    """LMF's hyper-parameters; defaults are MMSA's MOSI settings (``config_regression.json``)."""

    name: str = "lmf"
    freeze_language_model: bool = frozen_language_model_field()
    text_hidden: int = Field(128, ge=1, description="text LSTM units")
    audio_hidden: int = Field(16, ge=1)
    vision_hidden: int = Field(128, ge=1)
    text_out: int | None = Field(
        None, ge=1, description="text sub-network output; None: text_hidden // 2 (MMSA); the "
        "authors' code sets it on its own")
    rank: int = Field(3, ge=1, description="number of rank-one terms r (eq. 6)")
    factor_lr: float = Field(1e-3, gt=0.0, description="learning rate of the modality factors")
    audio_dropout: float = Field(0.3, ge=0.0, lt=1.0)
    vision_dropout: float = Field(0.3, ge=0.0, lt=1.0)
    text_dropout: float = Field(
        0.3, ge=0.0, lt=1.0, description="used only with text_final_dropout (MMSA's one-layer "
        "TextSubNet sets its dropout to 0)")
    post_fusion_dropout: float = Field(
        0.3, ge=0.0, lt=1.0, description="unused: MMSA and the authors build it but never call it")
    text_final_dropout: bool = Field(
        False, description="True: text_dropout on the final LSTM state, as the authors' code; "
        "False: MMSA's dropout 0")
    train_fusion_weights: bool = Field(
        False, description="False: fusion_weights and fusion_bias keep their initial values "
        "(MMSA's optimiser leaves them out); True: they train at train.lr (the authors' code)")
    exempt_biases_from_decay: bool = Field(
        False, description="False: weight decay on every trained parameter (MMSA and the "
        "authors); True: biases and norm weights do not decay")
    text_lstm_reads_padding: bool = text_lstm_reads_padding_field()
    audio_average_steps: int | None = average_steps_field("audio")
    vision_average_steps: int | None = average_steps_field("vision")
    loss: Literal["l1", "mse"] = Field("l1", description="task loss (MMSA trains LMF with L1)")
    loss_reduction: Literal["mean", "sum"] = Field(
        "mean", description="mean over the batch (MMSA); sum (the authors' L1Loss(size_average="
        "False))")
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"task": 1.0})

    @model_validator(mode="after")
    def _check_weights(self) -> LMFConfig:
        check_loss_weights(self.loss_weights, ("task",), "lmf")
        return self



@register_model
class LMF(UnimodalFeaturesMixin, MSAModel):
    """Low-rank Multimodal Fusion (see the module docstring for blocks and sizes)."""

    name = "lmf"
    paper = ("Liu et al., Efficient Low-rank Multimodal Fusion with Modality-Specific Factors, "
             "ACL 2018 (MMSA's port)")
    config_class = LMFConfig

    def __init__(self, config: LMFConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, "lmf", hint="For text-only or two-modality data use lf_dnn "
                           "with model.modalities")
        text_out = config.text_out or config.text_hidden // 2
        self.text_encoder, self.text_subnet, self.audio_subnet, self.vision_subnet = (
            unimodal_subnets(config, dims, text_out,
                             config.text_dropout if config.text_final_dropout else 0.0))
        # MMSA's names (video_factor), so that its state dicts map by name
        (self.audio_factor, self.video_factor, self.text_factor, self.fusion_weights,
         self.fusion_bias) = low_rank_parameters(
            config.rank, (config.audio_hidden, config.vision_hidden, text_out),
            config.train_fusion_weights)

    def low_rank_fusion(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. 6: ``(B,)`` = fusion_weights @ prod_m([1; z_m] @ W_m) + fusion_bias."""
        return low_rank_fusion(features, (self.audio_factor, self.video_factor, self.text_factor),
                               self.fusion_weights, self.fusion_bias)

    def parameter_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """The factors at ``model.factor_lr``, the rest at ``train.lr`` (the LM at
        ``train.lm_lr``), weight decay as ``exempt_biases_from_decay`` says."""
        lm_prefixes = self.language_model_prefixes()
        exempt = self.config.exempt_biases_from_decay
        groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            kind = ("factors" if name in LOW_RANK_FACTORS else
                    "language_model" if lm_prefixes and name.startswith(lm_prefixes) else "other")
            decays = not (exempt and (name.endswith("bias") or ".norm." in name))
            groups.setdefault((kind, decays), []).append(parameter)
        lrs = {"factors": self.config.factor_lr, "language_model": train.lm_lr,
               "other": train.lr}
        return [{"name": kind + ("" if decays else "/no_decay"), "params": params,
                 "lr": lrs[kind],
                 "weight_decay": (train.lm_weight_decay if kind == "language_model"
                                  else train.weight_decay) if decays else 0.0}
                for (kind, decays), params in sorted(groups.items())]

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        prediction = self.low_rank_fusion(self.unimodal_features(batch))
        losses = task_losses(prediction, batch, self.config.loss, self.config.loss_reduction)
        return ModelOutput(prediction=prediction, losses=losses)
