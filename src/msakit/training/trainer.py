"""The one trainer every model uses.

A model returns its prediction and named loss terms (:class:`~msakit.models.base.ModelOutput`);
the trainer sums ``loss_weights[name] * term``, steps the optimiser, calls the model's hooks,
selects the checkpoint on the validation split, and evaluates the test split once, with the
selected checkpoint.

Nothing in a training step waits for the device: loss terms are summed on the device
(:class:`LossAccumulator`) and read every ``train.sync_every_steps`` steps and at the epoch end,
which is also when their finiteness is checked (:class:`NonFiniteLossError` names the first bad
term, epoch and step). ``train.precision`` runs forward passes under ``torch.autocast``.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

from msakit.config import ConfigError, ExperimentConfig
from msakit.metrics import compute_metrics, metric_direction
from msakit.models.base import ModelOutput, MSAModel
from msakit.training import distributed, runs
from msakit.training.seeding import restore_rng_state, rng_state, seed_everything

log = logging.getLogger(__name__)

NO_DECAY_MARKERS = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available (under torchrun: this process's GPU), else CPU."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", distributed.current().local_rank)
    return torch.device(name)


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
    """Adam parameter groups: the pretrained LM vs the rest, each with and without weight decay.

    Biases and normalisation weights never decay (as in BERT fine-tuning and Self-MM).
    """
    train = config.train
    lm_prefixes = model.language_model_prefixes()
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        is_lm = name.startswith(lm_prefixes) if lm_prefixes else False
        decays = not any(marker in name for marker in NO_DECAY_MARKERS)
        groups.setdefault((is_lm, decays), []).append(parameter)
    out = []
    for (is_lm, decays), params in sorted(groups.items()):
        out.append({
            "params": params,
            "lr": train.lm_lr if is_lm else train.lr,
            "weight_decay": (train.lm_weight_decay if is_lm else train.weight_decay) if decays else 0.0,
            "name": f"{'language_model' if is_lm else 'other'}{'' if decays else '/no_decay'}",
        })
    if not out:
        raise ConfigError(f"model {config.model.name} has no trainable parameters")
    return out


def make_optimizer(model: MSAModel, config: ExperimentConfig) -> torch.optim.Optimizer:
    groups = build_parameter_groups(model, config)
    cls = torch.optim.AdamW if config.train.optimizer == "adamw" else torch.optim.Adam
    return cls(groups)


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
        raise ValueError("evaluation split is empty")
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
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        dataset_name: str,
        progress: bool = True,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.dataset_name = dataset_name
        self.progress = progress
        self.process = distributed.current()
        self.device = resolve_device(config.train.device)
        check_precision(config.train.precision, self.device)
        # loss scaling keeps fp16 gradients from underflowing; disabled it is a pass-through
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=config.train.precision == "fp16")
        selection = config.train.selection_metric
        self.selection_mode = "min" if selection == "loss" else metric_direction(selection)

    # ------------------------------------------------------------------------------------------
    def _better(self, value: float, best: float | None) -> bool:
        if best is None or (isinstance(best, float) and math.isnan(best)):
            return not math.isnan(value)
        return value < best if self.selection_mode == "min" else value > best

    def _save_last(self, model, optimizer, scheduler, state: dict[str, Any]) -> None:
        if not self.process.is_main:
            return
        payload = {
            "model": model.checkpoint_state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "grad_scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            **state,
        }
        tmp = self.run_dir / (runs.LAST_CHECKPOINT + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(self.run_dir / runs.LAST_CHECKPOINT)

    def _save_best(self, model, epoch: int, value: float) -> None:
        if not self.process.is_main:
            return
        tmp = self.run_dir / (runs.BEST_CHECKPOINT + ".tmp")
        torch.save({"model": model.checkpoint_state_dict(), "epoch": epoch,
                    "selection_metric": self.config.train.selection_metric,
                    "selection_value": value}, tmp)
        tmp.replace(self.run_dir / runs.BEST_CHECKPOINT)

    def _append_epoch_row(self, row: dict[str, Any]) -> None:
        if not self.process.is_main:
            return
        path = self.run_dir / "epochs.csv"
        if path.exists():
            with path.open() as handle:
                fieldnames = next(csv.reader(handle))
            missing = [k for k in row if k not in fieldnames]
            if missing:  # a model may report a new term later (e.g. from epoch 2)
                rows = list(csv.DictReader(path.open()))
                fieldnames += missing
                with path.open("w", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=fieldnames)
                    writer.writeheader()
                    writer.writerows(rows)
        else:
            fieldnames = list(row)
            with path.open("w", newline="") as handle:
                csv.DictWriter(handle, fieldnames=fieldnames).writeheader()
        with path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=fieldnames).writerow(row)

    # ------------------------------------------------------------------------------------------
    def fit(
        self,
        model: MSAModel,
        train_loader_factory,
        valid_loader: Iterable[dict[str, Any]],
        train_labels: torch.Tensor,
        resume: bool = False,
    ) -> dict[str, Any]:
        """Train with validation-based selection and early stopping.

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
        model.to(self.device)
        model.on_fit_start(train_labels.to(self.device))
        self.train_module = model
        if self.process.enabled:
            self.train_module = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        optimizer = make_optimizer(model, self.config)
        scheduler = None
        if cfg.scheduler == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=self.selection_mode, factor=cfg.plateau_factor,
                patience=cfg.plateau_patience,
            )
        state = {"epoch": 0, "best_value": None, "best_epoch": 0, "bad_epochs": 0,
                 "epoch_seconds": []}
        last_path = self.run_dir / runs.LAST_CHECKPOINT
        if resume and last_path.exists():
            saved = runs.load_checkpoint(last_path, self.device)
            model.load_checkpoint_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None and saved.get("scheduler"):
                scheduler.load_state_dict(saved["scheduler"])
            if saved.get("grad_scaler"):
                self.scaler.load_state_dict(saved["grad_scaler"])
            restore_rng_state(saved["rng"])
            state = {k: saved[k] for k in state}
            log.info("resuming %s after epoch %d", self.run_dir, state["epoch"])

        weights = self.config.model.loss_weights
        with _progress(self.progress) as progress:
            epoch_task = progress.add_task("epochs", total=cfg.epochs, info="",
                                           completed=state["epoch"])
            for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
                if cfg.patience is not None and state["bad_epochs"] >= cfg.patience:
                    break
                started = time.perf_counter()
                train_losses = self._train_epoch(model, optimizer, train_loader_factory(epoch),
                                                 epoch, weights, progress)
                model.on_epoch_end(epoch)
                train_statistics = model.epoch_statistics()
                valid = evaluate_model(model, valid_loader, self.dataset_name, self.device,
                                       precision=cfg.precision)
                value = valid.selection_value(cfg.selection_metric)
                if scheduler is not None:
                    scheduler.step(value)
                seconds = time.perf_counter() - started
                improved = self._better(value, state["best_value"])
                if improved:
                    state.update(best_value=value, best_epoch=epoch, bad_epochs=0)
                    self._save_best(model, epoch, value)
                else:
                    state["bad_epochs"] += 1
                state["epoch"] = epoch
                state["epoch_seconds"] = [*state["epoch_seconds"], seconds]
                self._append_epoch_row({
                    "epoch": epoch, "seconds": round(seconds, 3),
                    **{f"train_{k}": v for k, v in train_losses.items()},
                    **{f"train_{k}": v for k, v in train_statistics.items()},
                    **{f"valid_{k}": v for k, v in valid.losses.items()},
                    **{f"valid_{k}": v for k, v in valid.metrics.items()},
                    "selected": int(improved),
                })
                self._save_last(model, optimizer, scheduler, state)
                progress.update(epoch_task, advance=1, info=(
                    f"train {train_losses['total']:.4f}  valid {cfg.selection_metric} "
                    f"{value:.4f}  best {state['best_value']:.4f}@{state['best_epoch']}"))
        self.process.barrier()  # process 0 has written its checkpoints
        if not (self.run_dir / runs.BEST_CHECKPOINT).exists():
            raise RuntimeError(f"{self.run_dir}: no epoch produced a valid selection value")
        return {
            "best_epoch": state["best_epoch"],
            "best_valid": state["best_value"],
            "epochs_run": state["epoch"],
            "seconds_per_epoch": float(np.mean(state["epoch_seconds"])) if state["epoch_seconds"] else None,
        }

    def _train_epoch(self, model, optimizer, loader, epoch, weights, progress) -> dict[str, float]:
        """One pass over ``loader``; returns the per-sample mean of every loss term and ``total``.

        The step never waits for the device; :class:`LossAccumulator` is read every
        ``train.sync_every_steps`` steps (progress bar, finiteness) and at the end.
        """
        cfg = self.config.train
        model.train()
        model.on_epoch_start(epoch)
        batches = list(loader) if not hasattr(loader, "__len__") else loader
        n_steps = len(batches)
        task = progress.add_task(f"epoch {epoch}", total=n_steps, info="")
        losses = LossAccumulator(epoch, self.config.model.name, self.process)
        gather_for_hooks = (self.process.enabled
                            and distributed.model_overrides_hook(model, "on_train_batch_end"))
        optimizer.zero_grad(set_to_none=True)
        for step, batch in enumerate(batches, start=1):
            batch = move_batch(batch, self.device)
            steps_now = step % cfg.grad_accumulation == 0 or step == n_steps
            # under DDP, gradients are averaged over processes only on the stepping micro-batch
            no_sync = (self.train_module.no_sync() if self.process.enabled and not steps_now
                       else contextlib.nullcontext())
            with no_sync:
                with autocast(cfg.precision, self.device):
                    output = self.train_module(batch)
                    loss = weighted_loss(output, weights, self.config.model.name)
                self.scaler.scale(loss / cfg.grad_accumulation).backward()
            if steps_now:
                self._optimizer_step(model, optimizer)
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

    def _optimizer_step(self, model, optimizer) -> None:
        cfg = self.config.train
        if cfg.grad_clip_value is not None or cfg.grad_clip_norm is not None:
            self.scaler.unscale_(optimizer)  # clip the true gradients (no-op unless fp16)
        if cfg.grad_clip_value is not None:
            torch.nn.utils.clip_grad_value_(model.parameters(), cfg.grad_clip_value)
        if cfg.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------------------------------
    def load_best(self, model: MSAModel) -> MSAModel:
        saved = runs.load_checkpoint(self.run_dir / runs.BEST_CHECKPOINT, self.device)
        model.load_checkpoint_state_dict(saved["model"])
        return model.to(self.device)
