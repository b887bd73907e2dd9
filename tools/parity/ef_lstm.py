"""Parity fixture for EF-LSTM from MMSA's code (thuiar/MMSA ``ef_lstm``).

    python tools/parity/ef_lstm.py --official /path/to/MMSA --out tests/parity/ef_lstm.pt

MMSA's EF-LSTM reads word-aligned arrays of a fixed length (``need_data_aligned``, ``seq_lens``):
here the tiny BERT's token states, zero past each transcript's tokens, and the word-level
audio/vision, zero past each clip's words, each padded or truncated to ``SEQ_LEN`` steps (some
clips are longer: truncation is exercised). What is recorded, and how, is described in
``_mmsa.py``: MMSA's ``do_train`` at small sizes with dropout 0 (one Adam group, weight decay on
every parameter), the dropout map (two ``nn.Dropout`` calls and the LSTM's inter-layer dropout)
and an eval-mode forward at MMSA's MOSI rate 0.5.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mmsa import fixed_length, generate, run_official  # noqa: E402

SEQ_LEN = 10
SIZES = {"hidden_dims": 8, "num_layers": 2, "seq_lens": SEQ_LEN}
MOSI_DROPOUT = 0.5  # config_regression.json, ef_lstm, mosi
OPTIMISER = {"learning_rate": 1e-3, "weight_decay": 0.005}  # MMSA's MOSI values


def official_avg_pool() -> list[dict]:
    """MMSA's ``AlignSubNet`` (``avg_pool``) fitting random audio arrays of 23 (not a multiple),
    30 (a multiple) and 7 (shorter) steps to ``SEQ_LEN``; the text is never pooled."""
    import importlib

    align = importlib.import_module("MMSA.models.subNets.AlignNets")
    generator = torch.Generator().manual_seed(3)
    out = []
    for length in (23, 30, 7):
        args = {"feature_dims": (4, 5, 5), "seq_lens": (SEQ_LEN, length, length)}
        net = align.AlignSubNet(type("Args", (dict,), {"__getattr__": dict.__getitem__})(args),
                                "avg_pool")
        audio = torch.randn(2, length, 5, generator=generator, dtype=torch.float64)
        _, aligned, _ = net(torch.zeros(2, SEQ_LEN, 4, dtype=torch.float64), audio, audio)
        out.append({"input": audio, "steps": SEQ_LEN, "output": aligned})
    return out


def record(model_module, train_module, data: Path) -> dict:
    to_seq_len = functools.partial(fixed_length, steps=SEQ_LEN)
    recorded = run_official(
        data, model_module.EF_LSTM, train_module, "EF_LSTM",
        {"model_name": "ef_lstm", **SIZES, "dropout": 0.0, **OPTIMISER},
        to_seq_len, forward_outputs=("M",), rated_args={"dropout": MOSI_DROPOUT},
        text_steps=to_seq_len)
    recorded["avg_pool_align"] = official_avg_pool()
    lengths = [int(n) for b in recorded["batches"] for n in b["lengths"]]
    assert max(lengths) > SEQ_LEN > min(lengths), lengths  # both truncation and padding
    return {"sizes": dict(SIZES), "official_dropout": MOSI_DROPOUT,
            "optimiser": dict(OPTIMISER), "seq_len": SEQ_LEN, **recorded}


if __name__ == "__main__":
    generate(__doc__, "ef_lstm", ["models/singleTask/EF_LSTM.py", "trains/singleTask/EF_LSTM.py",
                                  "models/subNets/AlignNets.py"], record)
