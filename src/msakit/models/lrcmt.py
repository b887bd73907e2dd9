"""LRCMT: low-rank cross-modal Transformer (Sun, Che & Gao, Computer Engineering & Science 2024).

Two ideas (abstract, ../shared/papers/003): the pretrained language model is frozen and trainable
low-rank matrices (LoRA) are injected into every layer; and audio and vision interact with each
other *before* the joint audio-visual representation interacts with the text. No official code
exists; the details the abstract leaves open are our choices, listed in ``docs/lrcmt.md``.

Architecture (``fusion="av_first"``, the paper's model):

1. Text: LoRA-adapted frozen LM -> hidden states ``(B, L_t, H)`` -> Linear -> ``(B, L_t, d)``.
   Audio ``(B, L_a, D_a)`` and vision ``(B, L_v, D_v)`` -> Linear -> ``(B, L_a|L_v, d)``.
2. Audio-visual stage, both directions (MulT cross-modal transformers):
   ``a' = CM(a <- v)`` ``(B, L_a, d)``, ``v' = CM(v <- a)`` ``(B, L_v, d)``; the joint AV sequence
   is their concatenation in time ``av = [a' + e_a; v' + e_v]`` ``(B, L_a + L_v, d)`` with learnt
   modality-type vectors ``e_a``, ``e_v``, packed per sample (real audio steps, real vision
   steps, then padding) so that padding never shifts positions.
3. Text-AV stage, both directions: ``t' = CM(t <- av)`` ``(B, L_t, d)``,
   ``av' = CM(av <- t)`` ``(B, L_a + L_v, d)``.
4. Masked mean over real steps of ``t'`` and ``av'``, concatenated ``(B, 2d)`` -> residual MLP
   head -> ``(B,)``.

Ablation ``fusion="separate"`` (the paper's "without audio-visual interaction"): no stage 2; text
interacts with audio and with vision separately, ``CM(t <- a)``, ``CM(t <- v)``, ``CM(a <- t)``,
``CM(v <- t)``, pooled and concatenated ``(B, 4d)``. With only one of audio/vision in the data the
AV stage cannot exist and both settings reduce to text <-> that modality; with text only (e.g.
MOSI's label.csv) the text stream goes through one self-attention encoder. The modalities used
follow :class:`~msakit.models.base.FeatureDims` (0 = absent) and are recorded in
:meth:`LRCMT.run_artifacts`.

Trainable fraction, bert-base-uncased at the defaults (r = 8 on query and value, d = 68, 4 heads,
2 layers per cross-modal encoder, MOSI's MMSA features: audio 5-d, vision 20-d):

* BertModel (incl. pooler): 109,482,240 frozen parameters.
* LoRA: 12 layers x 2 matrices (query, value) x (A: 8 x 768 + B: 768 x 8) = 12 x 2 x 12,288
  = 294,912.
* Fusion and head: one cross-modal layer has ``12 d^2 + 13 d`` = 56,372 parameters (attention
  ``4 d^2 + 4 d``, feed-forward ``8 d^2 + 5 d``, two LayerNorms ``4 d``); an encoder of 2 layers
  plus its final LayerNorm 112,880; four encoders 451,520. Projections: text 768 x 68 + 68 =
  52,292, audio 5 x 68 + 68 = 408, vision 20 x 68 + 68 = 1,428; type vectors 2 x 68 = 136;
  head ``2d -> 2d -> 2d (+ residual) -> 1``: 2 x (136 x 136 + 136) + 137 = 37,401.
  Sum 543,185.
* Trainable 294,912 + 543,185 = 838,097 of 109,482,240 + 838,097 = 110,320,337 in all:
  **0.760 %**, the paper's "about 0.76 %" (the paper does not give its module sizes; d = 68 is
  the width that gives our module the same budget).

:attr:`LRCMT.trainable_fraction` computes the number for whatever model is built;
``tests/test_lrcmt.py`` checks this arithmetic on a randomly initialised bert-base. With the
packaged all-MiniLM-L6-v2 (22,713,216 parameters, 6 layers, hidden 384) LoRA adds
6 x 2 x (8 x 384 + 384 x 8) = 73,728 and the fraction is 2.56 % on word-aligned MOSI
(audio 74-d, vision 47-d) and 0.97 % on text only: the small LM makes the fusion module weigh
more.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msakit.config_schema import LengthGroupedLMConfig
from msakit.models import register_model
from msakit.models.base import FeatureDims, ModelOutput, MSAModel
from msakit.modules.crossmodal import CrossModalTransformerEncoder
from msakit.modules.dropout import dropout
from msakit.modules.encoders import masked_time_mean
from msakit.modules.lora import LoRATextEncoder, count_parameters
from msakit.modules.text import PretrainedTextEncoder

#: Checkpoint entry holding the checksum of the frozen LM a LoRA checkpoint belongs to.


class LRCMTConfig(LengthGroupedLMConfig):
    """LRCMT hyper-parameters (ours where the abstract gives none; ``msakit/configs/lrcmt.yaml``
    holds the training settings)."""

    name: str = "lrcmt"
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"task": 1.0})
    lm_mode: Literal["lora", "full_finetune", "frozen"] = Field(
        "lora", description="How the language model trains. lora (the paper): frozen LM with "
        "LoRA adapters, which train at train.lr; full_finetune (the paper's comparison): the "
        "whole LM trains at train.lm_lr, no LoRA; frozen (ablation): frozen LM, no LoRA, only "
        "the fusion module and head train"
    )
    lora_rank: int = Field(8, ge=1, description="LoRA rank r")
    lora_alpha: float = Field(8.0, gt=0, description="LoRA scaling numerator (update alpha/r BAx)")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="dropout on the LoRA input")
    lora_target_modules: list[str] = Field(
        default_factory=lambda: ["query", "value"],
        description="Last name components of the LM's linear layers to adapt in every layer",
    )
    fusion: Literal["av_first", "separate"] = Field(
        "av_first", description="av_first: audio<->vision, then text<->joint AV (the paper); "
        "separate: text<->audio and text<->vision, no AV stage (ablation)"
    )
    embed_dim: int = Field(
        68, ge=4, description="width d of the cross-modal module (68 gives the paper's "
        "0.76 % trainable budget on bert-base)"
    )
    num_heads: int = Field(4, ge=1)
    num_layers: int = Field(2, ge=1, description="layers per cross-modal encoder")
    attn_dropout: float = Field(0.1, ge=0, lt=1)
    relu_dropout: float = Field(0.1, ge=0, lt=1)
    res_dropout: float = Field(0.1, ge=0, lt=1)
    embed_dropout: float = Field(0.2, ge=0, lt=1)
    output_dropout: float = Field(0.1, ge=0, lt=1, description="dropout inside the head")
    task_loss: Literal["l1", "mse"] = Field("l1", description="supervised loss on the prediction")

    @classmethod
    def upgrade_saved(cls, values: dict[str, Any]) -> dict[str, Any]:
        """Runs saved before ``lm_mode``: ``full_finetune`` / ``frozen_without_lora`` (booleans,
        never both true) become the one mode field."""
        values = dict(values)
        full = bool(values.pop("full_finetune", False))
        frozen = bool(values.pop("frozen_without_lora", False))
        if full and frozen:
            raise ValueError("full_finetune and frozen_without_lora are both true; expected at "
                             "most one (model.lm_mode: lora | full_finetune | frozen)")
        if full or frozen:
            values.setdefault("lm_mode", "full_finetune" if full else "frozen")
        return values

    @model_validator(mode="before")
    @classmethod
    def _refuse_replaced_switches(cls, values: Any) -> Any:
        replaced = {"full_finetune": "full_finetune", "frozen_without_lora": "frozen"}
        given = [key for key in replaced if isinstance(values, dict) and key in values]
        if given:
            raise ValueError(
                f"{' and '.join(given)} is replaced by model.lm_mode (lora | full_finetune | "
                f"frozen): use model.lm_mode={replaced[given[0]]} for "
                f"{given[0]}=true, lora for false")
        return values

    @model_validator(mode="after")
    def _check(self) -> LRCMTConfig:
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if not self.lora_target_modules:
            raise ValueError("lora_target_modules is empty; name at least one linear layer")
        return self


def _pack(x: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each sample's real steps to the front, in order: ``x (B, L, d)``, ``keep (B, L)``.

    The joint AV sequence is ``[audio; vision]`` in time; without packing, the vision part's
    positions (sinusoidal, inside the next cross-modal encoder) would depend on how much audio
    padding the batch happens to have.
    """
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # real first
    packed = torch.gather(x, 1, order.unsqueeze(-1).expand_as(x))
    return packed, torch.gather(keep, 1, order)


class ResidualHead(nn.Module):
    """``h -> Linear(ReLU(Linear h)) dropout + h -> Linear -> (B,)`` (MulT's output layer)."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.proj1 = nn.Linear(width, width)
        self.proj2 = nn.Linear(width, width)
        self.out = nn.Linear(width, 1)
        self.dropout = dropout

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        hidden = self.proj2(dropout(F.relu(self.proj1(h)), p=self.dropout,
                                    training=self.training))
        return self.out(hidden + h).squeeze(-1)


@register_model
class LRCMT(MSAModel):
    """Frozen LM + LoRA, audio-visual-first cross-modal fusion; see the module docstring.

    ``forward`` returns ``prediction (B,)``, ``losses={"task"}`` when labels are given and
    ``extras={"fused": (B, k*d)}`` (the pooled representation fed to the head).
    """

    name = "lrcmt"
    paper = "Sun, Che & Gao. A low-rank cross-modal Transformer for MSA (LRCMT). CES 2024"
    config_class = LRCMTConfig

    def __init__(self, config: LRCMTConfig, dims: FeatureDims):
        super().__init__(config, dims)
        self.config: LRCMTConfig = config
        if config.lm_mode != "lora":
            self.text_encoder: nn.Module = PretrainedTextEncoder(
                config.language_model, pooling="none", freeze=config.lm_mode == "frozen",
                group_by_length=config.lm_group_by_length,
            )
        else:
            self.text_encoder = LoRATextEncoder(
                config.language_model, pooling="none", rank=config.lora_rank,
                alpha=config.lora_alpha, dropout=config.lora_dropout,
                target_modules=config.lora_target_modules,
                group_by_length=config.lm_group_by_length,
            )
        d = config.embed_dim
        self.modalities: tuple[str, ...] = ("text",) + tuple(
            m for m in ("audio", "vision") if getattr(dims, m) > 0
        )
        self.text_proj = nn.Linear(self.text_encoder.hidden_size, d)
        self.feature_proj = nn.ModuleDict(
            {m: nn.Linear(getattr(dims, m), d) for m in self.modalities[1:]}
        )

        def encoder() -> CrossModalTransformerEncoder:
            return CrossModalTransformerEncoder(
                d, config.num_heads, config.num_layers, attn_dropout=config.attn_dropout,
                relu_dropout=config.relu_dropout, res_dropout=config.res_dropout,
                embed_dropout=config.embed_dropout,
            )

        nonverbal = self.modalities[1:]
        self.av_first = config.fusion == "av_first" and len(nonverbal) == 2
        self.crossmodal = nn.ModuleDict()
        if not nonverbal:
            self.crossmodal["text_self"] = encoder()
            streams = 1
        elif self.av_first:
            self.crossmodal["audio_from_vision"] = encoder()
            self.crossmodal["vision_from_audio"] = encoder()
            self.modality_type = nn.Parameter(torch.zeros(2, d))
            nn.init.normal_(self.modality_type, std=0.02)
            self.crossmodal["text_from_av"] = encoder()
            self.crossmodal["av_from_text"] = encoder()
            streams = 2
        else:
            for m in nonverbal:
                self.crossmodal[f"text_from_{m}"] = encoder()
                self.crossmodal[f"{m}_from_text"] = encoder()
            streams = 2 * len(nonverbal)
        self.head = ResidualHead(streams * d, config.output_dropout)

    # -- forward ----------------------------------------------------------------------------
    def _nonverbal(self, batch: dict[str, Any], modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected ``(B, L_m, d)`` features and ``(B, L_m)`` bool mask (True = real step)."""
        features, mask = batch.get(modality), batch.get(f"{modality}_mask")
        if features is None or mask is None:
            raise ValueError(
                f"lrcmt was built with {modality} (feature dim {getattr(self.dims, modality)}) "
                f"but the batch has no '{modality}'/'{modality}_mask'"
            )
        if features.dim() != 3 or features.shape[-1] != getattr(self.dims, modality):
            raise ValueError(
                f"batch['{modality}'] must have shape (B, L, {getattr(self.dims, modality)}), "
                f"got {tuple(features.shape)}"
            )
        return self.feature_proj[modality](features), mask.bool()

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        text_mask = batch["attention_mask"].bool()
        context = ({} if batch.get("lm_attention_mask") is None
                   else {"lm_attention_mask": batch["lm_attention_mask"]})  # text context
        hidden = self.text_encoder(
            batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), **context
        )
        text = self.text_proj(hidden)  # (B, L_t, d)
        cm = self.crossmodal
        nonverbal = {m: self._nonverbal(batch, m) for m in self.modalities[1:]}

        if not nonverbal:
            pooled = [masked_time_mean(cm["text_self"](text, None, ~text_mask), text_mask)]
        elif self.av_first:
            (audio, audio_mask), (vision, vision_mask) = nonverbal["audio"], nonverbal["vision"]
            audio_v = cm["audio_from_vision"](audio, vision, ~vision_mask)  # (B, L_a, d)
            vision_a = cm["vision_from_audio"](vision, audio, ~audio_mask)  # (B, L_v, d)
            av, av_mask = _pack(
                torch.cat([audio_v + self.modality_type[0], vision_a + self.modality_type[1]],
                          dim=1),
                torch.cat([audio_mask, vision_mask], dim=1),
            )  # (B, L_a + L_v, d): real audio steps, real vision steps, then padding
            text_av = cm["text_from_av"](text, av, ~av_mask)  # (B, L_t, d)
            av_text = cm["av_from_text"](av, text, ~text_mask)  # (B, L_a + L_v, d)
            pooled = [masked_time_mean(text_av, text_mask), masked_time_mean(av_text, av_mask)]
        else:
            pooled = []
            for m, (features, mask) in nonverbal.items():
                pooled.append(masked_time_mean(cm[f"text_from_{m}"](text, features, ~mask),
                                           text_mask))
                pooled.append(masked_time_mean(cm[f"{m}_from_text"](features, text, ~text_mask),
                                           mask))
        fused = torch.cat(pooled, dim=-1)  # (B, streams * d)
        prediction = self.head(fused)  # (B,)

        losses: dict[str, torch.Tensor] = {}
        labels = batch.get("labels")
        if labels is not None:
            labels = labels.to(prediction.dtype)
            losses["task"] = (F.l1_loss(prediction, labels) if self.config.task_loss == "l1"
                              else F.mse_loss(prediction, labels))
        return ModelOutput(prediction=prediction, losses=losses, extras={"fused": fused})

    # -- optimisation and checkpoints -------------------------------------------------------
    def language_model_prefixes(self) -> tuple[str, ...]:
        """``("text_encoder.",)`` when fine-tuning the whole LM; none with LoRA.

        With LoRA the LM's only trainable weights are the adapters, which are new weights and
        get ``train.lr`` with the fusion module and head (see :mod:`msakit.modules.lora`).
        """
        return ("text_encoder.",) if self.config.lm_mode == "full_finetune" else ()

    def frozen_state_keys(self) -> set[str]:
        """State-dict keys of the frozen pretrained LM (parameters and buffers), LoRA excluded."""
        if self.config.lm_mode == "full_finetune":
            return set()
        trainable = {name for name, p in self.text_encoder.named_parameters() if p.requires_grad}
        return {f"text_encoder.{key}" for key in self.text_encoder.state_dict()
                if key not in trainable}

    def checkpoint_description(self) -> str:
        mode = {"full_finetune": "full fine-tune", "frozen": "frozen LM, no LoRA",
                "lora": "LoRA (adapter-only)"}[self.config.lm_mode]
        return f"{mode} lrcmt model"

    # -- reporting --------------------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Total/trainable plus the split: language model, LoRA adapters, fusion + head."""
        counts = count_parameters(self)
        lm = count_parameters(self.text_encoder)
        adapter = lm["trainable"] if self.config.lm_mode == "lora" else 0
        return {
            "total": counts["total"],
            "trainable": counts["trainable"],
            "language_model": lm["total"] - adapter,
            "lora_adapter": adapter,
            "fusion_and_head": counts["total"] - lm["total"],
        }

    @property
    def trainable_fraction(self) -> float:
        """Trainable parameters / all parameters (computed from the built model)."""
        counts = count_parameters(self)
        return counts["trainable"] / counts["total"]

    def run_artifacts(self) -> dict[str, Any]:
        return {
            "parameters": self.parameter_counts(),
            "trainable_fraction": self.trainable_fraction,
            "modalities": list(self.modalities),
            "language_model_tuning": {"full_finetune": "full", "frozen": "frozen",
                                      "lora": "lora"}[self.config.lm_mode],
            "fusion": "av_first" if self.av_first else (
                "text_only" if len(self.modalities) == 1 else "separate"),
        }
