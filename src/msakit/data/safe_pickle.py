"""Loading dataset pickles without running the code a pickle can carry.

A pickle is a program: unpickling calls whatever importable callables the file names. Dataset
pickles (MMSA's ``aligned_50.pkl``, CMU-SDK's word-aligned pickles) only need builtin containers
and numpy arrays, so :func:`safe_load` admits exactly the globals that rebuild numpy arrays,
dtypes and scalars. Any other global is refused when the unpickler looks it up, before it can be
called, and the refusal names the file and the global.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import pickle
from pathlib import Path
from typing import Any

from msakit.data.dataset import DataError

# (module, name) as written in the pickle -> (module to import, attribute). numpy 2 moved
# ``numpy.core`` to ``numpy._core``; pickles written by either version name either path.
_NUMPY_CORE = ("numpy._core", "numpy.core")
_ALLOWED_NUMPY: dict[tuple[str, str], tuple[str, str]] = {}
for _written in _NUMPY_CORE:
    _ALLOWED_NUMPY[(f"{_written}.multiarray", "_reconstruct")] = ("multiarray", "_reconstruct")
    _ALLOWED_NUMPY[(f"{_written}.multiarray", "scalar")] = ("multiarray", "scalar")
    _ALLOWED_NUMPY[(f"{_written}.numeric", "_frombuffer")] = ("numeric", "_frombuffer")

_ALLOWED_PLAIN: dict[tuple[str, str], tuple[str, str]] = {
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    # protocol-2 pickles spell ``bytes`` objects as _codecs.encode(text, "latin1")
    ("_codecs", "encode"): ("_codecs", "encode"),
    ("builtins", "bytes"): ("builtins", "bytes"),
    ("builtins", "set"): ("builtins", "set"),
    ("builtins", "frozenset"): ("builtins", "frozenset"),
    ("builtins", "complex"): ("builtins", "complex"),
    ("builtins", "bytearray"): ("builtins", "bytearray"),
    ("collections", "OrderedDict"): ("collections", "OrderedDict"),
}


def _numpy_core_module(submodule: str):
    for root in _NUMPY_CORE:
        try:
            return importlib.import_module(f"{root}.{submodule}")
        except ImportError:
            continue
    raise ImportError(f"numpy has no core module {submodule!r}")  # pragma: no cover


def allowed_globals() -> list[str]:
    """The ``module.name`` globals a dataset pickle may reference."""
    return sorted(f"{m}.{n}" for m, n in (*_ALLOWED_NUMPY, *_ALLOWED_PLAIN))


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy-array and builtin-container globals.

    Args:
        file: a binary file object.
        source: the file's name, for error messages.
    """

    def __init__(self, file, source: str = "<pickle>"):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (protocol < 3), as pickle.Unpickler.find_class maps them
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key in _ALLOWED_NUMPY:
            submodule, attribute = _ALLOWED_NUMPY[key]
            return getattr(_numpy_core_module(submodule), attribute)
        if key in _ALLOWED_PLAIN:
            target_module, attribute = _ALLOWED_PLAIN[key]
            return getattr(importlib.import_module(target_module), attribute)
        raise DataError(
            f"{self.source}: refused to unpickle the global {module}.{name}: a dataset pickle may "
            "only hold builtin containers and numpy arrays, so this file is either not a dataset "
            "or is crafted to run code. Nothing from it was executed."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(
            f"{self.source}: the pickle references an external (persistent) object {pid!r}; "
            "dataset pickles never do"
        )


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; see :func:`safe_load`."""
    return _load_stream(io.BytesIO(data), source, len(data))


def _load_stream(handle, source: str, size: int) -> Any:
    try:
        return RestrictedUnpickler(handle, source=source).load()
    except DataError:
        raise
    except EOFError as err:
        raise DataError(
            f"{source}: the pickle ends early (truncated or empty file, {size} bytes)"
        ) from err
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, UnicodeDecodeError, MemoryError, OverflowError) as err:
        raise DataError(
            f"{source}: not a readable pickle (corrupt or truncated): "
            f"{type(err).__name__}: {err}"
        ) from err


def safe_load(path: str | Path) -> Any:
    """Read a dataset pickle, refusing anything but containers and numpy arrays.

    Raises:
        DataError: the file is missing, truncated or corrupt, or references a global outside
            the allow-list (:func:`allowed_globals`); in the last case nothing was executed.
    """
    path = Path(path)
    try:
        # unpickled straight from the file: holding the file's bytes as well would double the
        # peak memory of a large dataset
        with path.open("rb") as handle:
            return _load_stream(handle, str(path), path.stat().st_size)
    except FileNotFoundError as err:
        raise DataError(f"{path}: no such file") from err
    except IsADirectoryError as err:
        raise DataError(f"{path}: is a folder, expected a pickle file") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read the file: {err}") from err
