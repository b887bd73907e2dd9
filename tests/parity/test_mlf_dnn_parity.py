"""MLF-DNN against MMSA's code (thuiar/MMSA ``mlf_dnn``), from the fixture of
``tools/parity/mlf_dnn.py`` (no official code needed here).

The official run is TFN's (see test_tfn_parity.py) with MMSA's multi-task trainer: four L1 terms
(M, T, A, V, weighted 0.6 / 0.2 / 0.8 / 0.8) on the human labels and random SIMS-style unimodal
labels, Adam with four groups (the text, audio and video sub-networks with their own weight
decay, the heads with another). msakit runs the same through ``Trainer.fit`` (loss terms task,
text, audio, vision with MMSA's weights) and must match every prediction and unimodal feature,
every loss term, every gradient, every parameter and BatchNorm buffer after each step, and the
epoch early stopping ends on; at MMSA's SIMS dropout rates, the dropout map and the eval-mode
predictions.

Names: ``Model.`` (MMSA's AMIO wrapper) is dropped, ``video`` -> ``vision``,
``post_<m>_layer_<i>`` -> ``post_<m>.layer_<i>``.
"""

from __future__ import annotations

import re

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

from msakit.errors import ConfigError

FEATURES = {"Feature_t": "text", "Feature_a": "audio", "Feature_v": "vision"}
TERMS = ("task", "text", "audio", "vision")  # MMSA's tasks "MTAV"


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("mlf_dnn")


@pytest.fixture(scope="module")
def bert_dir(fixture, tmp_path_factory):
    return small_bert_dir(fixture, tmp_path_factory.mktemp("tiny_bert_mlf_dnn"))


def to_msakit(name: str, value: torch.Tensor):
    name = name.removeprefix("Model.").replace("video", "vision")
    return re.sub(r"^post_(\w+?)_layer_(\d)\.", r"post_\1.layer_\2.", name), value


def overrides(fixture, bert_dir, rates) -> list[str]:
    sizes, optimiser, weights = fixture["sizes"], fixture["optimiser"], fixture["task_weights"]
    text_hidden, audio_hidden, video_hidden = sizes["hidden_dims"]
    audio_p, video_p, text_p = rates["dropouts"]
    post_text, post_audio, post_video, post_fusion = rates["post_dropouts"]
    return [
        f"model.language_model={bert_dir}", "model.freeze_language_model=true",
        "model.text_lstm_reads_padding=true",
        f"model.audio_average_steps={fixture['average_steps']}",
        f"model.vision_average_steps={fixture['average_steps']}",
        f"model.text_hidden={text_hidden}", f"model.audio_hidden={audio_hidden}",
        f"model.vision_hidden={video_hidden}", f"model.text_out={sizes['text_out']}",
        f"model.post_fusion_dim={sizes['post_fusion_dim']}",
        f"model.post_text_dim={sizes['post_text_dim']}",
        f"model.post_audio_dim={sizes['post_audio_dim']}",
        f"model.post_vision_dim={sizes['post_video_dim']}",
        f"model.audio_dropout={audio_p}", f"model.vision_dropout={video_p}",
        f"model.text_dropout={text_p}", f"model.post_text_dropout={post_text}",
        f"model.post_audio_dropout={post_audio}", f"model.post_vision_dropout={post_video}",
        f"model.post_fusion_dropout={post_fusion}",
        f"model.text_weight_decay={optimiser['text_weight_decay']}",
        f"model.audio_weight_decay={optimiser['audio_weight_decay']}",
        f"model.vision_weight_decay={optimiser['video_weight_decay']}",
        f"model.loss_weights={{task: {weights['M']}, text: {weights['T']}, "
        f"audio: {weights['A']}, vision: {weights['V']}}}",
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
    assert len(fixture["forwards"][0]["criterion_calls"]) == 4


def test_mlf_dnn_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    rates = {"dropouts": (0, 0, 0), "post_dropouts": (0, 0, 0, 0)}
    config, model = build_model("mlf_dnn", overrides(fixture, bert_dir, rates), fixture,
                                to_msakit)
    record, summary = replay_training(config, model, fixture, tmp_path, monkeypatch,
                                      features=True)
    assert_training_matches(fixture, record, summary, to_msakit, FEATURES, TERMS)
    for ours, theirs in zip(record["forwards"], fixture["forwards"]):
        for head, key in (("text", "T"), ("audio", "A"), ("vision", "V")):
            torch.testing.assert_close(ours["output"].extras[head],
                                       theirs[key].double().reshape(-1), atol=1e-5, rtol=0)


def test_mlf_dnn_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    _, model = build_model("mlf_dnn", overrides(fixture, bert_dir, fixture["official_rates"]),
                           fixture, to_msakit)
    assert_dropout_map_matches(fixture, model)
    assert_eval_forward_matches(fixture, model)


def test_unimodal_terms_without_unimodal_labels_are_a_clear_error(fixture, bert_dir):
    _, model = build_model("mlf_dnn", overrides(fixture, bert_dir, fixture["official_rates"]),
                           fixture, to_msakit)
    from _mmsa_parity import msakit_batches

    batch = {k: v for k, v in msakit_batches(fixture)[0].items() if k != "labels_T"}
    with pytest.raises(ConfigError, match="labels_T.*model.loss_weights"):
        model.eval()(batch)
