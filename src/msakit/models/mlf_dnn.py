"""MLF-DNN: multi-task late-fusion DNN (Yu et al., ACL 2020, CH-SIMS; MMSA's ``MLF_DNN``).

LF-DNN's unimodal sub-networks and late fusion, plus one regression head per modality trained on
CH-SIMS's unimodal labels (multi-task learning, the paper's section 4):

=================  ================================================================  ===============
block              computation                                                       output
=================  ================================================================  ===============
text               frozen LM token states -> one-layer LSTM (MMSA's ``TextSubNet``)  ``(B, 32)``
                   -> final state -> Linear(text_hidden -> text_out)
audio / vision     time average -> BatchNorm -> Dropout -> 3 x (Linear + ReLU)       ``(B, 32/64)``
unimodal heads     Dropout -> Linear + ReLU -> Linear + ReLU -> Linear, per modality ``(B,)`` each
fusion head        [z_a; z_v; z_t] -> Dropout -> Linear + ReLU -> Linear + ReLU      ``(B,)``
                   -> Linear
=================  ================================================================  ===============

Defaults are MMSA's CH-SIMS settings (``config_regression.json``, the only dataset MMSA runs it
on: hidden (text 64, audio 32, video 64), text_out 32, heads fusion 32 / text 16 / audio 4 /
video 32, dropouts 0.3 (sub-networks) and 0.5 (heads); Adam 2e-3 with weight decay 1e-4 on the
text, 1e-3 on the audio, 1e-4 on the video sub-network and 0 elsewhere; L1 losses).

Loss terms: ``task`` (fusion head vs ``labels``), and ``text`` / ``audio`` / ``vision`` (each
unimodal head vs ``labels_T`` / ``labels_A`` / ``labels_V``). MMSA weights them M 0.6, T 0.2,
A 0.8, V 0.8 (the ``sims`` preset). The shipped default trains the fusion head alone
(``loss_weights: {task: 1.0}``), so the model runs on data without unimodal labels; a unimodal
term whose labels the batch lacks is an error that names them.

Text and audio/vision are read as in msakit's TFN (``text_lstm_reads_padding``,
``audio_average_steps``/``vision_average_steps`` reproduce MMSA's reading of its arrays).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, field_validator

from msakit.config_schema import ModelConfig, TrainConfig
from msakit.models import register_model
from msakit.models.base import FeatureDims, ModelOutput, MSAModel, require_modalities
from msakit.modules.mmsa_subnets import (
    RegressionHead,
    UnimodalFeaturesMixin,
    average_steps_field,
    check_multitask_loss_weights,
    frozen_language_model_field,
    multitask_losses,
    subnet_decay_groups,
    text_lstm_reads_padding_field,
    unimodal_subnets,
)


class MLFDNNConfig(ModelConfig):
    """MLF-DNN's hyper-parameters; defaults are MMSA's CH-SIMS settings."""

    name: str = "mlf_dnn"
    freeze_language_model: bool = frozen_language_model_field()
    text_hidden: int = Field(64, ge=1, description="text LSTM units")
    audio_hidden: int = Field(32, ge=1)
    vision_hidden: int = Field(64, ge=1)
    text_out: int = Field(32, ge=1)
    post_fusion_dim: int = Field(32, ge=1)
    post_text_dim: int = Field(16, ge=1)
    post_audio_dim: int = Field(4, ge=1)
    post_vision_dim: int = Field(32, ge=1)
    audio_dropout: float = Field(0.3, ge=0.0, lt=1.0)
    vision_dropout: float = Field(0.3, ge=0.0, lt=1.0)
    text_dropout: float = Field(
        0.3, ge=0.0, lt=1.0, description="unused, as in MMSA (its one-layer TextSubNet sets its "
        "dropout to 0)")
    post_text_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    post_audio_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    post_vision_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    post_fusion_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    text_weight_decay: float = Field(1e-4, ge=0.0, description="weight decay of the text "
                                     "sub-network (train.weight_decay: the heads)")
    audio_weight_decay: float = Field(1e-3, ge=0.0)
    vision_weight_decay: float = Field(1e-4, ge=0.0)
    text_lstm_reads_padding: bool = text_lstm_reads_padding_field()
    audio_average_steps: int | None = average_steps_field("audio")
    vision_average_steps: int | None = average_steps_field("vision")
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {"task": 1.0},
        description="task (fusion head) and optionally text/audio/vision (unimodal heads on "
        "labels_T/_A/_V; MMSA on SIMS: task 0.6, text 0.2, audio 0.8, vision 0.8)")

    @field_validator("loss_weights")
    @classmethod
    def _known_terms(cls, value: dict[str, float]) -> dict[str, float]:
        return check_multitask_loss_weights(value)


@register_model
class MLFDNN(UnimodalFeaturesMixin, MSAModel):
    """Multi-task late-fusion DNN (see the module docstring for blocks and sizes)."""

    name = "mlf_dnn"
    paper = ("Yu et al., CH-SIMS: A Chinese Multimodal Sentiment Analysis Dataset with "
             "Fine-grained Annotations of Modality, ACL 2020 (MMSA's MLF_DNN)")
    config_class = MLFDNNConfig

    def __init__(self, config: MLFDNNConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, "mlf_dnn", hint="For text-only or two-modality data use lf_dnn "
                           "with model.modalities")
        self.text_encoder, self.text_subnet, self.audio_subnet, self.vision_subnet = (
            unimodal_subnets(config, dims, config.text_out))
        self.post_text = RegressionHead(config.text_out, config.post_text_dim,
                                        config.post_text_dropout)
        self.post_audio = RegressionHead(config.audio_hidden, config.post_audio_dim,
                                config.post_audio_dropout)
        self.post_vision = RegressionHead(config.vision_hidden, config.post_vision_dim,
                                 config.post_vision_dropout)
        self.post_fusion = RegressionHead(config.audio_hidden + config.vision_hidden + config.text_out,
                                 config.post_fusion_dim, config.post_fusion_dropout)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        features = self.unimodal_features(batch)
        outputs = {m: getattr(self, f"post_{m}")(features[m]) for m in ("text", "audio", "vision")}
        # MMSA's fusion order: audio, video, text
        fused = torch.cat([features["audio"], features["vision"], features["text"]], dim=-1)
        outputs["fusion"] = self.post_fusion(fused)
        losses = multitask_losses(outputs, batch, self.config.loss_weights, "mlf_dnn", fusion="fusion head")
        extras = {m: outputs[m] for m in ("text", "audio", "vision")}
        return ModelOutput(prediction=outputs["fusion"], losses=losses, extras=extras)

    def parameter_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """MMSA's four Adam groups, all at ``train.lr``: the text, audio and vision sub-networks
        with their own weight decay, the rest with ``train.weight_decay``."""
        cfg = self.config
        return subnet_decay_groups(self, train, {
            "text_subnet.": (train.lr, cfg.text_weight_decay),
            "audio_subnet.": (train.lr, cfg.audio_weight_decay),
            "vision_subnet.": (train.lr, cfg.vision_weight_decay)}, train.weight_decay)
