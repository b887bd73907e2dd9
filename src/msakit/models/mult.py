"""MulT: Multimodal Transformer for unaligned multimodal language sequences (Tsai et al., ACL 2019).

Pipeline (official ``yaohungt/Multimodal-Transformer``, ``MULTModel``):

1. text: language-model hidden states (``PretrainedTextEncoder(pooling="none")``; the official
   code used GloVe vectors) with dropout; every modality projected to ``d`` by a bias-free
   temporal ``Conv1d`` (official kernel 1);
2. six directed cross-modal transformers ``source -> target`` (queries from the target), the two
   streams of each target concatenated and passed through a self-attention memory transformer,
   one time step read out per target (:class:`~msakit.modules.crossmodal.CrossModalFusion`);
3. ``h = [h_text; h_audio; h_vision]`` (``6 d``) -> residual block
   ``h + W2 Dropout(ReLU(W1 h))`` -> linear -> ``ŷ``.

Loss: L1 (``task``), as the official MOSI/MOSEI setting. Aligned and unaligned inputs both work:
each modality keeps its own length and padding mask.

Deliberate differences from the official code, each a config option whose official value the
parity test (``tests/parity/test_mult_parity.py``) uses: ``padding`` (``masked``; official
attends to padded steps), ``readout`` (``last_valid``; official reads the last, possibly padded,
position). See ``docs/faithfulness.md``.
"""

from __future__ import annotations

from typing import Any

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
from msakit.modules.crossmodal import (
    PaddingOption,
    ReadoutOption,
    TemporalConvProjection,
    cross_modal_fusion,
    modality_lengths,
)
from msakit.modules.dropout import dropout
from msakit.modules.text import PretrainedTextEncoder, text_states

MODALITIES = ("text", "audio", "vision")

class MulTConfig(ModelConfig):
    name: str = "mult"
    embed_dim: int = Field(30, ge=4, description="d of every cross-modal transformer")
    num_heads: int = Field(5, ge=1)
    num_layers: int = Field(5, ge=1, description="layers of each cross-modal transformer")
    memory_layers: int = Field(
        5, ge=1, description="layers of each self-attention memory (official: max(num_layers, 3))"
    )
    conv_kernel_text: int = Field(1, ge=1)
    conv_kernel_audio: int = Field(1, ge=1)
    conv_kernel_vision: int = Field(1, ge=1)
    text_dropout: float = Field(0.25, ge=0, lt=1, description="dropout on the text states "
                                "(official: the embed dropout, 0.25)")
    attn_dropout: float = Field(0.1, ge=0, lt=1, description="attention dropout when text is "
                                "the source, and of the memories")
    attn_dropout_audio: float = Field(0.0, ge=0, lt=1)
    attn_dropout_vision: float = Field(0.0, ge=0, lt=1)
    relu_dropout: float = Field(0.1, ge=0, lt=1)
    res_dropout: float = Field(0.1, ge=0, lt=1)
    embed_dropout: float = Field(0.25, ge=0, lt=1, description="official --embed_dropout")
    out_dropout: float = Field(0.0, ge=0, lt=1)
    attn_mask: bool = Field(True, description="official future mask in every transformer")
    readout: ReadoutOption = "last_valid"
    padding: PaddingOption = "masked"
    freeze_language_model: bool = Field(
        False, description="keep the LM fixed (default: fine-tune it, as DMD's BERT)"
    )
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"task": 1.0})

    @model_validator(mode="after")
    def _check(self) -> MulTConfig:
        check_loss_weights(self.loss_weights, ("task",), "mult")
        if self.embed_dim % self.num_heads or (2 * self.embed_dim) % self.num_heads:
            raise ValueError(
                f"num_heads {self.num_heads} must divide embed_dim {self.embed_dim} and the "
                f"memory width {2 * self.embed_dim}"
            )
        return self


@register_model
class MulT(MSAModel):
    """Multimodal Transformer; see the module docstring. ``forward(batch) -> ModelOutput``.

    Extras: ``hidden`` ``(B, 6 d)``, the concatenated read-out states.
    """

    name = "mult"
    paper = ("Tsai et al., Multimodal Transformer for Unaligned Multimodal Language Sequences, "
             "ACL 2019")
    config_class = MulTConfig

    def __init__(self, config: MulTConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, "MulT")
        d = config.embed_dim
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="none", freeze=config.freeze_language_model
        )
        self.projections = nn.ModuleDict({
            "text": TemporalConvProjection(self.text_encoder.hidden_size, d,
                                           config.conv_kernel_text),
            "audio": TemporalConvProjection(dims.audio, d, config.conv_kernel_audio),
            "vision": TemporalConvProjection(dims.vision, d, config.conv_kernel_vision),
        })
        self.fusion = cross_modal_fusion(config)
        combined = 2 * d * len(MODALITIES)
        self.proj1 = nn.Linear(combined, combined)
        self.proj2 = nn.Linear(combined, combined)
        self.out_layer = nn.Linear(combined, 1)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        text, text_lengths = text_states(self.text_encoder, batch)
        text = dropout(text, p=self.config.text_dropout, training=self.training)
        raw = {
            "text": (text, text_lengths),
            "audio": (batch["audio"], modality_lengths(batch, "audio")),
            "vision": (batch["vision"], modality_lengths(batch, "vision")),
        }
        sequences, lengths = {}, {}
        for m in MODALITIES:
            sequences[m], lengths[m] = self.projections[m](*raw[m])
        pooled = self.fusion(sequences, lengths)
        hidden = torch.cat([pooled[m] for m in MODALITIES], dim=-1)
        residual = self.proj2(dropout(F.relu(self.proj1(hidden)), p=self.config.out_dropout,
                                      training=self.training))
        prediction = self.out_layer(hidden + residual).squeeze(-1)
        losses = {}
        if batch.get("labels") is not None:
            losses["task"] = F.l1_loss(prediction, batch["labels"].to(prediction.dtype))
        return ModelOutput(prediction=prediction, losses=losses, extras={"hidden": hidden.detach()})
