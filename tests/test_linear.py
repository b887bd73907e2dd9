"""msakit.modules.linear: fully connected products through oneDNN, against F.linear."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from msakit.config import build_config
from msakit.models import FeatureDims, create_model, list_models
from msakit.modules import linear as linear_module
from msakit.modules.linear import (
    ONEDNN_AVAILABLE,
    ONEDNN_PREFERRED,
    Linear,
    cpu_linear,
    get_cpu_linear,
    linear,
    onednn_applies,
    onednn_preferred,
    set_cpu_linear,
    use_cpu_linear,
)

needs_onednn = pytest.mark.skipif(not ONEDNN_AVAILABLE,
                                  reason="this PyTorch build has no oneDNN on an x86-64 CPU")


@pytest.fixture
def onednn_calls(monkeypatch):
    """The oneDNN route for the test (whatever ``auto`` chose on this CPU), recording every call
    of oneDNN's operator (the plain and the fused-addend one)."""
    if not ONEDNN_AVAILABLE:
        pytest.skip("this PyTorch build has no oneDNN on an x86-64 CPU")
    calls = []
    operator = linear_module._LINEAR_POINTWISE

    class Recorder:
        def __call__(self, x, weight, *rest):
            calls.append(("plain", tuple(x.shape), tuple(weight.shape)))
            return operator(x, weight, *rest)

        def binary(self, x, addend, weight, *rest):
            calls.append(("add", tuple(x.shape), tuple(weight.shape)))
            return operator.binary(x, addend, weight, *rest)

    monkeypatch.setattr(linear_module, "_LINEAR_POINTWISE", Recorder())
    with cpu_linear("onednn"):
        yield calls


def leaves(*tensors):
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in tensors]


def forward_and_gradients(function, x, weight, bias, addend, upstream):
    inputs = leaves(x, weight, bias, addend)
    output = function(*inputs)
    output.backward(upstream)
    return output.detach(), [None if t is None else t.grad for t in inputs]


def reference(x, weight, bias, addend):
    output = F.linear(x, weight, bias)
    return output if addend is None else output + addend


CASES = {
    "2-D with bias": ((64, 256), 512, True, False),
    "3-D without bias": ((4, 50, 192), 384, False, False),
    "2-D with an addend (addmm)": ((128, 256), 1024, True, True),
    "3-D with bias and addend": ((8, 20, 128), 256, True, True),
}


@needs_onednn
@pytest.mark.parametrize("case", CASES)
def test_output_and_gradients_equal_f_linear_in_float64(case, onednn_calls):
    """oneDNN's float32 results are as close to the float64 truth as F.linear's own."""
    x_shape, out_features, with_bias, with_addend = CASES[case]
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*x_shape, generator=generator)
    weight = torch.randn(out_features, x_shape[-1], generator=generator) / x_shape[-1] ** 0.5
    bias = torch.randn(out_features, generator=generator) if with_bias else None
    addend = torch.randn(*x_shape[:-1], out_features, generator=generator) if with_addend \
        else None
    upstream = torch.randn(*x_shape[:-1], out_features, generator=generator)
    truth = forward_and_gradients(
        reference, *(None if t is None else t.double() for t in (x, weight, bias, addend)),
        upstream.double())
    ours = forward_and_gradients(linear, x, weight, bias, addend, upstream)
    torch_fp32 = forward_and_gradients(reference, x, weight, bias, addend, upstream)
    kinds = {kind for kind, _, _ in onednn_calls}
    assert kinds == ({"add"} if with_addend else {"plain"}) | {"plain"}  # backward: plain
    assert len(onednn_calls) == 3  # forward, input gradient, weight gradient
    rows = math.prod(x_shape[:-1])
    reduced = {"output": x_shape[-1], "x": out_features, "weight": rows, "bias": rows,
               "addend": 1}  # how many terms each result sums
    for name, want, got, fp32 in zip(
            ["output", "x", "weight", "bias", "addend"],
            [truth[0], *truth[1]], [ours[0], *ours[1]], [torch_fp32[0], *torch_fp32[1]]):
        if want is None:
            assert got is None, name
            continue
        scale = want.abs().max().item()
        error = (got.double() - want).abs().max().item() / scale
        fp32_error = (fp32.double() - want).abs().max().item() / scale
        # a float32 sum of n products is off by about sqrt(n) units in the last place (oneDNN's
        # AVX2 kernels, e.g. on an AMD Zen 2: 1.3e-6 for n = 1024 where F.linear's is 3.1e-7)
        assert error < 4 * reduced[name] ** 0.5 * 2.0 ** -24, (name, error)
        assert error < 10 * fp32_error + 1e-7, (name, error, fp32_error)


@needs_onednn
def test_non_contiguous_inputs_and_frozen_weights(onednn_calls):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(256, 64, generator=generator).t()  # (64, 256), transposed strides
    weight = torch.randn(512, 256, generator=generator)
    frozen = weight.clone()
    x_leaf = x.detach().clone().requires_grad_(True)
    output = linear(x_leaf, frozen)
    output.square().sum().backward()
    expected = F.linear(x.double(), weight.double())
    assert torch.allclose(output.double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())
    reference_grad = (2 * expected) @ weight.double()
    assert torch.allclose(x_leaf.grad.double(), reference_grad, rtol=0,
                          atol=1e-5 * reference_grad.abs().max().item())
    # the frozen weight needs no gradient product: forward and the input gradient only
    assert len(onednn_calls) == 2


@needs_onednn
def test_no_grad_calls_the_operator_without_autograd(onednn_calls):
    x, weight = torch.randn(64, 256), torch.randn(512, 256, requires_grad=True)
    with torch.no_grad():
        output = linear(x, weight)
    assert output.grad_fn is None and len(onednn_calls) == 1


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def layer_pair(seed: int = 5) -> tuple[Linear, nn.Linear]:
    """A :class:`Linear` and an ``nn.Linear`` with the same weights, 256 -> 512 (a product of
    64 rows is over ``MIN_MULTIPLY_ADDS``)."""
    torch.manual_seed(seed)
    ours = Linear(256, 512)
    theirs = nn.Linear(256, 512)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


@needs_onednn
def test_torch_func_per_sample_gradients_equal_f_linears(onednn_calls):
    """``torch.func`` transforms (here per-sample gradients, ``vmap(grad)``, and ``jacrev``)
    run through F.linear and give nn.Linear's values."""
    ours, theirs = layer_pair()
    x = torch.randn(6, 64, 256)
    assert onednn_applies(x[0], ours.weight)  # outside a transform each sample would use oneDNN

    def per_sample(layer):
        params = {k: v.detach() for k, v in layer.named_parameters()}

        def loss(p, sample):
            return torch.func.functional_call(layer, p, (sample,)).square().mean()

        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)

    got, want = per_sample(ours), per_sample(theirs)
    assert onednn_calls == []
    assert got.keys() == want.keys() == {"weight", "bias"}
    for name in got:
        assert got[name].shape == (6, *dict(ours.named_parameters())[name].shape)
        assert relative_error(got[name], want[name]) < 1e-6, name
    # and they are the per-sample gradients, as a loop of ordinary backward passes gives them
    for i in (0, 5):
        ours.zero_grad()
        ours(x[i]).square().mean().backward()
        assert relative_error(got["weight"][i], ours.weight.grad) < 1e-5
    assert len(onednn_calls) == 4  # the loop: forward and weight gradient, twice
    jacobian = torch.func.jacrev(lambda sample: ours(sample).sum(0))(x[0])
    assert jacobian.shape == (512, 64, 256)
    assert relative_error(jacobian[:, 0], ours.weight) < 1e-6
    assert len(onednn_calls) == 4


@needs_onednn
def test_forward_mode_ad_equals_f_linears(onednn_calls):
    ours, theirs = layer_pair(6)
    x, tangent = torch.randn(64, 256), torch.randn(64, 256)
    with torch.no_grad():
        want = torch.func.jvp(theirs, (x,), (tangent,))
        got = torch.func.jvp(ours, (x,), (tangent,))
        with torch.autograd.forward_ad.dual_level():
            dual = ours(torch.autograd.forward_ad.make_dual(x, tangent))
            got_dual = torch.autograd.forward_ad.unpack_dual(dual)
    for value, expected in zip((*got, *got_dual), (*want, *want)):
        assert relative_error(value, expected) < 1e-6
    assert onednn_calls == []


@needs_onednn
def test_double_backward_equals_f_linears(onednn_calls):
    """A gradient penalty (``create_graph=True``) differentiates the backward: its gradients
    equal nn.Linear's, while a plain backward still runs through oneDNN."""
    ours, theirs = layer_pair(7)
    x = torch.randn(64, 256)

    def penalty_gradients(layer):
        inputs = x.clone().requires_grad_(True)
        output = torch.tanh(layer(inputs))
        (grad_input,) = torch.autograd.grad(output.square().sum(), inputs, create_graph=True)
        if layer is ours:  # the forward; the graph-building backward used PyTorch's products
            assert len(onednn_calls) == 1
        penalty = grad_input.square().sum()
        return torch.autograd.grad(penalty, [inputs, layer.weight, layer.bias])

    for got, want in zip(penalty_gradients(ours), penalty_gradients(theirs)):
        assert relative_error(got, want) < 1e-5
    # the second backward passes the forward's node again, without a graph: through oneDNN
    assert len(onednn_calls) == 3
    onednn_calls.clear()
    ours(x.clone().requires_grad_(True)).square().sum().backward()
    assert len(onednn_calls) == 3  # forward, input gradient, weight gradient


@needs_onednn
def test_what_stays_with_f_linear(onednn_calls):
    big_x, big_weight = torch.randn(64, 256), torch.randn(512, 256)
    assert onednn_applies(big_x, big_weight)
    small = (torch.randn(4, 16), torch.randn(8, 16))
    assert not onednn_applies(*small)  # below MIN_MULTIPLY_ADDS
    assert not onednn_applies(big_x.double(), big_weight.double())
    assert not onednn_applies(big_x[0], big_weight)  # 1-D input
    assert not onednn_applies(big_x, big_weight, addend=torch.randn(64, 512).bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn_applies(big_x, big_weight)
        assert linear(big_x, big_weight).dtype == torch.bfloat16  # autocast still applies
    with cpu_linear("torch"):
        assert not onednn_applies(big_x, big_weight)
        linear(big_x, big_weight)
    assert onednn_calls == []
    # a FLOP counter sees PyTorch's own product, so it counts it
    with FlopCounterMode(display=False) as counter:
        linear(big_x, big_weight)
    assert counter.get_total_flops() == 2 * 64 * 256 * 512
    assert onednn_calls == []


def test_an_addend_of_another_shape_is_added_after():
    x, weight, addend = torch.randn(64, 256), torch.randn(512, 256), torch.randn(512)
    expected = F.linear(x.double(), weight.double()) + addend.double()
    got = linear(x, weight, addend=addend)
    assert torch.allclose(got.double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_setting_the_backend():
    before = get_cpu_linear()
    assert before == ("onednn" if ONEDNN_PREFERRED else "torch")
    with cpu_linear("torch"):
        assert get_cpu_linear() == "torch"
        with cpu_linear("auto"):
            assert get_cpu_linear() == before
        assert get_cpu_linear() == "torch"
    assert get_cpu_linear() == before
    with pytest.raises(ValueError, match="'auto', 'onednn' or 'torch'"):
        set_cpu_linear("mkl")
    assert get_cpu_linear() == before


@pytest.mark.parametrize("vendor, avx512, preferred", [
    ("AuthenticAMD", True, True),    # Zen 4: MKL runs its AVX2 kernels, oneDNN AVX-512
    ("AuthenticAMD", False, False),  # Zen 2/3: both at the AVX2 peak
    ("GenuineIntel", True, False),   # MKL takes AVX-512 itself
    ("GenuineIntel", False, False),
    ("", True, False),               # unknown vendor: PyTorch's own product
])
def test_auto_is_onednn_only_on_amd_cpus_with_avx512(monkeypatch, vendor, avx512, preferred):
    monkeypatch.setattr(linear_module, "ONEDNN_AVAILABLE", True)
    assert onednn_preferred(vendor, avx512) is preferred
    monkeypatch.setattr(linear_module, "ONEDNN_AVAILABLE", False)
    assert onednn_preferred(vendor, avx512) is False


def test_auto_follows_this_cpu(monkeypatch):
    assert ONEDNN_PREFERRED == onednn_preferred()
    if not ONEDNN_AVAILABLE:
        pytest.skip("this PyTorch build has no oneDNN on an x86-64 CPU")
    for preferred in (True, False):
        monkeypatch.setattr(linear_module, "ONEDNN_PREFERRED", preferred)
        with cpu_linear("auto"):
            assert get_cpu_linear() == ("onednn" if preferred else "torch")


def test_onednn_without_onednn_is_an_error(monkeypatch):
    monkeypatch.setattr(linear_module, "ONEDNN_AVAILABLE", False)
    with pytest.raises(ValueError, match="needs a PyTorch build with oneDNN"):
        set_cpu_linear("onednn")


def test_use_cpu_linear_keeps_parameters_state_and_repr():
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(),
                          nn.MultiheadAttention(512, 4, batch_first=True).out_proj,
                          nn.Linear(512, 3, bias=False))
    parameters = list(model.parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    text = repr(model)
    x = torch.randn(64, 256)
    expected = model(x)
    assert use_cpu_linear(model) is model
    assert type(model[0]) is Linear and type(model[3]) is Linear
    assert type(model[2]) is not Linear  # only plain nn.Linear changes class
    # the same objects: an optimiser built before still holds them
    assert [id(p) for p in model.parameters()] == [id(p) for p in parameters]
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert repr(model) == text
    got = model(x)
    assert torch.allclose(got, expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_train_cpu_linear_applies_while_an_experiment_runs(mosi_word_aligned, tmp_path,
                                                           monkeypatch):
    from msakit.config import build_config
    from msakit.training import run_experiment

    seen = []
    original = linear_module.linear

    def recording_linear(*args, **kwargs):
        seen.append(get_cpu_linear())
        return original(*args, **kwargs)

    monkeypatch.setattr(linear_module, "linear", recording_linear)
    monkeypatch.setattr(Linear, "forward", lambda self, x: recording_linear(x, self.weight,
                                                                            self.bias))
    before = get_cpu_linear()
    config = build_config("lf_dnn", [f"data.path={mosi_word_aligned}", "data.folds=2",
                                     f"run.output_dir={tmp_path}", "train.epochs=1",
                                     "model.freeze_language_model=true", "train.cpu_linear=torch"])
    run_dir, _ = run_experiment(config, seeds=[1], progress=False)
    assert seen and set(seen) == {"torch"}  # LF-DNN's layers, in training and evaluation
    assert get_cpu_linear() == before  # given back when the experiment ends
    environment = json.loads((run_dir / "env.json").read_text())
    assert environment["cpu"]["linear"] == "torch"


def test_train_cpu_linear_onednn_without_onednn_is_a_config_error(monkeypatch):
    from msakit.config import ConfigError, build_config
    from msakit.training.trainer import apply_cpu_linear

    monkeypatch.setattr(linear_module, "ONEDNN_AVAILABLE", False)
    with pytest.raises(ConfigError, match="train.cpu_linear: .*needs a PyTorch build with oneDNN"):
        apply_cpu_linear(build_config("lf_dnn", ["train.cpu_linear=onednn"]))
    with pytest.raises(ConfigError, match="cpu_linear"):
        build_config("lf_dnn", ["train.cpu_linear=mkl"])


@pytest.fixture(scope="module")
def real_batch(mosi_word_aligned):
    """Eight real MOSI clips of unequal lengths, word-aligned, as one padded batch."""
    from msakit.data import load_dataset, make_loader

    split = load_dataset(mosi_word_aligned).split("all").subset([0, 3, 7, 12, 40, 41, 100, 150])
    return next(iter(make_loader(split, "all-MiniLM-L6-v2", batch_size=8, word_aligned=True)))


@needs_onednn
@pytest.mark.parametrize("name", ["lf_dnn", "mult", "mfn", "tfn", "tetfn", "graph_mfn", "mfm"])
def test_torch_func_grad_of_a_model_equals_its_backward_through_onednn(name, real_batch,
                                                                       onednn_calls):
    """``torch.func.grad`` over a whole model (F.linear under the transform) gives the gradients
    an ordinary backward computes through oneDNN, up to float32 rounding. (Models whose
    encoders run PyTorch's packed LSTM, e.g. Self-MM and MISA, stop inside PyTorch's
    ``_VF.lstm`` under the transforms, with either backend.)"""
    torch.manual_seed(0)
    model = create_model(build_config(name).model, FeatureDims(audio=74, vision=47)).eval()
    named = {k: v for k, v in model.named_parameters() if v.requires_grad}

    def total(parameters):
        return torch.func.functional_call(model, parameters, (real_batch,)).prediction.sum()

    transformed = torch.func.grad(total)({k: v.detach() for k, v in named.items()})
    assert onednn_calls == []
    model(real_batch).prediction.sum().backward()
    assert onednn_calls  # the ordinary backward went through oneDNN
    reached = [k for k, v in named.items() if v.grad is not None]
    assert reached and all(transformed[k].abs().max() == 0 for k in named if k not in reached)
    scale = max(named[k].grad.abs().max().item() for k in reached)
    error = max((transformed[k] - named[k].grad).abs().max().item() for k in reached) / scale
    assert error < 1e-5, (name, error)  # measured: <= 8.6e-7 over 20 models


@needs_onednn
@pytest.mark.parametrize("name", list_models())
def test_every_model_predicts_the_same_through_onednn(name, real_batch, onednn_calls):
    """Each registered model at its shipped config, float32, eval: the predictions through
    oneDNN's products equal F.linear's up to float32 rounding."""
    torch.manual_seed(0)
    model = create_model(build_config(name).model, FeatureDims(audio=74, vision=47)).eval()
    with torch.no_grad():
        ours = model(real_batch).prediction
        with cpu_linear("torch"):
            reference = model(real_batch).prediction
    assert onednn_calls, f"{name} computed no product through oneDNN"
    scale = max(reference.abs().max().item(), 1.0)
    assert (ours - reference).abs().max().item() <= 1e-5 * scale, name  # measured: <= 7.8e-7


def test_the_cpu_vendor_comes_from_cpuinfo():
    from msakit.cpu import cpuinfo_field

    assert cpuinfo_field("no such field") is None
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo (not Linux)")
    lines = [line for line in cpuinfo.read_text(errors="replace").splitlines()
             if line.startswith("vendor_id")]
    if not lines:
        pytest.skip("/proc/cpuinfo names no vendor_id (not an x86 CPU)")
    assert linear_module._cpu_vendor() == cpuinfo_field("vendor_id") == lines[0].split(":")[1].strip()
