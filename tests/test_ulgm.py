"""ULGM (Self-MM's unimodal label generation) on hand-made banks: centres, offsets, momentum."""

from __future__ import annotations

import json
import math

import pytest
import torch

from msakit.modules.ulgm import (
    SentimentHead,
    UnimodalLabelGenerator,
    momentum_update,
    offset_label,
    relative_distance,
    weighted_l1_loss,
)


def test_relative_distance_by_hand():
    positive, negative = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 0.0])
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [-3.0, 0.0]])
    # D_p = 1, 1, 4 and D_n = 1, 3, 2  ->  (D_n - D_p) / D_p = 0, 2, -0.5
    alpha = relative_distance(features, positive, negative, eps=0.0)
    assert torch.allclose(alpha, torch.tensor([0.0, 2.0, -0.5]))


def test_offset_label_averages_the_two_relations_and_clips():
    y_m = torch.tensor([2.0, 3.0, -1.0])
    alpha_s = torch.tensor([1.0, 4.0, 0.5])
    alpha_m = torch.tensor([2.0, 1.0, -0.5])
    new = offset_label(y_m, alpha_s, alpha_m, limit=3.0, eps=0.0)
    # row 0: 0.5*(1/2)*2 + 0.5*(2+1-2) = 1.0
    # row 1: 0.5*4*3 + 0.5*(3+4-1) = 9 -> clipped to 3
    # row 2: 0.5*(0.5/-0.5)*(-1) + 0.5*(-1+0.5+0.5) = 0.5
    assert torch.allclose(new, torch.tensor([1.0, 3.0, 0.5]))
    # eq. 34's second form: y_m + (α_s - α_m)/2 * (y_m + α_m)/α_m, identical for unclipped rows
    closed = y_m + (alpha_s - alpha_m) / 2 * (y_m + alpha_m) / alpha_m
    assert torch.allclose(new[[0, 2]], closed[[0, 2]])


def test_momentum_update():
    old, new = torch.tensor([3.0]), torch.tensor([0.0])
    assert torch.allclose(momentum_update(old, new, 1), new)  # epoch 1 would take the new value
    assert torch.allclose(momentum_update(old, new, 2), torch.tensor([1.0]))  # 1/3*3 + 2/3*0
    assert torch.allclose(momentum_update(old, new, 5), torch.tensor([2.0]))  # 4/6*3
    with pytest.raises(ValueError):
        momentum_update(old, new, 0)


def test_weighted_l1_loss():
    pred, target = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    assert float(weighted_l1_loss(pred, target)) == pytest.approx(1.5)
    assert float(weighted_l1_loss(pred, target, torch.tensor([0.0, 0.5]))) == pytest.approx(0.5)


def test_sentiment_head_shapes():
    head = SentimentHead(10, 8, 0.1)
    prediction, representation = head(torch.randn(4, 10))
    assert prediction.shape == (4,) and representation.shape == (4, 8)
    assert (representation >= 0).all()  # F* is post-ReLU


def _generator() -> UnimodalLabelGenerator:
    ulgm = UnimodalLabelGenerator({"m": 2, "a": 2}, label_limit=3.0, eps=0.0)
    ulgm.reset(torch.tensor([2.0, 1.0, -1.0, -2.0]))
    return ulgm


def test_epoch_one_writes_bank_and_centres_without_touching_labels():
    ulgm = _generator()
    assert torch.equal(ulgm.labels["a"], ulgm.labels["m"])
    features = {
        "m": torch.tensor([[2.0, 0.0], [4.0, 0.0], [-2.0, 0.0], [-4.0, 0.0]]),
        "a": torch.tensor([[1.0, 1.0], [3.0, 1.0], [-1.0, 1.0], [-3.0, 1.0]]),
    }
    ulgm.step(features, torch.arange(4), epoch=1, ids=["c0", "c1", "c2", "c3"])
    assert torch.equal(ulgm.labels["a"], torch.tensor([2.0, 1.0, -1.0, -2.0]))
    assert torch.equal(ulgm.features["a"], features["a"])
    assert torch.allclose(ulgm.centres["m"]["pos"], torch.tensor([3.0, 0.0]))
    assert torch.allclose(ulgm.centres["m"]["neg"], torch.tensor([-3.0, 0.0]))
    assert torch.allclose(ulgm.centres["a"]["pos"], torch.tensor([2.0, 1.0]))
    assert torch.allclose(ulgm.centres["a"]["neg"], torch.tensor([-2.0, 1.0]))
    assert ulgm.label_updates == 0 and ulgm.ids == ["c0", "c1", "c2", "c3"]
    # weights tanh(|y_a - y_m|) are 0 while the labels are the human ones
    assert torch.equal(ulgm.loss_weights("a", torch.tensor([0, 3])), torch.zeros(2))
    assert torch.equal(ulgm.loss_weights("m", torch.tensor([0, 3])), torch.ones(2))


def test_epoch_two_updates_labels_from_old_centres_then_bank_then_centres():
    ulgm = _generator()
    ulgm.step({
        "m": torch.tensor([[2.0, 0.0], [4.0, 0.0], [-2.0, 0.0], [-4.0, 0.0]]),
        "a": torch.tensor([[1.0, 1.0], [3.0, 1.0], [-1.0, 1.0], [-3.0, 1.0]]),
    }, torch.arange(4), epoch=1)
    # sample 0 (y_m = 2): fusion feature at (3, 0) = the positive centre would divide by 0, so
    # use (1, 0): D_p = 2, D_n = 4 -> α_m = 1. Audio feature (-2, 1) = the negative centre:
    # D_p = 4, D_n = 0 -> α_a = -1.  ŷ_a = 0.5*(-1/1)*2 + 0.5*(2 - 1 - 1) = -1.
    # Momentum at epoch 2: 1/3 * 2 + 2/3 * (-1) = 0.
    ulgm.step({"m": torch.tensor([[1.0, 0.0]]), "a": torch.tensor([[-2.0, 1.0]])},
              torch.tensor([0]), epoch=2)
    assert float(ulgm.labels["a"][0]) == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(ulgm.labels["a"][1:], torch.tensor([1.0, -1.0, -2.0]))
    assert torch.equal(ulgm.labels["m"], torch.tensor([2.0, 1.0, -1.0, -2.0]))  # never changes
    assert ulgm.label_updates == 1
    # the bank now holds the new features; the label 0 counts as positive
    assert torch.equal(ulgm.features["a"][0], torch.tensor([-2.0, 1.0]))
    assert torch.allclose(ulgm.centres["a"]["pos"], torch.tensor([0.5, 1.0]))  # rows 0, 1
    assert torch.allclose(ulgm.centres["m"]["pos"], torch.tensor([2.5, 0.0]))
    weight = ulgm.loss_weights("a", torch.tensor([0]))
    assert float(weight) == pytest.approx(math.tanh(2.0))
    assert torch.equal(ulgm.targets("a", torch.tensor([0, 2])), torch.tensor([0.0, -1.0]))


def test_generated_labels_are_clipped_to_the_limit():
    ulgm = UnimodalLabelGenerator({"m": 1, "v": 1}, label_limit=1.0)
    ulgm.reset(torch.tensor([1.0, -1.0]))
    ulgm.step({"m": torch.tensor([[1.0], [-1.0]]), "v": torch.tensor([[1.0], [-1.0]])},
              torch.arange(2), epoch=1)
    for epoch in range(2, 6):
        ulgm.step({"m": torch.tensor([[0.9], [-1.0]]), "v": torch.tensor([[50.0], [-1.0]])},
                  torch.arange(2), epoch=epoch)
        assert ulgm.labels["v"].abs().max() <= 1.0 + 1e-6


def test_empty_class_keeps_its_previous_centre():
    ulgm = UnimodalLabelGenerator({"m": 1, "a": 1})
    ulgm.reset(torch.tensor([1.0, 2.0]))  # no negative sample
    ulgm.step({"m": torch.tensor([[1.0], [3.0]]), "a": torch.tensor([[1.0], [1.0]])},
              torch.arange(2), epoch=1)
    assert torch.equal(ulgm.centres["m"]["neg"], torch.zeros(1))
    assert torch.allclose(ulgm.centres["m"]["pos"], torch.tensor([2.0]))


def test_index_outside_the_training_split_is_an_error():
    ulgm = _generator()
    with pytest.raises(IndexError, match="training split"):
        ulgm.targets("a", torch.tensor([4]))
    with pytest.raises(ValueError, match=r"features\['a'\]"):
        ulgm.step({"m": torch.zeros(1, 2), "a": torch.zeros(1, 3)}, torch.tensor([0]), epoch=1)
    with pytest.raises(RuntimeError, match="reset"):
        UnimodalLabelGenerator({"m": 1, "a": 1}).targets("a", torch.tensor([0]))


def test_artifacts_report_drift_and_are_json():
    ulgm = _generator()
    ulgm.labels["a"] = torch.tensor([1.0, 1.0, 0.5, -2.0])
    ulgm.record_epoch(3)
    art = ulgm.artifacts()
    json.dumps(art)
    drift = art["drift"]["a"]
    assert drift["mean_abs_drift"] == pytest.approx((1.0 + 1.5) / 4)
    assert drift["mean_drift"] == pytest.approx((-1.0 + 1.5) / 4)
    assert drift["max_abs_drift"] == pytest.approx(1.5)
    assert drift["sign_flip_fraction"] == pytest.approx(0.25)
    assert art["drift_by_epoch"][0]["epoch"] == 3
    assert art["labels"][2] == {"index": 2, "id": None, "human": -1.0, "a": 0.5}


def test_state_round_trip():
    ulgm = _generator()
    ulgm.step({"m": torch.randn(4, 2), "a": torch.randn(4, 2)}, torch.arange(4), epoch=1)
    ulgm.step({"m": torch.randn(2, 2), "a": torch.randn(2, 2)}, torch.tensor([1, 2]), epoch=2)
    state = ulgm.state_tensors()
    other = UnimodalLabelGenerator({"m": 2, "a": 2})
    other.load_state_tensors(state)
    for key in ("m", "a"):
        assert torch.equal(other.labels[key], ulgm.labels[key])
        assert torch.equal(other.features[key], ulgm.features[key])
        assert torch.equal(other.centres[key]["neg"], ulgm.centres[key]["neg"])
    assert (other.epoch, other.label_updates) == (2, 1)


def test_training_step_needs_no_host_sync():
    """On the meta device every value read on the host (``int()``, ``bool()``, ``.tolist()``,
    a boolean-mask gather) raises: ULGM's per-batch work must run there."""
    ulgm = UnimodalLabelGenerator({"m": 3, "a": 2}, label_limit=3.0)
    ulgm.reset(torch.tensor([1.0, -2.0, 0.0, 0.5, -0.1, 2.5]))
    meta = torch.device("meta")
    index = torch.tensor([4, 1, 3], device=meta)
    features = {"m": torch.empty(3, 3, device=meta), "a": torch.empty(3, 2, device=meta)}
    for epoch in (1, 2):
        ulgm.step(features, index, epoch, ids=["x", "y", "z"])
        ulgm.targets("a", index), ulgm.loss_weights("a", index)
    assert ulgm.labels["a"].device == meta and ulgm.label_updates == 1


def test_centres_as_masked_means_equal_the_boolean_gather():
    """The sync-free centres equal the mean over the rows of each class (the official
    ``bank[labels >= 0].mean(0)``); an empty class keeps its previous centre."""
    g = torch.Generator().manual_seed(3)
    ulgm = UnimodalLabelGenerator({"m": 4, "v": 3})
    labels = torch.tensor([1.2, -0.4, 0.0, 2.0, -3.0, 0.7, -1.1])
    ulgm.reset(labels)
    features = {"m": torch.randn(7, 4, generator=g), "v": torch.randn(7, 3, generator=g)}
    ulgm.step(features, torch.arange(7), epoch=1)
    for key in ("m", "v"):
        bank = ulgm.features[key]
        assert torch.allclose(ulgm.centres[key]["pos"], bank[labels >= 0].mean(0), atol=1e-6)
        assert torch.allclose(ulgm.centres[key]["neg"], bank[labels < 0].mean(0), atol=1e-6)
    ulgm.reset(torch.tensor([1.0, 2.0]))
    ulgm.centres["m"]["neg"] = torch.full((4,), 7.0)
    ulgm.step({"m": torch.ones(2, 4), "v": torch.ones(2, 3)}, torch.arange(2), epoch=1)
    assert torch.equal(ulgm.centres["m"]["neg"], torch.full((4,), 7.0))
    assert torch.equal(ulgm.centres["m"]["pos"], torch.ones(4))


def test_exclude_zero_leaves_rows_labelled_zero_out_of_the_positive_centre():
    """MMSA's ``excludeZero`` (TETFN): the positive centre averages rows labelled ``> 0``, so
    a row labelled exactly 0 is in neither centre; the default (the authors' Self-MM) counts it
    as positive."""
    labels = torch.tensor([2.0, 0.0, -1.0])
    features = {"m": torch.tensor([[4.0], [10.0], [-2.0]]), "a": torch.tensor([[1.0], [7.0], [-1.0]])}
    expected = {False: {"m": 7.0, "a": 4.0}, True: {"m": 4.0, "a": 1.0}}
    for exclude_zero, positive in expected.items():
        ulgm = UnimodalLabelGenerator({"m": 1, "a": 1}, exclude_zero=exclude_zero)
        ulgm.reset(labels)
        ulgm.step(features, torch.arange(3), epoch=1)
        for key, value in positive.items():
            assert torch.allclose(ulgm.centres[key]["pos"], torch.tensor([value]))
            assert torch.allclose(ulgm.centres[key]["neg"], features[key][2])
