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

import pytest
import torch
from _mmsa_parity import (
    MMSA_COMMIT,
    assert_dropout_map_matches,
    assert_eval_forward_matches,
    assert_training_matches,
    build_model,
    replay_training,
    small_bert_dir,
)
from _parity import load_fixture


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("ef_lstm")


@pytest.fixture(scope="module")
def bert_dir(fixture, tmp_path_factory):
    return small_bert_dir(fixture, tmp_path_factory.mktemp("tiny_bert_ef_lstm"))


def to_msakit(name: str, value: torch.Tensor):
    return name, value


def overrides(fixture, bert_dir, dropout) -> list[str]:
    sizes, optimiser = fixture["sizes"], fixture["optimiser"]
    return [
        f"model.language_model={bert_dir}", "model.freeze_language_model=true",
        f"model.seq_len={fixture['seq_len']}", f"model.hidden_dim={sizes['hidden_dims']}",
        f"model.num_layers={sizes['num_layers']}", f"model.dropout={dropout}",
        f"train.lr={optimiser['learning_rate']}",
        f"train.weight_decay={optimiser['weight_decay']}",
        "train.optimizer=adam", "train.grad_accumulation=1",
        f"train.patience={fixture['early_stopping']['early_stop']}",
        f"train.min_improvement={fixture['early_stopping']['min_improvement']}",
        "train.epochs=10", "train.device=cpu",
    ]


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    assert fixture["official"]["repo"] == "thuiar/MMSA"
    assert fixture["official"]["commit"] == MMSA_COMMIT
    lengths = torch.cat([b["lengths"] for b in fixture["batches"]])
    assert lengths.max() > fixture["seq_len"] > lengths.min()  # truncation and padding


def test_ef_lstm_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    config, model = build_model("ef_lstm", overrides(fixture, bert_dir, 0), fixture, to_msakit)
    record, summary = replay_training(config, model, fixture, tmp_path, monkeypatch)
    assert_training_matches(fixture, record, summary, to_msakit)


def test_ef_lstm_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    _, model = build_model("ef_lstm", overrides(fixture, bert_dir, fixture["official_dropout"]),
                           fixture, to_msakit)
    assert_dropout_map_matches(fixture, model)
    assert_eval_forward_matches(fixture, model)


def test_avg_pool_align_matches_mmsa_align_subnet(fixture):
    from msakit.modules.mmsa_subnets import avg_pool_align

    cases = fixture["avg_pool_align"]
    assert sorted(c["input"].shape[1] for c in cases) == [7, 23, 30]
    for case in cases:
        ours = avg_pool_align(case["input"].double(), case["steps"])
        torch.testing.assert_close(ours, case["output"].double(), atol=1e-12, rtol=0)
