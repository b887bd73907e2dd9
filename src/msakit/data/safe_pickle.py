"""Loading dataset pickles without running the code a pickle can carry.

A pickle is a program: unpickling calls whatever importable callables the file names. Dataset
pickles (MMSA's ``aligned_50.pkl``, CMU-SDK's word-aligned pickles) only need builtin containers
and numpy arrays, so :func:`safe_load` admits exactly the globals that rebuild numpy arrays,
dtypes and scalars. Any other global is refused when the unpickler looks it up, before it can be
called, and the refusal names the file and the global.

Nothing in the file may make the unpickler allocate more than the file could hold: the
unpickler is Python's pure-Python one (its memo is a dict, and a length field larger than the
bytes left is a short read, not an allocation), and the callables that take a size
(``bytearray(n)``, numpy's ``_reconstruct(ndarray, shape, dtype)``) are wrapped to refuse sizes
beyond the file's own length.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import pickle
import struct
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


#: Extra bytes a size argument may ask for beyond the file's length (small legit headers).
ALLOCATION_SLACK = 1 << 20


class _NdarrayToken:
    """Stands for ``numpy.ndarray`` in a pickle: usable as ``_reconstruct``'s first argument
    (as numpy writes it) but not callable, so ``ndarray(shape)`` cannot allocate."""


_NDARRAY = _NdarrayToken()


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler that resolves only numpy-array and builtin-container globals and allocates
    at most about the size of its input.

    Args:
        file: a binary file object.
        source: the file's name, for error messages.
        max_allocation: the largest size in bytes a size argument may request (default: the
            file's length plus :data:`ALLOCATION_SLACK`).
    """

    def __init__(self, file, source: str = "<pickle>", max_allocation: int | None = None):
        super().__init__(file)
        self.source = source
        self._file = file
        if max_allocation is None:
            position = file.tell()
            max_allocation = file.seek(0, io.SEEK_END) + ALLOCATION_SLACK
            file.seek(position)
        self.max_allocation = max_allocation

    def _refuse_size(self, what: str, size: int) -> None:
        raise DataError(
            f"{self.source}: refused: the pickle asks for {what} of {size:,} bytes, more than the "
            f"file itself holds ({self.max_allocation - ALLOCATION_SLACK:,} bytes); it is corrupt "
            "or crafted. Nothing from it was executed."
        )

    def _bounded(self, key: tuple[str, str], target: Any) -> Any:
        if key[1] in ("bytearray", "bytes"):
            def make_bytes(*args):
                if args and isinstance(args[0], int) and args[0] > self.max_allocation:
                    self._refuse_size(key[1], args[0])
                return target(*args)

            return make_bytes
        if key[1] == "_reconstruct":
            import numpy as np

            def reconstruct(subtype, shape, dtype):
                if subtype is not _NDARRAY:
                    raise DataError(f"{self.source}: _reconstruct of something other than a "
                                    "numpy array; not a dataset pickle")
                count = 1
                for extent in shape if isinstance(shape, tuple) else (shape,):
                    count *= int(extent)
                size = count * np.dtype(dtype).itemsize
                if size > self.max_allocation:
                    self._refuse_size("an array", size)
                return target(np.ndarray, shape, dtype)

            return reconstruct
        return target

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (protocol < 3), as pickle.Unpickler.find_class maps them
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        key = (module, name)
        if key == ("numpy", "ndarray"):
            return _NDARRAY
        if key in _ALLOWED_NUMPY:
            submodule, attribute = _ALLOWED_NUMPY[key]
            return self._bounded(key, getattr(_numpy_core_module(submodule), attribute))
        if key in _ALLOWED_PLAIN:
            target_module, attribute = _ALLOWED_PLAIN[key]
            return self._bounded(key, getattr(importlib.import_module(target_module), attribute))
        if self._truncated():  # a name cut short by the end of the file, not a chosen one
            raise DataError(f"{self.source}: the pickle ends early (truncated file) inside the "
                            f"name of a global ({module}.{name}…). Nothing from it was executed.")
        raise DataError(
            f"{self.source}: refused to unpickle the global {module}.{name}: a dataset pickle may "
            "only hold builtin containers and numpy arrays, so this file is either not a dataset "
            "or is crafted to run code. Nothing from it was executed."
        )

    def _truncated(self) -> bool:
        """Whether the file is cut short: its opcodes (parsed, never run, by pickletools) end
        before a STOP. pickle reads a GLOBAL's name up to the end of a truncated file, so a name
        cut short would otherwise be refused as a chosen global."""
        import pickletools

        try:
            self._file.seek(0)
            for _ in pickletools.genops(self._file):
                pass
        except ValueError as err:  # "pickle exhausted before seeing STOP", "no newline found"
            return any(sign in str(err) for sign in ("exhausted", "not enough data",
                                                     "no newline", "but only"))
        except Exception:  # noqa: BLE001 - unreadable for another reason: not evidence of a cut
            return False
        return False

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(
            f"{self.source}: the pickle references an external (persistent) object {pid!r}; "
            "dataset pickles never do"
        )


def safe_loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; see :func:`safe_load`."""
    return _load_stream(io.BytesIO(data), source, len(data))


def _load_stream(handle, source: str, size: int) -> Any:
    unpickler = RestrictedUnpickler(handle, source=source)
    try:
        return unpickler.load()
    except DataError:
        raise
    except EOFError as err:
        raise DataError(
            f"{source}: the pickle ends early (truncated or empty file, {size} bytes)"
        ) from err
    except (pickle.UnpicklingError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, UnicodeDecodeError, MemoryError, OverflowError,
            struct.error) as err:
        raise DataError(
            f"{source}: not a readable pickle (corrupt or truncated): "
            f"{type(err).__name__}: {err}"
        ) from err
    finally:
        # The memo references every object read, and the unpickler is in a reference cycle
        # (its memoised allow-list wrappers refer back to it): without this the file's arrays
        # would stay alive until the next garbage collection, even after the reader has
        # copied them at their true length and dropped them.
        unpickler.memo.clear()


def safe_load(path: str | Path) -> Any:
    """Read a dataset pickle, refusing anything but containers and numpy arrays.

    Raises:
        DataError: the file is missing, truncated or corrupt, or references a global outside
            the allow-list (``_ALLOWED_NUMPY``, ``_ALLOWED_PLAIN``); in the last case nothing
            was executed.
    """
    path = Path(path)
    if path.exists() and not path.is_dir() and not path.is_file():
        raise DataError(f"{path}: not a regular file (a device, FIFO or socket); expected a "
                        "pickle file")
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
