"""How the process's C allocator treats freed memory (``train.host_allocator``).

glibc's ``malloc`` serves every block above its mmap threshold (128 KiB at first, raised with
use up to 32 MiB) with a fresh ``mmap`` and gives it back to the kernel when it is freed, and it
returns the top of its heap to the kernel once more than twice that threshold is free there.
A training step frees and allocates the same large tensors every time (activations, gradients,
a fusion tensor), so each step pays the kernel to map them again: one page fault per 4 KiB and
a zero fill of every page. On this project's 2-core CPU box that was 40 % of the CPU time of a
step with MTFN's 560 MB fusion tensor (``benchmarks/host_allocator.py``).

:func:`keep_freed_memory` sets glibc's ``M_MMAP_MAX`` to 0 (every block from the heap) and
``M_TRIM_THRESHOLD`` to -1 (the heap is never trimmed: freed memory is kept for the next
allocation), with ``mallopt(3)``. The values computed are the same; the process's resident
memory stays at its peak instead of shrinking between steps, until
:func:`release_freed_memory` gives the free part back when an experiment ends. It changes
nothing for memory on a GPU.
"""

from __future__ import annotations

import ctypes
import platform
from typing import Literal

#: ``mallopt`` parameters (glibc's ``malloc.h``)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: ``M_TRIM_THRESHOLD`` of -1: the heap is never trimmed (``mallopt(3)``)
NEVER_TRIM = -1

_applied: str | None = None


def _glibc() -> ctypes.CDLL | None:
    """glibc (its soname is ``libc.so.6``), or None where the C library is not glibc (macOS,
    Windows, musl-based Linux)."""
    name, _ = platform.libc_ver()
    return ctypes.CDLL("libc.so.6") if name == "glibc" else None


def glibc_mallopt():
    """glibc's ``mallopt``, or None where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return None
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def release_freed_memory() -> bool:
    """Hand the heap's free memory back to the kernel (glibc's ``malloc_trim(0)``) in a process
    that keeps freed memory; True when it ran. Called when an experiment ends, so that a process
    that goes on (a notebook, a suite's next row) does not hold the training's peak."""
    if _applied != "keep":
        return False
    malloc_trim = _glibc().malloc_trim
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim(0)
    return True


def apply_host_allocator(mode: Literal["keep", "system"]) -> bool:
    """Apply ``train.host_allocator`` to this process; True when malloc's settings changed.

    ``"keep"``: :func:`keep_freed_memory`; ``"system"``: leave malloc as it is (a process that
    kept freed memory before keeps it: glibc has no way back to its adaptive defaults).
    """
    if mode == "system":
        return False
    if mode != "keep":
        raise ValueError(f"train.host_allocator must be 'keep' or 'system', got {mode!r}")
    return keep_freed_memory()


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed blocks for reuse (see the module docstring). Returns
    False where the C library is not glibc (nothing to change) and after the first call."""
    global _applied
    if _applied is not None:
        return False
    mallopt = glibc_mallopt()
    if mallopt is None:
        _applied = "not glibc"
        return False
    for parameter, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM)):
        if mallopt(parameter, value) != 1:  # mallopt returns 1 on success
            raise OSError(f"glibc's mallopt({parameter}, {value}) refused the setting of "
                          "train.host_allocator=keep; train.host_allocator=system leaves "
                          "malloc as it is")
    _applied = "keep"
    return True
