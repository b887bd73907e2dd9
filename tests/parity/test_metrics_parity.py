"""msakit.metrics against MMSA's ``MetricsTop`` (regression), from the fixture of
``tools/parity/metrics.py`` (no official code needed here).

Per case (MOSI with the real 229-clip labels, MOSEI and SIMS with random labels on their grids,
the edge cases of rounding, zeros, clipping and SIMS class edges, float32 and float64 inputs):
counting metrics (accuracies, F1) are equal to the official ones bit for bit, MAE and Corr within
the last bits of the input's precision, and msakit's values rounded to 4 decimals are what MMSA
reports. msakit's one documented difference, Corr = 0.0 instead of nan for a constant
prediction, is checked as such.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from _parity import load_fixture
from _recording import record_close

from msakit.metrics import compute_metrics

MMSA_COMMIT = "a94e65d07fa1ae0d44e552390074b29b0898edfd"
CONTINUOUS = {"MAE", "Corr"}


@pytest.fixture(scope="module")
def fixture():
    loaded = load_fixture("metrics")
    # every test here replays MMSA v2.2.1's records
    assert loaded["official"]["repo"] == "thuiar/MMSA"
    assert loaded["official"]["commit"] == MMSA_COMMIT
    return loaded


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    assert fixture["official"]["repo"] == "thuiar/MMSA"
    assert fixture["official"]["commit"] == MMSA_COMMIT
    assert len(fixture["cases"]) >= 12
    assert {c["dataset"] for c in fixture["cases"]} == {"MOSI", "MOSEI", "SIMS"}


CASES = [c["name"] for c in load_fixture("metrics")["cases"]]


@pytest.mark.parametrize("name", CASES)
def test_metrics_match_metrics_top(fixture, name):
    case = next(c for c in fixture["cases"] if c["name"] == name)
    ours = compute_metrics(case["pred"], case["truth"], case["dataset"].lower())
    official, rounded = case["official_unrounded"], case["official"]
    assert set(ours) == set(official), name
    # float32 inputs: MMSA takes the MAE in float32 and msakit in float64
    relative = 1e-6 if str(case["pred"].dtype) == "torch.float32" else 1e-12
    for key, value in ours.items():
        expected = official[key]
        if key == "Corr" and math.isnan(expected):
            # documented difference: constant prediction -> 0.0, not nan (msakit.metrics)
            assert np.unique(case["pred"].numpy()).size == 1
            assert value == 0.0
            continue
        if key in CONTINUOUS:
            assert value == pytest.approx(expected, rel=relative, abs=1e-15), (name, key)
        else:
            record_close(value, expected, f"metric {key}", 0.0, "exact")
            assert value == expected, (name, key, value, expected)
        assert abs(value - rounded[key]) <= 5e-5 + 1e-12, (name, key, value, rounded[key])
