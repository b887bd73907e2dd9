"""LMF against MMSA's code (thuiar/MMSA ``lmf``), from the fixture of ``tools/parity/lmf.py``
(no official code needed here).

The official run is TFN's (see test_tfn_parity.py) with MMSA's LMF trainer: two Adam groups,
the three modality factors at ``factor_lr`` and the sub-networks at ``learning_rate``, weight
decay on both, ``fusion_weights``/``fusion_bias`` in neither (they keep their initial values).
msakit runs the same through ``Trainer.fit`` (``train_fusion_weights: false``,
``exempt_biases_from_decay: false``) and must match every prediction, unimodal feature and loss,
every gradient, every parameter and BatchNorm buffer after each step, and the epoch early
stopping ends on; at MMSA's MOSI dropout rates, the dropout map and the eval-mode predictions.

Names: msakit keeps MMSA's (``video_subnet`` -> ``vision_subnet``; ``video_factor`` is kept).
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
    return load_fixture("lmf")


@pytest.fixture(scope="module")
def bert_dir(fixture, tmp_path_factory):
    return small_bert_dir(fixture, tmp_path_factory.mktemp("tiny_bert_lmf"))


def to_msakit(name: str, value: torch.Tensor):
    return name.replace("video_subnet.", "vision_subnet."), value


def overrides(fixture, bert_dir, dropouts) -> list[str]:
    sizes, optimiser = fixture["sizes"], fixture["optimiser"]
    text_hidden, audio_hidden, video_hidden = sizes["hidden_dims"]
    audio_p, video_p, text_p, post_p = dropouts
    return [
        f"model.language_model={bert_dir}", "model.freeze_language_model=true",
        "model.text_lstm_reads_padding=true",
        f"model.audio_average_steps={fixture['average_steps']}",
        f"model.vision_average_steps={fixture['average_steps']}",
        f"model.text_hidden={text_hidden}", f"model.audio_hidden={audio_hidden}",
        f"model.vision_hidden={video_hidden}", f"model.rank={sizes['rank']}",
        f"model.text_dropout={text_p}", f"model.audio_dropout={audio_p}",
        f"model.vision_dropout={video_p}", f"model.post_fusion_dropout={post_p}",
        f"model.factor_lr={optimiser['factor_lr']}", f"train.lr={optimiser['learning_rate']}",
        f"train.weight_decay={optimiser['weight_decay']}",
        "train.optimizer=adam", "train.grad_accumulation=1",
        f"train.patience={fixture['early_stopping']['early_stop']}",
        f"train.min_improvement={fixture['early_stopping']['min_improvement']}",
        "train.epochs=10", "train.device=cpu",
    ]


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    assert fixture["official"]["repo"] == "thuiar/MMSA"
    assert fixture["official"]["commit"] == MMSA_COMMIT


def test_lmf_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    config, model = build_model("lmf", overrides(fixture, bert_dir, (0, 0, 0, 0)), fixture,
                                to_msakit)
    record, summary = replay_training(config, model, fixture, tmp_path, monkeypatch,
                                      features=True)
    assert_training_matches(fixture, record, summary, to_msakit, FEATURES)
    # MMSA never trains the fusion weights: neither does msakit (they keep their initial values)
    last = record["steps"][-1]["state"]
    for name in ("fusion_weights", "fusion_bias"):
        assert torch.equal(last[name], fixture["initial_state"][name].double())


def test_lmf_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    rates = fixture["official_dropouts"]
    _, model = build_model("lmf", overrides(fixture, bert_dir, rates), fixture, to_msakit)
    assert_dropout_map_matches(fixture, model)
    assert_eval_forward_matches(fixture, model)


def test_authors_options_train_the_fusion_weights(fixture, bert_dir):
    """``train_fusion_weights: true`` (the authors' optimiser) puts them in the optimiser."""
    from msakit.training.trainer import make_optimizer

    config, model = build_model(
        "lmf", overrides(fixture, bert_dir, (0, 0, 0, 0)) + ["model.train_fusion_weights=true"],
        fixture, to_msakit)
    optimised = {id(p) for g in make_optimizer(model, config).param_groups for p in g["params"]}
    assert id(model.fusion_weights) in optimised and id(model.fusion_bias) in optimised
    factor_group = next(g for g in make_optimizer(model, config).param_groups
                        if any(p is model.audio_factor for p in g["params"]))
    assert factor_group["lr"] == fixture["optimiser"]["factor_lr"]
