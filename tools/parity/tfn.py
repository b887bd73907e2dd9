"""Parity fixture for TFN from MMSA's code (thuiar/MMSA ``tfn``).

    python tools/parity/tfn.py --official /path/to/MMSA --out tests/parity/tfn.pt

MMSA's TFN reads fixed text features (an LSTM over token features) and time-averaged
audio/vision (``need_normalized``: the mean over the 50-step zero-padded arrays). What is
recorded, and how, is described in ``_mmsa.py``: MMSA's ``do_train`` at small sizes with dropout
0, the dropout map and an eval-mode forward at MMSA's MOSI dropout rates (0.3, 0.3, 0.3, 0.5).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mmsa import generate, run_official, time_averaged  # noqa: E402

# official order: hidden_dims (text, audio, video); dropouts (audio, video, text, post-fusion)
SIZES = {"hidden_dims": (8, 4, 6), "text_out": 5, "post_fusion_dim": 12}
MOSI_DROPOUTS = (0.3, 0.3, 0.3, 0.5)  # config_regression.json, tfn, mosi
OPTIMISER = {"learning_rate": 1e-3}  # MMSA's MOSI value; its TFN optimiser has no weight decay


def record(model_module, train_module, data: Path) -> dict:
    recorded = run_official(
        data, model_module.TFN, train_module, "TFN",
        {"model_name": "tfn", **SIZES, "dropouts": (0.0, 0.0, 0.0, 0.0), **OPTIMISER},
        time_averaged, forward_outputs=("M", "Feature_t", "Feature_a", "Feature_v"),
        rated_args={"dropouts": MOSI_DROPOUTS})
    return {"sizes": dict(SIZES), "official_dropouts": MOSI_DROPOUTS,
            "optimiser": dict(OPTIMISER), **recorded}


if __name__ == "__main__":
    generate(__doc__, "tfn", ["models/singleTask/TFN.py", "models/subNets/FeatureNets.py",
                              "trains/singleTask/TFN.py"], record)
