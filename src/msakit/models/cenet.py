"""CENET: Cross-modal Enhancement Network (Wang et al., IEEE TMM 2022), as MMSA ports it.

A fine-tuned BERT whose token states are enhanced by audio and vision part-way through the
encoder: before transformer layer ``k`` (``injection_layer``, 1 in MMSA and the authors' code),
the Cross-modal Enhancement (CE) block lets every token attend to the audio and the vision
sequence and adds what it reads to the token's state; the remaining layers run on the enhanced
states and the first token's final state is regressed.

With ``h`` the token states entering layer ``k`` ``(B, L_t, H)``, ``x_a`` ``(B, L_a, D_a)`` and
``x_v`` ``(B, L_v, D_v)`` the audio/vision features (the paper is not in the project's papers
folder: the equations follow MMSA's code, ``models/singleTask/CENET.py``):

===================  ================================================================  ==============
step                 computation                                                       shape
===================  ================================================================  ==============
embed a/v            e_m = W_2^m ReLU(W_1^m x_m + b_1^m) + b_2^m, m in {a, v}          ``(B, L_m, H)``
attend (per m)       A_m = softmax_j(s * (W_q^m h)(W_k^m e_m)^T) (W_v^m e_m), s = 8    ``(B, L_t, H)``
enhance              h' = h + W_c [A_v; A_a] + b_c                                     ``(B, L_t, H)``
BERT layers k..      BERT(h') -> last hidden states z                                  ``(B, L_t, H)``
head                 y = W_o Dropout(tanh(W_d Dropout(z_0) + b_d)) + b_o              ``(B,)``
loss                 L1(y, label) (MMSA; the authors: MSE)                             scalar
===================  ================================================================  ==============

The attention has one head and multiplies the scores by ``s = 8`` (``attention_scale``, the
official constant) instead of dividing by sqrt(H). The BERT is ``transformers``' ``BertModel``
(any BERT-like encoder with an ``encoder.layer`` stack): CE runs in a forward pre-hook of layer
``k``, so the language model's own forward, attention kernels and checkpoint handling are
untouched. MMSA computes the embedding layer under ``torch.no_grad()``: the word, position and
token-type embeddings and their LayerNorm never train (``train_embeddings=False``).

Padding of audio/vision: MMSA's CE attends to every step of its fixed-length zero-padded arrays
(unaligned MOSI/MOSEI: audio 500, vision 375; SIMS: 400, 55), so a clip's prediction depends on
the array length. By default msakit masks the padded steps (a clip's prediction does not depend
on its batch); ``audio_attended_steps``/``vision_attended_steps`` = N reproduce MMSA's reading
(zero-pad or cut to N steps, attend to all of them).

Optimiser (MMSA's ``trains/singleTask/CENET.py``): Adam (L2 weight decay), three groups at the
same learning rate: the BERT and the head with ``weight_decay``, the CE block with
``weight_decay`` on every parameter (biases too), biases and LayerNorm weights outside CE
without decay; ``adam_epsilon`` per dataset; gradients clipped to norm 2 (``train.grad_clip_norm``).

Differences of MMSA's port to the authors' code (Say2L/CENet@e208a83), each an option whose
default is MMSA's: ``train_embeddings`` (the authors' embedding layer trains) and ``loss``
(the authors train with MSE). Not reproduced (see docs/models.md): the authors' SentiLARE
RoBERTa with part-of-speech, word-sentiment and polarity embeddings, their audio/vision input
(k-means cluster ids of the features, 16 clusters, embedded by ``nn.Embedding`` instead of the
two-layer transform) and their AdamW with linear warm-up.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from msakit.config_schema import LengthGroupedLMConfig, TrainConfig
from msakit.models import register_model
from msakit.models.base import (
    FeatureDims,
    ModelOutput,
    MSAModel,
    check_batch_sequence,
    check_loss_weights,
    require_modalities,
    takes_no_decay,
)
from msakit.modules.dropout import Dropout
from msakit.modules.mmsa_subnets import fixed_length, task_losses
from msakit.modules.text import PretrainedTextEncoder


def _attended_steps_field(modality: str):
    lengths = {"audio": "MOSI/MOSEI unaligned: 500, aligned: 50; SIMS: 400",
               "vision": "MOSI/MOSEI unaligned: 375, aligned: 50; SIMS: 55"}[modality]
    return Field(None, ge=1, description=f"None: CE attends to the real {modality} steps "
                 f"(padding masked); N: MMSA's reading, the sequence zero-padded or cut to N "
                 f"steps and every step attended, padding included ({lengths})")


class CENETConfig(LengthGroupedLMConfig):
    """CENET's hyper-parameters; defaults are MMSA's MOSI settings (``config_regression.json``,
    ``cenet``) and code constants. ``lm_group_by_length``: CE lets each token attend to its own
    clip's audio/vision and the head reads the first token, so the LM may run on length groups
    (each call enhanced with its clips' audio/vision)."""

    name: str = "cenet"
    injection_layer: int = Field(1, ge=0, description="CE runs before this transformer layer "
                                 "(0: on the embedding output); 1 in MMSA and the authors' code")
    attention_scale: float = Field(8.0, gt=0, description="CE's attention scores are the "
                                   "query-key products times this (the official constant)")
    head_dropout: float | None = Field(
        None, ge=0, lt=1, description="dropout before and after the head's hidden layer; None: "
        "the language model's hidden_dropout_prob (MMSA's BertClassificationHead)")
    train_embeddings: bool = Field(
        False, description="False: the LM's embedding layer is fixed (MMSA computes it under "
        "torch.no_grad()); True: it trains, as in the authors' code (Say2L/CENet)")
    audio_attended_steps: int | None = _attended_steps_field("audio")
    vision_attended_steps: int | None = _attended_steps_field("vision")
    loss: Literal["l1", "mse"] = Field("l1", description="task loss: l1 (MMSA), mse (the "
                                       "authors' code)")
    adam_epsilon: float = Field(3e-8, gt=0, description="Adam's eps of every group (MMSA: MOSI "
                                "3e-8, MOSEI 1e-8, SIMS 2e-8)")
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"task": 1.0})

    @model_validator(mode="after")
    def _check_weights(self) -> CENETConfig:
        check_loss_weights(self.loss_weights, ("task",), "cenet")
        return self


class TextQueriedAttention(nn.Module):
    """One-head attention from the token states to a modality's sequence (MMSA's
    ``SelfAttention`` with ``head_num=1``): ``softmax(scale * Q K^T) V``.

    Shapes: ``text (B, L_t, H)``, ``other (B, L_m, H)``, ``mask (B, L_m)`` bool or None (attend
    to every step) -> ``(B, L_t, H)``.
    """

    def __init__(self, hidden: int, scale: float):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.scale = scale

    def forward(self, text: torch.Tensor, other: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        scores = torch.matmul(self.query(text), self.key(other).transpose(-1, -2)) * self.scale
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        return torch.matmul(torch.softmax(scores, dim=-1), self.value(other))


class CrossModalEnhancement(nn.Module):
    """The CE block: ``h + W_c [A_v; A_a] + b_c`` (module docstring).

    Shapes: ``text (B, L_t, H)``, ``audio (B, L_a, D_a)``, ``vision (B, L_v, D_v)``, masks
    ``(B, L_m)`` bool or None -> ``(B, L_t, H)``.
    """

    def __init__(self, hidden: int, audio_dim: int, vision_dim: int, scale: float):
        super().__init__()
        self.vision_transform = nn.Sequential(nn.Linear(vision_dim, hidden), nn.ReLU(),
                                              nn.Linear(hidden, hidden))
        self.audio_transform = nn.Sequential(nn.Linear(audio_dim, hidden), nn.ReLU(),
                                             nn.Linear(hidden, hidden))
        self.vision_attention = TextQueriedAttention(hidden, scale)
        self.audio_attention = TextQueriedAttention(hidden, scale)
        self.fuse = nn.Linear(2 * hidden, hidden)

    def forward(self, text: torch.Tensor, audio: torch.Tensor, audio_mask: torch.Tensor | None,
                vision: torch.Tensor, vision_mask: torch.Tensor | None) -> torch.Tensor:
        vision = self.vision_attention(text, self.vision_transform(vision), vision_mask)
        audio = self.audio_attention(text, self.audio_transform(audio), audio_mask)
        return text + self.fuse(torch.cat([vision, audio], dim=-1))


@register_model
class CENET(MSAModel):
    """Cross-modal Enhancement Network (module docstring). Loss term: ``task``."""

    name = "cenet"
    paper = ("Wang et al., Cross-modal Enhancement Network for Multimodal Sentiment Analysis, "
             "IEEE TMM 2022 (MMSA's port)")
    config_class = CENETConfig

    def __init__(self, config: CENETConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, self.name)
        self.text_encoder = PretrainedTextEncoder(config.language_model, pooling="none",
                                                  group_by_length=config.lm_group_by_length)
        lm = self.text_encoder.model
        layers = self.text_encoder.transformer_layers()
        if config.injection_layer >= len(layers):
            raise ValueError(f"model.injection_layer={config.injection_layer}: "
                             f"{config.language_model!r} has {len(layers)} transformer layers "
                             f"(0 .. {len(layers) - 1})")
        if not config.train_embeddings:
            embeddings = getattr(lm, "embeddings", None) or lm.get_input_embeddings()
            for parameter in embeddings.parameters():
                parameter.requires_grad_(False)
        hidden = self.text_encoder.hidden_size
        self.enhancement = CrossModalEnhancement(hidden, dims.audio, dims.vision,
                                                 config.attention_scale)
        dropout = (lm.config.hidden_dropout_prob if config.head_dropout is None
                   else config.head_dropout)
        self.head_dropout = Dropout(dropout)
        self.head_dense = nn.Linear(hidden, hidden)
        self.head_out = nn.Linear(hidden, 1)
        # MMSA builds CE and the head inside BERT's PreTrainedModel: BERT's initialisation
        std = lm.config.initializer_range
        for module in [*self.enhancement.modules(), self.head_dense, self.head_out]:
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                nn.init.zeros_(module.bias)
        # the audio/vision of the forward pass running in each thread, read by the hook
        self._modal_inputs: dict[int, tuple] = {}
        layers[config.injection_layer].register_forward_pre_hook(self._enhance_layer_input)

    def _enhance_layer_input(self, layer: nn.Module, args: tuple) -> tuple:
        """Forward pre-hook of transformer layer ``injection_layer``: CE on its input states."""
        inputs = self._modal_inputs.get(threading.get_ident())
        if inputs is None:
            raise RuntimeError("cenet's language model was called outside CENET.forward: its "
                               "layers need the clip's audio and vision")
        return (self.enhancement(args[0], *inputs), *args[1:])

    def _modality(self, batch: dict[str, Any], modality: str
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = check_batch_sequence(batch, modality, getattr(self.dims, modality))
        mask = batch.get(f"{modality}_mask")
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        steps = getattr(self.config, f"{modality}_attended_steps")
        if steps is not None:  # MMSA's fixed-length array, padding attended
            return fixed_length(x, mask, steps), None
        return x, mask.bool()

    @contextmanager
    def _modal_inputs_for(self, inputs: tuple) -> Iterator[None]:
        """Within the block, the LM's CE hook (in this thread) reads ``inputs``."""
        thread = threading.get_ident()
        self._modal_inputs[thread] = inputs
        try:
            yield
        finally:
            del self._modal_inputs[thread]

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        audio, audio_mask = self._modality(batch, "audio")
        vision, vision_mask = self._modality(batch, "vision")
        inputs = (audio, audio_mask, vision, vision_mask)

        def enhanced(rows: torch.Tensor | None, length: int):
            """Each LM call (the batch, or a length group) with its clips' audio/vision."""
            return self._modal_inputs_for(inputs if rows is None else tuple(
                None if x is None else x[rows] for x in inputs))

        attention_mask = batch.get("lm_attention_mask")
        states = self.text_encoder.language_model_states(  # (B, L_t, H), enhanced
            batch["input_ids"],
            batch["attention_mask"] if attention_mask is None else attention_mask,
            batch.get("token_type_ids"), group_inputs=enhanced)
        first = self.head_dropout(states[:, 0])
        hidden = self.head_dropout(torch.tanh(self.head_dense(first)))
        prediction = self.head_out(hidden).squeeze(-1)  # (B,)
        return ModelOutput(prediction=prediction,
                           losses=task_losses(prediction, batch, self.config.loss))

    def parameter_groups(self, train: TrainConfig) -> list[dict[str, Any]]:
        """MMSA's groups (module docstring): ``language_model`` (``lm_lr``,
        ``lm_weight_decay``) and ``other`` (the head: ``lr``, ``weight_decay``), each with a
        ``/no_decay`` part for biases and norm weights, and ``enhancement`` (CE: ``lr``,
        ``weight_decay`` on every parameter); Adam's eps ``adam_epsilon`` in each."""
        lm_prefixes = self.language_model_prefixes()
        groups: dict[str, dict[str, Any]] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            if name.startswith("enhancement."):
                key, lr, decay = "enhancement", train.lr, train.weight_decay
            elif name.startswith(lm_prefixes):
                key, lr, decay = "language_model", train.lm_lr, train.lm_weight_decay
            else:
                key, lr, decay = "other", train.lr, train.weight_decay
            if key != "enhancement" and takes_no_decay(name):
                key, decay = f"{key}/no_decay", 0.0
            groups.setdefault(key, {"name": key, "params": [], "lr": lr, "weight_decay": decay,
                                    "eps": self.config.adam_epsilon})["params"].append(parameter)
        return list(groups.values())
