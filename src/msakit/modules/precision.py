"""Keep precision-critical computations in float32 under ``torch.autocast``.

``train.precision=bf16|fp16`` runs forward passes under autocast. Some losses lose too much in
half precision: CMD's higher central moments (``x^5`` of bf16's 8-bit mantissa), ULGM's
distance ratios, and the softmax over DMD's edge scores. Those functions are wrapped with
:func:`full_precision`: autocast is switched off inside and floating-point tensor arguments are
cast to float32 when they are half precision (float64 stays float64, e.g. in the parity tests;
gradients flow back through the casts).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def _to_float32(value: Any) -> Any:
    """Half-precision tensors to float32; float32 and float64 stay as they are."""
    if isinstance(value, torch.Tensor) and value.dtype in (torch.float16, torch.bfloat16):
        return value.float()
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
