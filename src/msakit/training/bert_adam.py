"""BertAdam: the Adam variant of Google's BERT and of ``pytorch_pretrained_bert`` (<= 0.6.x).

Neither PyTorch nor transformers (5.x removed its ``AdamW(correct_bias=False)``) has this update,
which official BERT fine-tuning code of 2019-2020 (e.g. CM-BERT's ``run_classifier.py``) uses.
For a parameter ``p`` with gradient ``g`` at step ``t`` and group learning rate ``lr_t``::

    m = b1 m + (1 - b1) g                 # no bias correction of m or v
    v = b2 v + (1 - b2) g^2
    p = p - lr_t (m / (sqrt(v) + eps) + weight_decay p)   # decoupled weight decay

``lr_t`` is the group's ``lr`` times the schedule (``warmup_linear`` in the official code), set
here by a ``torch.optim.lr_scheduler`` stepped once per optimiser step (msakit's
``train.scheduler=warmup_linear``, :func:`msakit.training.trainer.warmup_linear_factor`).
BertAdam also clips each parameter's gradient to norm ``max_grad_norm`` (1.0) before its update;
in msakit that is the trainer's ``train.grad_clip_norm`` with ``train.grad_clip_scope=
per_parameter``, done before :meth:`BertAdam.step` (the same result). Parameters without a
gradient are skipped, weight decay included, as in the official optimiser.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class BertAdam(torch.optim.Optimizer):
    """Adam without bias correction, with decoupled weight decay (module docstring).

    Args:
        params: parameters or parameter groups (``lr``, ``weight_decay`` per group).
        lr: learning rate.
        betas: ``(b1, b2)`` (official 0.9, 0.999).
        eps: added to ``sqrt(v)`` (official ``e=1e-6``, not Adam's 1e-8).
        weight_decay: decoupled weight decay (official default 0.01).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"invalid BertAdam settings: lr={lr}, betas={betas}, eps={eps}, "
                             f"weight_decay={weight_decay}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("BertAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = exp_avg / (exp_avg_sq.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
                state["step"] += 1
        return loss
