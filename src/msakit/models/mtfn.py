"""MTFN: multi-task Tensor Fusion Network (Yu et al., ACL 2020, CH-SIMS; MMSA's ``MTFN``).

TFN's unimodal sub-networks and tensor fusion (Zadeh et al., EMNLP 2017, eq. 1), plus one
regression head per modality trained on CH-SIMS's unimodal labels (multi-task learning, the
CH-SIMS paper's section 4):

=================  ================================================================  ===================
block              computation                                                       output
=================  ================================================================  ===================
text               frozen LM token states -> one-layer LSTM (MMSA's ``TextSubNet``)  ``(B, 32)``
                   -> final state -> Linear(text_hidden -> text_out)
audio / vision     time average -> BatchNorm -> Dropout -> 3 x (Linear + ReLU)       ``(B, 16/64)``
unimodal heads     Dropout -> Linear + ReLU -> Linear + ReLU -> Linear, per modality ``(B,)`` each
fusion (eq. 1)     z = [1; z_a] (x) [1; z_v] (x) [1; z_t], flattened                 ``(B, 17*65*33)``
fusion head        Dropout -> Linear + ReLU -> Linear + ReLU -> Linear               ``(B,)``
output             6 * sigmoid(y) - 3 on the fusion head (also on SIMS, as MMSA)     ``(B,)``
=================  ================================================================  ===================

Defaults are MMSA's CH-SIMS v2 settings (``config_regression.json``, ``mtfn``/``simsv2``: hidden
(text 64, audio 16, video 64), text_out 32, heads fusion 64 / text 16 / audio 5 / video 64,
dropouts 0.3 (sub-networks) and 0.5 (heads); Adam 5e-4 with weight decay 1e-5 on the text, 1e-4
on the audio and the video sub-network and 0 elsewhere: MMSA's MTFN trainer does not pass its
``weight_decay`` to Adam). MMSA's CH-SIMS settings (``--preset sims``: hidden 256 / 32 / 256,
text_out 256) make a fusion tensor of 2.18 M entries and a fusion head of 140 M weights, too large
for a default.
MMSA's unimodal heads are linear (no output bound); only the fusion head is bounded.

Loss terms: ``task`` (fusion head vs ``labels``), and ``text`` / ``audio`` / ``vision`` (each
unimodal head vs ``labels_T`` / ``labels_A`` / ``labels_V``), all L1. MMSA weights them M 0.6,
T 0.4, A 0.0, V 1.0 on CH-SIMS and M 1.0, T 0.4, A 0.4, V 0.8 on CH-SIMS v2 (the presets). The
shipped default trains the fusion head alone (``loss_weights: {task: 1.0}``), so the model runs
on data without unimodal labels; a unimodal term whose labels the batch lacks is an error that
names them.

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
    tensor_fusion,
    text_lstm_reads_padding_field,
    unimodal_subnets,
)


class MTFNConfig(ModelConfig):
    """MTFN's hyper-parameters; defaults are MMSA's CH-SIMS v2 settings."""

    name: str = "mtfn"
    freeze_language_model: bool = frozen_language_model_field()
    text_hidden: int = Field(64, ge=1, description="text LSTM units")
    audio_hidden: int = Field(16, ge=1)
    vision_hidden: int = Field(64, ge=1)
    text_out: int = Field(32, ge=1)
    post_fusion_dim: int = Field(64, ge=1)
    post_text_dim: int = Field(16, ge=1)
    post_audio_dim: int = Field(5, ge=1)
    post_vision_dim: int = Field(64, ge=1)
    audio_dropout: float = Field(0.3, ge=0.0, lt=1.0)
    vision_dropout: float = Field(0.3, ge=0.0, lt=1.0)
    text_dropout: float = Field(
        0.3, ge=0.0, lt=1.0, description="unused, as in MMSA (its one-layer TextSubNet sets its "
        "dropout to 0)")
    post_text_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    post_audio_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    post_vision_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    post_fusion_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    output_bound: float | None = Field(
        3.0, gt=0.0, description="fusion prediction = 2b * sigmoid(y) - b (MMSA: b = 3, also on "
        "SIMS); null: the linear output y")
    text_weight_decay: float = Field(1e-5, ge=0.0, description="weight decay of the text "
                                     "sub-network (train.weight_decay: the heads)")
    audio_weight_decay: float = Field(1e-4, ge=0.0)
    vision_weight_decay: float = Field(1e-4, ge=0.0)
    text_lstm_reads_padding: bool = text_lstm_reads_padding_field()
    audio_average_steps: int | None = average_steps_field("audio")
    vision_average_steps: int | None = average_steps_field("vision")
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {"task": 1.0},
        description="task (fusion head) and optionally text/audio/vision (unimodal heads on "
        "labels_T/_A/_V; MMSA on SIMS: task 0.6, text 0.4, audio 0.0, vision 1.0; SIMS v2: "
        "1.0, 0.4, 0.4, 0.8)")

    @field_validator("loss_weights")
    @classmethod
    def _known_terms(cls, value: dict[str, float]) -> dict[str, float]:
        return check_multitask_loss_weights(value)


@register_model
class MTFN(UnimodalFeaturesMixin, MSAModel):
    """Multi-task Tensor Fusion Network (see the module docstring for blocks and sizes)."""

    name = "mtfn"
    paper = ("Yu et al., CH-SIMS: A Chinese Multimodal Sentiment Analysis Dataset with "
             "Fine-grained Annotations of Modality, ACL 2020 (MMSA's MTFN)")
    config_class = MTFNConfig

    def __init__(self, config: MTFNConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, "mtfn", hint="For text-only or two-modality data use lf_dnn "
                           "with model.modalities")
        self.text_encoder, self.text_subnet, self.audio_subnet, self.vision_subnet = (
            unimodal_subnets(config, dims, config.text_out))
        self.post_text = RegressionHead(config.text_out, config.post_text_dim,
                                        config.post_text_dropout)
        self.post_audio = RegressionHead(config.audio_hidden, config.post_audio_dim,
                                         config.post_audio_dropout)
        self.post_vision = RegressionHead(config.vision_hidden, config.post_vision_dim,
                                          config.post_vision_dropout)
        fused = (config.audio_hidden + 1) * (config.vision_hidden + 1) * (config.text_out + 1)
        self.post_fusion = RegressionHead(fused, config.post_fusion_dim,
                                          config.post_fusion_dropout)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        features = self.unimodal_features(batch)
        # MMSA's order: the unimodal heads (text, audio, video), then the fusion
        outputs = {m: getattr(self, f"post_{m}")(features[m]) for m in ("text", "audio", "vision")}
        fused = tensor_fusion(features["audio"], features["vision"], features["text"])
        output = self.post_fusion(fused)
        bound = self.config.output_bound
        outputs["fusion"] = output if bound is None else torch.sigmoid(output) * (2 * bound) - bound
        losses = multitask_losses(outputs, batch, self.config.loss_weights, "mtfn",
                                  fusion="fusion head")
        extras = {m: outputs[m] for m in ("text", "audio", "vision")}
        return ModelOutput(prediction=outputs["fusion"], losses=losses, extras=extras)

    def parameter_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """MMSA's Adam groups, all at ``train.lr``: the text, audio and vision sub-networks with
        their own weight decay, the rest with ``train.weight_decay`` (MMSA: 0; its constant
        ``output_range``/``output_shift`` group at learning rate 0 is msakit's
        ``output_bound``)."""
        cfg = self.config
        return subnet_decay_groups(self, train, {
            "text_subnet.": (train.lr, cfg.text_weight_decay),
            "audio_subnet.": (train.lr, cfg.audio_weight_decay),
            "vision_subnet.": (train.lr, cfg.vision_weight_decay)}, train.weight_decay)
