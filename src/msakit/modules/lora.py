"""Low-rank adaptation (LoRA, Hu et al., ICLR 2022) of a frozen pretrained language model.

The adapted layer computes ``h = W0 x + (alpha / r) * B A x`` with the pretrained ``W0`` frozen,
``A (r, d_in)`` randomly initialised and ``B (d_out, r)`` zero-initialised, so training starts
exactly at the pretrained model. The injection is done by ``peft`` (``LoraConfig`` +
``inject_adapter_in_model``); this module only validates the settings, wires the adapted model into
msakit's text-encoder interface and reports what is trainable.

Optimiser group: the LoRA matrices are new parameters trained from scratch, so they belong with
the other new weights (``train.lr``), not with the pretrained weights (``train.lm_lr``, meant for
small fine-tuning steps). :class:`LoRATextEncoder` is therefore *not* flagged
``is_pretrained_language_model``; its frozen base weights get no gradient and no optimiser state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from msakit.modules.dropout import use_fast_dropout
from msakit.modules.text import PretrainedTextEncoder


class LoRAConfigError(ValueError):
    """Invalid LoRA settings; the message names the setting and what is allowed."""


def linear_module_names(model: nn.Module) -> list[str]:
    """Sorted distinct last name components of the ``nn.Linear`` layers of ``model``.

    These are the names ``target_modules`` may use (e.g. ``query``, ``key``, ``value``,
    ``dense`` for BERT).
    """
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, nn.Linear) and name})


def inject_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float = 8.0,
    dropout: float = 0.0,
    target_modules: Sequence[str] = ("query", "value"),
) -> nn.Module:
    """Inject LoRA adapters into ``model`` in place and freeze everything else in it.

    Args:
        model: a ``transformers`` encoder (or any module with ``nn.Linear`` layers).
        rank: ``r``, the inner dimension of ``B A``.
        alpha: scaling numerator; the update is ``(alpha / r) B A x``.
        dropout: dropout on the adapter's input ``x``.
        target_modules: last name components of the linear layers to adapt, in every layer.

    Returns:
        ``model`` itself, now holding ``lora_A``/``lora_B`` parameters (the only trainable ones).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise LoRAConfigError(f"LoRA rank must be >= 1, got {rank}")
    if alpha <= 0:
        raise LoRAConfigError(f"LoRA alpha must be > 0, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise LoRAConfigError(f"LoRA dropout must be in [0, 1), got {dropout}")
    targets = list(target_modules)
    if not targets:
        raise LoRAConfigError("LoRA target_modules is empty; name at least one linear layer")
    available = linear_module_names(model)
    missing = sorted(set(targets) - set(available))
    if missing:
        raise LoRAConfigError(
            f"LoRA target_modules {missing} match no linear layer of {type(model).__name__}; "
            f"its linear layers are named {available}"
        )
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                        bias="none")
    # the adapters' nn.Dropout modules draw their masks with msakit's faster sampler
    return use_fast_dropout(inject_adapter_in_model(config, model))


def count_parameters(module: nn.Module) -> dict[str, int]:
    """``{"total", "trainable", "frozen"}`` parameter counts of ``module``."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def trainable_fraction(module: nn.Module) -> float:
    """Share of ``module``'s parameters that are trainable, in ``[0, 1]``."""
    counts = count_parameters(module)
    return counts["trainable"] / counts["total"] if counts["total"] else 0.0


class LoRATextEncoder(nn.Module):
    """A frozen pretrained language model with trainable LoRA adapters, pooled like
    :class:`~msakit.modules.text.PretrainedTextEncoder`.

    Args:
        name_or_path: Hugging Face model name or local path (``all-MiniLM-L6-v2`` is packaged).
        pooling: ``"cls"``, ``"mean"`` or ``"none"`` (hidden states).
        rank, alpha, dropout, target_modules: see :func:`inject_lora`.
        group_by_length: see :class:`~msakit.modules.text.PretrainedTextEncoder`.

    Shapes:
        ``input_ids``, ``attention_mask``: ``(B, L)`` -> ``(B, H)`` pooled, or ``(B, L, H)``.
    """

    #: LoRA weights are new: they get the main learning rate (see the module docstring).
    is_pretrained_language_model = False

    def __init__(
        self,
        name_or_path: str,
        pooling: Literal["cls", "mean", "none"] = "cls",
        rank: int = 8,
        alpha: float = 8.0,
        dropout: float = 0.0,
        target_modules: Sequence[str] = ("query", "value"),
        group_by_length: bool = False,
    ):
        super().__init__()
        self.encoder = PretrainedTextEncoder(name_or_path, pooling=pooling, freeze=True,
                                             group_by_length=group_by_length)
        # The wrapped encoder's class says "pretrained LM, use lm_lr"; after freezing, its only
        # trainable weights are the adapters, which must not get lm_lr.
        self.encoder.is_pretrained_language_model = False
        inject_lora(self.encoder.model, rank, alpha, dropout, target_modules)
        self.hidden_size: int = self.encoder.hidden_size
        self.rank = rank
        self.alpha = alpha

    @property
    def language_model(self) -> nn.Module:
        """The adapted ``transformers`` model (frozen base weights + LoRA layers)."""
        return self.encoder.model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        lm_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask, token_type_ids,
                            lm_attention_mask=lm_attention_mask)

    def parameter_counts(self) -> dict[str, int]:
        """``{"base", "adapter"}``: frozen pretrained weights and trainable LoRA weights."""
        counts = count_parameters(self)
        return {"base": counts["frozen"], "adapter": counts["trainable"]}

