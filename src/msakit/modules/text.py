"""Text encoder: a pretrained Hugging Face language model, fine-tuned or frozen."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from msakit.lm import load_language_model


class PretrainedTextEncoder(nn.Module):
    """Wraps a Hugging Face encoder and pools its last hidden states.

    The trainer recognises this module (``is_pretrained_language_model``) and gives its weights
    the language-model learning rate.

    Args:
        name_or_path: Hugging Face model name or local path.
        pooling: ``"cls"`` (first token, Self-MM), ``"mean"`` (masked mean, MISA) or ``"none"``.
        freeze: keep the pretrained weights fixed.
        freeze_layers: keep the first ``N`` transformer layers fixed (their parameters get
            ``requires_grad=False``); embeddings and later layers still train. MISA's official
            MOSEI setting freezes BERT layers 0-8 (``N = 9``).

    Shapes:
        ``input_ids``, ``attention_mask``: ``(B, L)`` -> ``(B, H)`` pooled, or ``(B, L, H)``
        hidden states with ``pooling="none"``.
    """

    is_pretrained_language_model = True

    def __init__(
        self,
        name_or_path: str,
        pooling: Literal["cls", "mean", "none"] = "cls",
        freeze: bool = False,
        freeze_layers: int = 0,
    ):
        super().__init__()
        self.model = load_language_model(name_or_path)
        self.pooling = pooling
        self.hidden_size: int = self.model.config.hidden_size
        if freeze:
            for parameter in self.model.parameters():
                parameter.requires_grad_(False)
        if freeze_layers:
            layers = self.transformer_layers()
            if freeze_layers > len(layers):
                raise ValueError(
                    f"cannot freeze {freeze_layers} layers of {name_or_path!r}: it has "
                    f"{len(layers)}"
                )
            for layer in layers[:freeze_layers]:
                for parameter in layer.parameters():
                    parameter.requires_grad_(False)

    def transformer_layers(self) -> nn.ModuleList:
        """The LM's stack of transformer layers (``encoder.layer`` of BERT-like models)."""
        layers = getattr(getattr(self.model, "encoder", None), "layer", None)
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(
                f"{type(self.model).__name__} has no encoder.layer stack; freezing single "
                "layers needs a BERT-like model"
            )
        return layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None and "token_type_ids" in self.model.forward.__code__.co_varnames:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.model(**kwargs).last_hidden_state  # (B, L, H)
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return hidden
