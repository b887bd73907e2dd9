"""EF-LSTM against MMSA's code (thuiar/MMSA ``ef_lstm``), from the fixture of
``tools/parity/ef_lstm.py`` (no official code needed here).

The official run: the tiny random BERT's token states and the word-level audio/vision of six
real clips, each zero past its real steps and padded or truncated to ``seq_len`` steps (MMSA's
fixed-length aligned arrays), small sizes (2 LSTM layers), float64, three batches of two. With
dropout 0, MMSA's ``do_train`` (one Adam group, weight decay on every parameter, L1 loss) for
three epochs with scripted validation losses; msakit runs the same through ``Trainer.fit`` and
must match every prediction and loss, every gradient, every parameter and BatchNorm buffer after
each step, and the epoch early stopping ends on. At MMSA's MOSI dropout 0.5: the same dropout
calls (rate and input shape, in call order), the same LSTM inter-layer dropout, and the same
eval-mode predictions. MMSA's AlignSubNet ``avg_pool`` (how MMSA fits unaligned audio/vision to
the text length) against msakit's ``avg_pool_align``.

Names: msakit keeps MMSA's (``norm``, ``lstm``, ``linear``, ``out``).
"""

from __future__ import annotations

import torch
from _mmsa_parity import (
    check_dropout_map_and_eval_forward,
    check_fixture_origin,
    check_training,
    module_fixtures,
    training_overrides,
)

fixture, bert_dir = module_fixtures("ef_lstm")


def to_msakit(name: str, value: torch.Tensor):
    return name, value


def overrides(fixture, bert_dir, dropout) -> list[str]:
    sizes = fixture["sizes"]
    return training_overrides(fixture, bert_dir) + [
        f"model.seq_len={fixture['seq_len']}", f"model.hidden_dim={sizes['hidden_dims']}",
        f"model.num_layers={sizes['num_layers']}", f"model.dropout={dropout}",
    ]


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    check_fixture_origin(fixture)
    lengths = torch.cat([b["lengths"] for b in fixture["batches"]])
    assert lengths.max() > fixture["seq_len"] > lengths.min()  # truncation and padding


def test_ef_lstm_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    check_training("ef_lstm", overrides(fixture, bert_dir, 0), fixture, to_msakit, tmp_path,
                   monkeypatch)


def test_ef_lstm_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    check_dropout_map_and_eval_forward(
        "ef_lstm", overrides(fixture, bert_dir, fixture["official_dropout"]), fixture, to_msakit)


def test_avg_pool_align_matches_mmsa_align_subnet(fixture):
    from msakit.modules.mmsa_subnets import avg_pool_align

    cases = fixture["avg_pool_align"]
    assert sorted(c["input"].shape[1] for c in cases) == [7, 23, 30]
    for case in cases:
        ours = avg_pool_align(case["input"].double(), case["steps"])
        torch.testing.assert_close(ours, case["output"].double(), atol=1e-12, rtol=0)
