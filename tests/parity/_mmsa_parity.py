"""Replays the fixtures of ``tools/parity/_mmsa.py`` (MMSA's feature-based models: TFN, LMF,
EF-LSTM, ...) in msakit and compares everything they recorded.

A test module gives: the fixture, the msakit model name and config overrides, and
``to_msakit(official_name, tensor) -> (msakit_name, tensor) | None`` (``None``: an official
tensor msakit does not have, e.g. TFN's constant ``output_range``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _parity import fit_with_scripted_validation

from msakit.config import build_config
from msakit.models import FeatureDims, create_model

MMSA_COMMIT = "a94e65d07fa1ae0d44e552390074b29b0898edfd"
TOLERANCE = 1e-5
Mapping = Callable[[str, torch.Tensor], "tuple[str, torch.Tensor] | None"]


def small_bert_dir(fixture: dict, folder) -> str:
    """The fixture's tiny BERT (its recorded weights) saved to ``folder``."""
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(**fixture["tiny_bert"]))
    bert.load_state_dict(fixture["bert_state"])
    bert.save_pretrained(folder)
    return str(folder)


def msakit_batches(fixture: dict) -> list[dict]:
    """The fixture's batches as msakit's collate lays them out (word-level audio/vision)."""
    batches = []
    for b in fixture["batches"]:
        mask = torch.arange(b["audio_full"].shape[1])[None] < b["lengths"][:, None]
        batches.append({
            "index": b["index"], "input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
            "token_type_ids": torch.zeros_like(b["input_ids"]),
            "audio": b["audio_full"].double(), "audio_mask": mask, "audio_lengths": b["lengths"],
            "vision": b["vision_full"].double(), "vision_mask": mask,
            "vision_lengths": b["lengths"],
            "labels": b["labels"]["M"], "host_lengths": {"audio": b["lengths"],
                                                         "vision": b["lengths"]},
        })
        for task in "TAV":  # unimodal labels (MMSA's multi-task models)
            if task in b["labels"]:
                batches[-1][f"labels_{task}"] = b["labels"][task]
    return batches


def mapped_state(fixture_state: dict, to_msakit: Mapping) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in fixture_state.items():
        mapped = to_msakit(name, value.double())
        if mapped is not None:
            out[mapped[0]] = mapped[1]
    return out


def build_model(name: str, overrides: list[str], fixture: dict, to_msakit: Mapping):
    """msakit's model at ``overrides``, float64, with the fixture's initial weights (every
    msakit weight outside the LM must come from the official state)."""
    config = build_config(name, overrides)
    batch = fixture["batches"][0]
    dims = FeatureDims(batch["audio_full"].shape[-1], batch["vision_full"].shape[-1])
    model = create_model(config.model, dims).double()
    state = mapped_state(fixture["initial_state"], to_msakit)
    own = {k for k in model.state_dict() if not k.startswith("text_encoder.")}
    assert set(state) == own, set(state) ^ own
    model.load_state_dict(state, strict=False)
    lm = model.text_encoder.model.state_dict()
    assert all(torch.equal(lm[k].double(), v.double()) for k, v in fixture["bert_state"].items())
    return config, model


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


def dropout_map(model: torch.nn.Module, batch: dict) -> list[tuple[float, tuple]]:
    """``(p, input shape)`` of every dropout call of one train-mode forward pass, in order."""
    model.train()
    calls: list = []
    with recorded_dropout(calls):
        model(batch)
    return calls


def lstm_dropouts(model: torch.nn.Module) -> list[tuple[float, int]]:
    """``(dropout, num_layers)`` of every ``nn.LSTM`` outside the language model, in order."""
    return [(float(m.dropout), int(m.num_layers)) for n, m in model.named_modules()
            if isinstance(m, torch.nn.LSTM) and not n.startswith("text_encoder.")]


def replay_training(config, model, fixture, tmp_path, monkeypatch, features: bool = False):
    """``Trainer.fit`` over the fixture's batches with its scripted validation losses; returns
    ``(record, summary)``: per forward pass the output (and, with ``features``, what the
    model's ``unimodal_features`` returned within it), per optimiser step the gradients and the
    state after it."""
    batches = msakit_batches(fixture)
    record = {"forwards": [], "steps": []}
    if features:
        unimodal = model.unimodal_features

        def recording_unimodal(batch):
            result = unimodal(batch)
            record["forwards"].append({"features": {k: v.detach().clone()
                                                    for k, v in result.items()}})
            return result

        model.unimodal_features = recording_unimodal
    forward = model.forward

    def recording_forward(batch):
        output = forward(batch)
        if not features:
            record["forwards"].append({})
        record["forwards"][-1]["output"] = output
        return output

    model.forward = recording_forward

    def record_step(m, gradients):
        record["steps"].append({"after_forward": len(record["forwards"]), "gradients": gradients,
                                "state": {k: v.detach().clone()
                                          for k, v in m.state_dict().items()}})

    labels = torch.cat([b["labels"] for b in batches]).float()
    try:
        summary, _ = fit_with_scripted_validation(
            config, model, batches, labels, fixture["early_stopping"]["valid_losses"], tmp_path,
            monkeypatch, record_step)
    finally:
        del model.forward
        if features:
            del model.unimodal_features
    return record, summary


def assert_training_matches(fixture, record, summary, to_msakit: Mapping,
                            features: dict[str, str] | None = None,
                            terms: tuple[str, ...] = ("task",)) -> None:
    """Predictions, losses (and the official ``Feature_*`` -> msakit feature names in
    ``features``) of every forward pass; every gradient and state after every step; the epochs
    early stopping ran. A multi-task fixture records every criterion call of a forward pass:
    they are msakit's loss ``terms``, in that order."""
    official = fixture["forwards"]
    assert len(record["forwards"]) == len(official) >= 6
    for i, (theirs, ours) in enumerate(zip(official, record["forwards"])):
        output = ours["output"]
        torch.testing.assert_close(output.prediction, theirs["M"].double().reshape(-1),
                                   atol=TOLERANCE, rtol=0, msg=f"forward {i + 1}: prediction")
        for key, name in (features or {}).items():
            torch.testing.assert_close(ours["features"][name], theirs[key].double(),
                                       atol=TOLERANCE, rtol=0, msg=f"forward {i + 1}: {key}")
        official_losses = theirs.get("criterion_calls", theirs["loss"].reshape(1))
        assert len(official_losses) == len(terms) == len(output.losses)
        for term, value in zip(terms, official_losses):
            assert abs(float(output.losses[term].detach()) - float(value)) < TOLERANCE, \
                f"forward {i + 1}: loss {term}"
    steps = fixture["optimizer_steps"]
    assert [s["after_forward"] for s in record["steps"]] == \
        [s["after_forward"] for s in steps] == list(range(1, len(official) + 1))
    for i, (theirs, ours) in enumerate(zip(steps, record["steps"])):
        for kind in ("gradients", "state"):
            compared = 0
            for name, value in theirs[kind].items():
                mapped = to_msakit(name, value.double())
                if mapped is None:
                    continue
                if kind == "gradients" and mapped[0] not in ours[kind]:
                    # frozen in msakit: the official optimiser must never have changed it
                    assert torch.equal(theirs["state"][name], fixture["initial_state"][name]), \
                        f"step {i + 1}: {name} is trained officially but frozen in msakit"
                    continue
                torch.testing.assert_close(ours[kind][mapped[0]].double(), mapped[1],
                                           atol=TOLERANCE, rtol=0,
                                           msg=f"step {i + 1}: {kind} of {name}")
                compared += 1
            # a fixture may keep the state of some steps only (graph_mfn: size)
            assert compared > 0 or (kind == "state" and not theirs[kind])
    assert sum(bool(s["state"]) for s in steps) >= 2
    stopping = fixture["early_stopping"]
    assert summary["epochs_run"] == stopping["epochs_run"]
    best = min(range(len(stopping["valid_losses"][:stopping["epochs_run"]])),
               key=lambda e: stopping["valid_losses"][e]) + 1
    assert summary["best_epoch"] == best


def assert_dropout_map_matches(fixture, model) -> None:
    """Every dropout call (those of rate 0 too), in call order, with the official rate and input
    shape. LSTM inter-layer dropouts (inside the kernel) are compared from the modules."""
    official = fixture["dropout_map"]
    batch = msakit_batches(fixture)[official["batch"]]
    ours = dropout_map(model, batch)
    expected = [(p, tuple(shape)) for p, shape in official["calls"]]
    assert any(p > 0 for p, _ in expected), "the official map has no dropout at its rates"
    assert ours == expected
    assert lstm_dropouts(model) == [(p, layers) for _, p, layers in official["lstm"]]


def assert_eval_forward_matches(fixture, model) -> None:
    """Eval-mode predictions at the official dropout rates, from the same initial weights."""
    model.eval()
    with torch.no_grad():
        for i, (batch, theirs) in enumerate(zip(msakit_batches(fixture),
                                                fixture["eval_forwards"])):
            torch.testing.assert_close(model(batch).prediction, theirs["M"].double().reshape(-1),
                                       atol=TOLERANCE, rtol=0, msg=f"eval batch {i}")
