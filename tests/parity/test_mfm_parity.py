"""MFM against MMSA's code (thuiar/MMSA ``mfm``), from the fixture of ``tools/parity/mfm.py``
(no official code needed here).

The official run follows MMSA's data path for MFM: the tiny random BERT's token states and the
word-level audio/vision, each zero past its real steps and padded/truncated to ``seq_len`` steps;
small sizes, float64, six real clips in three batches of two. With dropout 0, MMSA's
``do_train`` (one Adam group with the learning rate and weight decay MMSA's trainer really
passes, L1 task loss plus weighted reconstruction and MMD terms) for three epochs with scripted
validation losses, the torch RNG seeded just before it; msakit runs the same through
``Trainer.fit`` from the same seed (so both draw the same prior samples of the MMD terms) and
must match every prediction and loss term, every gradient, the parameters after the last step of
each epoch, and the epoch early stopping ends on. At MMSA's MOSI rates: the same dropout calls
(rate and input shape, in call order: att1, att2, gamma1, gamma2 at every step, MFN's discarded
output head, the four factor networks, the prediction), and the same eval-mode predictions.

Names: msakit keeps MMSA's, except the factor networks (``zy_to_fy_fc1`` -> ``zy_to_fy.fc1``).
"""

from __future__ import annotations

import re

import torch
from _mmsa_parity import (
    block_overrides,
    build_model,
    check_dropout_map_and_eval_forward,
    check_fixture_origin,
    check_training,
    dropout_map,
    hidden_overrides,
    module_fixtures,
    msakit_batches,
    training_overrides,
)

from msakit.config import build_config

BLOCKS = {"NN1Config": "att1", "NN2Config": "att2", "gamma1Config": "gamma1",
          "gamma2Config": "gamma2", "outConfig": "out"}
FACTOR_DROPOUTS = ("zy_to_fy_dropout", "zl_to_fl_dropout", "za_to_fa_dropout",
                   "zv_to_fv_dropout", "fy_to_y_dropout")
TERMS = ("task", "text_reconstruction", "audio_reconstruction", "vision_reconstruction", "mmd")
FACTOR_NETWORK = re.compile(r"(z[ylav]_to_f[ylav])_(fc[12]\..*)")

fixture, bert_dir = module_fixtures("mfm")


def to_msakit(name: str, value: torch.Tensor):
    match = FACTOR_NETWORK.fullmatch(name)
    return (f"{match[1]}.{match[2]}" if match else name), value


def overrides(fixture, bert_dir, rates) -> list[str]:
    sizes, weights = fixture["sizes"], fixture["loss_weights"]
    return training_overrides(fixture, bert_dir) + [
        f"train.seed={fixture['train_seed']}", f"model.seq_len={fixture['seq_len']}",
        f"model.mem_dim={sizes['memsize']}", "model.run_unused_mfn_head=true",
        f"model.loss_weights={{task: 1.0, text_reconstruction: {weights['lda_xl']}, "
        f"audio_reconstruction: {weights['lda_xa']}, vision_reconstruction: {weights['lda_xv']}, "
        f"mmd: {weights['lda_mmd']}}}",
    ] + [f"model.{k}={sizes[k]}" for k in ("zy_size", "zl_size", "za_size", "zv_size",
                                           "fy_size", "fl_size", "fa_size", "fv_size")] + \
        [f"model.{k}={rates[k]}" for k in FACTOR_DROPOUTS] + hidden_overrides(fixture) + \
        block_overrides(fixture, BLOCKS, rates)


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    check_fixture_origin(fixture)
    assert fixture["sizes"]["windowsize"] == 2  # the only window MMSA's MFN implements


def test_mmsa_trainer_ignores_the_configured_learning_rate(fixture):
    """MMSA's MFM trainer gives Adam the weight decay but not the learning rate: Adam runs at
    its default 1e-3. The presets reproduce what MMSA ran, not what its config says."""
    assert fixture["configured"]["learning_rate"] == 2e-3
    assert fixture["optimiser"] == {"learning_rate": 1e-3,
                                    "weight_decay": fixture["configured"]["weight_decay"]}
    for preset in ("mosi", "mosei", "sims"):
        assert build_config("mfm", preset=preset).train.lr == 1e-3
    assert build_config("mfm", preset="mosi").train.weight_decay == \
        fixture["configured"]["weight_decay"]


def test_mfm_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    rates = {**dict.fromkeys(BLOCKS, 0), **dict.fromkeys(FACTOR_DROPOUTS, 0)}
    check_training("mfm", overrides(fixture, bert_dir, rates), fixture, to_msakit, tmp_path,
                   monkeypatch, terms=TERMS)


def test_mfm_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    check_dropout_map_and_eval_forward(
        "mfm", overrides(fixture, bert_dir, fixture["official_rates"]), fixture, to_msakit)


def test_without_the_unused_head_only_its_dropout_call_goes(fixture, bert_dir):
    """``run_unused_mfn_head=false`` (the authors' code) drops exactly the MFN head's dropout
    call and leaves the eval-mode predictions unchanged."""
    rated = overrides(fixture, bert_dir, fixture["official_rates"])
    _, with_head = build_model("mfm", rated, fixture, to_msakit)
    _, without = build_model("mfm", rated + ["model.run_unused_mfn_head=false"], fixture,
                             to_msakit)
    batch = msakit_batches(fixture)[0]
    calls = dropout_map(with_head, batch)
    head_call = (fixture["official_rates"]["outConfig"],
                 (2, fixture["shapes"]["outConfig"]))
    index = len(calls) - 6  # then the four factor networks and the prediction
    assert calls[index] == head_call
    assert dropout_map(without, batch) == calls[:index] + calls[index + 1:]
    with_head.eval()
    without.eval()
    with torch.no_grad():
        torch.testing.assert_close(with_head(batch).prediction, without(batch).prediction,
                                   rtol=0, atol=0)
