"""MFN's recurrent core (Zadeh et al., Memory Fusion Network, AAAI 2018), as MMSA ports it: the
System of LSTMs, the Delta-memory Attention Network (window 2) and the Multi-view Gated Memory.
MFN (``models/mfn.py``) is this core and its output head; MFM (``models/mfm.py``) uses the core as
its multimodal discriminative encoder.

At every step t of ``(T, B, D_m)`` step-major sequences (paper section 3):

=====================  ==========================================================  ============
block                  computation                                                 output
=====================  ==========================================================  ============
System of LSTMs        h_m[t], c_m[t] = LSTMCell_m(x_m[t], h_m[t-1], c_m[t-1])    ``(B, d_m)``
c* (window 2)          [c[t-1]; c[t]], c = [c_l; c_a; c_v]                         ``(B, 2 d)``
DMAN                   a = softmax(D_a(c*)); c^ = c* (.) a  (D_a: att1)            ``(B, 2 d)``
gated memory           u[t] = g1 (.) u[t-1] + g2 (.) tanh(D_u(c^))                 ``(B, mem)``
=====================  ==========================================================  ============

(``d`` = the three LSTM sizes summed; the gates are :class:`GatedMemoryMixin`'s). The final
state is ``[h_l; h_a; h_v; u]`` at T, ``(B, d + mem)``; MMSA's output head (Linear + ReLU ->
Dropout -> Linear) reads it. Parameter names are MMSA's (``lstm_l``, ``att1_fc1`` ...), so that
its state dicts map by name.

Layout (the same values as ``nn.LSTMCell`` at every step, up to float rounding): a cell's gates
are ``x[t] W_ih^T + b_ih + h[t-1] W_hh^T + b_hh``; the input half does not depend on the
recurrence, so :func:`lstm_input_gates` computes it for all T steps in one matrix product before
the loop (on the CPU only for the rows that are not all zero: the sequences are zero past each
clip's real steps, and an all-zero row's input half is exactly ``b_ih + b_hh``; an input that is
the same at every step, MFN's ``time_average`` audio/vision, is projected once), and
the recurrence adds ``h[t-1] W_hh^T`` at each step (:func:`lstm_gates_step`). No cell reads the
attention or the memory, and the DMAN at step t reads ``c[t-1]`` and ``c[t]`` only, so the
cells run first, over all steps (:func:`lstm_cell_states`: the recurrence with its backward
written out), then ``att1``'s first layer over all T x B rows at once; only the rest of the
attention and the memory run step by step, their dropouts in MMSA's order and shapes. (The DMAN
needs every ``c[t]``, which no LSTM kernel returns; :func:`lstm_cell_sequence`, one kernel call
over a whole sequence, serves the models that need only ``h``: Graph-MFN, MFM's encoders.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from msakit.modules.dropout import Dropout
from msakit.modules.linear import linear, plain_autograd
from msakit.modules.mmsa_subnets import GatedMemoryMixin, mlp
from msakit.modules.precision import autocast_lstm


def lstm_input_gates(cell: nn.LSTMCell, x: torch.Tensor) -> torch.Tensor:
    """The input half of ``cell``'s gates, ``x W_ih^T + b_ih + b_hh``, for all steps at once:
    ``(T, B, D) -> (T, B, 4H)`` (or ``(B, D) -> (B, 4H)``). On the CPU only the rows that are not
    all zero are multiplied; an all-zero row's gates are exactly the biases. (Every row is on an
    accelerator, where selecting the rows would need a host sync and the product is cheap, and
    when ``x`` needs a gradient, which a zero row also receives.)"""
    bias = cell.bias_ih + cell.bias_hh
    if x.device.type != "cpu" or x.requires_grad:
        return linear(x, cell.weight_ih, bias)
    rows = x.reshape(-1, x.shape[-1])
    real = rows.ne(0).any(1).nonzero().squeeze(1)
    gates = bias.expand(rows.shape[0], -1).index_copy(
        0, real, linear(rows.index_select(0, real), cell.weight_ih, bias))
    return gates.view(*x.shape[:-1], -1)


@autocast_lstm  # float32 under CPU bf16 autocast where oneDNN has no such LSTM
def lstm_layer(x: torch.Tensor, weights: tuple[torch.Tensor, ...],
               state: tuple[torch.Tensor, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One LSTM layer over ``(T, B, D)`` step-major inputs in one ``torch.lstm`` call (on the CPU
    in float32, oneDNN's LSTM kernel), with ``weights = (W_ih (4H, D), W_hh (4H, H), b_ih,
    b_hh)``, gates in ``nn.LSTMCell``'s order.

    Args:
        x: ``(T, B, D)``.
        weights: the layer's weights and biases.
        state: the initial ``(h, c)``, each ``(B, H)``; None: zeros.

    Returns:
        ``h`` at every step ``(T, B, H)`` and the final ``(h, c)``, each ``(B, H)``.
    """
    if state is None:
        zeros = x.new_zeros(1, x.shape[1], weights[1].shape[1])
        state = (zeros, zeros)
    else:
        state = (state[0].unsqueeze(0), state[1].unsqueeze(0))
    outputs, h, c = torch.lstm(x, state, weights, True, 1, 0.0, False, False, False)
    return outputs, (h[0], c[0])


def lstm_cell_sequence(cell: nn.LSTMCell, x: torch.Tensor,
                       state: tuple[torch.Tensor, torch.Tensor] | None = None
                       ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """``cell`` run over ``(T, B, D)`` step-major inputs as the one-layer LSTM it is
    (:func:`lstm_layer` over the cell's weights): the same values as calling ``cell`` step by
    step, up to float rounding. Shapes as :func:`lstm_layer`'s."""
    return lstm_layer(x, (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh), state)


def lstm_gates_step(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An LSTM cell's step from its summed gates ``(B, 4H)`` (``i, f, g, o`` in
    ``nn.LSTMCell``'s order) and the previous cell state ``(B, H)``: returns ``(h, c)``."""
    in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, 1)
    c = torch.sigmoid(forget_gate) * c + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
    return torch.sigmoid(out_gate) * torch.tanh(c), c


def lstm_cell_states(cell: nn.LSTMCell, x: torch.Tensor, steps: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``cell`` run from a zero state over ``(T, B, D)`` step-major inputs (or ``(B, D)``, the
    same input at each of ``steps`` steps): ``h`` and ``c`` at every step, each ``(T, B, H)``.

    The input half of the gates comes from :func:`lstm_input_gates` (one product); the
    recurrence runs in :class:`_CellSequence`, whose backward is written out (backpropagation
    through time: per step the elementwise gradients and one ``(B, 4H) x (4H, H)`` product; the
    gradient of ``W_hh`` as one product over all steps). The same values as ``nn.LSTMCell``
    step by step, up to float rounding (``tanh`` computed as ``2 sigmoid(2z) - 1``). Under a
    ``torch.func`` transform or forward-mode AD, which need rules this function does not have,
    the cell steps with PyTorch's autograd (:func:`lstm_gates_step`)."""
    if x.dim() == 3:
        steps = x.shape[0]
    elif steps is None:
        raise ValueError("lstm_cell_states: a (B, D) input needs the number of steps")
    input_gates = lstm_input_gates(cell, x)
    if plain_autograd():
        return _CellSequence.apply(input_gates, cell.weight_hh, steps)
    return _cell_states_by_steps(input_gates, cell.weight_hh, steps)


def _cell_states_by_steps(input_gates: torch.Tensor, weight_hh: torch.Tensor, steps: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`_CellSequence`'s values through PyTorch's autograd, step by step."""
    gates = input_gates.unbind(0) if input_gates.dim() == 3 else (input_gates,) * steps
    state = (input_gates.new_zeros(input_gates.shape[-2], weight_hh.shape[1]),) * 2
    hidden, cells = [], []
    for gates_t in gates:
        state = lstm_gates_step(linear(state[0], weight_hh, addend=gates_t), state[1])
        hidden.append(state[0])
        cells.append(state[1])
    return torch.stack(hidden), torch.stack(cells)


class _CellSequence(torch.autograd.Function):
    """An LSTM cell's recurrence from a zero state: ``input_gates (T, B, 4H)`` (``x W_ih^T + b``
    at every step, or ``(B, 4H)``, the same at each of ``steps``), ``W_hh (4H, H)`` -> ``h``,
    ``c`` at every step, each ``(T, B, H)``; gates ``i, f, g, o`` in ``nn.LSTMCell``'s order.

    Forward: ``tanh z = 2 sigmoid(2z) - 1`` (PyTorch's CPU ``tanh`` costs about nine times its
    ``sigmoid``), with g's rows of ``W_hh`` and of the input gates doubled so that one sigmoid
    covers all four gates. Backward, from the saved activations, at step t (``g~ = tanh g``,
    ``s_x = sigmoid x``)::

        dh = dL/dh[t] + dh_next;  dc = dL/dc[t] + dc_next + dh s_o (1 - tanh^2 c[t])
        d[i, f, g, o] = [dc g~, dc c[t-1], 4 dc s_i, dh tanh c[t]] (.) s (1 - s)   (s of 2g for g)
        dc_next = dc s_f;  dh_next = d[i, f, g, o] W_hh

    and ``dW_hh = sum_t d[...][t]^T h[t-1]``, one product. A backward that builds a graph
    (``create_graph=True``) recomputes the forward with PyTorch's autograd and differentiates
    that, so that its gradients can be differentiated again."""

    @staticmethod
    def forward(ctx, input_gates, weight_hh, steps):
        hidden = weight_hh.shape[1]
        size = input_gates.shape[-2]
        scale = input_gates.new_ones(4 * hidden)
        scale[2 * hidden:3 * hidden] = 2
        weight = weight_hh * scale.unsqueeze(1)
        inputs = input_gates * scale
        activations = input_gates.new_empty(steps, size, 4 * hidden)
        h = input_gates.new_zeros(steps + 1, size, hidden)  # h[0] = c[0] = 0
        c = input_gates.new_zeros(steps + 1, size, hidden)
        tanh_c = input_gates.new_empty(steps, size, hidden)
        for t in range(steps):
            gates = linear(h[t], weight, addend=inputs[t] if inputs.dim() == 3 else inputs)
            in_gate, forget, cell_gate, out_gate = torch.sigmoid(
                gates, out=activations[t]).chunk(4, 1)
            torch.addcmul(forget * c[t], in_gate, cell_gate * 2 - 1, out=c[t + 1])
            torch.sigmoid(c[t + 1] * 2, out=tanh_c[t]).mul_(2).sub_(1)
            torch.mul(out_gate, tanh_c[t], out=h[t + 1])
        ctx.save_for_backward(input_gates, weight_hh, activations, h, c, tanh_c)
        return h[1:], c[1:]

    @staticmethod
    def backward(ctx, grad_h, grad_c):
        input_gates, weight_hh, activations, h, c, tanh_c = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            with torch.enable_grad():
                outputs = _cell_states_by_steps(input_gates, weight_hh, activations.shape[0])
                wanted = [t for t, needed in zip((input_gates, weight_hh), ctx.needs_input_grad)
                          if needed]
                grads = iter(torch.autograd.grad(outputs, wanted, (grad_h, grad_c),
                                                 create_graph=True))
            return (*(next(grads) if needed else None for needed in ctx.needs_input_grad[:2]),
                    None)
        steps, size, four_hidden = activations.shape
        grad_gates = torch.empty_like(activations)
        products = grad_gates.new_empty(size, four_hidden)  # before the sigmoid's derivative
        # (H, 4H): dh = d[...] W_hh as a linear map, in the activations' dtype (bf16 ones when
        # the forward ran under autocast, where the backward does not)
        weight_t = weight_hh.t().to(activations.dtype).contiguous()
        dh = dc = None
        for t in reversed(range(steps)):
            in_gate, forget, cell_gate, out_gate = activations[t].chunk(4, 1)
            d_in, d_forget, d_cell, d_out = products.chunk(4, 1)
            dh = grad_h[t] if dh is None else dh + grad_h[t]
            dc = grad_c[t] if dc is None else dc + grad_c[t]
            dc = dc + torch.ops.aten.tanh_backward(dh * out_gate, tanh_c[t])
            torch.mul(dh, tanh_c[t], out=d_out)
            torch.mul(dc, cell_gate * 2 - 1, out=d_in)
            torch.mul(dc, c[t], out=d_forget)
            torch.mul(dc, in_gate, out=d_cell).mul_(4)  # d tanh(g) / dg = 4 s (1 - s), s of 2g
            torch.ops.aten.sigmoid_backward.grad_input(products, activations[t],
                                                       grad_input=grad_gates[t])
            if t:
                dc = dc * forget
                dh = linear(grad_gates[t], weight_t)
        grad_input = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_input = grad_gates if input_gates.dim() == 3 else grad_gates.sum(0)
        if ctx.needs_input_grad[1]:
            # dW_hh^T = h^T d (H, 4H), its operands as transposed views: the orientation
            # oneDNN reads without copying the larger one (1.7x MKL's product at MFN's sizes)
            grad_weight = linear(h[:-1].flatten(0, 1).t(), grad_gates.flatten(0, 1).t()).t().to(
                weight_hh.dtype)
        return grad_input, grad_weight, None


class MemoryFusionMixin(GatedMemoryMixin):
    """MFN's core as a mixin of an ``nn.Module`` (its parameters directly on the module, MMSA's
    names). ``config`` gives ``text_hidden``, ``audio_hidden``, ``vision_hidden``, ``mem_dim``,
    ``att1_hidden``/``_dropout`` and :meth:`GatedMemoryMixin.add_gated_memory`'s sizes."""

    def add_memory_fusion(self, config, input_dims: tuple[int, int, int]) -> None:
        """The three LSTM cells over inputs of ``input_dims`` (text, audio, vision), the DMAN's
        attention network (att1), the gated memory and the output head."""
        hidden = config.text_hidden + config.audio_hidden + config.vision_hidden
        window = 2 * hidden  # c* = [c[t-1]; c[t]]
        text_dim, audio_dim, vision_dim = input_dims
        self.lstm_l = nn.LSTMCell(text_dim, config.text_hidden)
        self.lstm_a = nn.LSTMCell(audio_dim, config.audio_hidden)
        self.lstm_v = nn.LSTMCell(vision_dim, config.vision_hidden)
        self.att1_fc1 = nn.Linear(window, config.att1_hidden)
        self.att1_fc2 = nn.Linear(config.att1_hidden, window)
        self.att1_dropout = Dropout(config.att1_dropout)
        self.add_gated_memory(config, window, hidden)
        self.memory_size = config.mem_dim

    def memory_fusion(self, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor
                      ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Runs the core over ``(T, B, D_m)`` step-major sequences (audio or vision may be
        ``(B, D_m)``: the same input at every step); returns the cells' final ``(h, c)`` states
        (text, audio, vision) and the final memory ``(B, mem)``.

        No cell reads the attention or the memory, and the DMAN at step t reads ``c[t-1]`` and
        ``c[t]`` only: the cells run first, over all steps, then ``att1``'s first layer over all
        T x B rows at once; its dropout and everything after it run step by step, so that the
        dropout calls come in MMSA's order and shapes."""
        steps, size = text.shape[:2]
        hidden, cells = zip(*(lstm_cell_states(cell, x, steps) for x, cell in zip(
            (text, audio, vision), (self.lstm_l, self.lstm_a, self.lstm_v))))
        c = torch.cat(cells, dim=2)  # (T, B, d)
        c = torch.cat([c.new_zeros(1, size, c.shape[2]), c])  # c[0] = 0
        c_star = torch.cat([c[:-1], c[1:]], dim=2)  # (T, B, 2d)
        att1_hidden = F.relu(self.att1_fc1(c_star))  # (T, B, att1_hidden)
        memory = text.new_zeros(size, self.memory_size)
        for c_star_t, att1_hidden_t in zip(c_star.unbind(0), att1_hidden.unbind(0)):
            attention = F.softmax(self.att1_fc2(self.att1_dropout(att1_hidden_t)), dim=1)
            memory = self.update_memory(attention * c_star_t, memory)
        return [(h[-1], c_m[-1]) for h, c_m in zip(hidden, cells)], memory


class MemoryFusionCore(MemoryFusionMixin, nn.Module):
    """MFN's core and head as a sub-module (MFM's ``mfn_encoder``): ``(T, B, D_m)`` x 3 ->
    final state ``[h_l; h_a; h_v; u]`` ``(B, d + mem)``; :meth:`head` maps it to ``(B,)``."""

    def __init__(self, config, input_dims: tuple[int, int, int]):
        super().__init__()
        self.add_memory_fusion(config, input_dims)

    def forward(self, text: torch.Tensor, audio: torch.Tensor, vision: torch.Tensor
                ) -> torch.Tensor:
        states, memory = self.memory_fusion(text, audio, vision)
        return torch.cat([h for h, _ in states] + [memory], dim=1)

    def head(self, final: torch.Tensor) -> torch.Tensor:
        """MFN's output head on the final state: ``(B, d + mem) -> (B,)``."""
        return mlp(self.out_fc1, self.out_dropout, self.out_fc2, final).squeeze(-1)


__all__ = ["MemoryFusionCore", "MemoryFusionMixin", "lstm_cell_sequence", "lstm_cell_states",
           "lstm_gates_step", "lstm_input_gates", "lstm_layer"]
