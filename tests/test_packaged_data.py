"""The packaged mosi-demo set: same clips, words, labels and (float16-rounded) features as the
shared CMU-SDK pickle it was converted from; loadable by name everywhere a data path is taken."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from msakit.data import load_dataset
from msakit.data.packaged import load_demo_arrays, packaged_path


def test_demo_file_is_small_and_needs_no_pickle():
    path = packaged_path("mosi-demo")
    assert path.stat().st_size < 2_000_000
    arrays = load_demo_arrays()  # np.load(allow_pickle=False) inside
    assert arrays["facet"].dtype == np.float16 and arrays["facet"].shape[1] == 47
    assert arrays["covarep"].shape == (int(arrays["lengths"].sum()), 74)
    assert len(arrays["labels"]) == 229


def test_demo_matches_shared_pickle(mosi_word_aligned):
    demo = load_dataset("mosi-demo")
    original = load_dataset(mosi_word_aligned)
    assert demo.name == original.name == "mosi"
    assert demo.source == "mosi-demo" and demo.word_aligned
    assert demo.feature_dims == original.feature_dims == {"audio": 74, "vision": 47}
    a, b = demo.split("all"), original.split("all")
    assert a.ids == b.ids and a.video_ids == b.video_ids and a.texts == b.texts
    assert a.words == b.words
    np.testing.assert_array_equal(a.labels, b.labels)
    for mine, theirs in ((a.audio, b.audio), (a.vision, b.vision)):
        assert len(mine) == len(theirs) == 229
        for x, y in zip(mine, theirs):
            assert x.shape == y.shape and x.dtype == np.float32
            # float16 rounding: 2^-11 relative, features |x| < 8
            np.testing.assert_allclose(x, y, rtol=2 ** -10, atol=2e-3)


def test_cli_reads_demo_by_name(tmp_path):
    result = subprocess.run([sys.executable, "-m", "msakit", "data", "inspect", "mosi-demo",
                             "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import json

    summary = json.loads(result.stdout)
    assert summary["source"] == "mosi-demo" and summary["splits"]["all"]["clips"] == 229


def test_unknown_name_lists_packaged(tmp_path):
    from msakit.data import DataError

    with pytest.raises(DataError, match="packaged datasets: mosi-demo"):
        load_dataset(tmp_path / "mosi-dem")
