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

:class:`LSTM` is an ``nn.LSTM`` whose inter-layer dropout (PyTorch's runs inside the LSTM
kernel, with ``bernoulli_``) is :func:`dropout`: on the CPU, in train mode, with ``dropout > 0``
and more than one layer, it runs the layers one by one, the same kernel per layer as
``nn.LSTM`` runs, with :func:`dropout` between them. EF-LSTM's step (four layers of 128 over
``(50, 32)`` steps, dropout 0.5) spent 10 % of its time in that ``bernoulli_``.

Not replaced (they stay PyTorch's): the attention-weight dropout inside
``scaled_dot_product_attention`` / ``nn.MultiheadAttention`` (and the ``F.dropout`` on the
attention weights of a Hugging Face model switched to eager attention) and the inter-layer
dropout of ``nn.GRU``. :func:`use_fast_dropout` swaps the ``nn.Dropout`` modules of modules
msakit does not write (the language model, ``nn.TransformerEncoderLayer``, LoRA adapters).
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


class LSTM(nn.LSTM):
    """:class:`torch.nn.LSTM` whose inter-layer dropout is :func:`dropout` on the CPU (same
    arguments, parameters, state-dict names and repr; an ``nn.LSTM``, so ``isinstance`` checks
    hold).

    In train mode on the CPU, with ``dropout > 0``, ``num_layers > 1``, no ``proj_size`` and a
    batched (3-D) tensor input, the layers run one by one, each the kernel ``nn.LSTM`` runs for
    it (``torch.lstm`` over that layer's weights and initial state), with :func:`dropout` on the
    input of every layer but the first: the function ``nn.LSTM`` computes, with masks drawn by
    :func:`dropout` instead of ``bernoulli_``. Otherwise (eval mode, ``dropout == 0``, one
    layer, a ``PackedSequence``, other devices) it is ``nn.LSTM.forward`` itself.

    Shapes:
        as ``nn.LSTM``: ``input (B, L, D)`` (``batch_first``) or ``(L, B, D)``, ``hx`` None or
        ``(h_0, c_0)`` each ``(num_layers * directions, B, hidden)`` -> ``output (B, L,
        directions * hidden)`` (or ``(L, B, ...)``) and ``(h_n, c_n)`` shaped as ``hx``.
    """

    def _layer_by_layer(self, input) -> bool:
        return (self.training and self.dropout > 0 and self.num_layers > 1
                and self.proj_size == 0 and isinstance(input, torch.Tensor)
                and input.dim() == 3 and input.device.type == "cpu")

    def forward(self, input, hx=None):
        if not self._layer_by_layer(input):
            return super().forward(input, hx)
        directions = 2 if self.bidirectional else 1
        if hx is None:
            batch = input.shape[0 if self.batch_first else 1]
            zeros = input.new_zeros(self.num_layers * directions, batch, self.hidden_size)
            hx = (zeros, zeros)
        per_layer = len(self._flat_weights) // self.num_layers
        output, finals_h, finals_c = input, [], []
        for layer in range(self.num_layers):
            if layer:
                # the module-level name, looked up at each call (the parity tests' recorder)
                output = dropout(output, self.dropout, True)
            rows = slice(layer * directions, (layer + 1) * directions)
            output, h_n, c_n = torch.lstm(
                output, (hx[0][rows], hx[1][rows]),
                self._flat_weights[layer * per_layer:(layer + 1) * per_layer], self.bias, 1,
                0.0, True, self.bidirectional, self.batch_first)
            finals_h.append(h_n)
            finals_c.append(c_n)
        return output, (torch.cat(finals_h), torch.cat(finals_c))


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
