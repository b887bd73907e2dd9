"""Keep precision-critical computations in float32 under ``torch.autocast``.

``train.precision=bf16|fp16`` runs forward passes under autocast. Some losses lose too much in
half precision: CMD's higher central moments (``x^5`` of bf16's 8-bit mantissa), ULGM's
distance ratios, and the softmax over DMD's edge scores. Those functions are wrapped with
:func:`full_precision`: autocast is switched off inside and floating-point tensor arguments are
cast to float32 when they are half precision (float64 stays float64, e.g. in the parity tests;
gradients flow back through the casts).

LSTMs on CPUs without AVX-512: under CPU bf16 autocast PyTorch hands an unpacked LSTM to
oneDNN with bf16 inputs and float32 weights, a primitive oneDNN cannot create on such CPUs (an
AMD EPYC Zen 2: "could not create a primitive descriptor for the LSTM forward propagation
primitive"). msakit's unpacked LSTM calls (:class:`msakit.modules.dropout.LSTM`,
:func:`msakit.modules.mfn_core.lstm_layer`) are wrapped with :func:`autocast_lstm`: where
:func:`cpu_autocast_lstm_supported` is False they run in float32, as :func:`full_precision`
runs a function; everything else stays in bf16. Where it is True nothing changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.nn.utils.rnn import PackedSequence

F = TypeVar("F", bound=Callable[..., Any])


def _to_float32(value: Any) -> Any:
    """Half-precision tensors (also inside a tuple or list, e.g. an LSTM's ``(h_0, c_0)``) to
    float32; float32 and float64 stay as they are."""
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
    if type(value) in (tuple, list):
        return type(value)(_to_float32(v) for v in value)
    return value


def full_precision(function: F) -> F:
    """Decorator: run ``function`` outside autocast on float32 copies of its tensor arguments."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        device = next((a.device.type for a in (*args, *kwargs.values())
                       if isinstance(a, torch.Tensor)), "cpu")
        args = tuple(_to_float32(a) for a in args)
        kwargs = {k: _to_float32(v) for k, v in kwargs.items()}
        if not torch.amp.is_autocast_available(device):  # e.g. meta tensors: no autocast there
            return function(*args, **kwargs)
        with torch.autocast(device_type=device, enabled=False):
            return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@functools.cache
def cpu_autocast_lstm_supported() -> bool:
    """Whether PyTorch's unpacked CPU LSTM runs under bf16 autocast on this machine: a one-step
    probe, once per process. False where oneDNN cannot create the LSTM primitive for bf16
    inputs and float32 weights (CPUs without AVX-512, e.g. AMD EPYC Zen 2)."""
    # zero weights, not an nn.LSTM: a module's initialisation would draw from the global RNG
    weights = [torch.zeros(4, 1), torch.zeros(4, 1), torch.zeros(4), torch.zeros(4)]
    state = (torch.zeros(1, 1, 1), torch.zeros(1, 1, 1))
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            torch.lstm(torch.zeros(1, 1, 1), state, weights, True, 1, 0.0, False, False, False)
    except RuntimeError:
        return False
    return True


def autocast_lstm(function: F) -> F:
    """Decorator for an unpacked LSTM call: under CPU autocast on a machine where
    :func:`cpu_autocast_lstm_supported` is False (its first tensor argument on the CPU, no
    ``PackedSequence`` among them), it runs as :func:`full_precision` (float32, autocast off);
    otherwise as it is."""

    in_float32 = full_precision(function)

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.is_autocast_enabled("cpu") and not cpu_autocast_lstm_supported():
            values = (*args, *kwargs.values())
            first = next((a for a in values if isinstance(a, torch.Tensor)), None)
            # a PackedSequence takes PyTorch's own (non-oneDNN) path, which runs under autocast
            if (first is not None and first.device.type == "cpu"
                    and not any(isinstance(a, PackedSequence) for a in values)):
                return in_float32(*args, **kwargs)
        return function(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
