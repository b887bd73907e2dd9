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

import torch
from _mmsa_parity import (
    UNIMODAL_FEATURES,
    build_model,
    check_dropout_map_and_eval_forward,
    check_fixture_origin,
    check_frozen,
    check_training,
    hidden_overrides,
    mmsa_reading_overrides,
    module_fixtures,
    training_overrides,
)

fixture, bert_dir = module_fixtures("lmf")


def to_msakit(name: str, value: torch.Tensor):
    return name.replace("video_subnet.", "vision_subnet."), value


def overrides(fixture, bert_dir, dropouts) -> list[str]:
    audio_p, video_p, text_p, post_p = dropouts
    return training_overrides(fixture, bert_dir) + mmsa_reading_overrides(fixture) + \
        hidden_overrides(fixture) + [
            f"model.rank={fixture['sizes']['rank']}",
            f"model.text_dropout={text_p}", f"model.audio_dropout={audio_p}",
            f"model.vision_dropout={video_p}", f"model.post_fusion_dropout={post_p}",
            f"model.factor_lr={fixture['optimiser']['factor_lr']}",
        ]


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    check_fixture_origin(fixture)


def test_lmf_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    record = check_training("lmf", overrides(fixture, bert_dir, (0, 0, 0, 0)), fixture,
                            to_msakit, tmp_path, monkeypatch, UNIMODAL_FEATURES)
    # MMSA never trains the fusion weights: neither does msakit (they keep their initial values)
    check_frozen(record, fixture, {"fusion_weights": "fusion_weights",
                                   "fusion_bias": "fusion_bias"})


def test_lmf_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    check_dropout_map_and_eval_forward(
        "lmf", overrides(fixture, bert_dir, fixture["official_dropouts"]), fixture, to_msakit)


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
