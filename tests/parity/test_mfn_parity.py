"""MFN against MMSA's code (thuiar/MMSA ``mfn``), from the fixture of ``tools/parity/mfn.py``
(no official code needed here).

The official run follows MMSA's data path for MFN: the tiny random BERT's token states zero past
each transcript and padded/truncated to ``seq_len`` steps; audio/vision averaged over time
(``need_normalized``: sum over the real steps / 50) and repeated at every step by MMSA's own
``AlignSubNet`` (``avg_pool``); small sizes, float64, six real clips in three batches of two.
With dropout 0, MMSA's ``do_train`` (one Adam group, L1 loss) for three epochs with scripted
validation losses; msakit runs the same through ``Trainer.fit`` (``audio_vision_input:
time_average``, ``audio_average_steps``/``vision_average_steps: 50``) and must match every
prediction and loss, every gradient, every parameter after each step, and the epoch early
stopping ends on. At MMSA's MOSI rates: the same dropout calls (rate and input shape, in call
order: att1, att2, gamma1, gamma2 at every step, then out), and the same eval-mode predictions.

Names: msakit keeps MMSA's (``lstm_l``, ``att1_fc1`` ...).
"""

from __future__ import annotations

import torch
from _mmsa_parity import (
    block_overrides,
    check_dropout_map_and_eval_forward,
    check_fixture_origin,
    check_training,
    hidden_overrides,
    mmsa_reading_overrides,
    module_fixtures,
    training_overrides,
)

BLOCKS = {"NN1Config": "att1", "NN2Config": "att2", "gamma1Config": "gamma1",
          "gamma2Config": "gamma2", "outConfig": "out"}

fixture, bert_dir = module_fixtures("mfn")


def to_msakit(name: str, value: torch.Tensor):
    return name, value


def overrides(fixture, bert_dir, rates) -> list[str]:
    return training_overrides(fixture, bert_dir) + [
        f"model.seq_len={fixture['seq_len']}", "model.audio_vision_input=time_average",
        f"model.mem_dim={fixture['sizes']['memsize']}",
    ] + mmsa_reading_overrides(fixture, text_reads_padding=False) + hidden_overrides(fixture) + \
        block_overrides(fixture, BLOCKS, rates)


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    check_fixture_origin(fixture)
    assert fixture["sizes"]["windowsize"] == 2  # the only window MMSA's MFN implements


def test_mfn_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    check_training("mfn", overrides(fixture, bert_dir, dict.fromkeys(BLOCKS, 0)), fixture,
                   to_msakit, tmp_path, monkeypatch)


def test_mfn_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    check_dropout_map_and_eval_forward(
        "mfn", overrides(fixture, bert_dir, fixture["official_rates"]), fixture, to_msakit)
