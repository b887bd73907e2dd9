"""MFN's recurrent core: the cells run from input gates computed before the loop
(``lstm_input_gates``), with the recurrence's backward written out (``lstm_cell_states``) or as
one LSTM kernel call (``lstm_cell_sequence``), give ``nn.LSTMCell``'s values and gradients, on
real MOSI sequences zero-padded past each clip's real steps."""

from __future__ import annotations

import pytest
import torch
from _real_batches import real_batch
from torch import nn

from msakit.data import load_dataset
from msakit.modules.mfn_core import (
    lstm_cell_sequence,
    lstm_cell_states,
    lstm_input_gates,
)
from msakit.modules.mmsa_subnets import fixed_length


@pytest.fixture(scope="module")
def vision_steps(mosi_word_aligned):
    """Real Facet sequences of 6 clips, ``(T, B, D)`` step-major, zero past each clip."""
    batch = real_batch(load_dataset(mosi_word_aligned), range(6))
    x = fixed_length(batch["vision"], batch["vision_mask"], 50).transpose(0, 1).double()
    real = x.ne(0).any(-1)
    assert real.any() and not real.all()  # some padded steps, some real ones
    return x


def test_input_gates_of_zero_rows_are_the_biases(vision_steps):
    torch.manual_seed(0)
    cell = nn.LSTMCell(vision_steps.shape[-1], 8).double()
    gates = lstm_input_gates(cell, vision_steps)
    padded = ~vision_steps.ne(0).any(-1)
    torch.testing.assert_close(gates[padded], (cell.bias_ih + cell.bias_hh).detach().expand(
        int(padded.sum()), -1), rtol=0, atol=0)
    real = ~padded
    torch.testing.assert_close(gates[real], torch.nn.functional.linear(
        vision_steps[real], cell.weight_ih, cell.bias_ih + cell.bias_hh), rtol=1e-14, atol=0)


@pytest.mark.parametrize("initial", [False, True], ids=["zero_state", "given_state"])
def test_cell_over_a_whole_sequence_matches_lstm_cell(vision_steps, initial):
    """``lstm_cell_sequence`` (one LSTM kernel call) against ``nn.LSTMCell`` step by step: every
    ``h``, the final ``(h, c)`` and the gradients of the weights and of the initial state."""
    torch.manual_seed(0)
    cell = nn.LSTMCell(vision_steps.shape[-1], 16).double()
    size = vision_steps.shape[1]
    results = []
    for whole in (False, True):
        cell.zero_grad()
        state = None
        if initial:
            torch.manual_seed(1)  # the same initial state in both runs
            state = tuple(torch.randn(size, 16, dtype=torch.float64).requires_grad_()
                          for _ in range(2))
        if whole:
            hidden, final = lstm_cell_sequence(cell, vision_steps, state)
        else:
            running = state if state is not None else (vision_steps.new_zeros(size, 16),) * 2
            steps = []
            for x in vision_steps:
                running = cell(x, running)
                steps.append(running[0])
            hidden, final = torch.stack(steps), running
        value = hidden.square().sum() + final[0].sum() + final[1].square().sum()
        value.backward()
        grads = {n: p.grad.clone() for n, p in cell.named_parameters()}
        if state is not None:
            grads.update(h0=state[0].grad, c0=state[1].grad)
        results.append((hidden.detach(), [t.detach() for t in final], grads))
    (reference, reference_final, reference_grads), (hidden, final, grads) = results
    torch.testing.assert_close(hidden, reference, rtol=1e-12, atol=1e-14)
    for ours, theirs in zip(final, reference_final):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)
    assert grads.keys() == reference_grads.keys()
    for name, grad in reference_grads.items():
        scale = grad.abs().max()
        assert scale > 0
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=1e-12 * scale.item())


def _cell_reference(cell: nn.LSTMCell, x: torch.Tensor, steps: int):
    """``nn.LSTMCell`` step by step from a zero state: ``h``, ``c`` at every step."""
    state = (x.new_zeros(x.shape[-2], cell.hidden_size),) * 2
    hidden, cells = [], []
    for t in range(steps):
        state = cell(x[t] if x.dim() == 3 else x, state)
        hidden.append(state[0])
        cells.append(state[1])
    return torch.stack(hidden), torch.stack(cells)


def _values_and_grads(function, cell, x, steps, weights):
    """``function``'s ``h``, ``c`` and the gradients of ``sum(h * w_h) + sum(c * w_c)``
    with respect to the cell's parameters and to ``x`` (when it needs one)."""
    cell.zero_grad()
    if x.grad is not None:
        x.grad = None
    hidden, cells = function(cell, x, steps)
    ((hidden * weights[0]).sum() + (cells * weights[1]).sum()).backward()
    grads = {n: p.grad.clone() for n, p in cell.named_parameters() if p.grad is not None}
    if x.requires_grad:
        grads["x"] = x.grad.clone()
    return hidden.detach(), cells.detach(), grads


def _assert_grads_close(grads, reference):
    assert grads.keys() == reference.keys()
    for name, grad in reference.items():
        scale = grad.abs().max()
        assert scale > 0, name
        torch.testing.assert_close(grads[name], grad, rtol=0, atol=1e-12 * scale.item(),
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("case", ["sequence", "same_at_every_step", "input_needs_grad",
                                  "frozen_recurrent_weight"])
def test_cell_states_match_lstm_cell(vision_steps, case):
    """``lstm_cell_states`` (the recurrence with its backward written out) against
    ``nn.LSTMCell`` step by step, in float64: every ``h`` and ``c``, and the gradients of the
    weights (and of the input) from upstream gradients on every step's ``h`` and ``c``."""
    torch.manual_seed(0)
    cell = nn.LSTMCell(vision_steps.shape[-1], 16).double()
    x = vision_steps.mean(0) if case == "same_at_every_step" else vision_steps.clone()
    if case == "input_needs_grad":
        x.requires_grad_()
    if case == "frozen_recurrent_weight":
        cell.weight_hh.requires_grad_(False)
    steps = vision_steps.shape[0]
    weights = [torch.randn(steps, x.shape[-2], 16, dtype=torch.float64) for _ in range(2)]
    reference = _values_and_grads(_cell_reference, cell, x, steps, weights)
    ours = _values_and_grads(lstm_cell_states, cell, x, steps, weights)
    torch.testing.assert_close(ours[0], reference[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ours[1], reference[1], rtol=1e-12, atol=1e-14)
    _assert_grads_close(ours[2], reference[2])
    assert ("weight_hh" in ours[2]) == (case != "frozen_recurrent_weight")


def test_cell_states_in_float32_match_lstm_cell(vision_steps):
    """The same in float32 (the oneDNN products and ``tanh`` as ``2 sigmoid(2z) - 1``):
    within float32 rounding of the values' scale."""
    torch.manual_seed(0)
    cell = nn.LSTMCell(vision_steps.shape[-1], 64)
    x = vision_steps.float()
    steps = x.shape[0]
    weights = [torch.randn(steps, x.shape[1], 64) for _ in range(2)]
    reference = _values_and_grads(_cell_reference, cell, x, steps, weights)
    ours = _values_and_grads(lstm_cell_states, cell, x, steps, weights)
    for value, expected in zip(ours[:2], reference[:2]):
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-5 * expected.abs().max())
    for name, grad in reference[2].items():
        torch.testing.assert_close(ours[2][name], grad, rtol=0, atol=1e-5 * grad.abs().max())


def test_cell_states_differentiate_twice(vision_steps):
    """A gradient penalty (``create_graph=True``) through the written-out backward: the same
    second-order gradient as through ``nn.LSTMCell``."""
    torch.manual_seed(0)
    cell = nn.LSTMCell(vision_steps.shape[-1], 8).double()
    x = vision_steps[:12].clone().requires_grad_()
    results = []
    for function in (_cell_reference, lstm_cell_states):
        cell.zero_grad()
        hidden, cells = function(cell, x, x.shape[0])
        (grad_x,) = torch.autograd.grad(hidden.sum() + cells.square().sum(), x,
                                        create_graph=True)
        grad_x.square().sum().backward()
        results.append({n: p.grad.clone() for n, p in cell.named_parameters()})
    _assert_grads_close(results[1], results[0])


class _StatesLoss(nn.Module):
    """``sum(h) + sum(c^2)`` over the states of ``cell`` (``lstm_cell_states`` or, with
    ``reference``, ``nn.LSTMCell`` step by step)."""

    def __init__(self, cell: nn.LSTMCell, reference: bool):
        super().__init__()
        self.cell, self.reference = cell, reference

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        run = _cell_reference if self.reference else lstm_cell_states
        hidden, cells = run(self.cell, x, x.shape[0])
        return hidden.sum() + cells.square().sum()


def test_cell_states_under_torch_func(vision_steps):
    """Under ``torch.func.grad`` (which the written-out backward has no rule for) the cell
    steps with PyTorch's autograd: the same gradients as an ordinary backward."""
    torch.manual_seed(0)
    cell = nn.LSTMCell(vision_steps.shape[-1], 8).double()
    x = vision_steps[:12]
    module = _StatesLoss(cell, reference=False)
    parameters = {n: p.detach() for n, p in module.named_parameters()}
    functional = torch.func.grad(
        lambda params: torch.func.functional_call(module, params, (x,)))(parameters)
    _StatesLoss(cell, reference=True)(x).backward()
    _assert_grads_close(functional, {f"cell.{n}": p.grad for n, p in cell.named_parameters()})


def test_cell_states_under_bf16_autocast(vision_steps):
    """Under CPU autocast (``train.precision=bf16``) with an input that needs a gradient (its
    gates then come out in bf16, and the backward runs outside autocast): gradients of every
    tensor in its own dtype, within bf16's rounding of the float32 ones."""
    torch.manual_seed(0)
    cell = nn.LSTMCell(vision_steps.shape[-1], 16)
    x = vision_steps.float()
    results = []
    for autocast in (False, True):
        cell.zero_grad()
        inputs = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            hidden, cells = lstm_cell_states(cell, inputs)
        assert hidden.dtype == (torch.bfloat16 if autocast else torch.float32)
        (hidden.float().sum() + cells.float().square().sum()).backward()
        grads = {n: p.grad.clone() for n, p in cell.named_parameters()}
        grads["x"] = inputs.grad
        assert all(g.dtype == torch.float32 for g in grads.values())
        results.append(grads)
    for name, grad in results[0].items():
        torch.testing.assert_close(results[1][name], grad, rtol=0,
                                   atol=0.05 * grad.abs().max().item(), msg=name)
