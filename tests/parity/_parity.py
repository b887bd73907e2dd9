"""Helpers for the parity tests: load a fixture, a local copy of its small BERT, msakit batches,
official -> msakit parameter names, gradient comparison, and the trainer's optimisation steps
(or a whole ``Trainer.fit`` with scripted validation losses) on given batches."""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from _recording import record_close

FIXTURES = Path(__file__).resolve().parent
ATOL = 1e-5


def load_fixture(name: str) -> dict:
    path = FIXTURES / f"{name}.pt"
    if not path.exists():
        pytest.fail(f"parity fixture {path} is missing; regenerate it with tools/parity/{name}.py")
    return torch.load(path, weights_only=True)


def small_bert_dir(fixture: dict, directory: Path) -> str:
    """Save a BERT with the fixture's config (random weights, replaced by the fixture's) and
    return its path, to pass as ``model.language_model``."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(**fixture["bert_config"])).save_pretrained(directory)
    return str(directory)


def msakit_batch(batch: dict, word_steps: bool = True) -> dict:
    """A fixture batch as msakit's collate lays it out (float64 features).

    ``audio``/``vision`` are the word-level sequences (one step per word), given as the
    ``word_*`` keys too when ``word_steps``, with CPU ``host_lengths``.
    """
    lengths = batch["lengths"]
    audio, vision = batch["audio"].double(), batch["vision"].double()
    mask = torch.arange(audio.shape[1])[None] < lengths[:, None]
    out = {
        "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
        "token_type_ids": batch["token_type_ids"],
        "audio": audio, "audio_lengths": lengths, "audio_mask": mask,
        "vision": vision, "vision_lengths": lengths, "vision_mask": mask,
        "labels": batch["labels"].double(), "ids": batch["ids"],
        "host_lengths": {"audio": lengths.clone(), "vision": lengths.clone()},
    }
    if word_steps:
        out.update(word_audio=audio, word_vision=vision, word_lengths=lengths, word_mask=mask)
        out["host_lengths"]["word"] = lengths.clone()
    return out


def rename_by_rules(name: str, rules: Sequence[tuple[str, Callable[[tuple], str]]]) -> str:
    """msakit's name for the official parameter ``name``: the first ``(pattern, target)`` rule
    whose regular expression matches it gives ``target(match.groups())``."""
    for pattern, target in rules:
        match = re.match(pattern, name)
        if match:
            return target(match.groups())
    raise KeyError(f"no msakit name for official parameter {name!r}")


def rename_by_prefix(name: str, prefixes: Sequence[tuple[str, str]]) -> str:
    """msakit's name for the official parameter ``name``: the first ``(official, msakit)``
    prefix pair whose official prefix starts ``name`` replaces it."""
    for old, new in prefixes:
        if name.startswith(old):
            return new + name[len(old):]
    raise KeyError(f"no msakit name for the official parameter {name!r}")


def load_mapped(model: torch.nn.Module, official: dict[str, torch.Tensor], mapping,
                ignore: tuple[str, ...] = ()) -> None:
    """Copy the official weights into ``model`` through ``mapping(official_name) -> name``.

    Every msakit parameter must receive a weight, and every official weight must land,
    except names starting with one of ``ignore`` (official modules msakit does not have).
    """
    state = model.state_dict()
    mapped = {}
    for name, value in official.items():
        if name.startswith(ignore):
            continue
        target = mapping(name)
        assert target in state, f"official {name} maps to {target}, which msakit lacks"
        assert state[target].shape == value.shape, (name, target)
        mapped[target] = value.to(state[target].dtype)
    missing = [n for n, _ in model.named_parameters() if n not in mapped]
    assert not missing, f"msakit parameters without an official weight: {missing}"
    model.load_state_dict(mapped, strict=False)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> float:
    difference = (actual.detach().double() - expected.double()).abs().max().item()
    assert difference <= ATOL, f"{what}: max abs difference {difference:.2e} > {ATOL}"
    return difference


def relative_close(ours: torch.Tensor, theirs: torch.Tensor, what: str, rtol: float = 1e-5):
    """Equal within ``rtol`` of the larger of the official value's scale and 1e-2 (float32
    storage: near-zero values carry the rounding of the larger numbers they come from)."""
    theirs = theirs.double()
    scale = max(float(theirs.abs().max()), 1e-2)
    difference = float((ours.detach().double().reshape(theirs.shape) - theirs).abs().max())
    record_close(ours, theirs, what, rtol * scale, f"rtol {rtol:g} x max(scale, 1e-2)")
    assert difference <= rtol * scale, f"{what}: max difference {difference:.2e} (scale {scale:.2e})"


def assert_official_gradients(model: torch.nn.Module, official: dict[str, torch.Tensor],
                              to_msakit: Callable[[str], str | None], convert=None) -> set[str]:
    """Each official gradient equals the gradient of its msakit parameter within ``ATOL``.

    ``to_msakit(official_name)`` gives the msakit name (``None``: no counterpart, skipped);
    ``convert(official_name, gradient, shape)`` lays a gradient out as msakit's parameter
    (default: the same layout). Returns the msakit names compared.
    """
    ours = dict(model.named_parameters())
    compared = set()
    for name, gradient in official.items():
        target = to_msakit(name)
        if target is None:
            continue
        assert ours[target].grad is not None, f"{name}: no gradient of {target} in msakit"
        expected = (gradient.double() if convert is None
                    else convert(name, gradient, ours[target].shape))
        torch.testing.assert_close(ours[target].grad, expected, rtol=0, atol=ATOL,
                                   msg=lambda m, t=target: f"gradient of {t}: {m}")
        compared.add(target)
    return compared


def train_epochs(model, config, batches, tmp_path, epochs: int = 1,
                 scheduled: bool = False) -> list[float]:
    """msakit's Trainer: ``epochs`` epochs over ``batches`` (its optimiser, clipping and step),
    as ``Trainer.fit`` runs them, with its per-epoch learning-rate schedule when ``scheduled``;
    returns the learning rate of the first parameter group at the start of each epoch."""
    from msakit.training.trainer import Trainer, _progress, make_optimizer, make_scheduler

    trainer = Trainer(config, tmp_path, "mosi", progress=False)
    optimizer = make_optimizer(model, config)
    scheduler = (make_scheduler(optimizer, config, "min", steps_per_epoch=1) if scheduled
                 else None)
    lrs = []
    with _progress(False) as progress:
        for epoch in range(1, epochs + 1):
            lrs.append(optimizer.param_groups[0]["lr"])
            trainer._train_epoch(model, optimizer, batches, epoch, config.model.loss_weights,
                                 progress)
            if scheduler is not None:
                scheduler.step()
    return lrs


def train_steps(model, config, batches, tmp_path) -> list[float]:
    """msakit's Trainer: one epoch over ``batches`` (see :func:`train_epochs`); returns the
    total loss of each step."""
    totals = []
    original = model.forward

    def recording_forward(batch):
        output = original(batch)
        totals.append(sum(config.model.loss_weights[k] * v for k, v in output.losses.items())
                      .item())
        return output

    model.forward = recording_forward
    try:
        train_epochs(model, config, batches, tmp_path)
    finally:
        del model.forward
    return totals


def fit_with_scripted_validation(config, model, batches, labels, valid_losses, run_dir,
                                 monkeypatch, on_step: Callable[[torch.nn.Module, dict], None]
                                 ) -> tuple[dict, int]:
    """``Trainer.fit`` over the same ``batches`` every epoch, its validation pass replaced by
    ``valid_losses`` (one ``task`` loss per epoch, as the official runs were scripted).

    ``on_step(model, gradients)`` is called after every optimiser step with the gradients the
    step used (every trainable parameter's, zeros where none). Returns the fit summary and the
    number of validation passes.
    """
    from msakit.training import trainer as trainer_module
    from msakit.training.trainer import EvaluationResult, Trainer

    make_optimizer = trainer_module.make_optimizer

    def recording_make_optimizer(m, c):
        optimizer = make_optimizer(m, c)
        step = optimizer.step

        def recording_step(self, *args, **kwargs):
            gradients = {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                         for k, p in m.named_parameters() if p.requires_grad}
            result = step(*args, **kwargs)
            on_step(m, gradients)
            return result

        # a bound method: a learning-rate scheduler wraps the optimiser's step (its __func__)
        optimizer.step = types.MethodType(recording_step, optimizer)
        return optimizer

    scripted = iter(valid_losses)
    valid_calls = 0

    def scripted_evaluation(*args, **kwargs):
        nonlocal valid_calls
        valid_calls += 1
        return EvaluationResult(metrics={}, losses={"task": next(scripted)},
                                predictions=np.zeros(1), labels=np.zeros(1), ids=[])

    monkeypatch.setattr(trainer_module, "make_optimizer", recording_make_optimizer)
    monkeypatch.setattr(trainer_module, "evaluate_model", scripted_evaluation)
    summary = Trainer(config, run_dir, "mosi", progress=False).fit(
        model, lambda epoch: batches, [None], labels)
    return summary, valid_calls
