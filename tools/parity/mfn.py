"""Parity fixture for MFN from MMSA's code (thuiar/MMSA ``mfn``).

    python tools/parity/mfn.py --official /path/to/MMSA --out tests/parity/mfn.pt

MMSA's MFN reads word-aligned fixed-length arrays with ``need_normalized`` and
``need_model_aligned``: its loader averages audio/vision over time (``(B, 1, D)``) and MMSA's own
``AlignSubNet`` (``avg_pool``) then fits them to the text length by repeating that average at
every step. The fixture runs that path: the tiny BERT's token states zero past each transcript's
tokens and padded/truncated to ``SEQ_LEN``; audio/vision summed over the real steps / 50 (the
loader's mean over 50-step arrays), then through MMSA's ``AlignSubNet``. What is recorded, and
how, is described in ``_mmsa.py`` (MMSA's ``do_train`` at small sizes with dropout 0, the dropout
map and an eval-mode forward at MMSA's MOSI rates).
"""

from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mmsa import (  # noqa: E402
    AttributeDict,
    block_configs,
    fixed_length,
    generate,
    run_forward_in_float64,
    run_official,
    time_averaged,
)

SEQ_LEN = 10
SIZES = {"hidden_dims": (8, 4, 6), "memsize": 7, "windowsize": 2}
SHAPES = {"NN1Config": 5, "NN2Config": 6, "gamma1Config": 5, "gamma2Config": 4, "outConfig": 6}
MOSI_RATES = {"NN1Config": 0.2, "NN2Config": 0.0, "gamma1Config": 0.7, "gamma2Config": 0.5,
              "outConfig": 0.0}  # config_regression.json, mfn, mosi
OPTIMISER = {"learning_rate": 2e-3, "weight_decay": 0.0}  # MMSA's MOSI values


def averaged_then_aligned(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The loader's time average ``(B, 1, D)`` through MMSA's AlignSubNet (``avg_pool``)."""
    align = importlib.import_module("MMSA.models.subNets.AlignNets")
    average = time_averaged(x, mask)
    net = align.AlignSubNet(AttributeDict({"feature_dims": (1, x.shape[-1], x.shape[-1]),
                                           "seq_lens": (SEQ_LEN, 1, 1)}), "avg_pool")
    _, aligned, _ = net(torch.zeros(x.shape[0], SEQ_LEN, 1, dtype=x.dtype), average, average)
    return aligned


def record(model_module, train_module, data: Path) -> dict:
    run_forward_in_float64(model_module.MFN)
    recorded = run_official(
        data, model_module.MFN, train_module, "MFN",
        {"model_name": "mfn", **SIZES, **block_configs(SHAPES, dict.fromkeys(SHAPES, 0.0)),
         **OPTIMISER},
        averaged_then_aligned, forward_outputs=("M", "L"),
        rated_args=block_configs(SHAPES, MOSI_RATES),
        text_steps=functools.partial(fixed_length, steps=SEQ_LEN))
    return {"sizes": dict(SIZES), "shapes": dict(SHAPES), "official_rates": dict(MOSI_RATES),
            "optimiser": dict(OPTIMISER), "seq_len": SEQ_LEN, **recorded}


if __name__ == "__main__":
    generate(__doc__, "mfn", ["models/singleTask/MFN.py", "trains/singleTask/MFN.py",
                              "models/subNets/AlignNets.py"], record)
