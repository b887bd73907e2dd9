"""Dropout whose mask comes from a uniform draw: :func:`dropout`, :class:`Dropout`.

The same function as :func:`torch.nn.functional.dropout` (train mode: each element is kept with
probability ``1 - p`` and scaled by ``1 / (1 - p)``, else zeroed; eval mode, ``p = 0`` and empty
inputs: the input itself; ``p = 1``: the input times 0), with the mask drawn another way on the
CPU. PyTorch's CPU dropout draws its mask with ``bernoulli_``, about 10 ns per element on one
thread; ``torch.rand_like`` draws a uniform in about 2 ns. Here the mask is ``rand_like(x) < 1 - p``
(scaled in place by ``1 / (1 - p)``, then ``x * mask``, the backward ``grad * mask``, as PyTorch's):
a forward on TFN's 631k-float fusion tensor takes one thread ~9 ms with ``F.dropout`` and ~4 ms
with :func:`dropout` (``benchmarks/dropout_speed.py``, docs/performance.md). On profiles of
msakit's training steps ``bernoulli_`` was 27-32% of TFN's step (its dropout over the
``(B, 19737)`` fusion tensor), ~22% of MTFN's, 10% of EF-LSTM's and 9% of DMD's.

The mask's distribution: each element independently kept with probability ``1 - p``, up to the
uniform's resolution. A float32 uniform has 24 random bits (values ``k / 2**24``), so
``P(keep)`` is within ``2**-24`` of ``1 - p``; a float64 input draws a float64 uniform (53 bits);
float16 and bfloat16 inputs draw float32 uniforms (their own would have 11 or 8 bits).

The random stream differs from ``bernoulli_``'s: a seed gives other masks than ``F.dropout`` would
(the same seed gives the same masks again). On other devices (CUDA) PyTorch's fused dropout
kernel is already fast and is used (``torch.dropout``, its masks).

Not replaced (they stay PyTorch's): the attention-weight dropout inside
``scaled_dot_product_attention`` / ``nn.MultiheadAttention`` (and the ``F.dropout`` on the
attention weights of a Hugging Face model switched to eager attention) and ``nn.LSTM``'s
inter-layer dropout. :func:`use_fast_dropout` swaps the ``nn.Dropout`` modules of modules msakit
does not write (the language model, ``nn.TransformerEncoderLayer``, LoRA adapters).
"""

from __future__ import annotations

import torch
from torch import nn

#: dtypes whose own uniform is too coarse for a mask: drawn in float32 instead
_COARSE = (torch.float16, torch.bfloat16)


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True,
            inplace: bool = False) -> torch.Tensor:
    """:func:`torch.nn.functional.dropout` with the mask drawn as ``rand_like(x) < 1 - p`` on
    the CPU (see the module's docstring).

    Shapes:
        ``x`` any shape -> the same shape (``x`` itself where nothing is dropped).
    """
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0 or x.numel() == 0:
        return x
    if x.device.type != "cpu":
        return torch.dropout_(x, p, True) if inplace else torch.dropout(x, p, True)
    if p == 1.0:
        zero = x.new_zeros(())
        return x.mul_(zero) if inplace else x * zero
    keep = 1.0 - p
    if x.dtype in _COARSE:
        noise = torch.rand_like(x, dtype=torch.float32).lt_(keep).to(x.dtype)
    else:
        noise = torch.rand_like(x).lt_(keep)  # 1.0 where kept, 0.0 where dropped
    noise.div_(keep)
    return x.mul_(noise) if inplace else x * noise


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` drawing its mask with :func:`dropout` (same arguments, ``p``,
    ``inplace`` and repr; an ``nn.Dropout``, so ``isinstance`` checks still hold).

    Shapes:
        any shape -> the same shape.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        # the module-level name, looked up at each call (the parity tests' recorder patches it)
        return dropout(input, self.p, self.training, self.inplace)


def use_fast_dropout(module: nn.Module) -> nn.Module:
    """Replaces, in place, every plain ``nn.Dropout`` below ``module`` (a Hugging Face encoder's,
    say) by a :class:`Dropout` with the same ``p`` and ``inplace`` and the same train/eval mode.
    Dropout has no parameters or buffers: state dicts are unchanged. Returns ``module``."""
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                fast = Dropout(child.p, child.inplace)
                fast.train(child.training)
                setattr(parent, name, fast)
    return module
