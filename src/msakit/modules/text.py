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
    ):
        super().__init__()
        self.model = load_language_model(name_or_path)
        self.pooling = pooling
        self.hidden_size: int = self.model.config.hidden_size
        if freeze:
            for parameter in self.model.parameters():
                parameter.requires_grad_(False)

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
