"""MISA: Modality-Invariant and -Specific Representations (Hazarika et al., ACM MM 2020).

Each modality's utterance vector is projected to a common size ``H`` and split into a *private*
(modality-specific) and a *shared* (modality-invariant) part. Four losses shape the parts:

- ``task``: MSE of the sentiment prediction;
- ``cmd``: Central Moment Discrepancy between the shared parts of every modality pair
  (similarity loss, eq. 5), averaged over (t, v), (t, a), (a, v);
- ``diff``: soft orthogonality between each modality's private and shared parts and between
  every pair of private parts (difference loss, eq. 7), summed over the six pairs;
- ``recon``: MSE between each projected vector and its reconstruction from private + shared
  (eq. 8), averaged over modalities.

Architecture (as the official ``declare-lab/MISA`` code, with sizes for the packaged MiniLM):

=====================  ==================================================  ==============
block                  computation                                         output
=====================  ==================================================  ==============
text                   fine-tuned LM, masked mean over tokens              ``(B, 384)``
audio / vision         sLSTM (biLSTM -> LayerNorm -> biLSTM, real lengths)  ``(B, 4·D_m)``
projection u_m         LayerNorm(ReLU(Linear(in -> H)))                    ``(B, H)``
private P_m            sigmoid(Linear_m(u_m)), one per modality            ``(B, H)``
shared S_m             sigmoid(Linear_s(u_m)), one for all                 ``(B, H)``
reconstruction û_m     Linear_m(P_m + S_m)                                 ``(B, H)``
fusion                 [P_t,P_v,P_a,S_t,S_v,S_a] as 6 tokens -> one        ``(B, 6H)``
                       TransformerEncoderLayer (2 heads, FF 2048, p 0.1)
                       -> concatenated
head                   Linear(6H -> 3H) -> Dropout -> ReLU -> Linear(3H -> 1)  ``(B,)``
=====================  ==================================================  ==============

Inputs as the official code reads them: the text vector is the masked mean of the LM's states
over the real tokens (as the official code); audio and vision are read at one step per word on
word-aligned data (``word_audio``/``word_vision``, :func:`~msakit.modules.encoders.recurrent_input`),
packed with their own real lengths (MMSA's port packs them with the text lengths). The official
code fine-tunes BERT with the same Adam learning rate as the rest (1e-4), which the shipped config
reproduces (``train.lm_lr``); on MOSEI it freezes BERT layers 0-8 (``model.freeze_lm_layers=9``,
the ``mosei`` preset).

Where we differ from the official code (deliberately): CMD's norms have a zero (not NaN)
gradient where two moments are exactly equal, as for a batch of one (values are identical, and
so are gradients wherever the official ones are finite; see
:func:`msakit.modules.losses.cmd_loss`); the official collate truncates BERT's tokens to the
batch's longest word count + 2, msakit to ``data.max_text_tokens``. The numeric parity test
(``tests/parity/test_misa_parity.py``) and ``docs/faithfulness.md`` say what is covered.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msakit.config_schema import LengthGroupedLMConfig
from msakit.models import register_model
from msakit.models.base import (
    FeatureDims,
    ModelOutput,
    MSAModel,
    check_loss_weights,
    require_modalities,
)
from msakit.modules.dropout import Dropout, use_fast_dropout
from msakit.modules.encoders import StackedBiLSTMEncoder, recurrent_input
from msakit.modules.losses import cmd_loss, reconstruction_loss, soft_orthogonality_loss
from msakit.modules.text import PretrainedTextEncoder

MISA_LOSS_TERMS = ("task", "cmd", "diff", "recon")
MODALITY_ORDER = ("text", "vision", "audio")  # the official token order: t, v, a


class MISAConfig(LengthGroupedLMConfig):
    """MISA's hyper-parameters; defaults are the official ones (declare-lab/MISA)."""

    name: str = "misa"
    hidden_size: int = Field(128, ge=1, description="H: size of u_m, P_m, S_m")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout in the prediction head")
    cmd_moments: int = Field(5, ge=1, description="K: highest central moment in CMD")
    transformer_heads: int = Field(2, ge=1)
    transformer_feedforward: int = Field(2048, ge=1)
    transformer_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    freeze_language_model: bool = Field(
        False, description="keep the LM fixed (the official model fine-tunes it)"
    )
    freeze_lm_layers: int = Field(
        0, ge=0, description="keep the LM's first N transformer layers fixed; the official "
        "MOSEI setting freezes BERT layers 0-8 (N = 9), MOSI fine-tunes all"
    )
    loss_weights: dict[str, float] = Field(
        default_factory=lambda: {"task": 1.0, "cmd": 1.0, "diff": 0.3, "recon": 1.0},
        description="task 1, cmd alpha, diff beta, recon gamma",
    )

    @model_validator(mode="after")
    def _check(self) -> MISAConfig:
        check_loss_weights(self.loss_weights, MISA_LOSS_TERMS, "misa")
        if self.hidden_size % self.transformer_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by "
                f"model.transformer_heads ({self.transformer_heads})"
            )
        return self


def _projection(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.LayerNorm(hidden))


@register_model
class MISA(MSAModel):
    """MISA (see the module docstring for blocks and sizes)."""

    name = "misa"
    paper = "Hazarika, Zimmermann & Poria. MISA. ACM MM 2020"
    config_class = MISAConfig

    def __init__(self, config: MISAConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, "MISA", hint="For text-only or two-modality data use lf_dnn "
                           "with model.modalities.")
        hidden = config.hidden_size
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="mean", freeze=config.freeze_language_model,
            freeze_layers=config.freeze_lm_layers, group_by_length=config.lm_group_by_length,
        )
        self.audio_encoder = StackedBiLSTMEncoder(dims.audio)
        self.vision_encoder = StackedBiLSTMEncoder(dims.vision)
        encoded = {
            "text": self.text_encoder.hidden_size,
            "audio": self.audio_encoder.output_dim,
            "vision": self.vision_encoder.output_dim,
        }
        self.project = nn.ModuleDict({m: _projection(encoded[m], hidden) for m in MODALITY_ORDER})
        self.private = nn.ModuleDict({m: nn.Linear(hidden, hidden) for m in MODALITY_ORDER})
        self.shared = nn.Linear(hidden, hidden)
        self.reconstruct = nn.ModuleDict({m: nn.Linear(hidden, hidden) for m in MODALITY_ORDER})
        self.fusion_layer = use_fast_dropout(nn.TransformerEncoderLayer(
            d_model=hidden,
            nhead=config.transformer_heads,
            dim_feedforward=config.transformer_feedforward,
            dropout=config.transformer_dropout,
            batch_first=True,
        ))
        self.head = nn.Sequential(
            nn.Linear(6 * hidden, 3 * hidden),
            Dropout(config.dropout),
            nn.ReLU(),
            nn.Linear(3 * hidden, 1),
        )

    # ------------------------------------------------------------------------------------------
    def encode(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Utterance vectors before projection: text ``(B, 384)``, audio/vision ``(B, 4·D_m)``."""
        for key in ("input_ids", "attention_mask", "audio", "audio_lengths", "vision",
                    "vision_lengths"):
            if key not in batch:
                raise KeyError(f"MISA needs batch[{key!r}] (text, audio and vision)")
        audio = recurrent_input(batch, "audio")  # one step per word on word-aligned data
        vision = recurrent_input(batch, "vision")
        return {
            "text": self.text_encoder.encode_batch(batch),
            "audio": self.audio_encoder(audio.x, audio.host_lengths),
            "vision": self.vision_encoder(vision.x, vision.host_lengths),
        }

    def representations(self, batch: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        """Every intermediate ``(B, H)`` vector: ``projected``, ``private``, ``shared``,
        ``reconstructed``, each a dict over ``text``/``vision``/``audio``."""
        utterances = self.encode(batch)
        projected = {m: self.project[m](utterances[m]) for m in MODALITY_ORDER}
        private = {m: torch.sigmoid(self.private[m](projected[m])) for m in MODALITY_ORDER}
        shared = {m: torch.sigmoid(self.shared(projected[m])) for m in MODALITY_ORDER}
        reconstructed = {
            m: self.reconstruct[m](private[m] + shared[m]) for m in MODALITY_ORDER
        }
        return {"projected": projected, "private": private, "shared": shared,
                "reconstructed": reconstructed}

    def fuse(self, private: dict[str, torch.Tensor], shared: dict[str, torch.Tensor]) -> torch.Tensor:
        """Six ``(B, H)`` vectors -> one Transformer layer over them as tokens -> ``(B, 6H)``."""
        tokens = torch.stack(
            [private[m] for m in MODALITY_ORDER] + [shared[m] for m in MODALITY_ORDER], dim=1
        )  # (B, 6, H)
        return self.fusion_layer(tokens).reshape(tokens.shape[0], -1)

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        parts = self.representations(batch)
        private, shared = parts["private"], parts["shared"]
        prediction = self.head(self.fuse(private, shared)).squeeze(-1)  # (B,)

        losses: dict[str, torch.Tensor] = {}
        if "labels" in batch:
            labels = batch["labels"].to(prediction.dtype).reshape(-1)
            losses["task"] = F.mse_loss(prediction, labels)
            losses["cmd"] = self.similarity_loss(shared)
            losses["diff"] = self.difference_loss(private, shared)
            losses["recon"] = sum(
                reconstruction_loss(parts["reconstructed"][m], parts["projected"][m])
                for m in MODALITY_ORDER
            ) / len(MODALITY_ORDER)
        return ModelOutput(prediction=prediction, losses=losses)

    def similarity_loss(self, shared: dict[str, torch.Tensor]) -> torch.Tensor:
        """CMD averaged over the shared pairs (t, v), (t, a), (a, v)."""
        k = self.config.cmd_moments
        pairs = (("text", "vision"), ("text", "audio"), ("audio", "vision"))
        return sum(cmd_loss(shared[x], shared[y], k) for x, y in pairs) / len(pairs)

    @staticmethod
    def difference_loss(
        private: dict[str, torch.Tensor], shared: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """Soft orthogonality summed over (P_m, S_m) for each m and the three private pairs."""
        loss = sum(soft_orthogonality_loss(private[m], shared[m]) for m in MODALITY_ORDER)
        for x, y in (("audio", "text"), ("audio", "vision"), ("text", "vision")):
            loss = loss + soft_orthogonality_loss(private[x], private[y])
        return loss
