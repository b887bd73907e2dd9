"""Fully connected products on the CPU through oneDNN's matmul.

PyTorch computes ``F.linear`` / ``addmm`` in float32 on the CPU with its BLAS (MKL in the x86
wheels). On AMD CPUs with AVX-512 (this project's AMD EPYC Zen 4 machines) MKL does not take its
fastest code path: it runs its AVX2 kernels, about 95 GFLOP/s on one core, and oneDNN's matmul,
which PyTorch also ships and already uses for the CPU LSTM, runs the same float32 product at about
twice that (``benchmarks/cpu_linear.py``). On a CPU without AVX-512 there is little to gain: on
an AMD EPYC Zen 2 (AVX2 only) both reach the core's AVX2 peak, and whole training steps through
oneDNN ranged from 21 % faster (TFN's deep fusion product) to 24 % slower (MAG-BERT), the same on
the whole (``benchmarks/cpu_linear_models.py``, docs/performance.md). This module routes a
model's fully connected products there:

- :func:`linear` is ``F.linear`` (plus an optional addend, ``addmm``'s ``input``) computed by
  PyTorch's ``torch.ops.mkldnn._linear_pointwise`` where :func:`onednn_applies`, with a backward
  whose two products run there too; everywhere else it is ``F.linear`` itself.
- :class:`Linear` is ``nn.Linear`` whose forward is :func:`linear`; :func:`use_cpu_linear` turns
  every plain ``nn.Linear`` below a module into one (same parameters, state dict and repr).

It is the same float32 arithmetic with another summation order, so results differ from
``F.linear``'s in the last bits, as they differ between PyTorch's own CPU paths (AVX2 /
AVX-512). The backend is a process-wide setting: ``"onednn"`` by default where oneDNN is
available on an x86-64 CPU, ``"torch"`` to compute every product with ``F.linear``
(:func:`set_cpu_linear`, :func:`cpu_linear`; an experiment's ``train.cpu_linear``, ``auto`` by
default, applies while it runs). ``"auto"`` is ``"onednn"`` only where it was measured to win
(:data:`ONEDNN_PREFERRED`: oneDNN is available and the CPU is an AMD one with AVX-512), else
``"torch"``.

``_linear_pointwise`` is PyTorch's internal operator (its inductor backend's); a PyTorch build
without it, or without oneDNN, gets ``F.linear`` (:data:`ONEDNN_AVAILABLE` says which).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import forward_ad
from torch.utils._python_dispatch import _get_current_dispatch_mode

from msakit.cpu import cpuinfo_field

CpuLinear = Literal["onednn", "torch"]
CpuLinearSetting = Literal["auto", "onednn", "torch"]

#: Products smaller than this many multiply-adds (rows x in x out) stay with ``F.linear``: the
#: oneDNN call and the autograd function cost about 15 us forward and 50 us forward + backward
#: more, which only products above ~2 M multiply-adds win back (``benchmarks/cpu_linear.py``).
MIN_MULTIPLY_ADDS = 1 << 21


def _onednn_operator():
    if not torch.backends.mkldnn.is_available():
        return None
    if platform.machine().lower() not in {"x86_64", "amd64"}:
        return None
    namespace = getattr(torch.ops, "mkldnn", None)
    try:
        return namespace._linear_pointwise if namespace is not None else None
    except (AttributeError, RuntimeError):
        return None


_LINEAR_POINTWISE = _onednn_operator()
#: Whether this PyTorch build has oneDNN's linear operator on an x86-64 CPU.
ONEDNN_AVAILABLE = _LINEAR_POINTWISE is not None


def _cpu_vendor() -> str:
    """The CPU's vendor string (``AuthenticAMD``, ``GenuineIntel``, ...); "" where unknown."""
    vendor = cpuinfo_field("vendor_id")
    if vendor:
        return vendor
    processor = platform.processor()  # Windows: "AMD64 Family 25 Model 17 ..., AuthenticAMD"
    return next((v for v in ("AuthenticAMD", "GenuineIntel") if v in processor), "")


def _has_avx512() -> bool:
    """Whether the CPU has AVX-512 (the hardware, whatever ``ATEN_CPU_CAPABILITY`` selects:
    oneDNN picks its kernels by the hardware)."""
    check = getattr(getattr(torch, "cpu", None), "_is_avx512_supported", None)
    return bool(check()) if check is not None else False


def onednn_preferred(vendor: str | None = None, avx512: bool | None = None) -> bool:
    """Whether ``"auto"`` means ``"onednn"`` on this CPU (or on one of that vendor / AVX-512
    support): oneDNN is available and the CPU is an AMD one with AVX-512, where MKL runs its AVX2
    kernels and oneDNN's are about twice as fast. Without AVX-512 both reach the same AVX2 peak;
    on Intel CPUs MKL takes its AVX-512 kernels itself."""
    vendor = _cpu_vendor() if vendor is None else vendor
    avx512 = _has_avx512() if avx512 is None else avx512
    return ONEDNN_AVAILABLE and vendor == "AuthenticAMD" and avx512


#: What ``"auto"`` resolves to on this machine (:func:`onednn_preferred`).
ONEDNN_PREFERRED = onednn_preferred()
_backend: CpuLinear = "onednn" if ONEDNN_PREFERRED else "torch"


def get_cpu_linear() -> CpuLinear:
    """The backend :func:`linear` uses now."""
    return _backend


def set_cpu_linear(backend: CpuLinearSetting) -> CpuLinear:
    """Set the process-wide backend of :func:`linear`; returns the previous one.

    ``"auto"`` is ``"onednn"`` where :data:`ONEDNN_PREFERRED` (an AMD CPU with AVX-512 and a
    PyTorch build with oneDNN), else ``"torch"``; ``"onednn"`` where oneDNN is not available is
    an error, not a silent ``"torch"``.
    """
    global _backend
    if backend not in ("auto", "onednn", "torch"):
        raise ValueError(f"cpu_linear must be 'auto', 'onednn' or 'torch', got {backend!r}")
    if backend == "auto":
        backend = "onednn" if ONEDNN_PREFERRED else "torch"
    if backend == "onednn" and not ONEDNN_AVAILABLE:
        raise ValueError("cpu_linear='onednn' needs a PyTorch build with oneDNN on an x86-64 "
                         "CPU; this one has none (use cpu_linear='torch')")
    previous, _backend = _backend, backend
    return previous


@contextmanager
def cpu_linear(backend: CpuLinearSetting) -> Iterator[None]:
    """:func:`set_cpu_linear` for a block (e.g. ``"torch"`` under a FLOP counter, which does
    not know oneDNN's operator)."""
    previous = set_cpu_linear(backend)
    try:
        yield
    finally:
        set_cpu_linear(previous)


def _plain(tensor: torch.Tensor | None) -> bool:
    return tensor is None or (type(tensor) in (torch.Tensor, nn.Parameter)
                              and tensor.device.type == "cpu"
                              and tensor.dtype == torch.float32)


#: ``torch.func``'s "is a transform active" (a PyTorch-internal call; None where a build lacks it)
_FUNCTORCH_TRANSFORMS_ACTIVE = getattr(torch._C, "_are_functorch_transforms_active", None)


def _functorch_active() -> bool:
    return _FUNCTORCH_TRANSFORMS_ACTIVE is not None and _FUNCTORCH_TRANSFORMS_ACTIVE()


def plain_autograd() -> bool:
    """Whether no ``torch.func`` transform (``vmap``, ``grad``, ``jacrev`` ...) and no
    forward-mode AD level is active: then an autograd function without ``setup_context``, vmap
    or jvp rules may run (:func:`linear`'s oneDNN route, ``mfn_core``'s cell sequences)."""
    return not _functorch_active() and getattr(forward_ad, "_current_level", -1) < 0


def onednn_applies(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   addend: torch.Tensor | None = None) -> bool:
    """Whether :func:`linear` computes ``x W^T (+ b) (+ addend)`` with oneDNN: the backend is
    ``"onednn"``; every tensor is a plain float32 CPU tensor; ``x`` has 2 or more dimensions; no
    CPU autocast, tracing, compiling, dispatch mode, ``torch.func`` transform (``vmap``,
    ``grad``, ``jacrev`` ...) or forward-mode AD level is active; and the product has at least
    :data:`MIN_MULTIPLY_ADDS` multiply-adds."""
    if _backend != "onednn" or x.dim() < 2 or weight.dim() != 2:
        return False
    out_features, in_features = weight.shape
    # the size first: most products below it are small, and this is their whole overhead
    if x.numel() * out_features < MIN_MULTIPLY_ADDS or in_features == 0:
        return False
    if not (_plain(x) and _plain(weight) and _plain(bias) and _plain(addend)):
        return False
    if torch.is_autocast_enabled("cpu") or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    # a FLOP counter, a fake-tensor tracer ...: they know PyTorch's own operators only
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    # the transforms and forward-mode AD need rules (setup_context, vmap, jvp) that oneDNN's
    # operator and the autograd function below do not have
    return plain_autograd()


def _product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             addend: torch.Tensor | None) -> torch.Tensor:
    if addend is None:
        return _LINEAR_POINTWISE(x, weight, bias, "none", [], "")
    return _LINEAR_POINTWISE.binary(x, addend, weight, bias, "add")


class _OneDNNLinear(torch.autograd.Function):
    """``x W^T + b + addend`` and its gradients, each product through oneDNN.

    A backward that builds a graph (``create_graph=True``: gradient penalties, Hessian-vector
    products) computes the same gradients with PyTorch's differentiable products instead, so
    that they can be differentiated again."""

    @staticmethod
    def forward(ctx, x, weight, bias, addend):
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.has_addend = bias is not None, addend is not None
        return _product(x, weight, bias, addend)

    @staticmethod
    def backward(ctx, grad_output):
        x, weight = ctx.saved_tensors
        grad_x = grad_weight = grad_bias = grad_addend = None
        rows = grad_output.reshape(-1, grad_output.shape[-1])  # (N, out)
        differentiable = torch.is_grad_enabled()  # a backward with create_graph=True
        if ctx.needs_input_grad[0]:
            grad_x = (grad_output.matmul(weight) if differentiable else
                      _product(grad_output, weight.t(), None, None))
        if ctx.needs_input_grad[1]:
            inputs = x.reshape(-1, x.shape[-1])  # (N, in)
            # (out, N) x (N, in), the transposes passed as views (oneDNN copies an operand it
            # cannot read in place)
            grad_weight = (rows.t().mm(inputs) if differentiable else
                           _product(rows.t(), inputs.t(), None, None))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = rows.sum(0)
        if ctx.has_addend and ctx.needs_input_grad[3]:
            grad_addend = grad_output
        return grad_x, grad_weight, grad_bias, grad_addend


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           addend: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias) + addend`` (``addend`` optional, of the output's shape, as
    ``torch.addmm``'s ``input``), through oneDNN where :func:`onednn_applies`.

    Args:
        x: ``(..., in)``.
        weight: ``(out, in)``.
        bias: ``(out,)`` or None.
        addend: ``(..., out)``, the output's shape, or None.

    Returns:
        ``(..., out)``.
    """
    fused = addend if addend is not None and addend.shape == (
        *x.shape[:-1], weight.shape[0]) else None
    if not onednn_applies(x, weight, bias, fused):
        output, fused = F.linear(x, weight, bias), None
    else:
        tensors = (x, weight, bias, fused)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
            output = _OneDNNLinear.apply(*tensors)
        else:
            output = _product(*tensors)
    # an addend the product did not take in (F.linear's, or of another shape) is added here
    return output if addend is None or fused is not None else output + addend


class Linear(nn.Linear):
    """``nn.Linear`` computed by :func:`linear` (same parameters, state dict and repr)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def use_cpu_linear(module: nn.Module) -> nn.Module:
    """Makes, in place, every plain ``nn.Linear`` below ``module`` (a Hugging Face encoder's
    included) a :class:`Linear`: the module object, its parameters and hooks stay; only its
    class changes, so an optimiser built before still holds its parameters. Returns ``module``.
    """
    for child in module.modules():
        if type(child) is nn.Linear:
            child.__class__ = Linear
    return module
