"""The restricted unpickler: hostile, truncated and corrupt pickles; every numpy protocol."""

from __future__ import annotations

import gc
import os
import pickle
import weakref
from collections import OrderedDict

import numpy as np
import pytest

from msakit.data import DataError, load_dataset, safe_load


class Hostile:
    """Unpickling this calls os.system with the command given."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "aligned_50.pkl"
    with open(path, "wb") as handle:
        pickle.dump(Hostile(f"touch {marker}"), handle)
    with pytest.raises(DataError, match=r"aligned_50\.pkl: refused to unpickle the global "
                                        r"(posix|os|nt)\.system.*Nothing from it was executed"):
        safe_load(path)
    assert not marker.exists()


def test_hostile_object_inside_a_dataset(tmp_path):
    marker = tmp_path / "pwned"
    evil = Hostile(f"touch {marker}")
    content = {"train": {"raw_text": np.array(["a"], dtype=object), "evil": evil},
               "valid": {}, "test": {}}
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(DataError, match=r"data\.pkl: refused to unpickle the global .*system"):
        load_dataset(path)
    assert not marker.exists()


@pytest.mark.parametrize("global_name", ["builtins eval", "subprocess Popen",
                                         "numpy.testing _private", "numpy load"])
def test_other_globals_refused(tmp_path, global_name):
    # protocol-0 GLOBAL opcode naming the callable, then an empty tuple and REDUCE
    payload = b"c" + global_name.replace(" ", "\n").encode() + b"\n(tR."
    path = tmp_path / "x.pkl"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=rf"refused to unpickle the global "
                                        rf"{global_name.replace(' ', '.')}"):
        safe_load(path)


def test_truncated_and_corrupt(mosi_word_aligned, tmp_path):
    data = mosi_word_aligned.read_bytes()
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated\.pkl: .*(truncated|ends early)"):
        safe_load(truncated)
    with pytest.raises(DataError, match=r"truncated\.pkl"):
        load_dataset(truncated)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.pkl: the pickle ends early"):
        safe_load(empty)
    corrupt = tmp_path / "corrupt.pkl"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError, match=r"corrupt\.pkl: not a readable pickle"):
        safe_load(corrupt)
    with pytest.raises(DataError, match=r"no such file"):
        safe_load(tmp_path / "missing.pkl")


def test_loaded_arrays_are_freed_as_soon_as_the_caller_drops_them(tmp_path):
    """The reader copies padded arrays at true length and drops them; nothing of the unpickler
    may keep them alive until a garbage collection (a MOSEI file's arrays would stay resident)."""
    path = tmp_path / "arrays.pkl"
    path.write_bytes(pickle.dumps({"audio": np.zeros((4, 50, 74), dtype=np.float32)},
                                  protocol=4))
    gc.disable()
    try:
        content = safe_load(path)
        array = weakref.ref(content["audio"])
        del content
        assert array() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numpy_content_round_trips(tmp_path, protocol):
    content = {
        "floats": np.arange(12, dtype=np.float32).reshape(3, 4),
        "ints": np.array([1, 2, 3], dtype=np.int64),
        "texts": np.array(["a b", "c"], dtype=object),
        "scalar": np.float64(2.5),
        "bytes": b"\x00\x01",
        "nested": [(1, "x"), {"k": {1, 2}}],
        "ordered": OrderedDict(a=1),
        "empty": np.zeros((0, 5), dtype=np.float32),
    }
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    loaded = safe_load(path)
    assert loaded.keys() == content.keys()
    np.testing.assert_array_equal(loaded["floats"], content["floats"])
    assert loaded["floats"].dtype == np.float32
    np.testing.assert_array_equal(loaded["ints"], content["ints"])
    assert list(loaded["texts"]) == ["a b", "c"]
    assert loaded["scalar"] == 2.5 and isinstance(loaded["scalar"], np.float64)
    assert loaded["bytes"] == b"\x00\x01"
    assert loaded["nested"] == content["nested"] and loaded["ordered"] == content["ordered"]
    assert loaded["empty"].shape == (0, 5)
