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

BLOCKS = {"NN1Config": "att1", "NN2Config": "att2", "gamma1Config": "gamma1",
          "gamma2Config": "gamma2", "outConfig": "out"}


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("mfn")


@pytest.fixture(scope="module")
def bert_dir(fixture, tmp_path_factory):
    return small_bert_dir(fixture, tmp_path_factory.mktemp("tiny_bert_mfn"))


def to_msakit(name: str, value: torch.Tensor):
    return name, value


def overrides(fixture, bert_dir, rates) -> list[str]:
    sizes, optimiser = fixture["sizes"], fixture["optimiser"]
    text_hidden, audio_hidden, video_hidden = sizes["hidden_dims"]
    out = [
        f"model.language_model={bert_dir}", "model.freeze_language_model=true",
        f"model.seq_len={fixture['seq_len']}", "model.audio_vision_input=time_average",
        f"model.audio_average_steps={fixture['average_steps']}",
        f"model.vision_average_steps={fixture['average_steps']}",
        f"model.text_hidden={text_hidden}", f"model.audio_hidden={audio_hidden}",
        f"model.vision_hidden={video_hidden}", f"model.mem_dim={sizes['memsize']}",
        f"train.lr={optimiser['learning_rate']}",
        f"train.weight_decay={optimiser['weight_decay']}",
        "train.optimizer=adam", "train.grad_accumulation=1",
        f"train.patience={fixture['early_stopping']['early_stop']}",
        f"train.min_improvement={fixture['early_stopping']['min_improvement']}",
        "train.epochs=10", "train.device=cpu",
    ]
    for key, block in BLOCKS.items():
        out += [f"model.{block}_hidden={fixture['shapes'][key]}",
                f"model.{block}_dropout={rates[key]}"]
    return out


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    assert fixture["official"]["repo"] == "thuiar/MMSA"
    assert fixture["official"]["commit"] == MMSA_COMMIT
    assert fixture["sizes"]["windowsize"] == 2  # the only window MMSA's MFN implements


def test_mfn_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    config, model = build_model("mfn", overrides(fixture, bert_dir, dict.fromkeys(BLOCKS, 0)),
                                fixture, to_msakit)
    record, summary = replay_training(config, model, fixture, tmp_path, monkeypatch)
    assert_training_matches(fixture, record, summary, to_msakit)


def test_mfn_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    _, model = build_model("mfn", overrides(fixture, bert_dir, fixture["official_rates"]),
                           fixture, to_msakit)
    assert_dropout_map_matches(fixture, model)
    assert_eval_forward_matches(fixture, model)
