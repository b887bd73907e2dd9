"""MLMF: multi-task Low-rank Multimodal Fusion (Yu et al., ACL 2020, CH-SIMS; MMSA's ``MLMF``).

LMF (see ``lmf.py``) with MLF-DNN's unimodal heads trained on CH-SIMS's unimodal labels:

=================  ================================================================  ===============
block              computation                                                       output
=================  ================================================================  ===============
text               frozen LM token states -> one-layer LSTM -> Linear                ``(B, 128)``
                   (text_out = text_hidden // 2)
audio / vision     time average -> BatchNorm -> Dropout -> 3 x (Linear + ReLU)       ``(B, 32/256)``
unimodal heads     Dropout -> Linear + ReLU -> Linear + ReLU -> Linear, per modality ``(B,)`` each
fusion (LMF eq. 6) fusion_weights ``(1, r)`` @ prod_m([1; z_m] @ W_m) + fusion_bias  ``(B,)``
=================  ================================================================  ===============

Defaults are MMSA's CH-SIMS settings (``config_regression.json``: hidden (text 256, audio 32,
video 256), rank 3, heads text 8 / audio 4 / video 32, dropouts 0.3 (sub-networks) and 0.4
(heads); Adam 1e-3 with the factors at ``factor_lr`` 1e-3, weight decay 1e-4 on the text, 0 on
the audio and 1e-4 on the video sub-network and ``train.weight_decay`` 0.005 on the factors and
the heads). As in MMSA's LMF, ``fusion_weights`` and ``fusion_bias`` never train (MMSA's MLMF
optimiser gives them a learning rate of 0); ``train_fusion_weights: true`` trains them.

Loss terms as MLF-DNN's: ``task``, and ``text`` / ``audio`` / ``vision`` on ``labels_T`` /
``labels_A`` / ``labels_V`` (MMSA: M 0.2, T 1.0, A 0.4, V 0.8, the ``sims`` preset); the shipped
default trains the fusion alone. Text and audio/vision are read as in msakit's TFN.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, field_validator

from msakit.config_schema import ModelConfig, TrainConfig
from msakit.models import register_model
from msakit.models.base import FeatureDims, ModelOutput, MSAModel, require_modalities
from msakit.modules.mmsa_subnets import (
    LOW_RANK_FACTORS,
    RegressionHead,
    UnimodalFeaturesMixin,
    average_steps_field,
    check_multitask_loss_weights,
    frozen_language_model_field,
    low_rank_fusion,
    low_rank_parameters,
    multitask_losses,
    subnet_decay_groups,
    text_lstm_reads_padding_field,
    unimodal_subnets,
)


class MLMFConfig(ModelConfig):
    """MLMF's hyper-parameters; defaults are MMSA's CH-SIMS settings."""

    name: str = "mlmf"
    freeze_language_model: bool = frozen_language_model_field()
    text_hidden: int = Field(256, ge=1, description="text LSTM units (text_out = half)")
    audio_hidden: int = Field(32, ge=1)
    vision_hidden: int = Field(256, ge=1)
    rank: int = Field(3, ge=1, description="number of rank-one terms r (LMF eq. 6)")
    factor_lr: float = Field(1e-3, gt=0.0, description="learning rate of the modality factors")
    post_text_dim: int = Field(8, ge=1)
    post_audio_dim: int = Field(4, ge=1)
    post_vision_dim: int = Field(32, ge=1)
    audio_dropout: float = Field(0.3, ge=0.0, lt=1.0)
    vision_dropout: float = Field(0.3, ge=0.0, lt=1.0)
    text_dropout: float = Field(
        0.3, ge=0.0, lt=1.0, description="unused, as in MMSA (its one-layer TextSubNet sets its "
        "dropout to 0)")
    post_text_dropout: float = Field(0.4, ge=0.0, lt=1.0)
    post_audio_dropout: float = Field(0.4, ge=0.0, lt=1.0)
    post_vision_dropout: float = Field(0.4, ge=0.0, lt=1.0)
    post_fusion_dropout: float = Field(
        0.4, ge=0.0, lt=1.0, description="unused: MMSA's MLMF has no post-fusion dropout")
    text_weight_decay: float = Field(1e-4, ge=0.0, description="weight decay of the text "
                                     "sub-network (train.weight_decay: factors and heads)")
    audio_weight_decay: float = Field(0.0, ge=0.0)
    vision_weight_decay: float = Field(1e-4, ge=0.0)
    train_fusion_weights: bool = Field(
        False, description="False: fusion_weights and fusion_bias keep their initial values "
        "(MMSA's optimiser gives them lr 0); True: they train at train.lr")
    text_lstm_reads_padding: bool = text_lstm_reads_padding_field()
    audio_average_steps: int | None = average_steps_field("audio")
    vision_average_steps: int | None = average_steps_field("vision")
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {"task": 1.0},
        description="task (fusion) and optionally text/audio/vision (unimodal heads on "
        "labels_T/_A/_V; MMSA on SIMS: task 0.2, text 1.0, audio 0.4, vision 0.8)")

    @field_validator("loss_weights")
    @classmethod
    def _known_terms(cls, value: dict[str, float]) -> dict[str, float]:
        return check_multitask_loss_weights(value)


@register_model
class MLMF(UnimodalFeaturesMixin, MSAModel):
    """Multi-task Low-rank Multimodal Fusion (see the module docstring for blocks and sizes)."""

    name = "mlmf"
    paper = ("Yu et al., CH-SIMS: A Chinese Multimodal Sentiment Analysis Dataset with "
             "Fine-grained Annotations of Modality, ACL 2020 (MMSA's MLMF)")
    config_class = MLMFConfig

    def __init__(self, config: MLMFConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, "mlmf", hint="For text-only or two-modality data use lf_dnn "
                           "with model.modalities")
        text_out = config.text_hidden // 2
        self.text_encoder, self.text_subnet, self.audio_subnet, self.vision_subnet = (
            unimodal_subnets(config, dims, text_out))
        self.post_text = RegressionHead(text_out, config.post_text_dim, config.post_text_dropout)
        self.post_audio = RegressionHead(config.audio_hidden, config.post_audio_dim,
                                         config.post_audio_dropout)
        self.post_vision = RegressionHead(config.vision_hidden, config.post_vision_dim,
                                          config.post_vision_dropout)
        # MMSA's names (video_factor), so that its state dicts map by name
        (self.audio_factor, self.video_factor, self.text_factor, self.fusion_weights,
         self.fusion_bias) = low_rank_parameters(
            config.rank, (config.audio_hidden, config.vision_hidden, text_out),
            config.train_fusion_weights)

    def low_rank_fusion(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """LMF's eq. 6: ``(B,)`` = fusion_weights @ prod_m([1; z_m] @ W_m) + fusion_bias."""
        return low_rank_fusion(features, (self.audio_factor, self.video_factor, self.text_factor),
                               self.fusion_weights, self.fusion_bias)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        features = self.unimodal_features(batch)
        outputs = {m: getattr(self, f"post_{m}")(features[m]) for m in ("text", "audio", "vision")}
        outputs["fusion"] = self.low_rank_fusion(features)
        losses = multitask_losses(outputs, batch, self.config.loss_weights, "mlmf")
        extras = {m: outputs[m] for m in ("text", "audio", "vision")}
        return ModelOutput(prediction=outputs["fusion"], losses=losses, extras=extras)

    def parameter_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """MMSA's groups: the text, audio and vision sub-networks with their own weight decay,
        the factors at ``factor_lr``, the rest at ``train.lr``; all but the sub-networks with
        ``train.weight_decay``."""
        cfg = self.config
        groups = {"text_subnet.": (train.lr, cfg.text_weight_decay),
                  "audio_subnet.": (train.lr, cfg.audio_weight_decay),
                  "vision_subnet.": (train.lr, cfg.vision_weight_decay)}
        groups.update({name: (cfg.factor_lr, train.weight_decay) for name in LOW_RANK_FACTORS})
        return subnet_decay_groups(self, train, groups, train.weight_decay)
