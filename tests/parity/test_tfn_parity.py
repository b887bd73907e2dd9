"""TFN against MMSA's code (thuiar/MMSA ``tfn``), from the fixture of ``tools/parity/tfn.py``
(no official code needed here).

The official run: a tiny random BERT's token states as MMSA's fixed text features, audio/vision
summed over the real steps / 50 (MMSA's mean over its 50-step zero-padded arrays), small sizes,
float64, six real clips in three batches of two. With dropout 0, MMSA's ``do_train`` (Adam
without weight decay, a step per batch, L1 loss) for three epochs with scripted validation
losses; msakit runs the same through ``Trainer.fit`` with MMSA's reading of its arrays
(``text_lstm_reads_padding: true``, ``audio_average_steps``/``vision_average_steps: 50``) and
must match every prediction, unimodal feature and loss, every gradient, every parameter and
BatchNorm buffer after each step, and the epoch early stopping ends on. At MMSA's MOSI dropout
rates: the same dropout calls (rate and input shape, in call order) in train mode, and the same
eval-mode predictions.

Names: msakit keeps MMSA's (``video_subnet`` -> ``vision_subnet``); MMSA's constant
``output_range``/``output_shift`` parameters are msakit's ``output_bound`` (6 = 2 * 3, -3 = -3).
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

FEATURES = {"Feature_t": "text", "Feature_a": "audio", "Feature_v": "vision"}


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("tfn")


@pytest.fixture(scope="module")
def bert_dir(fixture, tmp_path_factory):
    return small_bert_dir(fixture, tmp_path_factory.mktemp("tiny_bert_tfn"))


def to_msakit(name: str, value: torch.Tensor):
    if name in ("output_range", "output_shift"):  # constants: msakit's output_bound
        return None
    return name.replace("video_subnet.", "vision_subnet."), value


def overrides(fixture, bert_dir, dropouts) -> list[str]:
    sizes = fixture["sizes"]
    text_hidden, audio_hidden, video_hidden = sizes["hidden_dims"]
    audio_p, video_p, text_p, post_p = dropouts
    return [
        f"model.language_model={bert_dir}", "model.freeze_language_model=true",
        "model.text_lstm_reads_padding=true",
        f"model.audio_average_steps={fixture['average_steps']}",
        f"model.vision_average_steps={fixture['average_steps']}",
        f"model.text_hidden={text_hidden}", f"model.text_out={sizes['text_out']}",
        f"model.audio_hidden={audio_hidden}", f"model.vision_hidden={video_hidden}",
        f"model.post_fusion_dim={sizes['post_fusion_dim']}", f"model.text_dropout={text_p}",
        f"model.audio_dropout={audio_p}", f"model.vision_dropout={video_p}",
        f"model.post_fusion_dropout={post_p}",
        f"train.lr={fixture['optimiser']['learning_rate']}", "train.weight_decay=0",
        "train.optimizer=adam", "train.grad_accumulation=1",
        f"train.patience={fixture['early_stopping']['early_stop']}",
        f"train.min_improvement={fixture['early_stopping']['min_improvement']}",
        "train.epochs=10", "train.device=cpu",
    ]


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    assert fixture["official"]["repo"] == "thuiar/MMSA"
    assert fixture["official"]["commit"] == MMSA_COMMIT
    # MMSA's output range, 6 * sigmoid(y) - 3, is msakit's default output_bound = 3
    assert fixture["initial_state"]["output_range"].item() == 6.0
    assert fixture["initial_state"]["output_shift"].item() == -3.0


def test_tfn_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    config, model = build_model("tfn", overrides(fixture, bert_dir, (0, 0, 0, 0)), fixture,
                                to_msakit)
    record, summary = replay_training(config, model, fixture, tmp_path, monkeypatch,
                                      features=True)
    assert_training_matches(fixture, record, summary, to_msakit, FEATURES)


def test_tfn_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    rates = fixture["official_dropouts"]
    _, model = build_model("tfn", overrides(fixture, bert_dir, rates), fixture, to_msakit)
    assert_dropout_map_matches(fixture, model)
    assert_eval_forward_matches(fixture, model)
