"""MTFN against MMSA's code (thuiar/MMSA ``mtfn``), from the fixture of ``tools/parity/mtfn.py``
(no official code needed here).

The official run is TFN's (see test_tfn_parity.py) with MMSA's multi-task trainer: four L1 terms
(M, T, A, V, weighted 0.6 / 0.4 / 0.3 / 1.0) on the human labels and random SIMS-style unimodal
labels, Adam with five groups (the text, audio and video sub-networks with their own weight
decay, the constants ``output_range``/``output_shift`` at learning rate 0, the heads without
weight decay although the official run's config says 0.005: MMSA's MTFN trainer never passes it
to Adam). msakit runs the same through ``Trainer.fit`` (loss terms task, text, audio, vision with
MMSA's weights, ``train.weight_decay`` 0) and must match every prediction and unimodal feature,
every loss term, every gradient, every parameter and BatchNorm buffer after each step, and the
epoch early stopping ends on; at MMSA's SIMS dropout rates, the dropout map and the eval-mode
predictions.

Names: ``Model.`` (MMSA's AMIO wrapper) is dropped, ``video`` -> ``vision``,
``post_<m>_layer_<i>`` -> ``post_<m>.layer_<i>``; ``output_range``/``output_shift`` (6, -3) are
msakit's ``output_bound`` 3.
"""

from __future__ import annotations

import re

import torch
from _mmsa_parity import (
    MULTITASK_TERMS,
    UNIMODAL_FEATURES,
    check_dropout_map_and_eval_forward,
    check_fixture_origin,
    check_missing_unimodal_labels_error,
    check_training,
    check_unimodal_heads,
    hidden_overrides,
    mmsa_reading_overrides,
    module_fixtures,
    multitask_overrides,
    training_overrides,
)

fixture, bert_dir = module_fixtures("mtfn")


def to_msakit(name: str, value: torch.Tensor):
    name = name.removeprefix("Model.")
    if name in ("output_range", "output_shift"):  # constants: msakit's output_bound
        return None
    name = name.replace("video", "vision")
    return re.sub(r"^post_(\w+?)_layer_(\d)\.", r"post_\1.layer_\2.", name), value


def overrides(fixture, bert_dir, rates) -> list[str]:
    sizes = fixture["sizes"]
    return training_overrides(fixture, bert_dir) + mmsa_reading_overrides(fixture) + \
        hidden_overrides(fixture) + multitask_overrides(fixture, rates) + [
            f"model.text_out={sizes['text_out']}",
            f"model.post_fusion_dim={sizes['post_fusion_dim']}",
        ]


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    check_fixture_origin(fixture)
    assert len(fixture["forwards"][0]["criterion_calls"]) == 4
    assert fixture["initial_state"]["Model.output_range"].item() == 6.0
    assert fixture["initial_state"]["Model.output_shift"].item() == -3.0
    # the official run had weight_decay 0.005 in its config; msakit replays it with 0
    assert fixture["ignored_weight_decay"] > 0 and "weight_decay" not in fixture["optimiser"]


def test_mtfn_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    rates = {"dropouts": (0, 0, 0), "post_dropouts": (0, 0, 0, 0)}
    record = check_training("mtfn", overrides(fixture, bert_dir, rates), fixture, to_msakit,
                            tmp_path, monkeypatch, UNIMODAL_FEATURES, MULTITASK_TERMS)
    check_unimodal_heads(record, fixture)


def test_mtfn_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    check_dropout_map_and_eval_forward(
        "mtfn", overrides(fixture, bert_dir, fixture["official_rates"]), fixture, to_msakit)


def test_unimodal_terms_without_unimodal_labels_are_a_clear_error(fixture, bert_dir):
    check_missing_unimodal_labels_error(
        "mtfn", overrides(fixture, bert_dir, fixture["official_rates"]), fixture, to_msakit)
