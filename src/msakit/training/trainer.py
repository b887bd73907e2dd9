"""The one trainer every model uses.

A model returns its prediction and named loss terms (:class:`~msakit.models.base.ModelOutput`);
the trainer sums ``loss_weights[name] * term``, steps the optimiser, calls the model's hooks,
selects the checkpoint on the validation split, and evaluates the test split once, with the
selected checkpoint. A model fitted in closed form (``fits_in_closed_form``, e.g. the ridge
probe) skips the gradient epochs: :meth:`Trainer.fit` calls its ``fit_closed_form`` once.

Nothing in a training step waits for the device: loss terms are summed on the device
(:class:`LossAccumulator`) and read every ``train.sync_every_steps`` steps and at the epoch end,
which is also when their finiteness is checked (:class:`NonFiniteLossError` names the first bad
term, epoch and step). ``train.precision`` runs forward passes under ``torch.autocast``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from msakit import runfolder
from msakit.config import ConfigError, ExperimentConfig
from msakit.data.dataset import DataError
from msakit.metrics import compute_metrics, metric_direction
from msakit.models.base import ModelOutput, MSAModel, TrainingStage
from msakit.modules.linear import set_cpu_linear
from msakit.summary import format_metric
from msakit.training import distributed
from msakit.training.bert_adam import BertAdam
from msakit.training.host_memory import apply_host_allocator
from msakit.training.seeding import restore_rng_state, rng_state, seed_everything

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available (under torchrun: this process's GPU), else CPU; or
    ``cpu``, ``cuda``, ``cuda:N``, ``mps``. A device this machine does not have is a
    :class:`ConfigError`."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", distributed.current().local_rank)
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"device {name!r} is not available here ({count} CUDA device(s)); "
                              "use train.device=cpu or auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' is not available here; use train.device=cpu or auto")
    return device


def move_batch(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Tensors to ``device``; asynchronous from pinned memory (see ``train.pin_memory``)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or infinite during training.

    Attributes:
        term: the loss term (``"total"`` for the weighted sum).
        epoch: 1-based epoch.
        step: 1-based step (batch) within the epoch.
    """

    def __init__(self, term: str, epoch: int, step: int, model_name: str = ""):
        self.term, self.epoch, self.step = term, epoch, step
        super().__init__(
            f"loss term {term!r}{f' of {model_name}' if model_name else ''} is not finite "
            f"(NaN or inf) at epoch {epoch}, step {step}; try a lower train.lr, "
            f"train.grad_clip_norm, or train.precision=fp32"
        )


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse precisions the device cannot run (fp16 autocast is a CUDA feature here)."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.precision=fp16 needs a CUDA device (this run uses {device.type}); "
            "use train.precision=bf16 on CPU"
        )


def autocast(precision: str, device: torch.device):
    """``torch.autocast`` for ``precision`` (``fp32``: a no-op context)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    check_precision(precision, device)
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def build_parameter_groups(model: MSAModel, config: ExperimentConfig) -> list[dict[str, Any]]:
    """The model's optimiser groups (:meth:`MSAModel.parameter_groups`), checked.

    Empty groups are dropped; every trainable parameter must be in exactly one group (of these
    or of the optimisers of the model's :meth:`MSAModel.training_stages`) and no frozen
    parameter in any.
    """
    groups = [g for g in model.parameter_groups(config.train) if len(g["params"])]
    seen: dict[int, str] = {}
    stage_groups = [{**g, "name": f"{stage.name}:{g.get('name', '')}"}
                    for stage in model.training_stages(config.train)
                    for g in stage.parameter_groups]
    for group in [*stage_groups, *groups]:
        for parameter in group["params"]:
            if id(parameter) in seen:
                raise RuntimeError(f"model {config.model.name}: a parameter is in optimiser "
                                   f"groups {seen[id(parameter)]!r} and {group['name']!r}")
            if not parameter.requires_grad:
                raise RuntimeError(f"model {config.model.name}: optimiser group "
                                   f"{group['name']!r} holds a frozen parameter")
            seen[id(parameter)] = group["name"]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise RuntimeError(f"model {config.model.name}: trainable parameters in no optimiser "
                           f"group: {missing[:5]}")
    if not groups:
        raise ConfigError(f"model {config.model.name} has no trainable parameters")
    return groups


def make_optimizer(model: MSAModel, config: ExperimentConfig) -> torch.optim.Optimizer:
    """Adam or AdamW over the model's parameter groups (the main pass's; its
    :meth:`MSAModel.training_stages` have their own, :func:`make_stage_optimizers`).

    With ``train.fused_optimizer`` (default) the update runs as PyTorch's fused kernel when every
    parameter is a float tensor on the CPU or a CUDA device: the same Adam update, one kernel
    for all parameters instead of a Python loop of small ops per parameter (on CPU the loop was
    about a quarter of a MISA step with a fine-tuned LM, see docs/performance.md).
    """
    return _adam(build_parameter_groups(model, config), config)


def make_stage_optimizers(model: MSAModel, config: ExperimentConfig
                          ) -> dict[str, torch.optim.Optimizer]:
    """One Adam/AdamW per :class:`TrainingStage` of the model over its parameter groups (empty
    ones dropped), by stage name."""
    optimizers = {}
    for stage in model.training_stages(config.train):
        if stage.name == "main" or stage.name in optimizers:
            raise RuntimeError(f"model {config.model.name}: training stage name {stage.name!r} "
                               "is 'main' or used twice")
        groups = [g for g in stage.parameter_groups if len(g["params"])]
        if not groups:
            raise ConfigError(f"model {config.model.name}: training stage {stage.name!r} has "
                              "no trainable parameters")
        optimizers[stage.name] = _adam(groups, config)
    return optimizers


def _adam(groups: list[dict[str, Any]], config: ExperimentConfig) -> torch.optim.Optimizer:
    if config.train.optimizer == "bert_adam":
        return BertAdam(groups)
    cls = torch.optim.AdamW if config.train.optimizer == "adamw" else torch.optim.Adam
    parameters = [p for group in groups for p in group["params"]]
    fused = config.train.fused_optimizer and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters)
    return cls(groups, fused=True) if fused else cls(groups)


def warmup_cosine_factor(k: int, warmup: float, period: float) -> float:
    """Learning-rate factor after ``k`` scheduler steps: linear warm-up, then cosine annealing.

    ``k / W`` while ``k <= W``; afterwards ``(1 + cos(pi j / T)) / 2`` with
    ``j = k - floor(W) - 1``. This reproduces ALMT's official schedule step for step
    (``GradualWarmupScheduler(multiplier=1, total_epoch=W)`` handing over to
    ``CosineAnnealingLR(T_max=T)``, stepped once per epoch): the first epoch runs at lr 0, the
    base lr is reached at ``k = W`` and held one more step while the hand-over happens.

    Args:
        k: scheduler steps taken so far (0 before the first epoch / optimiser step).
        warmup: ``W`` (official: 0.1 x epochs).
        period: ``T`` (official: 0.9 x epochs).
    """
    if k <= warmup:
        return k / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (k - math.floor(warmup) - 1) / period))


def warmup_linear_factor(k: int, total: int, warmup: float) -> float:
    """Learning-rate factor after ``k`` scheduler steps of ``total``: BERT's ``warmup_linear``.

    With ``x = k / total``: ``x / warmup`` while ``x < warmup``, then ``1 - x`` (floored at 0),
    as ``pytorch_pretrained_bert.optimization.warmup_linear`` (0.6.1) that BertAdam applies at
    each step (``x`` = the parameter's step count before the update / ``t_total``): the first
    step runs at lr 0, and the factor falls from about 1 to ``1 - warmup`` when the warm-up ends.
    """
    x = k / total
    if x < warmup:
        return x / warmup
    return max(0.0, 1.0 - x)


def make_scheduler(optimizer: torch.optim.Optimizer, config: ExperimentConfig, mode: str,
                   steps_per_epoch: int):
    """The configured learning-rate scheduler (or None).

    ``plateau`` is stepped with the epoch's selection value; ``warmup_cosine`` and
    ``warmup_linear`` once per epoch or per optimiser step (``train.scheduler_interval``) with no
    argument.
    """
    train = config.train
    if train.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=train.plateau_factor, patience=train.plateau_patience,
        )
    if train.scheduler == "warmup_cosine":
        total = train.epochs * (steps_per_epoch if train.scheduler_interval == "step" else 1)
        warmup, period = train.warmup_fraction * total, train.cosine_fraction * total
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: warmup_cosine_factor(k, warmup, period)
        )
    if train.scheduler == "warmup_linear":
        total = train.epochs * (steps_per_epoch if train.scheduler_interval == "step" else 1)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: warmup_linear_factor(k, total, train.warmup_fraction))
    return None


def optimizer_steps_per_epoch(num_batches: int, config: ExperimentConfig) -> int:
    """Optimiser steps in an epoch of ``num_batches`` (a trailing partial group also steps)."""
    return max(1, math.ceil(num_batches / config.train.grad_accumulation))


def clip_gradients(parameters: list[torch.nn.Parameter], config: ExperimentConfig) -> None:
    """Apply ``grad_clip_value`` then ``grad_clip_norm`` (each when set)."""
    train = config.train
    if train.grad_clip_value is not None:
        torch.nn.utils.clip_grad_value_(parameters, train.grad_clip_value)
    if train.grad_clip_norm is not None and train.grad_clip_scope == "per_parameter":
        for parameter in parameters:  # BertAdam's max_grad_norm: each gradient on its own
            if parameter.grad is not None:
                torch.nn.utils.clip_grad_norm_(parameter, train.grad_clip_norm)
    elif train.grad_clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(parameters, train.grad_clip_norm)


def weighted_loss(output: ModelOutput, weights: dict[str, float], model_name: str) -> torch.Tensor:
    """``sum(weights[k] * v)`` over the terms the model returned; unknown terms are errors."""
    missing = sorted(set(output.losses) - set(weights))
    if missing:
        raise ConfigError(
            f"model {model_name} returned loss term(s) {missing} without a weight; set "
            f"model.loss_weights.<term> (configured: {sorted(weights)})"
        )
    if "task" not in output.losses:
        raise RuntimeError(f"model {model_name} returned no 'task' loss during training")
    total = None
    for name, value in output.losses.items():
        term = weights[name] * value.float()
        total = term if total is None else total + term
    return total


class LossAccumulator:
    """Per-sample sums of an epoch's loss terms, kept on the device until read.

    :meth:`add` launches a few tiny kernels and never waits for the device. :meth:`read` (one
    host transfer) returns the running means and raises :class:`NonFiniteLossError` for the
    first step since the previous read where a term was not finite; the per-step values kept
    for that search are dropped at each read.
    """

    def __init__(self, epoch: int, model_name: str,
                 process: distributed.Distributed | None = None):
        self.process = process or distributed.Distributed()
        self.epoch = epoch
        self.model_name = model_name
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self._recent: list[tuple[int, tuple[str, ...], torch.Tensor]] = []

    def add(self, step: int, total: torch.Tensor, losses: dict[str, torch.Tensor],
            size: int) -> None:
        names = ("total", *losses)
        values = torch.stack([total.detach().float(),
                              *(v.detach().float().reshape(()) for v in losses.values())])
        self._recent.append((step, names, values))
        for name, value in zip(names, values * size):
            self.sums[name] = value if name not in self.sums else self.sums[name] + value
        self.count += size

    def read(self) -> dict[str, float]:
        """Mean of every term over the samples seen so far (one device-to-host copy)."""
        names = list(self.sums)
        if not names:
            return {}
        device = self.sums[names[0]].device
        sums = torch.stack([*(self.sums[n] for n in names),
                            torch.tensor(float(self.count), device=device)])
        *totals, count = self.process.all_reduce_sum(sums).tolist()  # over processes
        if not all(math.isfinite(v) for v in totals):
            self._raise_first_non_finite()
        self._recent.clear()
        return {n: v / max(count, 1) for n, v in zip(names, totals)}

    def _raise_first_non_finite(self) -> None:
        for step, names, values in self._recent:
            finite = torch.isfinite(values).tolist()
            for name, ok in zip(names, finite):
                if not ok and name != "total":
                    raise NonFiniteLossError(name, self.epoch, step, self.model_name)
            if not all(finite):
                raise NonFiniteLossError("total", self.epoch, step, self.model_name)
        # this process's steps were finite: another process's were not, or the sum overflowed
        raise NonFiniteLossError("total", self.epoch, self._recent[-1][0] if self._recent else 0,
                                 self.model_name)


def _as_sized(loader):
    return list(loader) if not hasattr(loader, "__len__") else loader


@dataclass
class EvaluationResult:
    """Predictions and metrics of one pass over a split."""

    metrics: dict[str, float]
    losses: dict[str, float]
    predictions: np.ndarray
    labels: np.ndarray
    ids: list[str]
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def selection_value(self, metric: str) -> float:
        if metric == "loss":
            return self.losses["task"]
        if metric not in self.metrics:
            raise ConfigError(
                f"train.selection_metric {metric!r} unknown; choose 'loss' or one of "
                f"{sorted(self.metrics)}"
            )
        return self.metrics[metric]


def apply_cpu_linear(config: ExperimentConfig) -> None:
    """Set ``train.cpu_linear`` for this process (:mod:`msakit.modules.linear`)."""
    try:
        set_cpu_linear(config.train.cpu_linear)
    except ValueError as error:
        raise ConfigError(f"train.cpu_linear: {error}") from None


@torch.inference_mode()
def evaluate_model(
    model: MSAModel,
    loader: Iterable[dict[str, Any]],
    dataset_name: str,
    device: torch.device | str = "cpu",
    keep_extras: bool = False,
    precision: str = "fp32",
) -> EvaluationResult:
    """Run ``model`` in eval mode over ``loader``; metrics on the concatenated predictions.

    Loss terms are averaged over samples (each batch weighted by its size). Everything stays on
    the device until the pass ends; then one copy to the host.
    """
    device = torch.device(device)
    model.eval()
    predictions, labels, ids = [], [], []
    loss_sums: dict[str, torch.Tensor] = {}
    extras: dict[str, list[torch.Tensor]] = {}
    count = 0
    for batch in loader:
        batch = move_batch(batch, device)
        with autocast(precision, device):
            output = model(batch)
        size = output.prediction.shape[0]
        count += size
        predictions.append(output.prediction.float().reshape(-1))
        labels.append(batch["labels"].float().reshape(-1))
        ids.extend(batch.get("ids", []))
        for name, value in output.losses.items():
            weighted = value.float() * size
            loss_sums[name] = weighted if name not in loss_sums else loss_sums[name] + weighted
        if keep_extras:
            for name, value in output.extras.items():
                if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == size:
                    extras.setdefault(name, []).append(value)
    if count == 0:
        raise DataError("evaluation split is empty: it holds no clip to score")
    pred = torch.cat(predictions).cpu().numpy()
    truth = torch.cat(labels).cpu().numpy()
    loss_values = torch.stack(list(loss_sums.values())).tolist() if loss_sums else []
    return EvaluationResult(
        metrics=compute_metrics(pred, truth, dataset=dataset_name),
        losses={k: v / count for k, v in zip(loss_sums, loss_values)},
        predictions=pred,
        labels=truth,
        ids=ids,
        extras={k: torch.cat(v).cpu() for k, v in extras.items()},
    )


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        disable=not enabled, transient=True,
    )


class Trainer:
    """Trains one model on one (train, valid) pair and writes a training-run folder.

    Args:
        config: the resolved experiment config.
        run_dir: the training-run folder (created by the caller).
        dataset_name: metric family (``mosi``, ``sims``, ...).
        progress: show progress bars.
        epoch_callback: ``(epoch, selection_value, epoch_row) -> None``, called after every
            epoch once its row and checkpoints are written (e.g. a tuner's pruner); an exception
            it raises stops training and propagates to the caller.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        dataset_name: str,
        progress: bool = True,
        epoch_callback: Callable[[int, float, dict[str, Any]], None] | None = None,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.dataset_name = dataset_name
        self.progress = progress
        self.epoch_callback = epoch_callback
        self.process = distributed.current()
        self.device = resolve_device(config.train.device)
        check_precision(config.train.precision, self.device)
        if config.train.precision == "fp16" and config.train.accumulation == "running_sum":
            raise ConfigError("train.accumulation=running_sum steps twice on one loss-scaled "
                              "fp16 gradient; use train.precision=bf16 or fp32 with it")
        if config.train.precision == "fp16" and config.train.clip_every_backward:
            raise ConfigError("train.clip_every_backward clips loss-scaled fp16 gradients; use "
                              "train.precision=bf16 or fp32 with it")
        # loss scaling keeps fp16 gradients from underflowing; disabled it is a pass-through
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=config.train.precision == "fp16")
        selection = config.train.selection_metric
        self.selection_mode = "min" if selection == "loss" else metric_direction(selection)
        self._step_scheduler = None  # a per-optimiser-step schedule, set up in fit
        self._stage_parameters: list[torch.nn.Parameter] = []  # held by stage optimisers
        self.train_module: torch.nn.Module | None = None  # the model, DDP-wrapped under torchrun

    # ------------------------------------------------------------------------------------------
    def _better(self, value: float, best: float | None) -> bool:
        if best is None or (isinstance(best, float) and math.isnan(best)):
            return not math.isnan(value)
        gain = best - value if self.selection_mode == "min" else value - best
        margin = self.config.train.min_improvement
        return gain >= margin if margin > 0 else gain > 0

    def _save_last(self, model, optimizer, scheduler, state: dict[str, Any],
                   stage_optimizers: dict[str, torch.optim.Optimizer] | None = None) -> None:
        if not self.process.is_main:
            return
        payload = {
            "model": model.checkpoint_state_dict(),
            "optimizer": optimizer.state_dict(),
            **({"stage_optimizers": {k: o.state_dict() for k, o in stage_optimizers.items()}}
               if stage_optimizers else {}),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "grad_scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            **state,
        }
        runfolder.save_last_checkpoint(self.run_dir, payload)

    def _save_best(self, model, epoch: int, value: float) -> None:
        if not self.process.is_main:
            return
        runfolder.save_best_state(self.run_dir, model.checkpoint_state_dict(), {
            "model": self.config.model.name, "epoch": epoch,
            "selection_metric": self.config.train.selection_metric, "selection_value": value})

    def _keep_epoch_rows_up_to(self, epoch: int) -> None:
        """Drop ``epochs.csv`` rows after the checkpointed epoch: a crash between writing an
        epoch's row and its ``last.pt`` must not leave that epoch twice after resuming."""
        if self.process.is_main:
            runfolder.keep_epoch_rows_up_to(self.run_dir, epoch)

    def _append_epoch_row(self, row: dict[str, Any]) -> None:
        if self.process.is_main:
            runfolder.append_epoch_row(self.run_dir, row)

    # ------------------------------------------------------------------------------------------
    def fit(
        self,
        model: MSAModel,
        train_loader_factory,
        valid_loader: Iterable[dict[str, Any]],
        train_labels: torch.Tensor,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Train with validation-based selection and early stopping. Applies
        ``train.host_allocator`` (:mod:`msakit.training.host_memory`) and ``train.cpu_linear``
        (:mod:`msakit.modules.linear`) to the process first.

        Args:
            model: a freshly built model.
            train_loader_factory: ``epoch -> iterable of batches``; the order depends only on
                the seed and the epoch, so a resumed run sees the batches it would have seen.
            valid_loader: the validation batches.
            train_labels: ``(N_train,)`` human labels, for :meth:`MSAModel.on_fit_start`.
            resume: continue from ``last.pt`` in the run folder.

        Returns:
            A summary: best epoch, best selection value, epochs run, seconds per epoch.
        """
        cfg = self.config.train
        seed_everything(cfg.seed + self.process.rank)  # other processes: other dropout masks
        apply_host_allocator(cfg.host_allocator)
        apply_cpu_linear(self.config)
        model.to(self.device)
        model.on_fit_start(train_labels.to(self.device))
        if model.fits_in_closed_form:
            return self._fit_closed_form(model, train_loader_factory(1), valid_loader)
        self.train_module = model
        if self.process.enabled:
            self.train_module = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        stages = model.training_stages(cfg)
        optimizer = make_optimizer(model, self.config)
        stage_optimizers = make_stage_optimizers(model, self.config)
        self._stage_parameters = [p for s in stages for g in s.parameter_groups
                                  for p in g["params"]]
        steps_per_epoch = 1
        per_step = (cfg.scheduler in ("warmup_cosine", "warmup_linear")
                    and cfg.scheduler_interval == "step")
        if per_step:
            steps_per_epoch = optimizer_steps_per_epoch(
                len(_as_sized(train_loader_factory(1))), self.config)
        scheduler = make_scheduler(optimizer, self.config, self.selection_mode, steps_per_epoch)
        self._step_scheduler = scheduler if per_step else None
        state = {"epoch": 0, "best_value": None, "best_epoch": 0, "bad_epochs": 0,
                 "epoch_seconds": []}
        if resume and runfolder.has_last_checkpoint(self.run_dir):
            saved = runfolder.load_checkpoint(runfolder.last_checkpoint_path(self.run_dir),
                                              self.device)
            model.load_checkpoint_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            for name, stage_optimizer in stage_optimizers.items():
                stage_optimizer.load_state_dict(saved["stage_optimizers"][name])
            if scheduler is not None and saved.get("scheduler"):
                scheduler.load_state_dict(saved["scheduler"])
            if saved.get("grad_scaler"):
                self.scaler.load_state_dict(saved["grad_scaler"])
            restore_rng_state(saved["rng"])
            state = {k: saved[k] for k in state}
            self._keep_epoch_rows_up_to(state["epoch"])
            log.info("resuming %s after epoch %d", self.run_dir, state["epoch"])

        weights = self.config.model.loss_weights
        with _progress(self.progress) as progress:
            epoch_task = progress.add_task("epochs", total=cfg.epochs, info="",
                                           completed=state["epoch"])
            for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
                if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
                    break
                started = time.perf_counter()
                stage_losses = {}
                for stage in stages:
                    stage_losses.update({
                        f"{stage.name}_{k}": v for k, v in self._train_stage(
                            model, stage, stage_optimizers[stage.name],
                            train_loader_factory(epoch), epoch, progress).items()})
                train_losses = self._train_epoch(model, optimizer, train_loader_factory(epoch),
                                                 epoch, weights, progress)
                model.on_epoch_end(epoch)
                train_statistics = model.epoch_statistics()
                valid = evaluate_model(model, valid_loader, self.dataset_name, self.device,
                                       precision=cfg.precision)
                value = valid.selection_value(cfg.selection_metric)
                if cfg.scheduler == "plateau":
                    scheduler.step(value)
                elif scheduler is not None and self._step_scheduler is None:
                    scheduler.step()
                seconds = time.perf_counter() - started
                improved = self._better(value, state["best_value"])
                if improved:
                    state.update(best_value=value, best_epoch=epoch, bad_epochs=0)
                    self._save_best(model, epoch, value)
                else:
                    state["bad_epochs"] += 1
                state["epoch"] = epoch
                state["epoch_seconds"] = [*state["epoch_seconds"], seconds]
                row = {
                    "epoch": epoch, "seconds": round(seconds, 3),
                    **{f"train_{k}": v for k, v in train_losses.items()},
                    **{f"train_{k}": v for k, v in stage_losses.items()},
                    **{f"train_{k}": v for k, v in train_statistics.items()},
                    **{f"valid_{k}": v for k, v in valid.losses.items()},
                    **{f"valid_{k}": v for k, v in valid.metrics.items()},
                    "selected": int(improved),
                }
                self._append_epoch_row(row)
                self._save_last(model, optimizer, scheduler, state, stage_optimizers)
                if self.epoch_callback is not None:
                    self.epoch_callback(epoch, value, row)
                progress.update(epoch_task, advance=1, info=(
                    f"train {train_losses['total']:.4f}  valid {cfg.selection_metric} "
                    f"{format_metric(cfg.selection_metric, value)}  best "
                    f"{format_metric(cfg.selection_metric, state['best_value'])}"
                    f"@{state['best_epoch']}"))
        self.process.barrier()  # process 0 has written its checkpoints
        if not runfolder.has_best_weights(self.run_dir):
            raise RuntimeError(f"{self.run_dir}: no epoch produced a valid selection value")
        return {
            "best_epoch": state["best_epoch"],
            "best_valid": state["best_value"],
            "epochs_run": state["epoch"],
            "seconds_per_epoch": float(np.mean(state["epoch_seconds"])) if state["epoch_seconds"] else None,
        }

    def _fit_closed_form(self, model: MSAModel, train_loader, valid_loader) -> dict[str, Any]:
        """A model without gradient training (:attr:`MSAModel.fits_in_closed_form`): one
        "epoch" in which it fits on the training batches (choosing hyper-parameters on the
        validation batches), then is scored on validation and saved as the selected epoch.

        A fit takes seconds, so it keeps no ``last.pt``: a resumed run fits again (the
        experiment layer clears what an unfinished run without ``last.pt`` left).
        """
        if self.process.enabled:
            raise ConfigError(f"model {self.config.model.name} is fitted in closed form on one "
                              "process; run it without torchrun")
        started = time.perf_counter()
        model.eval()
        with autocast(self.config.train.precision, self.device):  # features as in evaluation
            statistics = model.fit_closed_form(
                (move_batch(batch, self.device) for batch in train_loader),
                (move_batch(batch, self.device) for batch in valid_loader))
        valid = evaluate_model(model, valid_loader, self.dataset_name, self.device,
                               precision=self.config.train.precision)
        value = valid.selection_value(self.config.train.selection_metric)
        seconds = time.perf_counter() - started
        self._save_best(model, 1, value)
        row = {
            "epoch": 1, "seconds": round(seconds, 3),
            **{f"train_{k}": v for k, v in statistics.items()},
            **{f"valid_{k}": v for k, v in valid.losses.items()},
            **{f"valid_{k}": v for k, v in valid.metrics.items()},
            "selected": 1,
        }
        self._append_epoch_row(row)
        if self.epoch_callback is not None:
            self.epoch_callback(1, value, row)
        self.process.barrier()
        return {"best_epoch": 1, "best_valid": value, "epochs_run": 1,
                "seconds_per_epoch": seconds}

    def _train_epoch(self, model, optimizer, loader, epoch, weights, progress) -> dict[str, float]:
        """One pass over ``loader``; returns the per-sample mean of every loss term and ``total``.

        The step never waits for the device; :class:`LossAccumulator` is read every
        ``train.sync_every_steps`` steps (progress bar, finiteness) and at the end.
        """
        cfg = self.config.train
        model.train()
        model.on_epoch_start(epoch)
        batches = _as_sized(loader)
        n_steps = len(batches)
        if cfg.partial_accumulation == "drop" and n_steps < cfg.grad_accumulation:
            raise ConfigError(
                f"train.partial_accumulation=drop with {n_steps} batch(es) per epoch and "
                f"train.grad_accumulation={cfg.grad_accumulation}: no optimiser step would ever "
                f"be taken; lower train.grad_accumulation or train.batch_size")
        parameters = [p for p in model.parameters() if p.requires_grad]
        # 'mean': each batch's loss / grad_accumulation; 'sum' (DMD official): unscaled
        scale = 1.0 / cfg.grad_accumulation if cfg.accumulation == "mean" else 1.0
        running = cfg.accumulation == "running_sum"
        task = progress.add_task(f"epoch {epoch}", total=n_steps, info="")
        losses = LossAccumulator(epoch, self.config.model.name, self.process)
        module = self.train_module if self.train_module is not None else model
        gather_for_hooks = (self.process.enabled
                            and distributed.model_overrides_hook(model, "on_train_batch_end"))
        optimizer.zero_grad(set_to_none=True)
        for step, batch in enumerate(batches, start=1):
            batch = move_batch(batch, self.device)
            last_partial = step == n_steps and cfg.partial_accumulation == "step"
            group_ends = step % cfg.grad_accumulation == 0
            steps_now = group_ends or last_partial or running
            # under DDP, gradients are averaged over processes only on the stepping micro-batch
            no_sync = (module.no_sync() if self.process.enabled and not steps_now
                       else contextlib.nullcontext())
            with no_sync:
                with autocast(cfg.precision, self.device):
                    output = module(batch)
                    loss = weighted_loss(output, weights, self.config.model.name)
                self.scaler.scale(loss * scale).backward()
            if cfg.clip_every_backward:
                clip_gradients(parameters, self.config)  # the running sum, as DMD's loop
            if steps_now:
                self._optimizer_step(parameters, optimizer, zero=not running)
            if running and group_ends:  # the official loop's second step on the group's sum
                self._optimizer_step(parameters, optimizer, clip=False)
            elif running and last_partial:
                optimizer.zero_grad(set_to_none=True)
            if gather_for_hooks:
                model.on_train_batch_end(*self.process.gather_for_hooks(batch, output), epoch)
            else:
                model.on_train_batch_end(batch, output, epoch)
            losses.add(step, loss, output.losses, output.prediction.shape[0])
            info = None
            if cfg.sync_every_steps and step % cfg.sync_every_steps == 0 and step < n_steps:
                info = f"loss {losses.read()['total']:.4f}"
            progress.update(task, advance=1, **({"info": info} if info else {}))
        progress.remove_task(task)
        return losses.read()

    def _optimizer_step(self, parameters: list[torch.nn.Parameter], optimizer,
                        zero: bool = True, clip: bool = True) -> None:
        """Clip (unless ``clip_every_backward`` did, or ``clip=False``), step, and clear the
        gradients when ``zero`` (``running_sum`` keeps them until its group ends)."""
        if clip and not self.config.train.clip_every_backward:
            self.scaler.unscale_(optimizer)  # clip the true gradients (no-op unless fp16)
            clip_gradients(parameters, self.config)
        self.scaler.step(optimizer)
        self.scaler.update()
        if zero:
            optimizer.zero_grad(set_to_none=True)
            for parameter in self._stage_parameters:  # not this optimiser's: dropped as well
                parameter.grad = None
        if self._step_scheduler is not None:
            self._step_scheduler.step()

    def _train_stage(self, model: MSAModel, stage: TrainingStage, optimizer, loader, epoch: int,
                     progress) -> dict[str, float]:
        """One pass of a :class:`TrainingStage` over the first ``batch_fraction`` of ``loader``:
        per batch the sum of the loss terms ``forward`` returns in this stage, a backward pass,
        clipping (over every trainable parameter, as the main pass), a step of the stage's
        optimiser, and every gradient dropped. Returns the per-sample mean of each term."""
        cfg = self.config.train
        model.train()
        batches = _as_sized(loader)
        n_steps = math.ceil(len(batches) * stage.batch_fraction)
        parameters = [p for p in model.parameters() if p.requires_grad]
        module = self.train_module if self.train_module is not None else model
        losses = LossAccumulator(epoch, f"{self.config.model.name} ({stage.name} stage)",
                                 self.process)
        task = progress.add_task(f"epoch {epoch} {stage.name}", total=n_steps, info="")
        model.zero_grad(set_to_none=True)
        model.training_stage = stage.name
        try:
            for step, batch in enumerate(itertools.islice(batches, n_steps), start=1):
                batch = move_batch(batch, self.device)
                with autocast(cfg.precision, self.device):
                    output = module(batch)
                    loss = sum(value.float() for value in output.losses.values())
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(optimizer)
                clip_gradients(parameters, self.config)
                self.scaler.step(optimizer)
                self.scaler.update()
                model.zero_grad(set_to_none=True)
                losses.add(step, loss, output.losses, output.prediction.shape[0])
                progress.update(task, advance=1)
        finally:
            model.training_stage = "main"
        progress.remove_task(task)
        return {k: v for k, v in losses.read().items() if k != "total"}

    # ------------------------------------------------------------------------------------------
    def load_best(self, model: MSAModel) -> MSAModel:
        runfolder.load_best_into(model, self.run_dir, self.device)
        return model.to(self.device)
