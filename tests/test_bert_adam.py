"""BertAdam, the warmup_linear schedule and per-parameter clipping, by hand (the comparison with
pytorch_pretrained_bert's own BertAdam is in tests/parity/test_cm_bert_parity.py)."""

from __future__ import annotations

import math

import pytest
import torch

from msakit.config import build_config
from msakit.models import FeatureDims, create_model
from msakit.training.bert_adam import BertAdam
from msakit.training.trainer import (
    clip_gradients,
    make_optimizer,
    make_scheduler,
    warmup_linear_factor,
)


def test_warmup_linear_factor_hand_values():
    assert warmup_linear_factor(0, 10, 0.3) == 0.0  # the first step runs at lr 0
    assert warmup_linear_factor(1, 10, 0.3) == pytest.approx(1 / 3)
    assert warmup_linear_factor(2, 10, 0.3) == pytest.approx(2 / 3)
    assert warmup_linear_factor(3, 10, 0.3) == pytest.approx(0.7)  # x = warmup: 1 - x
    assert warmup_linear_factor(9, 10, 0.3) == pytest.approx(0.1)
    assert warmup_linear_factor(12, 10, 0.3) == 0.0  # past the end: floored at 0


def test_bert_adam_first_steps_by_hand():
    """No bias correction: after one step m = (1 - b1) g, v = (1 - b2) g^2; the decay is added
    to the update (decoupled), not to the gradient."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    idle = torch.nn.Parameter(torch.tensor([5.0], dtype=torch.float64))  # never has a gradient
    optimizer = BertAdam([p, idle], lr=0.1, weight_decay=0.01)
    p.grad = torch.tensor([2.0, 0.5], dtype=torch.float64)
    optimizer.step()
    expected = []
    for value, grad in ((1.0, 2.0), (-2.0, 0.5)):
        m, v = 0.1 * grad, 0.001 * grad * grad
        expected.append(value - 0.1 * (m / (math.sqrt(v) + 1e-6) + 0.01 * value))
    torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    assert idle.item() == 5.0 and idle not in optimizer.state  # skipped, decay included
    # a second step: the moments carry over, still without bias correction
    previous, state = p.detach().clone(), optimizer.state[p]
    m0, v0 = state["exp_avg"].clone(), state["exp_avg_sq"].clone()
    p.grad = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    optimizer.step()
    m = 0.9 * m0 + 0.1 * p.grad
    v = 0.999 * v0 + 0.001 * p.grad ** 2
    torch.testing.assert_close(p.detach(), previous - 0.1 * (m / (v.sqrt() + 1e-6)
                                                             + 0.01 * previous),
                               atol=1e-12, rtol=0)
    assert state["step"] == 2


def test_per_parameter_clipping_clips_each_gradient_on_its_own():
    big = torch.nn.Parameter(torch.zeros(2))
    small = torch.nn.Parameter(torch.zeros(2))
    for scope, expected_small in (("per_parameter", [0.3, 0.4]), ("global", None)):
        big.grad = torch.tensor([3.0, 4.0])  # norm 5
        small.grad = torch.tensor([0.3, 0.4])  # norm 0.5
        config = build_config("cm_bert", ["train.grad_clip_norm=1.0",
                                          f"train.grad_clip_scope={scope}"])
        clip_gradients([big, small], config)
        if scope == "per_parameter":
            torch.testing.assert_close(big.grad, torch.tensor([0.6, 0.8]))
            torch.testing.assert_close(small.grad, torch.tensor(expected_small))
        else:  # the norm of both together (sqrt(25.25)) scaled to 1
            total = math.sqrt(25.25)
            torch.testing.assert_close(small.grad, torch.tensor([0.3, 0.4]) / total,
                                       rtol=1e-5, atol=1e-6)


def test_the_trainer_builds_bert_adam_and_a_per_step_warmup_linear_schedule():
    config = build_config("cm_bert", ["train.epochs=2"])
    model = create_model(config.model, FeatureDims(audio=5, vision=0))
    optimizer = make_optimizer(model, config)
    assert isinstance(optimizer, BertAdam)
    scheduler = make_scheduler(optimizer, config, "min", steps_per_epoch=5)  # 10 steps in all
    lrs = []
    for _ in range(10):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    bases = [group["initial_lr"] for group in optimizer.param_groups]
    for k, step_lrs in enumerate(lrs):
        factor = warmup_linear_factor(k, 10, 0.1)
        assert step_lrs == pytest.approx([base * factor for base in bases])
    assert lrs[0] == [0.0] * len(bases) and lrs[1] == pytest.approx([0.9 * b for b in bases])


def test_per_parameter_clipping_without_a_norm_is_a_config_error():
    from msakit.errors import ConfigError

    with pytest.raises(ConfigError, match="grad_clip_scope=per_parameter.*grad_clip_norm"):
        build_config("cm_bert", ["train.grad_clip_norm=null"])
