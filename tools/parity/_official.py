"""Run-time patches that let an official MSA repository run on a CPU with no downloads.

Only the environment is patched (CUDA calls, pretrained downloads, an API PyTorch has since
tightened); the official model and training code run unchanged.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
from _common import compact as float32  # noqa: F401  (fixture storage, shared with the others)
from _common import official_commit, save_fixture  # noqa: F401  (for the generators)
from torch import nn

#: The small randomly initialised BERT every generator uses in place of bert-base.
SMALL_BERT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


class LegacyCosineEmbeddingLoss(nn.Module):
    """``nn.CosineEmbeddingLoss`` as PyTorch computed it when the official code was written.

    The cosine is taken over dimension 1 of the inputs (for ``(T, B, d)`` inputs: over the
    batch), ``cos = <x, y> / sqrt((|x|^2 + 1e-12)(|y|^2 + 1e-12))``; target 1 gives ``1 - cos``,
    target -1 gives ``max(0, cos - margin)``; the mean over all elements. Current PyTorch
    refuses inputs of more than two dimensions with a 1-D target.
    """

    def __init__(self, margin: float = 0.0, reduction: str = "mean"):
        super().__init__()
        self.margin, self.reduction = margin, reduction

    def forward(self, x1, x2, target):
        eps = 1e-12
        product = (x1 * x2).sum(1)
        cosine = product / (((x1 * x1).sum(1) + eps) * ((x2 * x2).sum(1) + eps)).sqrt()
        target = target.to(cosine.device)
        out = torch.where(target == 1, 1 - cosine, torch.zeros_like(cosine)) + torch.where(
            target == -1, (cosine - self.margin).clamp(min=0), torch.zeros_like(cosine))
        return out.mean() if self.reduction == "mean" else out.sum()


def patch_environment(official: Path) -> None:
    """Import path, CPU instead of CUDA, a small random BERT instead of a download."""
    import transformers

    sys.path.insert(0, str(official))
    # GPU bookkeeping modules some repositories import at the top (used only to pick a GPU)
    for name in ("pynvml",):
        sys.modules.setdefault(name, types.ModuleType(name))
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    nn.Module.cuda = lambda self, *args, **kwargs: self
    config = transformers.BertConfig(**SMALL_BERT)
    transformers.BertModel.from_pretrained = classmethod(
        lambda cls, *args, **kwargs: transformers.BertModel(config))
    transformers.BertTokenizer.from_pretrained = classmethod(lambda cls, *args, **kwargs: None)
    nn.CosineEmbeddingLoss = LegacyCosineEmbeddingLoss


def random_text(generator: torch.Generator, real_lengths: list[int], length: int) -> torch.Tensor:
    """MMSA's BERT text input ``(B, 3, length)`` float64 for ``B = len(real_lengths)`` clips:
    token ids drawn (first, from ``generator``) from ``SMALL_BERT``'s vocabulary and kept on
    each clip's first ``real_lengths[i]`` tokens (0 after), the attention mask, token types 0."""
    size = len(real_lengths)
    ids = torch.randint(1, SMALL_BERT["vocab_size"], (size, length), generator=generator)
    mask = torch.zeros(size, length)
    for i, n in enumerate(real_lengths):
        mask[i, :n] = 1
    ids = ids * mask.long()
    return torch.stack([ids.double(), mask.double(),
                        torch.zeros(size, length, dtype=torch.float64)], 1)


def parameters_by_name(modules: dict[str, nn.Module]) -> dict[str, nn.Parameter]:
    """``{"<prefix>.<name>": parameter}`` over several modules."""
    return {f"{prefix}.{name}": p for prefix, module in modules.items()
            for name, p in module.named_parameters()}
