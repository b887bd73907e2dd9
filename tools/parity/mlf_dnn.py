"""Parity fixture for MLF-DNN from MMSA's code (thuiar/MMSA ``mlf_dnn``).

    python tools/parity/mlf_dnn.py --official /path/to/MMSA --out tests/parity/mlf_dnn.pt

MMSA's MLF-DNN (CH-SIMS only) reads fixed text features and time-averaged audio/vision
(``need_normalized``) and trains four L1 terms, ``M``/``T``/``A``/``V``, on the human and the
unimodal labels. The fixture's clips are MOSI's; their ``T``/``A``/``V`` labels are drawn at
random on SIMS's grid. MMSA's trainer reads the sub-networks through ``model.Model`` (its
``AMIO`` wrapper): the official model is wrapped the same way. What is recorded, and how, is
described in ``_mmsa.py`` (MMSA's ``do_train`` at small sizes with dropout 0, the dropout map and
an eval-mode forward at MMSA's SIMS rates); per forward pass each of the four criterion calls.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mmsa import AMIOLike, generate, run_official, time_averaged  # noqa: E402

# official order: hidden_dims (text, audio, video); dropouts (audio, video, text);
# post_dropouts (text, audio, video, fusion)
SIZES = {"hidden_dims": (8, 4, 6), "text_out": 5, "post_fusion_dim": 7, "post_text_dim": 3,
         "post_audio_dim": 4, "post_video_dim": 5}
SIMS_RATES = {"dropouts": (0.3, 0.3, 0.3), "post_dropouts": (0.5, 0.5, 0.5, 0.5)}
# MMSA's SIMS values (config_regression.json, mlf_dnn, sims); weight_decay 0 there: 1e-3 here so
# that the test tells the four groups apart
OPTIMISER = {"learning_rate": 2e-3, "text_weight_decay": 1e-4, "audio_weight_decay": 1e-3,
             "video_weight_decay": 1e-4, "weight_decay": 1e-3}
TASK_WEIGHTS = {"M": 0.6, "T": 0.2, "A": 0.8, "V": 0.8}


def record(model_module, train_module, data: Path) -> dict:
    recorded = run_official(
        data, lambda a: AMIOLike(model_module.MLF_DNN(a)), train_module, "MLF_DNN",
        {"model_name": "mlf_dnn", "dataset_name": "sims", **SIZES, "dropouts": (0.0,) * 3,
         "post_dropouts": (0.0,) * 4, **OPTIMISER, **TASK_WEIGHTS},
        time_averaged, forward_outputs=("M", "T", "A", "V", "Feature_t", "Feature_a",
                                        "Feature_v"),
        rated_args=SIMS_RATES, unimodal_labels=True)
    return {"sizes": dict(SIZES), "official_rates": dict(SIMS_RATES),
            "optimiser": dict(OPTIMISER), "task_weights": dict(TASK_WEIGHTS), **recorded}


if __name__ == "__main__":
    generate(__doc__, "mlf_dnn", ["models/multiTask/MLF_DNN.py", "trains/multiTask/MLF_DNN.py"],
             record)
