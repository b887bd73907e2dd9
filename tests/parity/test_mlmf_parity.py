"""MLMF against MMSA's code (thuiar/MMSA ``mlmf``), from the fixture of
``tools/parity/mlmf.py`` (no official code needed here).

The official run is TFN's (see test_tfn_parity.py) with MMSA's multi-task trainer: four L1 terms
(M, T, A, V, weighted 0.2 / 1.0 / 0.4 / 0.8) on the human labels and random SIMS-style unimodal
labels, Adam with the text, audio and video sub-networks at their own weight decay, the factors
at ``factor_lr`` and the fusion weights at learning rate 0. msakit runs the same through
``Trainer.fit`` (loss terms task, text, audio, vision with MMSA's weights, the fusion weights
frozen) and must match every prediction and unimodal feature,
every loss term, every gradient, every parameter and BatchNorm buffer after each step, and the
epoch early stopping ends on; at MMSA's SIMS dropout rates, the dropout map and the eval-mode
predictions.

Names: ``Model.`` (MMSA's AMIO wrapper) is dropped, ``video`` -> ``vision``,
``post_<m>_layer_<i>`` -> ``post_<m>.layer_<i>``; ``video_factor`` keeps MMSA's name.
"""

from __future__ import annotations

import re

import torch
from _mmsa_parity import (
    MULTITASK_TERMS,
    UNIMODAL_FEATURES,
    check_dropout_map_and_eval_forward,
    check_fixture_origin,
    check_frozen,
    check_missing_unimodal_labels_error,
    check_training,
    check_unimodal_heads,
    hidden_overrides,
    mmsa_reading_overrides,
    module_fixtures,
    multitask_overrides,
    training_overrides,
)

fixture, bert_dir = module_fixtures("mlmf")


def to_msakit(name: str, value: torch.Tensor):
    name = name.removeprefix("Model.").replace("video_", "vision_").replace(
        "vision_factor", "video_factor")
    return re.sub(r"^post_(\w+?)_layer_(\d)\.", r"post_\1.layer_\2.", name), value


def overrides(fixture, bert_dir, rates) -> list[str]:
    sizes = fixture["sizes"]
    return training_overrides(fixture, bert_dir) + mmsa_reading_overrides(fixture) + \
        hidden_overrides(fixture) + multitask_overrides(fixture, rates) + [
            f"model.rank={sizes['rank']}",
            f"model.factor_lr={fixture['optimiser']['factor_lr']}",
        ]


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    check_fixture_origin(fixture)
    assert len(fixture["forwards"][0]["criterion_calls"]) == 4


def test_mlmf_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    rates = {"dropouts": (0, 0, 0), "post_dropouts": (0, 0, 0, 0)}
    record = check_training("mlmf", overrides(fixture, bert_dir, rates), fixture, to_msakit,
                            tmp_path, monkeypatch, UNIMODAL_FEATURES, MULTITASK_TERMS)
    for name in ("fusion_weights", "fusion_bias"):  # learning rate 0 in MMSA, frozen here
        check_frozen(record, fixture, {name: "Model." + name})
    check_unimodal_heads(record, fixture)


def test_mlmf_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    check_dropout_map_and_eval_forward(
        "mlmf", overrides(fixture, bert_dir, fixture["official_rates"]), fixture, to_msakit)


def test_unimodal_terms_without_unimodal_labels_are_a_clear_error(fixture, bert_dir):
    check_missing_unimodal_labels_error(
        "mlmf", overrides(fixture, bert_dir, fixture["official_rates"]), fixture, to_msakit)
