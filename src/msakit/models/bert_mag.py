"""MAG-BERT: BERT with a Multimodal Adaptation Gate (Rahman et al., ACL 2020).

Integrating Multimodal Information in Large Pretrained Transformers. The gate shifts each token's
hidden state ``Z_i`` (after a chosen BERT layer; the embeddings by default) by a displacement
computed from the token's audio ``A_i`` and vision ``V_i`` rows (paper section 3):

* eq. (1), (2): gates ``g_v = ReLU(W_gv [V_i; Z_i] + b_v)``, ``g_a = ReLU(W_ga [A_i; Z_i] + b_a)``
  (the code concatenates the non-verbal row first);
* eq. (3): displacement ``H_i = g_v * (W_v V_i + b) + g_a * (W_a A_i + b)``;
* eq. (4), (5): ``Z'_i = Z_i + alpha H_i``, ``alpha = min(||Z_i|| / ||H_i|| * beta, 1)``
  (``beta`` = ``beta_shift``; a zero ``||H_i||`` is replaced by 1, eps 1e-6 in the division);
* then, as in both codes, ``LayerNorm`` and dropout (``gate_dropout``) on ``Z'``.

The rest of the encoder runs on ``Z'``; the prediction is BERT's pooler output (tanh dense on
the first token) -> dropout (the LM's ``hidden_dropout_prob``) -> ``Linear(H, 1)``.

The gate is put into a ``transformers`` encoder by a forward hook on its embeddings (or on
encoder layer ``injection_layer - 1``) for the duration of one forward pass; BERT itself is not
copied. It needs one audio/vision row per LM token: word-aligned data, where msakit's collate
repeats each word's row for each of its sub-word tokens and gives special tokens zero rows
(:mod:`msakit.data.text`), as the authors' ``convert_to_features`` does. With unaligned data
the steps are paired with the tokens by position (the t-th token with the t-th audio and vision
step, zero-padded or truncated to the token count), as MMSA pairs its fixed-length arrays; that
is not an alignment: use word-aligned data.

Shapes: ``input_ids``/``attention_mask`` ``(B, L_t)``, ``audio`` ``(B, L_t, D_a)``, ``vision``
``(B, L_t, D_v)`` -> hidden states ``(B, L_t, H)`` -> prediction ``(B,)``.

Official code: MMSA's port (thuiar/MMSA@a94e65d ``models/singleTask/BERT_MAG.py``, trainer
``trains/singleTask/BERT_MAG.py``: L1 loss, one Adam over every parameter, no weight decay, no
schedule, early stopping on the validation loss) is the default; the authors' code
(WasifurRahman/BERT_multimodal_transformer@dc7876f) differs in what docs/models.md lists, each a
config option or train setting.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msakit.config_schema import LengthGroupedLMConfig
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
from msakit.modules.mmsa_subnets import by_position, task_losses
from msakit.modules.text import PretrainedTextEncoder


class BertMAGConfig(LengthGroupedLMConfig):
    """MAG-BERT hyper-parameters (MMSA's MOSI values, ``config_regression.json`` ``bert_mag``).
    ``lm_group_by_length``: the gate acts on each token alone and the pooler reads the first
    token, so the LM may run on length groups (each call gated with its clips' rows)."""

    name: str = "bert_mag"
    beta_shift: float = Field(1.0, gt=0, description="beta of eq. (5): the largest displacement "
                              "as a fraction of the token state's norm (MMSA and authors: 1)")
    gate_dropout: float = Field(0.3, ge=0, lt=1, description="dropout after the gate's "
                                "LayerNorm (MMSA MOSI 0.3, MOSEI 0.2, SIMS 0.1; the authors' "
                                "default --dropout_prob 0.5)")
    injection_layer: int = Field(0, ge=0, description="where the gate acts: 0 = on the "
                                 "embeddings (MMSA and the authors' BERT), k = on the output of "
                                 "encoder layer k (the paper's injection index; the authors' "
                                 "XLNet uses 1)")
    output_dropout: float | None = Field(None, ge=0, lt=1, description="dropout on the pooled "
                                         "output; null = the LM's hidden_dropout_prob (both "
                                         "codes: BertForSequenceClassification's)")
    loss: Literal["l1", "mse"] = Field("l1", description="task loss: l1 (MMSA's trainer) or mse "
                                       "(the authors' multimodal_driver.py)")
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"task": 1.0})

    @model_validator(mode="after")
    def _check_weights(self) -> BertMAGConfig:
        check_loss_weights(self.loss_weights, ("task",), "bert_mag")
        return self


class MultimodalAdaptationGate(nn.Module):
    """Eq. (1)-(5), LayerNorm and dropout: ``(B, L, H), (B, L, D_a), (B, L, D_v) -> (B, L, H)``.

    Names follow the official ``MAG`` module (``W_hv``/``W_ha`` the gates' weights ``W_gv``/
    ``W_ga``, ``W_v``/``W_a`` the projections of eq. 3).
    """

    eps = 1e-6

    def __init__(self, hidden: int, audio_dim: int, vision_dim: int, beta_shift: float,
                 dropout: float):
        super().__init__()
        self.W_hv = nn.Linear(vision_dim + hidden, hidden)
        self.W_ha = nn.Linear(audio_dim + hidden, hidden)
        self.W_v = nn.Linear(vision_dim, hidden)
        self.W_a = nn.Linear(audio_dim, hidden)
        self.beta_shift = beta_shift
        self.layer_norm = nn.LayerNorm(hidden)
        self.dropout = Dropout(dropout)

    def forward(self, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor
                ) -> torch.Tensor:
        gate_v = F.relu(self.W_hv(torch.cat([vision, text], dim=-1)))  # eq. (1)
        gate_a = F.relu(self.W_ha(torch.cat([audio, text], dim=-1)))  # eq. (2)
        shift = gate_v * self.W_v(vision) + gate_a * self.W_a(audio)  # eq. (3)
        text_norm = text.norm(2, dim=-1)
        shift_norm = shift.norm(2, dim=-1)
        shift_norm = torch.where(shift_norm == 0, torch.ones_like(shift_norm), shift_norm)
        alpha = (text_norm / (shift_norm + self.eps) * self.beta_shift).clamp(max=1.0)  # eq. (5)
        return self.dropout(self.layer_norm(alpha.unsqueeze(-1) * shift + text))  # eq. (4)


@register_model
class BertMAG(MSAModel):
    """MAG-BERT (see the module docstring). Loss term: ``task`` (L1, or MSE with
    ``model.loss=mse``). The language model is always fine-tuned (the gate changes its inputs, so
    its states cannot be cached)."""

    name = "bert_mag"
    paper = ("Rahman et al., Integrating Multimodal Information in Large Pretrained "
             "Transformers, ACL 2020 (MAG-BERT; MMSA's port)")
    config_class = BertMAGConfig

    def __init__(self, config: BertMAGConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, self.name)
        self.text_encoder = PretrainedTextEncoder(config.language_model, pooling="none",
                                                  group_by_length=config.lm_group_by_length)
        lm = self.text_encoder.model
        if getattr(lm, "pooler", None) is None:
            raise ConfigError(f"bert_mag predicts from BERT's pooler output; language model "
                              f"{config.language_model!r} ({type(lm).__name__}) has no pooler")
        layers = len(self.text_encoder.transformer_layers())
        if config.injection_layer > layers:
            raise ConfigError(f"model.injection_layer={config.injection_layer}, but "
                              f"{config.language_model!r} has {layers} layers (0 = embeddings)")
        hidden = self.text_encoder.hidden_size
        self.gate = MultimodalAdaptationGate(hidden, dims.audio, dims.vision, config.beta_shift,
                                             config.gate_dropout)
        rate = lm.config.hidden_dropout_prob if config.output_dropout is None \
            else config.output_dropout
        self.output_dropout = Dropout(rate)
        self.classifier = nn.Linear(hidden, 1)
        self._init_new_weights(lm.config.initializer_range)

    def _init_new_weights(self, std: float) -> None:
        """BERT's initialisation of the weights the checkpoint lacks (both codes build the model
        with ``from_pretrained``, which gives the gate and the classifier ``_init_weights``)."""
        for module in (*self.gate.modules(), self.classifier):
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)

    def _injection_site(self) -> nn.Module:
        """The LM module whose output the gate replaces."""
        layer = self.config.injection_layer
        if layer == 0:
            return self.text_encoder.model.embeddings
        return self.text_encoder.transformer_layers()[layer - 1]

    @contextmanager
    def _gate_injected(self, audio: torch.Tensor, vision: torch.Tensor) -> Iterator[None]:
        """Within the block the injection site's output passes through the gate."""

        def hook(module, inputs, output):
            if isinstance(output, tuple):
                return (self.gate(output[0], audio, vision), *output[1:])
            return self.gate(output, audio, vision)

        handle = self._injection_site().register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        audio = check_batch_sequence(batch, "audio", self.dims.audio)
        vision = check_batch_sequence(batch, "vision", self.dims.vision)
        input_ids = batch["input_ids"]
        audio, vision = (by_position(x, input_ids.shape[1]) for x in (audio, vision))
        attention_mask = batch.get("lm_attention_mask", batch["attention_mask"])
        audio = audio.to(self.gate.W_a.weight.dtype)
        vision = vision.to(self.gate.W_v.weight.dtype)

        def gated(rows: torch.Tensor | None, length: int):
            """Each LM call (the batch, or a length group) gated with its clips' rows."""
            if rows is None:
                return self._gate_injected(audio, vision)
            return self._gate_injected(audio[rows, :length], vision[rows, :length])

        hidden = self.text_encoder.language_model_states(
            input_ids, attention_mask, batch.get("token_type_ids"),
            group_inputs=gated)  # (B, L_t, H); zeros past a length group's longest clip
        pooled = self.text_encoder.model.pooler(hidden)  # (B, H)
        prediction = self.classifier(self.output_dropout(pooled)).squeeze(-1)
        losses = task_losses(prediction, batch, self.config.loss)
        return ModelOutput(prediction=prediction, losses=losses)
