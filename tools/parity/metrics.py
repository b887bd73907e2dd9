"""Metric parity fixture from MMSA's ``MetricsTop`` (thuiar/MMSA ``src/MMSA/utils/metricsTop.py``).

    python tools/parity/metrics.py --official /path/to/MMSA --out tests/parity/metrics.pt

Runs the official regression metrics of MOSI, MOSEI and SIMS on fixed random predictions and
labels and on edge cases (half-integers for the round-half-to-even classes, predictions and labels
of exactly 0, values beyond the clipping range, values exactly on the SIMS class edges, float32
inputs, a constant prediction), in float32 and float64, and stores the inputs with what the
official code returned: its rounded results (``round(x, 4)``, as MMSA reports them) and the same
code's results with ``round`` patched to the identity (the unrounded values msakit returns).
MOSI labels are the real labels of the 229-clip MOSI set (``--data``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, official_commit, save_fixture  # noqa: E402

OFFICIAL_FILE = "src/MMSA/utils/metricsTop.py"


def load_metrics_top(root: Path):
    """The official ``metricsTop`` module, loaded from its file (the package ``__init__`` imports
    every model)."""
    spec = importlib.util.spec_from_file_location("mmsa_metrics_top", root / OFFICIAL_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_mosi_labels(data: Path) -> np.ndarray:
    from msakit.data import load_dataset

    return np.asarray(load_dataset(data).split("all").labels, dtype=np.float64)


def cases(mosi_labels: np.ndarray) -> list[dict]:
    """``[{name, dataset, pred, truth}]``: float64 or float32 tensors of shape ``(N,)``."""
    rng = np.random.default_rng(23)
    out = []

    def add(name, dataset, pred, truth, dtype=torch.float64):
        out.append({"name": name, "dataset": dataset,
                    "pred": torch.tensor(np.asarray(pred), dtype=dtype),
                    "truth": torch.tensor(np.asarray(truth), dtype=dtype)})

    # MOSI: the real labels, predictions = label + noise (some beyond [-3, 3])
    n = len(mosi_labels)
    noisy = mosi_labels + rng.normal(0.0, 1.2, n)
    add("mosi_real_labels", "MOSI", noisy, mosi_labels)
    add("mosi_real_labels_float32", "MOSI", noisy, mosi_labels, torch.float32)
    # MOSEI: labels on MOSEI's grid (multiples of 1/3), with zeros; uncorrelated predictions
    labels = np.round(rng.uniform(-3, 3, 300) * 3) / 3
    labels[rng.choice(300, 40, replace=False)] = 0.0
    add("mosei_random", "MOSEI", rng.normal(0.0, 2.0, 300), labels)
    add("mosei_random_float32", "MOSEI", rng.normal(0.3, 1.0, 300), labels, torch.float32)
    # MOSI-style edges: half-integers (np.round: half to even), exact zeros, beyond the clip range
    edge_pred = [0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.0, 0.0, -0.0, 3.5, -3.5, 2.4999, 1e-9, -1e-9,
                 2.0, -2.0, 3.0, -3.0, 0.49, -0.51]
    edge_truth = [0.0, 0.0, 2.0, -2.0, 2.0, -2.0, 0.0, 1.0, -1.0, 3.0, -3.0, 2.0, 0.0, 0.0,
                  2.6, -2.6, 3.0, -2.8, 0.6, -0.4]
    add("mosi_edges", "MOSI", edge_pred, edge_truth)
    add("mosi_edges_float32", "MOSI", edge_pred, edge_truth, torch.float32)
    # SIMS: labels on SIMS's grid (multiples of 0.2 in [-1, 1]), predictions partly beyond [-1, 1]
    sims_labels = np.round(rng.uniform(-1, 1, 250) * 5) / 5
    add("sims_random", "SIMS", np.clip(sims_labels + rng.normal(0, 0.5, 250), -1.4, 1.4),
        sims_labels)
    add("sims_random_float32", "SIMS", rng.uniform(-1.2, 1.2, 250), sims_labels, torch.float32)
    # SIMS edges: exactly on the class edges (right-closed classes), at and beyond +-1
    sims_pred = [-1.0, -0.7, -0.1, 0.0, 0.1, 0.7, 1.0, 1.3, -1.3, -0.69999, 0.10001, 0.0999,
                 -0.1001, 0.7001]
    sims_truth = [-1.0, -0.8, -0.2, 0.0, 0.2, 0.6, 1.0, 1.0, -1.0, -0.6, 0.0, 0.2, -0.2, 0.8]
    add("sims_edges", "SIMS", sims_pred, sims_truth)
    add("sims_edges_float32", "SIMS", sims_pred, sims_truth, torch.float32)
    # a constant prediction: the official Corr is nan (msakit documents 0.0); with 0.7 (not a
    # binary fraction) the official mean differs from 0.7 in the last bit and Corr is ~1e-16
    add("mosi_constant_prediction", "MOSI", np.full(50, 0.5), mosi_labels[:50])
    add("mosi_constant_prediction_inexact", "MOSI", np.full(50, 0.7), mosi_labels[:50])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/parity/metrics.pt"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    commit = official_commit(args.official)
    module = load_metrics_top(args.official)
    metrics = module.MetricsTop("regression")
    results = []
    for case in cases(real_mosi_labels(args.data)):
        function = metrics.getMetics(case["dataset"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # np.corrcoef's warning on a constant prediction
            module.round = round
            rounded = function(case["pred"].clone(), case["truth"].clone())
            module.round = lambda value, digits=None: value  # the same code, unrounded
            unrounded = function(case["pred"].clone(), case["truth"].clone())
        results.append({**case, "official": {k: float(v) for k, v in rounded.items()},
                        "official_unrounded": {k: float(v) for k, v in unrounded.items()}})
        print(case["name"], {k: round(float(v), 4) for k, v in unrounded.items()})
    save_fixture({"official": {"repo": "thuiar/MMSA", "commit": commit, "files": [OFFICIAL_FILE]},
                  "numpy": np.__version__, "cases": results}, args.out)


if __name__ == "__main__":
    main()
