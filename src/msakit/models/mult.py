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

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msakit.config_schema import ModelConfig
from msakit.models import register_model
from msakit.models.base import FeatureDims, ModelOutput, MSAModel
from msakit.modules.crossmodal import CrossModalFusion, TemporalConvProjection
from msakit.modules.text import PretrainedTextEncoder

MODALITIES = ("text", "audio", "vision")

#: ``readout`` of MulT and DMD (passed on to :class:`CrossModalFusion`).
ReadoutOption = Annotated[Literal["last_valid", "last_position"], Field(
    description="step read out of each sequence encoder: each sample's last real step, or the "
    "last (possibly padded) position as the official code"
)]
#: ``padding`` of MulT and DMD (passed on to :class:`CrossModalFusion`).
PaddingOption = Annotated[Literal["masked", "official"], Field(
    description="'masked': padded steps are masked out of every attention and the future "
    "mask's offset uses each clip's real lengths (a clip's result does not depend on its batch); "
    "'official': as the official code, padded steps are attended to, the offset comes from the "
    "padded lengths, and steps whose first feature is 0 get no positional embedding"
)]


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
    embed_dropout: float = Field(0.25, ge=0, lt=1)
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


def attention_dropout_by_source(config: ModelConfig) -> dict[str, float]:
    """``{modality: attention dropout when it is the source}`` of a config with MulT's fields
    (:class:`MulTConfig`, DMD's): ``attn_dropout`` is the text's."""
    return {"text": config.attn_dropout, "audio": config.attn_dropout_audio,
            "vision": config.attn_dropout_vision}


def cross_modal_fusion(config: ModelConfig) -> CrossModalFusion:
    """MulT's fusion over text, audio and vision (each ``(B, L_m, embed_dim)``) from a config
    with MulT's fields (:class:`MulTConfig`, DMD's); the memories use the text's attention
    dropout, as the official code."""
    return CrossModalFusion(
        MODALITIES, config.embed_dim, config.num_heads, config.num_layers, config.memory_layers,
        attn_dropout=attention_dropout_by_source(config), memory_attn_dropout=config.attn_dropout,
        relu_dropout=config.relu_dropout, res_dropout=config.res_dropout,
        embed_dropout=config.embed_dropout, attn_mask=config.attn_mask,
        readout=config.readout, padding=config.padding,
    )


def text_states(encoder: PretrainedTextEncoder, batch: dict[str, Any]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """LM hidden states with padded tokens zeroed, and token lengths: ``(B, L, H)``, ``(B,)``."""
    attention_mask = batch["attention_mask"]
    hidden = encoder.encode_batch(batch)
    return hidden * attention_mask.unsqueeze(-1).to(hidden.dtype), attention_mask.sum(1).long()


def modality_lengths(batch: dict[str, Any], modality: str) -> torch.Tensor:
    """True lengths of ``audio``/``vision`` from the batch (``*_lengths``, else ``*_mask``)."""
    if f"{modality}_lengths" in batch:
        return batch[f"{modality}_lengths"].long()
    if f"{modality}_mask" in batch:
        return batch[f"{modality}_mask"].sum(1).long()
    raise KeyError(f"batch has neither '{modality}_lengths' nor '{modality}_mask'")


def check_loss_weights(weights: dict[str, float], terms: tuple[str, ...], model: str) -> None:
    """Every loss term the model returns needs a weight, and no weight may name another term."""
    missing = sorted(set(terms) - set(weights))
    unknown = sorted(set(weights) - set(terms))
    if missing or unknown:
        raise ValueError(
            f"{model} loss_weights: missing {missing}, unknown {unknown}; the terms are "
            f"{list(terms)}"
        )


def require_all_modalities(dims: FeatureDims, model: str) -> None:
    missing = [m for m in ("audio", "vision") if getattr(dims, m) <= 0]
    if missing:
        raise ValueError(
            f"{model} needs text, audio and vision; the data has no {' or '.join(missing)} "
            f"(feature dims: audio={dims.audio}, vision={dims.vision})"
        )


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
        require_all_modalities(dims, "MulT")
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
        text = F.dropout(text, p=self.config.text_dropout, training=self.training)
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
        residual = self.proj2(F.dropout(F.relu(self.proj1(hidden)), p=self.config.out_dropout,
                                        training=self.training))
        prediction = self.out_layer(hidden + residual).squeeze(-1)
        losses = {}
        if batch.get("labels") is not None:
            losses["task"] = F.l1_loss(prediction, batch["labels"].to(prediction.dtype))
        return ModelOutput(prediction=prediction, losses=losses, extras={"hidden": hidden.detach()})
