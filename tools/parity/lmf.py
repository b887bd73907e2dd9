"""Parity fixture for LMF from MMSA's code (thuiar/MMSA ``lmf``).

    python tools/parity/lmf.py --official /path/to/MMSA --out tests/parity/lmf.pt

MMSA's LMF reads fixed text features (an LSTM over token features) and time-averaged
audio/vision (``need_normalized``). What is recorded, and how, is described in ``_mmsa.py``:
MMSA's ``do_train`` at small sizes with dropout 0 (its two Adam groups: the factors at
``factor_lr``, the sub-networks at ``learning_rate``, weight decay on both; ``fusion_weights``
and ``fusion_bias`` in neither), the dropout map and an eval-mode forward at MMSA's MOSI rates.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mmsa import generate, run_official, time_averaged  # noqa: E402

# official order: hidden_dims (text, audio, video); dropouts (audio, video, text, post-fusion)
SIZES = {"hidden_dims": (8, 4, 6), "rank": 3}
MOSI_DROPOUTS = (0.3, 0.3, 0.3, 0.3)  # config_regression.json, lmf, mosi
# MMSA's MOSI learning rates and weight decay; factor_lr differs from learning_rate here so that
# the test tells the two groups apart
OPTIMISER = {"learning_rate": 1e-3, "factor_lr": 3e-3, "weight_decay": 0.005}


def record(model_module, train_module, data: Path) -> dict:
    recorded = run_official(
        data, model_module.LMF, train_module, "LMF",
        {"model_name": "lmf", **SIZES, "dropouts": (0.0, 0.0, 0.0, 0.0), **OPTIMISER},
        time_averaged, forward_outputs=("M", "Feature_t", "Feature_a", "Feature_v"),
        rated_args={"dropouts": MOSI_DROPOUTS})
    return {"sizes": dict(SIZES), "official_dropouts": MOSI_DROPOUTS,
            "optimiser": dict(OPTIMISER), **recorded}


if __name__ == "__main__":
    generate(__doc__, "lmf", ["models/singleTask/LMF.py", "models/subNets/FeatureNets.py",
                              "trains/singleTask/LMF.py"], record)
