"""CM-BERT: Cross-Modal BERT (Yang, Xu and Gao, ACM MM 2020).

CM-BERT: Cross-Modal BERT for Text-Audio Sentiment Analysis. A masked multimodal attention over
BERT's last layer re-weights the words by how they relate in the text and in the word-aligned
audio (paper section 3; ``X_t`` BERT's last hidden states, ``X_a`` the audio rows, one per token,
a zero row for [CLS]):

* eq. (1): ``X^_t = Conv1D(X_t)``, ``X^_a = Conv1D(X_a)`` (kernel 1, no bias: linear maps to
  ``projection_dim`` = 30);
* eq. (2), (3): ``X^'_t = X^_t / sqrt(||X^_t||_2)`` (and ``X^'_a`` alike): the scaling, see
  ``feature_scale`` and ``scale_audio`` below;
* eq. (4), (5): ``alpha_t = ReLU(X^'_t X^'_t^T)``, ``beta_a = ReLU(X^'_a X^'_a^T)`` ``(B, L, L)``;
* eq. (6): ``W_f = w_t alpha_t + w_a beta_a + b`` (scalars, initialised 1, 1, 0);
* eq. (7): ``W_m = Softmax(W_f + M)``, ``M`` -10000 at padding rows and columns (the official
  code adds BERT's extended mask along both axes), then dropout (``attention_dropout``);
* eq. (8) and section 3.2: ``X_att = W_m X_t``; ``L = LayerNorm(Dropout(Linear(X_att + X_t)))``;
  the prediction is ``Linear(Dropout(L_[CLS]))`` ``(B,)``.

Shapes: ``input_ids``/``attention_mask`` ``(B, L)``, ``audio`` ``(B, L, D_a)`` -> BERT states
``(B, L, H)`` -> projections ``(B, L, P)`` -> attention ``(B, L, L)`` -> ``L`` ``(B, L, H)`` ->
prediction ``(B,)``. Vision is not read (a text-audio model).

Official code: the authors' thuiar/Cross-Modal-BERT@3e44dce (``model.py`` ``BertFinetun`` and
``BertForSequenceClassification``, ``run_classifier.py``; not in MMSA). Its training loop is
msakit's ``train.optimizer=bert_adam``, ``train.scheduler=warmup_linear`` (per step, 10 %
warm-up), ``train.grad_clip_norm=1`` with ``train.grad_clip_scope=per_parameter``, the loss
``0.5 (y^ - y)^2`` averaged over the batch (``loss: half_mse``), the embeddings and the final
Linear frozen (``freeze_embeddings``, ``freeze_classifier``: the official freezing rule names
BERT's layers, its pooler and the new layer only) and three parameter groups
(:meth:`CMBert.parameter_groups`). Parity: ``tests/parity/test_cm_bert_parity.py``.

Deviation (a named option): the official code divides the projected text by the square root of
the 2-norm of the WHOLE BATCH's projected text, padding positions included, computed in NumPy
(no gradient): a clip's prediction then depends on the other clips of its batch and on how much
padding they bring. msakit's default ``feature_scale: sample`` takes each clip's own norm over
its real tokens (eq. 2 per clip; also without gradient), so a prediction does not depend on its
batch; ``feature_scale: batch`` is the official computation (for parity). The official code
scales only the text; eq. (3) scales the audio too: ``scale_audio: true``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msakit.config_schema import ModelConfig, TrainConfig
from msakit.errors import ConfigError
from msakit.models import register_model
from msakit.models.base import (
    FeatureDims,
    ModelOutput,
    MSAModel,
    check_batch_sequence,
    check_loss_weights,
    require_modalities,
)
from msakit.modules.dropout import Dropout
from msakit.modules.mmsa_subnets import by_position
from msakit.modules.text import PretrainedTextEncoder

#: BERT's additive attention mask value (the official code adds it along rows and columns)
MASK_VALUE = -10000.0


class CMBertConfig(ModelConfig):
    """CM-BERT hyper-parameters (the authors' ``model.py`` and ``run_classifier.py``)."""

    name: str = "cm_bert"
    projection_dim: int = Field(30, ge=1, description="out channels of eq. (1)'s kernel-1 "
                                "convolutions (official 30)")
    attention_dropout: float = Field(0.3, ge=0, lt=1, description="dropout on the multimodal "
                                     "attention matrix W_m (official 0.3)")
    hidden_dropout: float | None = Field(None, ge=0, lt=1, description="dropout after the "
                                         "layer's Linear and before the classifier; null = the "
                                         "LM's hidden_dropout_prob (official: BERT's 0.1)")
    feature_scale: Literal["sample", "batch"] = Field(
        "sample", description="eq. (2)'s norm: each clip's own projected text over its real "
        "tokens (sample, batch-invariant) or the whole padded batch's (batch, the official "
        "code); no gradient through it in either")
    scale_audio: bool = Field(False, description="also scale the projected audio (eq. 3); the "
                              "official code does not")
    freeze_embeddings: bool = Field(True, description="keep BERT's embedding layer fixed (the "
                                    "official run_classifier.py and the paper)")
    freeze_classifier: bool = Field(True, description="keep the final Linear at its random "
                                    "initial weights: the official freezing rule trains only "
                                    "BERT's layers, its pooler and BertFinetun (the masked "
                                    "multimodal attention), not the classifier")
    loss: Literal["half_mse", "mse", "l1"] = Field(
        "half_mse", description="task loss: half_mse = mean of 0.5 (y^ - y)^2 (official), mse, "
        "or l1")
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"task": 1.0})

    @model_validator(mode="after")
    def _check_weights(self) -> CMBertConfig:
        check_loss_weights(self.loss_weights, ("task",), "cm_bert")
        return self


class MaskedMultimodalAttention(nn.Module):
    """Eq. (1)-(8), the residual, Linear, dropout and LayerNorm (module docstring):
    ``(B, L, H), (B, L, D_a), (B, L) mask -> (B, H)`` (the [CLS] row).

    Names follow the official ``BertFinetun``: ``proj_t``/``proj_a`` (eq. 1; linear maps here,
    the official kernel-1 ``Conv1d`` weights squeezed), ``text_weight``/``audio_weight``/``bias``
    (eq. 6), ``dense`` and ``layer_norm``.
    """

    def __init__(self, hidden: int, audio_dim: int, projection_dim: int, attention_dropout: float,
                 hidden_dropout: float, feature_scale: str, scale_audio: bool):
        super().__init__()
        self.proj_t = nn.Linear(hidden, projection_dim, bias=False)
        self.proj_a = nn.Linear(audio_dim, projection_dim, bias=False)
        self.text_weight = nn.Parameter(torch.ones(1))
        self.audio_weight = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))
        self.attention_dropout = Dropout(attention_dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.dropout = Dropout(hidden_dropout)
        self.layer_norm = nn.LayerNorm(hidden, eps=1e-12)  # BertLayerNorm's epsilon
        self.feature_scale = feature_scale
        self.scale_audio = scale_audio

    def _scaled(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. (2)/(3): ``x / sqrt(||x||_2)``, the norm without gradient (the official code
        computes it in NumPy), over each clip's real tokens or the whole padded batch."""
        x_fixed = x.detach()
        if self.feature_scale == "batch":
            norm = torch.linalg.vector_norm(x_fixed)
        else:
            norm = torch.linalg.vector_norm(x_fixed * mask.unsqueeze(-1), dim=(1, 2))
            norm = norm[:, None, None]
        return x / norm.clamp_min(torch.finfo(x.dtype).tiny).sqrt()

    def forward(self, hidden: torch.Tensor, audio: torch.Tensor, mask: torch.Tensor
                ) -> torch.Tensor:
        mask = mask.to(hidden.dtype)
        text = self._scaled(self.proj_t(hidden), mask)  # eq. (1), (2)
        audio = self.proj_a(audio)
        if self.scale_audio:
            audio = self._scaled(audio, mask)  # eq. (3)
        text_attention = F.relu(text @ text.transpose(1, 2))  # eq. (4)
        audio_attention = F.relu(audio @ audio.transpose(1, 2))  # eq. (5)
        fusion = (self.text_weight * text_attention + self.audio_weight * audio_attention
                  + self.bias)  # eq. (6)
        padding = (1.0 - mask) * MASK_VALUE
        fusion = fusion + padding.unsqueeze(1) + padding.unsqueeze(2)
        weights = self.attention_dropout(fusion.softmax(dim=-1))  # eq. (7)
        fused = weights @ hidden + hidden  # eq. (8) and the residual
        out = self.layer_norm(self.dropout(self.dense(fused)))
        return out[:, 0]


@register_model
class CMBert(MSAModel):
    """CM-BERT (see the module docstring). Loss term: ``task``. The language model is
    fine-tuned (its embeddings frozen by default); BERT's pooler is not used (frozen); the
    classifier keeps its initial weights by default (``freeze_classifier``)."""

    name = "cm_bert"
    paper = ("Yang, Xu and Gao, CM-BERT: Cross-Modal BERT for Text-Audio Sentiment Analysis, "
             "ACM MM 2020")
    config_class = CMBertConfig

    def __init__(self, config: CMBertConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, self.name, ("audio",))
        self.text_encoder = PretrainedTextEncoder(config.language_model, pooling="none")
        lm = self.text_encoder.model
        if config.freeze_embeddings:
            embeddings = getattr(lm, "embeddings", None)
            if embeddings is None:
                raise ConfigError(f"model.freeze_embeddings: language model "
                                  f"{config.language_model!r} ({type(lm).__name__}) has no "
                                  "embeddings module; set model.freeze_embeddings=false")
            embeddings.requires_grad_(False)
        if getattr(lm, "pooler", None) is not None:
            for parameter in lm.pooler.parameters():  # never used (no gradient officially)
                parameter.requires_grad_(False)
        hidden = self.text_encoder.hidden_size
        rate = lm.config.hidden_dropout_prob if config.hidden_dropout is None \
            else config.hidden_dropout
        self.attention = MaskedMultimodalAttention(
            hidden, dims.audio, config.projection_dim, config.attention_dropout, rate,
            config.feature_scale, config.scale_audio)
        self.output_dropout = Dropout(rate)
        self.classifier = nn.Linear(hidden, 1)
        self._init_new_weights(lm.config.initializer_range)
        self.classifier.requires_grad_(not config.freeze_classifier)

    def _init_new_weights(self, std: float) -> None:
        """The official ``init_bert_weights`` of the new Linear layers (normal(0, std), zero
        bias); the projections keep PyTorch's default (the official ``Conv1d``'s, the same
        distribution), the LayerNorm ones and zeros."""
        for module in (self.attention.dense, self.classifier):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)

    def parameter_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """The official three groups (``run_classifier.py``): every bias and every LM LayerNorm
        weight at ``train.lm_lr`` without decay (the attention's ``bias`` scalar and biases
        too); the masked multimodal attention's other weights at ``train.lr`` and
        ``train.weight_decay`` (official 0.01 and 0.01); everything else (the LM, the
        classifier's weight) at ``train.lm_lr`` and ``train.lm_weight_decay`` (2e-5, 0.01)."""
        groups = {
            "no_decay": {"name": "no_decay", "params": [], "lr": train.lm_lr,
                         "weight_decay": 0.0},
            "attention": {"name": "attention", "params": [], "lr": train.lr,
                          "weight_decay": train.weight_decay},
            "other": {"name": "other", "params": [], "lr": train.lm_lr,
                      "weight_decay": train.lm_weight_decay},
        }
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            if name.endswith("bias") or "LayerNorm." in name:
                key = "no_decay"
            elif name.startswith("attention."):
                key = "attention"
            else:
                key = "other"
            groups[key]["params"].append(parameter)
        return list(groups.values())

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        audio = check_batch_sequence(batch, "audio", self.dims.audio)
        input_ids = batch["input_ids"]
        mask = batch.get("lm_attention_mask", batch["attention_mask"])
        hidden = self.text_encoder.padded_language_model_states(
            input_ids, mask, batch.get("token_type_ids"))  # (B, L, H)
        audio = by_position(audio, input_ids.shape[1]).to(hidden.dtype)
        pooled = self.attention(hidden, audio, mask)  # (B, H)
        prediction = self.classifier(self.output_dropout(pooled)).squeeze(-1)
        return ModelOutput(prediction=prediction, losses=self._losses(prediction, batch))

    def _losses(self, prediction: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "labels" not in batch:
            return {}
        labels = batch["labels"].to(prediction.dtype).reshape(-1)
        if self.config.loss == "l1":
            return {"task": F.l1_loss(prediction, labels)}
        loss = F.mse_loss(prediction, labels)
        return {"task": 0.5 * loss if self.config.loss == "half_mse" else loss}
