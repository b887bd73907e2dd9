"""Parity fixture for MTFN from MMSA's code (thuiar/MMSA ``mtfn``).

    python tools/parity/mtfn.py --official /path/to/MMSA --out tests/parity/mtfn.pt

MMSA's MTFN (CH-SIMS only) reads fixed text features and time-averaged audio/vision
(``need_normalized``) and trains four L1 terms, ``M``/``T``/``A``/``V``, on the human and the
unimodal labels. The fixture's clips are MOSI's; their ``T``/``A``/``V`` labels are drawn at
random on SIMS's grid. MMSA's trainer reads the sub-networks through ``model.Model`` (its
``AMIO`` wrapper): the official model is wrapped the same way, so that its learning-rate-0 group
``list(model.parameters())[:2]`` holds the constants ``output_range``/``output_shift`` as in
MMSA (a module's own parameters come before its sub-modules'). What is recorded, and how, is
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
SIMS_RATES = {"dropouts": (0.2, 0.2, 0.2), "post_dropouts": (0.2, 0.2, 0.2, 0.2)}
# MMSA's SIMS values (config_regression.json, mtfn, sims). Its trainer builds Adam without
# weight_decay: the heads get none, whatever the config's weight_decay (0.005) says; the official
# run is given that value and msakit's replay trains with train.weight_decay 0.
OPTIMISER = {"learning_rate": 5e-3, "text_weight_decay": 1e-3, "audio_weight_decay": 1e-4,
             "video_weight_decay": 1e-5}
IGNORED_WEIGHT_DECAY = 0.005
# MMSA's SIMS weights are M 0.6, T 0.4, A 0.0, V 1.0; A 0.3 here so that the audio head trains
TASK_WEIGHTS = {"M": 0.6, "T": 0.4, "A": 0.3, "V": 1.0}


def record(model_module, train_module, data: Path) -> dict:
    recorded = run_official(
        data, lambda a: AMIOLike(model_module.MTFN(a)), train_module, "MTFN",
        {"model_name": "mtfn", "dataset_name": "sims", **SIZES, "dropouts": (0.0,) * 3,
         "post_dropouts": (0.0,) * 4, **OPTIMISER, "weight_decay": IGNORED_WEIGHT_DECAY,
         **TASK_WEIGHTS},
        time_averaged, forward_outputs=("M", "T", "A", "V", "Feature_t", "Feature_a",
                                        "Feature_v"),
        rated_args=SIMS_RATES, unimodal_labels=True)
    return {"sizes": dict(SIZES), "official_rates": dict(SIMS_RATES),
            "optimiser": dict(OPTIMISER),
            "ignored_weight_decay": IGNORED_WEIGHT_DECAY, "task_weights": dict(TASK_WEIGHTS),
            **recorded}


if __name__ == "__main__":
    generate(__doc__, "mtfn", ["models/multiTask/MTFN.py", "trains/multiTask/MTFN.py"],
             record)
