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

:class:`MultiheadAttention` is an ``nn.MultiheadAttention`` whose dropout on the attention
weights (PyTorch's runs inside ``scaled_dot_product_attention``, with ``bernoulli_``) is
:func:`dropout`: in train mode on the CPU with ``dropout > 0`` it computes the attention as
PyTorch's math path does, with :func:`dropout` on the weights. ``bernoulli_`` on attention
weights was 10 % of a DMD training step.

Not replaced (they stay PyTorch's): the attention-weight dropout of the language model (a
Hugging Face model's own attention) and of ``nn.TransformerEncoderLayer``, and the inter-layer
dropout of ``nn.GRU``. :func:`use_fast_dropout` swaps the ``nn.Dropout`` modules of modules
msakit does not write (the language model, ``nn.TransformerEncoderLayer``, LoRA adapters).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from msakit.modules.linear import linear
from msakit.modules.precision import autocast_lstm

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

    Every LSTM of msakit's models is this class. Under CPU bf16 autocast on a CPU whose oneDNN
    has no LSTM for bf16 inputs with float32 weights (no AVX-512), a tensor input runs in
    float32 (:func:`msakit.modules.precision.autocast_lstm`).

    Shapes:
        as ``nn.LSTM``: ``input (B, L, D)`` (``batch_first``) or ``(L, B, D)``, ``hx`` None or
        ``(h_0, c_0)`` each ``(num_layers * directions, B, hidden)`` -> ``output (B, L,
        directions * hidden)`` (or ``(L, B, ...)``) and ``(h_n, c_n)`` shaped as ``hx``.
    """

    def _layer_by_layer(self, input) -> bool:
        return (self.training and self.dropout > 0 and self.num_layers > 1
                and self.proj_size == 0 and isinstance(input, torch.Tensor)
                and input.dim() == 3 and input.device.type == "cpu")

    @autocast_lstm  # float32 under CPU bf16 autocast where oneDNN has no such LSTM
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


class MultiheadAttention(nn.MultiheadAttention):
    """:class:`torch.nn.MultiheadAttention` whose dropout on the attention weights is
    :func:`dropout` on the CPU (same arguments, parameters, state-dict names and repr; an
    ``nn.MultiheadAttention``, so ``isinstance`` checks hold).

    In train mode on the CPU with ``dropout > 0`` (batch-first, one embedding size for query,
    key and value, no ``bias_k``/``add_zero_attn``, batched 3-D inputs, ``need_weights=False``,
    ``is_causal=False``) it computes what PyTorch's ``multi_head_attention_forward`` hands to
    ``scaled_dot_product_attention``'s math path: the packed in-projection, ``q k^T`` with ``q``
    and ``k`` each scaled by ``sqrt(1 / sqrt(d_head))``, the masks added (a boolean ``True``
    is ``-inf``), a softmax that gives 0 to a query whose masks exclude every key (PyTorch's
    math path tests the scores, which the masks make ``-inf`` there), :func:`dropout` on the
    weights, ``weights v``, the out-projection. Otherwise (eval mode, ``dropout == 0``, other
    devices and options) it is ``nn.MultiheadAttention.forward`` itself.

    Shapes:
        ``query (B, L_q, E)``, ``key``/``value (B, L_k, E)``, ``key_padding_mask (B, L_k)``,
        ``attn_mask (L_q, L_k)`` or ``(B * num_heads, L_q, L_k)`` -> ``(B, L_q, E)`` and
        ``None`` (no weights) on the path above; otherwise as ``nn.MultiheadAttention``.
    """

    def _draws_its_own_dropout(self, query, key, value, masks, need_weights: bool,
                               is_causal: bool) -> bool:
        return (self.training and self.dropout > 0 and self.batch_first
                and self._qkv_same_embed_dim and self.bias_k is None and not self.add_zero_attn
                and not need_weights and not is_causal
                and all(isinstance(x, torch.Tensor) and x.dim() == 3 and not x.is_nested
                        and x.device.type == "cpu" for x in (query, key, value))
                and all(m is None or m.dtype == torch.bool or m.is_floating_point()
                        for m in masks))

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if not self._draws_its_own_dropout(query, key, value, (attn_mask, key_padding_mask),
                                           need_weights, is_causal):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask,
                                   need_weights=need_weights, attn_mask=attn_mask,
                                   average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        batch, query_steps, width = query.shape
        key_steps, heads = key.shape[1], self.num_heads
        q, k, v = self._in_projection(query, key, value)

        def split_heads(x: torch.Tensor, steps: int) -> torch.Tensor:  # -> (B, H, L, d_head)
            return x.reshape(batch, steps, heads, self.head_dim).transpose(1, 2)

        q, k, v = split_heads(q, query_steps), split_heads(k, key_steps), split_heads(v, key_steps)
        scaling = math.sqrt(1.0 / math.sqrt(self.head_dim))  # as PyTorch's math path scales
        scores = torch.matmul(q * scaling, k.transpose(-2, -1) * scaling)  # (B, H, L_q, L_k)
        mask = self._additive_mask(attn_mask, key_padding_mask, batch, q.dtype)
        if mask is None:
            weights = torch.softmax(scores, dim=-1)
        else:
            # a query its masks let attend to nothing gets zero weights (and zero gradients),
            # not the NaN of a softmax over -inf only: its row of the mask is zeroed first
            attends_to_nothing = mask.eq(float("-inf")).all(-1, keepdim=True)
            weights = torch.softmax(scores + mask.masked_fill(attends_to_nothing, 0.0), dim=-1)
            weights = weights.masked_fill(attends_to_nothing, 0.0)
        weights = dropout(weights, self.dropout, True)  # looked up at each call (parity tests)
        attended = torch.matmul(weights, v).transpose(1, 2).reshape(batch, query_steps, width)
        return linear(attended, self.out_proj.weight, self.out_proj.bias), None

    def _in_projection(self, query, key, value) -> tuple[torch.Tensor, ...]:
        """``(q, k, v)``, each ``(B, L, E)``: one product when query, key and value are one
        tensor, two when key and value are (as PyTorch's packed in-projection)."""
        weight, bias = self.in_proj_weight, self.in_proj_bias
        width = self.embed_dim
        if key is value:
            if query is key:
                return linear(query, weight, bias).chunk(3, dim=-1)
            weight_q, weight_kv = weight.split([width, 2 * width])
            bias_q, bias_kv = (None, None) if bias is None else bias.split([width, 2 * width])
            return (linear(query, weight_q, bias_q),
                    *linear(key, weight_kv, bias_kv).chunk(2, dim=-1))
        weights = weight.chunk(3)
        biases = (None, None, None) if bias is None else bias.chunk(3)
        return tuple(linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases))

    def _additive_mask(self, attn_mask, key_padding_mask, batch: int, dtype
                       ) -> torch.Tensor | None:
        """The masks as one additive float mask broadcasting to ``(B, H, L_q, L_k)``."""
        def additive(mask: torch.Tensor) -> torch.Tensor:
            if mask.dtype == torch.bool:
                return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
                    mask, float("-inf"))
            return mask.to(dtype)

        total = None
        if attn_mask is not None:
            total = additive(attn_mask)
            if total.dim() == 3:  # (B * H, L_q, L_k)
                total = total.view(batch, self.num_heads, *total.shape[1:])
        if key_padding_mask is not None:
            padding = additive(key_padding_mask).view(batch, 1, 1, -1)
            total = padding if total is None else total + padding
        return total


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
