"""msakit's dropout (``msakit.modules.dropout``): F.dropout's function, masks from a uniform draw."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msakit.config import build_config
from msakit.models import FeatureDims, create_model
from msakit.modules.dropout import Dropout, dropout, use_fast_dropout

RATES = (0.1, 0.25, 0.5, 0.9)


def scale(p: float, dtype=torch.float32) -> torch.Tensor:
    """``1 / (1 - p)`` as PyTorch's dropout computes it (``ones.div_(1 - p)`` in ``dtype``)."""
    return torch.ones((), dtype=dtype).div_(1 - p)


@pytest.mark.parametrize("p", RATES)
def test_kept_fraction_is_one_minus_p(p):
    torch.manual_seed(0)
    n = 2_000_000
    kept = float((dropout(torch.ones(n), p) != 0).double().mean())
    standard_error = math.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) < 5 * standard_error


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", RATES)
def test_kept_values_are_scaled_and_dropped_are_zero_as_f_dropout(p, dtype):
    torch.manual_seed(1)
    x = torch.randn(100_000, dtype=dtype)
    out = dropout(x, p)
    kept = out != 0  # x has no zeros
    assert 0 < int(kept.sum()) < x.numel()
    assert torch.equal(out[kept], x[kept] * scale(p, dtype))
    assert torch.equal(out[~kept], torch.zeros_like(out[~kept]))
    # PyTorch's dropout gives the same value wherever it keeps an element too
    reference = F.dropout(x, p, training=True)
    assert torch.equal(reference[reference != 0], x[reference != 0] * scale(p, dtype))


def test_reduced_precision_inputs_keep_the_rate():
    torch.manual_seed(2)
    p, n = 0.3, 1_000_000
    for dtype in (torch.bfloat16, torch.float16):
        out = dropout(torch.ones(n, dtype=dtype), p)
        assert out.dtype == dtype
        kept = float((out != 0).double().mean())
        assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
        assert torch.equal(out[out != 0], torch.ones((), dtype=dtype).div_(1 - p).expand(
            int((out != 0).sum())))


@pytest.mark.parametrize("p", (0.2, 0.7))
def test_backward_is_grad_times_mask_over_keep(p):
    torch.manual_seed(3)
    x = torch.randn(4, 5000, dtype=torch.float64, requires_grad=True)
    out = dropout(x, p)
    grad = torch.randn_like(out)
    out.backward(grad)
    mask = (out != 0).double()
    assert torch.equal(x.grad, grad * (mask * scale(p, torch.float64)))


def test_eval_mode_and_p_zero_return_the_input_itself():
    x = torch.randn(3, 4, requires_grad=True)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    assert F.dropout(x, 0.0, training=True) is x  # as PyTorch's
    module = Dropout(0.5).eval()
    assert module(x) is x


def test_p_one_zeroes_like_f_dropout():
    x = torch.tensor([1.5, -2.0, float("nan")])
    ours, reference = dropout(x, 1.0), F.dropout(x, 1.0, training=True)
    torch.testing.assert_close(ours, reference, equal_nan=True)  # x * 0: NaN stays NaN
    assert torch.equal(ours[:2], torch.zeros(2))


def test_empty_input():
    x = torch.empty(0, 3)
    assert dropout(x, 0.5) is x


def test_inplace_writes_into_the_input():
    torch.manual_seed(4)
    x = torch.randn(1000)
    original = x.clone()
    out = dropout(x, 0.5, inplace=True)
    assert out.data_ptr() == x.data_ptr() and torch.equal(out, x)
    kept = x != 0
    assert torch.equal(x[kept], original[kept] * scale(0.5))
    module = Dropout(0.5, inplace=True)
    y = torch.randn(1000)
    assert module(y).data_ptr() == y.data_ptr()


def test_same_seed_same_mask_other_seed_other_mask():
    x = torch.randn(10_000)
    masks = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        masks.append(dropout(x, 0.5) != 0)
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])


@pytest.mark.parametrize("p", (-0.1, 1.5))
def test_invalid_p_raises_like_f_dropout(p):
    x = torch.randn(3)
    with pytest.raises(ValueError) as ours:
        dropout(x, p)
    with pytest.raises(ValueError) as reference:
        F.dropout(x, p)
    assert str(ours.value) == str(reference.value)
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(x, p, training=False)
    with pytest.raises(ValueError, match="between 0 and 1"):
        Dropout(p)


def test_module_is_an_nn_dropout_with_its_repr():
    module = Dropout(0.3, inplace=True)
    assert isinstance(module, nn.Dropout)
    assert repr(module) == repr(nn.Dropout(0.3, inplace=True))
    assert module.p == 0.3 and module.inplace


def test_use_fast_dropout_swaps_every_dropout_and_keeps_rate_and_mode():
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.1),
                        nn.Sequential(nn.Dropout(0.2, inplace=True), nn.ReLU()))
    net[2][0].eval()
    state = net.state_dict()
    assert use_fast_dropout(net) is net
    assert type(net[1]) is Dropout and net[1].p == 0.1 and net[1].training
    inner = net[2][0]
    assert type(inner) is Dropout and inner.p == 0.2 and inner.inplace and not inner.training
    assert net.state_dict().keys() == state.keys()


@pytest.mark.parametrize("name", ["tfn", "mult", "self_mm", "misa", "sagenet", "lrcmt"])
def test_every_dropout_of_a_created_model_is_msakits(name):
    """The models' own dropouts, nn.TransformerEncoderLayer's (MISA, SAGE-Net), the language
    model's (MiniLM's nn.Dropout modules) and its LoRA adapters' (LRCMT)."""
    config = build_config(name)
    model = create_model(config.model, FeatureDims(audio=5, vision=7))
    dropouts = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Dropout)]
    assert any(n.startswith("text_encoder.") for n, _ in dropouts)
    assert [n for n, m in dropouts if type(m) is not Dropout] == []
