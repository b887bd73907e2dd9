"""Trainer options for the official training loops: accumulation, clipping, warm-up + cosine.

The reference loops below are written out step by step, as the official scripts run them
(DMD: ``trains/singleTask/DMD.py``; ALMT: ``core/scheduler.py`` + ``train.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from msakit.config import ModelConfig, build_config
from msakit.models.base import FeatureDims, ModelOutput, MSAModel
from msakit.training.trainer import Trainer, make_scheduler, warmup_cosine_factor


class _ToyConfig(ModelConfig):
    name: str = "toy"


class _Toy(MSAModel):
    """``y = w · x + b`` with an L1 task loss; ``(B, 3)`` audio -> ``(B,)``."""

    name = "toy"
    config_class = _ToyConfig

    def __init__(self):
        super().__init__(_ToyConfig(loss_weights={"task": 1.0}), FeatureDims(audio=3, vision=0))
        self.linear = nn.Linear(3, 1)

    def forward(self, batch):
        prediction = self.linear(batch["audio"]).squeeze(-1)
        return ModelOutput(prediction=prediction, losses={
            "task": (prediction - batch["labels"]).abs().mean()})


def _batches(n=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [{"audio": 3 * torch.randn(4, 3, generator=generator),
             "labels": 3 * torch.randn(4, generator=generator)} for _ in range(n)]


def _train_one_epoch(overrides, batches, tmp_path):
    config = build_config("lf_dnn", overrides)  # any model's train section; the toy is trained
    torch.manual_seed(0)
    model = _Toy()
    trainer = Trainer(config, tmp_path, "mosi", progress=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    from msakit.training.trainer import _progress

    with _progress(False) as progress:
        trainer._train_epoch(model, optimizer, batches, 1, {"task": 1.0}, progress)
    return model


def _official_dmd_loop(batches, update_every, clip):
    """DMD's official loop: zero the gradient at the start of each group of ``update_every``
    batches, back-propagate each batch's loss unscaled, clip the running sum by value after
    every backward, step when the group is complete."""
    torch.manual_seed(0)
    model = _Toy()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    left = update_every
    for batch in batches:
        if left == update_every:
            optimizer.zero_grad()
        left -= 1
        model(batch).losses["task"].backward()
        nn.utils.clip_grad_value_(model.parameters(), clip)
        if not left:
            optimizer.step()
            left = update_every
    return model


def test_sum_accumulation_with_clipping_after_every_backward_is_the_official_dmd_loop(tmp_path):
    batches = _batches(6)
    official = _official_dmd_loop(batches, update_every=3, clip=2.0)
    ours = _train_one_epoch(["train.grad_accumulation=3", "train.accumulation=sum",
                             "train.clip_every_backward=true", "train.grad_clip_value=2.0"],
                            batches, tmp_path)
    for a, b in zip(official.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)
    # the trainer's default (mean of the group, clipped once) is a different update
    default = _train_one_epoch(["train.grad_accumulation=3", "train.grad_clip_value=2.0",
                                "train.accumulation=mean", "train.clip_every_backward=false"],
                               batches, tmp_path)
    assert not torch.allclose(official.linear.weight, default.linear.weight, atol=1e-4)


def test_mean_accumulation_divides_and_clips_once(tmp_path):
    batches = _batches(2)
    torch.manual_seed(0)
    reference = _Toy()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for batch in batches:
        (reference(batch).losses["task"] / 2).backward()
    nn.utils.clip_grad_value_(reference.parameters(), 0.05)
    optimizer.step()
    ours = _train_one_epoch(["train.grad_accumulation=2", "train.grad_clip_value=0.05",
                             "train.accumulation=mean", "train.clip_every_backward=false"],
                            batches, tmp_path)
    for a, b in zip(reference.parameters(), ours.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def _almt_official_lrs(epochs, base=1e-3):
    """ALMT's schedule as the official script steps it, from its definition: lr 0 in epoch 1,
    linear to the base lr at epoch W + 1 (W = 0.1 epochs), held one more epoch, then
    ``base (1 + cos(pi j / T)) / 2`` (T = 0.9 epochs), j counting from the hand-over."""
    warmup, period = 0.1 * epochs, 0.9 * epochs
    lrs = []
    for epoch in range(1, epochs + 1):
        k = epoch - 1
        lrs.append(base * (k / warmup if k <= warmup
                           else (1 + math.cos(math.pi * (k - math.floor(warmup) - 1) / period)) / 2))
    return lrs


def test_warmup_cosine_factor_hand_values():
    assert warmup_cosine_factor(0, 20.0, 180.0) == 0.0
    assert warmup_cosine_factor(10, 20.0, 180.0) == pytest.approx(0.5)
    assert warmup_cosine_factor(20, 20.0, 180.0) == pytest.approx(1.0)
    assert warmup_cosine_factor(21, 20.0, 180.0) == pytest.approx(1.0)  # the hand-over epoch
    assert warmup_cosine_factor(22, 20.0, 180.0) == pytest.approx((1 + math.cos(math.pi / 180)) / 2)
    assert warmup_cosine_factor(111, 20.0, 180.0) == pytest.approx(0.5)  # j = 90 = T / 2


@pytest.mark.parametrize("epochs", [200, 30, 6])
def test_warmup_cosine_per_epoch_follows_the_official_sequence(epochs):
    config = build_config("almt", [f"train.epochs={epochs}", "train.lr=1e-3"])
    assert config.train.scheduler == "warmup_cosine" and config.train.scheduler_interval == "epoch"
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1e-3)
    scheduler = make_scheduler(optimizer, config, "min", steps_per_epoch=1)
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx(_almt_official_lrs(epochs), rel=1e-9, abs=1e-15)


def test_warmup_cosine_per_step_counts_optimiser_steps(tmp_path):
    config = build_config("almt", ["train.epochs=2", "train.lr=1e-3",
                                   "train.scheduler_interval=step"])
    parameter = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1e-3)
    scheduler = make_scheduler(optimizer, config, "min", steps_per_epoch=10)  # 20 steps: W 2, T 18
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])
    assert lrs[4] == pytest.approx(1e-3 * (1 + math.cos(math.pi / 18)) / 2)


def test_dmd_and_almt_configs_use_their_official_loops():
    dmd = build_config("dmd").train
    assert (dmd.grad_accumulation, dmd.accumulation, dmd.clip_every_backward) == (10, "sum", True)
    assert dmd.partial_accumulation == "drop"
    assert (dmd.grad_clip_value, dmd.scheduler, dmd.plateau_factor, dmd.plateau_patience) == (
        0.6, "plateau", 0.5, 5)
    assert (dmd.patience, dmd.selection_metric) == (10, "loss")
    almt = build_config("almt").train
    assert (almt.epochs, almt.patience, almt.scheduler, almt.warmup_fraction) == (
        200, None, "warmup_cosine", 0.1)
