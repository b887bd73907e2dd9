"""Helpers for the parity tests: load a fixture, a local copy of its small BERT, msakit batches,
and the trainer's optimisation steps on given batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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


def train_steps(model, config, batches, tmp_path) -> list[float]:
    """msakit's Trainer: one epoch over ``batches`` (its optimiser, clipping and step), as
    ``Trainer.fit`` runs it; returns the total loss of each step."""
    from msakit.training.trainer import Trainer, _progress, make_optimizer

    trainer = Trainer(config, tmp_path, "mosi", progress=False)
    optimizer = make_optimizer(model, config)
    totals = []
    original = model.forward

    def recording_forward(batch):
        output = original(batch)
        totals.append(sum(config.model.loss_weights[k] * v for k, v in output.losses.items())
                      .item())
        return output

    model.forward = recording_forward
    try:
        with _progress(False) as progress:
            trainer._train_epoch(model, optimizer, batches, 1, config.model.loss_weights,
                                 progress)
    finally:
        del model.forward
    return totals
