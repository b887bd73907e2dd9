"""Shared by the generators of MMSA's feature-based models (TFN, LMF, EF-LSTM, ...).

Each generator loads one MMSA model and its trainer from a checkout (without the package
``__init__`` files, which import every model), builds it at small sizes in float64, and records:

1. **training** (dropout 0): MMSA's own ``do_train`` on 6 real clips (3 batches of 2) with
   scripted validation losses until its early stopping ends it: per forward pass the outputs and
   the loss, per optimiser step every gradient and the state after it;
2. **dropout map** at MMSA's MOSI dropout rates, train mode: ``(p, input shape)`` of every
   ``F.dropout`` call of one forward pass, in call order (``nn.Dropout`` calls it), and the
   dropout rate of every ``nn.LSTM`` (its inter-layer dropout runs inside the kernel);
3. **eval-mode forward** at MMSA's rates, from the same initial weights: the outputs per batch.

Text features are a tiny random BERT's token states of each batch (the test rebuilds the BERT
and lets msakit compute them); audio/vision are what MMSA's loader gives the model (see each
generator).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import (
    DEFAULT_DATA,
    TINY_BERT,
    compact,
    official_commit,
    real_clips,
    recording_adam,
    save_fixture,
    scripted_validation,
    tiny_bert,
)
from torch import nn

ROWS = [0, 5, 7, 1, 12, 9]
BATCH = 2
AVERAGE_STEPS = 50  # MMSA's MOSI arrays are padded to 50 steps
VALID_LOSSES = [1.0, 0.9, 0.95]  # epoch 2 is best; early_stop 1 ends the run after epoch 3
EARLY_STOP = 1


class AttributeDict(dict):
    """The attribute access MMSA's code expects of its config (``args.learning_rate``)."""

    __getattr__ = dict.__getitem__
    __setattr__ = dict.__setitem__


class AMIOLike(nn.Module):
    """What MMSA's multi-task trainers expect of the model: the network as ``.Model``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.Model = model

    def forward(self, text, audio, video):
        return self.Model(text, audio, video)


def fixed_length(x: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Zero past the real steps, then padded or truncated to ``steps`` steps (MMSA's fixed-length
    arrays); ``functools.partial(fixed_length, steps=...)`` is a ``feature_steps``."""
    x = (x * mask.unsqueeze(-1).to(x.dtype))[:, :steps]
    return F.pad(x, (0, 0, 0, steps - x.shape[1]))


def block_configs(shapes: dict, rates: dict) -> dict:
    """MFN-style block configs: ``{key: {"shapes": shapes[key], "drop": rates[key]}}``."""
    return {k: {"shapes": shapes[k], "drop": rates[k]} for k in shapes}


def run_forward_in_float64(model_class: type) -> None:
    """Patches ``model_class.forward`` to run with float64 as the default dtype: MMSA's MFNs
    create their initial states with ``torch.zeros`` (the default dtype), and the fixtures run
    in float64."""
    forward = model_class.forward

    def float64_forward(self, *inputs, **kwargs):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            return forward(self, *inputs, **kwargs)
        finally:
            torch.set_default_dtype(previous)

    model_class.forward = float64_forward


def generate(description: str, name: str, files: list[str], record) -> None:
    """A generator's command line: ``--official`` (an MMSA checkout), ``--out`` (default
    ``tests/parity/<name>.pt``), ``--data``. Loads MMSA's model and trainer modules (the
    ``models/`` and ``trains/`` entries of ``files``, paths under ``src/MMSA``), calls
    ``record(model_module, train_module, data) -> dict`` and saves that with the official
    repository, commit and ``files``."""
    parser = argparse.ArgumentParser(description=description.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--out", type=Path, default=Path(f"tests/parity/{name}.pt"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    commit = official_commit(args.official)
    model_file = next(f for f in files if f.startswith("models/"))
    trainer_file = next(f for f in files if f.startswith("trains/"))
    model_module, train_module = load_official(args.official, model_file, trainer_file)
    recorded = record(model_module, train_module, args.data)
    fixture = {"official": {"repo": "thuiar/MMSA", "commit": commit,
                            "files": [f"src/MMSA/{f}" for f in files]},
               **recorded}
    save_fixture(fixture, args.out)


def load_official(root: Path, model_file: str, trainer_file: str):
    """MMSA's model and trainer modules (paths under ``src/MMSA``, e.g.
    ``models/singleTask/TFN.py``), skipping the package ``__init__`` files."""
    package = root / "src" / "MMSA"
    sys.modules.setdefault("pynvml", types.ModuleType("pynvml"))  # utils picks GPUs with it
    for name, folder in [("MMSA", package), ("MMSA.models", package / "models"),
                         ("MMSA.models.singleTask", package / "models" / "singleTask"),
                         ("MMSA.models.multiTask", package / "models" / "multiTask"),
                         ("MMSA.trains", package / "trains"),
                         ("MMSA.trains.singleTask", package / "trains" / "singleTask"),
                         ("MMSA.trains.multiTask", package / "trains" / "multiTask")]:
        stub = types.ModuleType(name)
        stub.__path__ = [str(folder)]
        sys.modules[name] = stub

    def load(path: str):
        name = "MMSA." + path.removesuffix(".py").replace("/", ".")
        spec = importlib.util.spec_from_file_location(name, package / path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    return load(model_file), load(trainer_file)


@contextlib.contextmanager
def recorded_dropout(calls: list):
    """Within the block, every ``F.dropout`` call in train mode appends ``(p, shape)``."""
    original = F.dropout

    def recording(input, p=0.5, training=True, inplace=False):
        if training:
            calls.append((float(p), tuple(input.shape)))
        return original(input, p, training, inplace)

    F.dropout = recording
    try:
        yield calls
    finally:
        F.dropout = original


def lstm_dropouts(model: torch.nn.Module) -> list[tuple[str, float, int]]:
    """``(name, dropout, num_layers)`` of every ``nn.LSTM`` in ``model``."""
    return [(n, float(m.dropout), int(m.num_layers)) for n, m in model.named_modules()
            if isinstance(m, torch.nn.LSTM)]


def make_batches(clips: dict, bert, feature_steps, text_steps=None,
                 unimodal_labels: bool = False, size: int = BATCH) -> list[dict]:
    """Batches of ``size`` clips (3 of 2): token ids and mask (to the batch's longest
    transcript), the BERT's token states ``text_features``, the word-level audio/vision
    ``audio_full``/``vision_full`` with ``lengths``, and ``official_audio``/``official_vision`` =
    ``feature_steps(x, mask)``, what MMSA's loader gives the model (``text_steps(states,
    mask)`` for the text features, if given). ``unimodal_labels``: random SIMS-style
    ``T``/``A``/``V`` labels (multiples of 0.2 in [-1, 1]) beside the clips' ``M`` labels, for
    MMSA's multi-task models."""
    batches = []
    generator = torch.Generator().manual_seed(4)
    steps_mask = torch.arange(clips["audio"].shape[1])[None] < clips["lengths"][:, None]
    for start in range(0, len(ROWS), size):
        rows = slice(start, start + size)
        mask = clips["attention_mask"][rows]
        text_len = int(mask.sum(1).max())
        ids, mask = clips["input_ids"][rows, :text_len], mask[:, :text_len]
        with torch.no_grad():
            text = bert(input_ids=ids, attention_mask=mask,
                        token_type_ids=torch.zeros_like(ids)).last_hidden_state
        if text_steps is not None:
            text = text_steps(text, mask)
        batches.append({
            "input_ids": ids, "attention_mask": mask, "text_features": text,
            "official_audio": feature_steps(clips["audio"][rows], steps_mask[rows]),
            "official_vision": feature_steps(clips["vision"][rows], steps_mask[rows]),
            "audio_full": clips["audio"][rows], "vision_full": clips["vision"][rows],
            "lengths": clips["lengths"][rows], "index": torch.arange(start, start + size),
            "labels": {"M": clips["labels"][rows].clone()},
        })
        if unimodal_labels:
            for task in "TAV":
                drawn = torch.randint(-5, 6, (size,), generator=generator).double() / 5
                batches[-1]["labels"][task] = drawn
    return batches


def time_averaged(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MMSA's ``need_normalized`` features ``(B, 1, D)``: the mean over ``AVERAGE_STEPS``
    zero-padded steps, i.e. the sum over the real steps / ``AVERAGE_STEPS``."""
    return (x * mask.unsqueeze(-1).double()).sum(1, keepdim=True) / AVERAGE_STEPS


def official_inputs(batch: dict) -> tuple:
    return batch["text_features"], batch["official_audio"], batch["official_vision"]


def run_official(data: Path, build_model, train_module, trainer_class: str, args: dict,
                 feature_steps, forward_outputs=("M",), rated_args: dict | None = None,
                 text_steps=None, unimodal_labels: bool = False) -> dict:
    """Everything a fixture records (module docstring); ``build_model(args)`` builds MMSA's
    model from an :class:`AttributeDict`; ``args`` are the training run's (dropout 0) and
    ``rated_args`` the changes for MMSA's MOSI dropout rates."""
    clips = real_clips(data, ROWS)
    torch.manual_seed(0)
    bert = tiny_bert()
    bert_state = {k: v.clone() for k, v in bert.state_dict().items()}
    bert.double().eval()
    batches = make_batches(clips, bert, feature_steps, text_steps, unimodal_labels)

    base = {"num_classes": 1, "train_mode": "regression", "dataset_name": "mosi",
            "KeyEval": "Loss", "early_stop": EARLY_STOP, "cur_seed": 1,
            "device": torch.device("cpu"),
            "feature_dims": (bert.config.hidden_size, clips["audio"].shape[-1],
                             clips["vision"].shape[-1])}
    official_args = AttributeDict({**base, **args})
    torch.manual_seed(1)
    official = build_model(official_args)
    initial_state = {k: v.clone() for k, v in official.state_dict().items()}
    official.double()

    # 2 + 3: dropout map and eval-mode forward at the official rates, same initial weights
    rated = build_model(AttributeDict({**official_args, **(rated_args or {})})).double()
    rated.load_state_dict(initial_state)
    rated.train()
    calls: list = []
    torch.manual_seed(2)
    with recorded_dropout(calls):
        rated(*official_inputs(batches[0]))
    dropout_map = {"calls": calls, "lstm": lstm_dropouts(rated), "batch": 0}
    rated.eval()
    with torch.no_grad():
        eval_forwards = [{k: v.detach().clone() for k, v in rated(*official_inputs(b)).items()
                          if k in forward_outputs} for b in batches]

    # 1: MMSA's do_train, dropout 0
    trainer = getattr(train_module, trainer_class)(official_args)
    trainer.metrics = lambda pred, true: {}
    forwards: list[dict] = []
    optimizer_steps: list[dict] = []
    epochs_seen: list[int] = []
    original_forward = official.forward

    def recording_forward(text, audio, video):
        outputs = original_forward(text, audio, video)
        forwards.append({k: v.detach().clone() for k, v in outputs.items()
                         if k in forward_outputs})
        return outputs

    official.forward = recording_forward
    criterion = trainer.criterion

    def recording_criterion(prediction, target):
        loss = criterion(prediction, target)
        forwards[-1]["loss"] = loss.detach().clone()  # the last call's (single-task: the one)
        forwards[-1].setdefault("criterion_calls", []).append(loss.detach().clone())
        return loss

    trainer.criterion = recording_criterion
    trainer.do_test = scripted_validation(VALID_LOSSES, epochs_seen)

    def record_step(gradients):
        optimizer_steps.append({"after_forward": len(forwards), "gradients": gradients,
                                "state": {k: v.detach().clone()
                                          for k, v in official.state_dict().items()}})

    train_module.optim.Adam = recording_adam(official, record_step)
    official_batches = [{"text": t, "audio": a, "vision": v, "labels": b["labels"]}
                        for b in batches for t, a, v in [official_inputs(b)]]
    with tempfile.TemporaryDirectory() as tmp:
        official_args.model_save_path = str(Path(tmp) / "best.pth")
        trainer.do_train(official, {"train": official_batches, "valid": [None]})

    keep = {"input_ids", "attention_mask", "audio_full", "vision_full", "lengths", "index",
            "labels"}

    def flat(outputs):
        calls = outputs.pop("criterion_calls", None)
        out = compact({k: v.reshape(v.shape[0], -1) if v.dim() else v
                       for k, v in outputs.items()})
        if calls is not None and len(calls) > 1:  # multi-task: every term, in MMSA's order
            out["criterion_calls"] = torch.stack(calls).float()
        return out

    print(f"{len(forwards)} forward passes, {len(optimizer_steps)} optimiser steps, "
          f"{len(epochs_seen)} epochs; dropout map {calls}")
    return {
        "tiny_bert": dict(TINY_BERT),
        "bert_state": compact(bert_state),
        "initial_state": compact(initial_state),
        "batches": [{k: v for k, v in b.items() if k in keep} for b in batches],
        "forwards": [flat(f) for f in forwards],
        "optimizer_steps": [{"after_forward": s["after_forward"],
                             "gradients": compact(s["gradients"]),
                             "state": compact(s["state"])} for s in optimizer_steps],
        "early_stopping": {"valid_losses": VALID_LOSSES, "early_stop": EARLY_STOP,
                           "epochs_run": len(epochs_seen), "min_improvement": 1e-6},
        "dropout_map": dropout_map,
        "eval_forwards": [flat(f) for f in eval_forwards],
        "average_steps": AVERAGE_STEPS,
    }
