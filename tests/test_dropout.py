"""msakit's dropout (``msakit.modules.dropout``): F.dropout's function, masks from a uniform draw."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msakit.config import build_config
from msakit.models import FeatureDims, create_model
from msakit.modules import dropout as dropout_module
from msakit.modules.dropout import (
    LSTM,
    Dropout,
    MultiheadAttention,
    dropout,
    use_fast_dropout,
)

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


# --- LSTM: nn.LSTM with msakit's inter-layer dropout ------------------------------------------

def lstm_pair(num_layers=3, dropout=0.4, **kwargs) -> tuple[nn.LSTM, LSTM]:
    torch.manual_seed(3)
    reference = nn.LSTM(6, 5, num_layers=num_layers, dropout=dropout, **kwargs).double()
    ours = LSTM(6, 5, num_layers=num_layers, dropout=dropout, **kwargs).double()
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def layer_by_layer_reference(lstm: nn.LSTM, x, hx, masks):
    """The stacked LSTM's function written out: single-layer ``nn.LSTM`` s holding the stack's
    parameters, layer ``k > 0`` reading the previous output times ``masks[k - 1]``."""
    directions = 2 if lstm.bidirectional else 1
    output, finals_h, finals_c = x, [], []
    for layer in range(lstm.num_layers):
        single = nn.LSTM(output.shape[-1], lstm.hidden_size, batch_first=lstm.batch_first,
                         bidirectional=lstm.bidirectional).double()
        for name, _ in list(single.named_parameters()):  # the stack's own parameters
            setattr(single, name, getattr(lstm, name.replace("_l0", f"_l{layer}")))
        if layer:
            output = output * masks[layer - 1]
        rows = slice(layer * directions, (layer + 1) * directions)
        output, (h_n, c_n) = single(output, (hx[0][rows], hx[1][rows]))
        finals_h.append(h_n)
        finals_c.append(c_n)
    return output, (torch.cat(finals_h), torch.cat(finals_c))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_lstm_is_the_stacked_lstm_with_its_masks_drawn_by_msakit(monkeypatch, batch_first,
                                                                  bidirectional):
    """Train mode: the layers run one by one with a mask from ``dropout`` between them, the
    same outputs, final states and gradients as the stack written out with those masks."""
    reference, ours = lstm_pair(batch_first=batch_first, bidirectional=bidirectional)
    directions = 2 if bidirectional else 1
    torch.manual_seed(4)
    x = torch.randn((4, 7, 6) if batch_first else (7, 4, 6), dtype=torch.float64)
    hx = tuple(torch.randn(3 * directions, 4, 5, dtype=torch.float64) for _ in range(2))
    masks, rates = [], []

    def recording_dropout(input, p=0.5, training=True, inplace=False):
        out = dropout(input, p, training, inplace)
        rates.append(p)
        masks.append((out / input).detach())  # input has no zeros: 0 or 1 / (1 - p)
        return out

    monkeypatch.setattr(dropout_module, "dropout", recording_dropout)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    output, (h_n, c_n) = ours.train()(x_ours, hx)
    assert rates == [0.4, 0.4]  # one per layer after the first
    assert all(0 < int((m == 0).sum()) < m.numel() for m in masks)
    expected, (h_ref, c_ref) = layer_by_layer_reference(reference, x_ref, hx, masks)
    for a, b in ((output, expected), (h_n, h_ref), (c_n, c_ref)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    (output.sum() + h_n.square().sum()).backward()
    (expected.sum() + h_ref.square().sum()).backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-12, atol=1e-12)
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12, msg=name)


def test_lstm_parameter_gradients_match_pytorchs_lstm_without_dropout():
    """With every inter-layer mask all ones, the layer-by-layer run is nn.LSTM's own run
    without dropout: the same outputs and the same parameter gradients, name by name."""
    reference, ours = lstm_pair(num_layers=3, dropout=0.0)
    ours.dropout = 0.4  # take the layer-by-layer path ...
    torch.manual_seed(5)
    x = torch.randn(4, 7, 6, dtype=torch.float64)
    with pytest.MonkeyPatch.context() as patch:  # ... with masks of ones
        patch.setattr(dropout_module, "dropout", lambda input, p, training, inplace=False: input)
        output, (h_n, _) = ours.train()(x)
    expected, (h_ref, _) = reference.train()(x)
    assert torch.equal(output, expected) and torch.equal(h_n, h_ref)
    (output.sum() + h_n.square().sum()).backward()
    (expected.sum() + h_ref.square().sum()).backward()
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("case", ["eval", "no_dropout", "one_layer", "packed", "unbatched"])
def test_lstm_is_nn_lstm_itself_where_nothing_is_dropped_between_layers(case):
    from torch.nn.utils.rnn import pack_padded_sequence

    reference, ours = lstm_pair(num_layers=1 if case == "one_layer" else 2,
                                dropout=0.0 if case in ("no_dropout", "one_layer") else 0.4,
                                batch_first=True)
    torch.manual_seed(6)
    x = torch.randn(4, 7, 6, dtype=torch.float64)
    if case == "packed":
        x = pack_padded_sequence(x, torch.tensor([7, 5, 3, 2]), batch_first=True)
    elif case == "unbatched":
        x = x[0]
    for module in (reference, ours):
        module.train(case != "eval")
    torch.manual_seed(7)
    expected = reference(x)
    torch.manual_seed(7)  # the same draws where PyTorch's kernel drops (packed, unbatched)
    got = ours(x)
    assert torch.equal(getattr(got[0], "data", got[0]), getattr(expected[0], "data", expected[0]))
    assert torch.equal(got[1][0], expected[1][0]) and torch.equal(got[1][1], expected[1][1])


def test_lstm_is_an_nn_lstm_with_its_state_dict_and_repr():
    reference, ours = lstm_pair(bidirectional=True)
    assert isinstance(ours, nn.LSTM)
    assert repr(ours) == repr(reference)
    assert list(ours.state_dict()) == list(reference.state_dict())


@pytest.fixture
def kept_fractions(monkeypatch) -> list[float]:
    """The kept fraction of every mask msakit's modules draw through ``dropout`` in the test."""
    kept = []

    def counting_dropout(input, p=0.5, training=True, inplace=False):
        out = dropout(input, p, training, inplace)
        kept.append(float((out != 0).double().mean()))
        return out

    monkeypatch.setattr(dropout_module, "dropout", counting_dropout)
    return kept


def test_lstm_kept_fraction_between_layers_is_one_minus_p(kept_fractions):
    kept = kept_fractions
    lstm = LSTM(8, 64, num_layers=2, dropout=0.3, batch_first=True)
    torch.manual_seed(8)
    lstm.train()(torch.randn(32, 50, 8))
    n = 32 * 50 * 64  # tanh outputs are never exactly 0
    assert len(kept) == 1 and abs(kept[0] - 0.7) < 5 * math.sqrt(0.3 * 0.7 / n)


# --- MultiheadAttention: msakit's dropout on the attention weights -----------------------------

def attention_pair(dropout=0.3, **kwargs) -> tuple[nn.MultiheadAttention, MultiheadAttention]:
    torch.manual_seed(9)
    kwargs.setdefault("batch_first", True)
    reference = nn.MultiheadAttention(12, 3, dropout=dropout, **kwargs).double()
    ours = MultiheadAttention(12, 3, dropout=dropout, **kwargs).double()
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def attention_inputs(case: str) -> tuple[tuple, dict]:
    """``(query, key, value)`` and mask arguments of a case; clip 2 of the key-padding cases
    may attend to nothing (every key masked)."""
    torch.manual_seed(10)
    x = torch.randn(4, 6, 12, dtype=torch.float64)
    y = torch.randn(4, 5, 12, dtype=torch.float64)
    padding = torch.zeros(4, 5, dtype=torch.bool)
    padding[1, 3:] = True
    padding[2, :] = True
    return {
        "self": ((x, x, x), {}),
        "self, future mask": ((x, x, x), {"attn_mask": torch.ones(6, 6).triu(1).bool()}),
        "cross, key padding": ((x, y, y), {"key_padding_mask": padding}),
        "key and value apart, float padding": (
            (x, y, 2 * y), {"key_padding_mask": torch.zeros(4, 5, dtype=torch.float64)
                            .masked_fill(padding, float("-inf"))}),
        "per-head float mask and padding": (
            (x, y, y), {"attn_mask": torch.randn(12, 6, 5, dtype=torch.float64),
                        "key_padding_mask": torch.zeros(4, 5, dtype=torch.float64)
                        .masked_fill(padding, float("-inf"))}),
    }[case]


ATTENTION_CASES = ["self", "self, future mask", "cross, key padding",
                   "key and value apart, float padding", "per-head float mask and padding"]


@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention_is_pytorchs_math_path_with_its_weights_dropped_by_msakit(monkeypatch, case):
    """Train mode, the mask all ones: the outputs and gradients of PyTorch's own attention on
    its math path (the path it takes to drop attention weights on the CPU), at rate 0."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    reference, ours = attention_pair(dropout=0.0)
    ours.dropout = 0.3  # msakit's path ...
    calls = []

    def ones_mask(input, p=0.5, training=True, inplace=False):  # ... with nothing dropped
        calls.append((p, tuple(input.shape)))
        return input

    monkeypatch.setattr(dropout_module, "dropout", ones_mask)
    (query, key, value), masks = attention_inputs(case)
    inputs, reference_inputs = leaf_copies(query, key, value), leaf_copies(query, key, value)
    output, weights = ours.train()(*inputs, need_weights=False, **masks)
    assert weights is None
    assert calls == [(0.3, (4, 3, 6, inputs[1].shape[1]))]
    with sdpa_kernel(SDPBackend.MATH):
        expected, _ = reference.train()(*reference_inputs, need_weights=False, **masks)
    assert not output.isnan().any()
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12)
    output.square().sum().backward()
    expected.square().sum().backward()
    for a, b in zip(inputs, reference_inputs):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12, msg=name)


def leaf_copies(query, key, value) -> list[torch.Tensor]:
    """Copies that take gradients, one per distinct tensor: ``query is key`` (and ``key is
    value``) stays true of the copies, as the attention's packed in-projection reads it."""
    copies = {id(t): t.clone().requires_grad_() for t in (query, key, value)}
    return [copies[id(t)] for t in (query, key, value)]


def test_attention_drops_its_weights_at_its_rate(kept_fractions):
    kept = kept_fractions
    attention = MultiheadAttention(32, 4, dropout=0.25, batch_first=True)
    torch.manual_seed(11)
    x = torch.randn(64, 40, 32)
    first, _ = attention.train()(x, x, x, need_weights=False)
    second, _ = attention(x, x, x, need_weights=False)
    n = 64 * 4 * 40 * 40  # softmax weights are never exactly 0 here
    assert len(kept) == 2 and all(abs(k - 0.75) < 5 * math.sqrt(0.25 * 0.75 / n) for k in kept)
    assert not torch.equal(first, second)  # a new mask at every call


@pytest.mark.parametrize("case", ["eval", "no_dropout", "need_weights", "sequence_first",
                                  "other_key_width"])
def test_attention_is_nn_multihead_attention_itself_elsewhere(case):
    kwargs = {"batch_first": case != "sequence_first"}
    if case == "other_key_width":
        kwargs.update(kdim=7, vdim=7)
    reference, ours = attention_pair(dropout=0.0 if case == "no_dropout" else 0.3, **kwargs)
    torch.manual_seed(12)
    x = torch.randn(4, 6, 12, dtype=torch.float64)
    kv = torch.randn(4, 5, 7, dtype=torch.float64) if case == "other_key_width" else x
    for module in (reference, ours):
        module.train(case != "eval")
    torch.manual_seed(13)
    expected = reference(x, kv, kv, need_weights=case == "need_weights")
    torch.manual_seed(13)  # the same draws where PyTorch's kernel drops
    got = ours(x, kv, kv, need_weights=case == "need_weights")
    assert torch.equal(got[0], expected[0])
    assert (got[1] is None) == (expected[1] is None)
    if expected[1] is not None:
        assert torch.equal(got[1], expected[1])


def test_attention_is_an_nn_multihead_attention_with_its_state_dict_and_repr():
    reference, ours = attention_pair()
    assert isinstance(ours, nn.MultiheadAttention)
    assert repr(ours) == repr(reference)
    assert list(ours.state_dict()) == list(reference.state_dict())
