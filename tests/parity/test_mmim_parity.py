"""MMIM equals MMSA's port (thuiar/MMSA v2.2.1, ``models/singleTask/MMIM.py`` and
``trains/singleTask/MMIM.py``), from the fixture of ``tools/parity/mmim.py`` (no official code
needed here).

The fixture's official run: a tiny random BERT (fine-tuned, as MMSA does), small layer sizes,
dropout 0, float64, twelve real clips in three batches of four, three epochs of MMSA's
``do_train`` (each: the MMILB pass, then the main pass) with scripted validation losses. msakit
replays it through its own trainer (``Trainer.fit``: the ``mmilb`` :class:`TrainingStage` and the
main pass, the validation pass replaced by the same scripted losses) and must match every forward
pass (prediction, ``lld``, ``nce``, the L1 task loss, the entropy ``H`` where it is in the loss),
which optimiser steps after which forward pass, every gradient and the whole state after the
kept steps (the first MMILB step, the first main step, the first main step with ``-beta H``, the
last), and the epoch early stopping ends on. At MMSA's MOSI dropout rates: the dropout map and
eval-mode predictions.

Name mapping, official -> msakit (``OFFICIAL_TO_MSAKIT``): ``bertmodel.model`` ->
``text_encoder.model``; ``acoustic_enc`` / ``visual_enc`` -> ``audio_encoder`` /
``vision_encoder`` (``linear_1`` -> ``out``); ``mi_<pair>.mlp_mu`` / ``.mlp_logvar`` /
``.entropy_prj`` -> ``mmilb.<pair>.mu`` / ``.logvar`` / ``.entropy_projection``; ``cpc_z<t|v|a>``
-> ``cpc.<text|vision|audio>``; ``fusion_prj.linear_<1|2|3>`` -> ``fusion.<project|hidden|out>``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _mmsa_parity import MMSA_COMMIT, recorded_dropout
from _parity import load_fixture, rename_by_prefix

from msakit.config import build_config
from msakit.models import FeatureDims, create_model

TOLERANCE = 1e-5
MODALITY = {"t": "text", "v": "vision", "a": "audio"}
OFFICIAL_TO_MSAKIT = [
    ("bertmodel.model.", "text_encoder.model."),
    ("acoustic_enc.rnn.", "audio_encoder.rnn."), ("acoustic_enc.linear_1.", "audio_encoder.out."),
    ("visual_enc.rnn.", "vision_encoder.rnn."), ("visual_enc.linear_1.", "vision_encoder.out."),
    ("fusion_prj.linear_1.", "fusion.project."), ("fusion_prj.linear_2.", "fusion.hidden."),
    ("fusion_prj.linear_3.", "fusion.out."),
] + [(f"mi_{pair}.{old}.", f"mmilb.{pair}.{new}.") for pair in ("tv", "ta", "va")
     for old, new in (("mlp_mu", "mu"), ("mlp_logvar", "logvar"),
                      ("entropy_prj", "entropy_projection"))] \
  + [(f"cpc_z{m}.", f"cpc.{name}.") for m, name in MODALITY.items()]


def msakit_name(official: str) -> str:
    return rename_by_prefix(official, OFFICIAL_TO_MSAKIT)


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("mmim")


@pytest.fixture(scope="module")
def bert_dir(fixture, tmp_path_factory):
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert_mmim")
    bert = BertModel(BertConfig(**fixture["tiny_bert"]))
    bert.load_state_dict(fixture["bert_state"])
    bert.save_pretrained(folder)
    return str(folder)


def build(fixture, bert_dir, fusion_dropout: float = 0.0):
    """msakit's MMIM at the fixture's sizes with the shipped config (MMSA's optimiser settings),
    float64, from the official initial weights."""
    sizes, stopping = fixture["sizes"], fixture["early_stopping"]
    config = build_config("mmim", [
        f"model.language_model={bert_dir}", f"model.audio_hidden={sizes['d_ah']}",
        f"model.vision_hidden={sizes['d_vh']}", f"model.audio_out={sizes['d_aout']}",
        f"model.vision_out={sizes['d_vout']}", f"model.fusion_hidden={sizes['d_prjh']}",
        f"model.fusion_dropout={fusion_dropout}",
        f"train.patience={stopping['early_stop']}", "train.epochs=10", "train.device=cpu",
    ])
    batch = fixture["batches"][0]
    model = create_model(config.model, FeatureDims(batch["audio"].shape[-1],
                                                   batch["vision"].shape[-1])).double()
    state = {msakit_name(k): v.double() for k, v in fixture["initial_state"].items()}
    assert set(state) == set(model.state_dict()), set(state) ^ set(model.state_dict())
    model.load_state_dict(state)
    return config, model


def msakit_batches(fixture) -> list[dict]:
    out = []
    for i, b in enumerate(fixture["batches"]):
        mask = torch.arange(b["audio"].shape[1])[None] < b["lengths"][:, None]
        out.append({
            "input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
            "token_type_ids": torch.zeros_like(b["input_ids"]),
            "audio": b["audio"], "audio_lengths": b["lengths"], "audio_mask": mask,
            "vision": b["vision"], "vision_lengths": b["lengths"], "vision_mask": mask,
            "labels": b["labels"], "host_lengths": {"audio": b["lengths"], "vision": b["lengths"]},
            "ids": [f"clip{i}_{j}" for j in range(len(b["labels"]))],
        })
    return out


def replay(fixture, bert_dir, tmp_path, monkeypatch):
    """``Trainer.fit`` over the fixture's batches with its scripted validation losses; returns
    per forward pass ``(stage, output)``, per optimiser step its optimiser, the forward passes
    before it, the gradients it used and the state after it, and the fit summary."""
    from msakit.training import trainer as trainer_module
    from msakit.training.trainer import EvaluationResult, Trainer

    config, model = build(fixture, bert_dir)
    record = {"forwards": [], "steps": []}

    def recording(optimizer, name):
        step = optimizer.step

        def recording_step(*args, **kwargs):
            gradients = {k: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                         for k, p in model.named_parameters()}
            result = step(*args, **kwargs)
            record["steps"].append({
                "optimizer": name, "after_forward": len(record["forwards"]),
                "gradients": gradients,
                "state": {k: v.detach().clone() for k, v in model.state_dict().items()}})
            return result

        optimizer.step = recording_step
        return optimizer

    make_optimizer, make_stage_optimizers = (trainer_module.make_optimizer,
                                             trainer_module.make_stage_optimizers)
    monkeypatch.setattr(trainer_module, "make_optimizer",
                        lambda *a: recording(make_optimizer(*a), "main"))
    monkeypatch.setattr(trainer_module, "make_stage_optimizers", lambda *a: {
        k: recording(o, k) for k, o in make_stage_optimizers(*a).items()})
    scripted = iter(fixture["early_stopping"]["valid_losses"])
    monkeypatch.setattr(trainer_module, "evaluate_model", lambda *a, **k: EvaluationResult(
        metrics={}, losses={"task": next(scripted)}, predictions=np.zeros(1),
        labels=np.zeros(1), ids=[]))
    forward = model.forward

    def recording_forward(batch):
        output = forward(batch)
        record["forwards"].append((model.training_stage, output))
        return output

    model.forward = recording_forward
    batches = msakit_batches(fixture)
    summary = Trainer(config, tmp_path, "mosi", progress=False).fit(
        model, lambda epoch: batches, [None], torch.cat([b["labels"] for b in batches]))
    return config, record, summary


def close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(ours.detach().double().reshape(theirs.shape), theirs.double(),
                               atol=TOLERANCE, rtol=0, msg=lambda m: f"{what}: {m}")


def test_fixture_is_from_mmsa(fixture):
    assert fixture["official"]["repo"] == "thuiar/MMSA"
    assert fixture["official"]["commit"] == MMSA_COMMIT


def test_shipped_config_has_mmsa_settings(fixture):
    """The mmim.yaml defaults are MMSA's MOSI settings the fixture ran with."""
    settings = fixture["settings"]
    config = build_config("mmim")
    train, model = config.train, config.model
    assert (train.lr, train.weight_decay) == (settings["lr_main"], settings["weight_decay_main"])
    assert (train.lm_lr, train.lm_weight_decay) == (settings["lr_bert"],
                                                    settings["weight_decay_bert"])
    assert (model.mmilb_lr, model.mmilb_weight_decay) == (settings["lr_mmilb"],
                                                          settings["weight_decay_mmilb"])
    assert train.grad_clip_norm == settings["grad_clip"] and train.optimizer == "adam"
    assert train.scheduler == "plateau" and train.plateau_patience == settings["when"]
    assert train.plateau_factor == 0.5 and train.min_improvement == 1e-6
    assert model.loss_weights == {"task": 1.0, "cpc": settings["alpha"],
                                  "mmilb": settings["beta"], "entropy": settings["beta"]}
    assert (model.add_va, model.memory_size, model.contrast) == (
        settings["add_va"], settings["mem_size"], settings["contrast"])
    assert model.mmilb_activation == settings["mmilb_mid_activation"]
    assert model.cpc_activation == settings["cpc_activation"]
    assert model.fusion_dropout == fixture["rates"]["dropout_prj"]
    assert not model.freeze_language_model  # MMSA fine-tunes BERT


def test_mmim_matches_mmsa_training(fixture, bert_dir, tmp_path, monkeypatch):
    _, record, summary = replay(fixture, bert_dir, tmp_path, monkeypatch)
    official = fixture["forwards"]
    assert len(record["forwards"]) == len(official) == 18  # 3 epochs x (3 MMILB + 3 main)
    main_index = 0
    for i, ((stage, ours), theirs) in enumerate(zip(record["forwards"], official)):
        where = f"forward {i + 1} ({theirs['stage']})"
        assert stage == theirs["stage"], where
        close(ours.prediction, theirs["M"], f"{where}: prediction")
        close(ours.losses["mmilb"], -theirs["lld"], f"{where}: -lld")
        if stage == "mmilb":
            assert set(ours.losses) == {"mmilb"}, where
            main_index = 0
            continue
        close(ours.losses["task"], theirs["task"], f"{where}: task loss")
        close(ours.losses["cpc"], theirs["nce"], f"{where}: nce")
        # -beta H joins MMSA's loss from the epoch's third main batch (i_batch > mem_size = 1)
        if main_index > 1:
            assert theirs["memory_given"]
            close(ours.losses["entropy"], -theirs["H"], f"{where}: -H")
        else:
            assert float(ours.losses["entropy"]) == 0.0, where
        main_index += 1
    assert sum(float(f["H"]) != 0 for f in official) >= 3  # the entropy term was exercised

    steps = fixture["optimizer_steps"]
    assert [(s["optimizer"], s["after_forward"]) for s in record["steps"]] == \
        [(s["optimizer"], s["after_forward"]) for s in steps] == \
        [("mmilb" if (i // 3) % 2 == 0 else "main", i + 1) for i in range(18)]
    kept = 0
    for i, (theirs, ours) in enumerate(zip(steps, record["steps"])):
        if "state" not in theirs:
            continue
        kept += 1
        for kind in ("gradients", "state"):
            for name, value in theirs[kind].items():
                if not value.is_floating_point():
                    continue
                close(ours[kind][msakit_name(name)], value, f"step {i + 1} {kind} of {name}")
    assert kept == 4
    # the MMILB step moves the MMILB networks only; the main step everything else
    first_mmilb, first_main = steps[0]["state"], steps[3]["state"]
    initial = fixture["initial_state"]
    assert not torch.equal(first_mmilb["mi_tv.mlp_mu.0.weight"], initial["mi_tv.mlp_mu.0.weight"])
    assert torch.equal(first_mmilb["fusion_prj.linear_1.weight"],
                       initial["fusion_prj.linear_1.weight"])
    assert steps[0]["gradients"]["fusion_prj.linear_1.weight"].abs().sum() == 0
    assert steps[0]["gradients"]["visual_enc.linear_1.weight"].abs().sum() > 0
    bert_weight = "bertmodel.model.encoder.layer.0.output.dense.weight"
    assert torch.equal(first_mmilb[bert_weight], initial[bert_weight])
    assert not torch.equal(first_main[bert_weight], initial[bert_weight])  # fine-tuned

    stopping = fixture["early_stopping"]
    assert summary["epochs_run"] == stopping["epochs_run"] == 3
    assert summary["best_epoch"] == 2


def test_dropout_map_and_eval_forward_at_mmsa_rates(fixture, bert_dir):
    """Every dropout call of a train-mode forward with its rate and input shape, in call order.
    MMSA's audio/vision encoders call a dropout of rate 0 on their final states (its
    ``dropout_a``/``dropout_v`` are 0 with one LSTM layer); msakit makes no such no-op call, so
    the rate-0 calls are compared by count."""
    _, model = build(fixture, bert_dir, fusion_dropout=fixture["rates"]["dropout_prj"])
    batches = msakit_batches(fixture)
    model.train()
    calls: list = []
    with recorded_dropout(calls):
        model(batches[fixture["dropout_map"]["batch"]])
    official = [(p, tuple(shape)) for p, shape in fixture["dropout_map"]["calls"]]
    assert [c for c in calls if c[0] > 0] == [c for c in official if c[0] > 0] != []
    assert sum(p == 0 for p, _ in official) - sum(p == 0 for p, _ in calls) == 2
    model.eval()
    with torch.no_grad():
        for i, (batch, theirs) in enumerate(zip(batches, fixture["eval_predictions"])):
            close(model(batch).prediction, theirs, f"eval batch {i}")


def test_mmilb_stage_reads_half_the_batches_on_mosei():
    config = build_config("mmim", preset="mosei")
    assert config.model.mmilb_batch_fraction == 0.5
    assert build_config("mmim", preset="mosi").model.mmilb_batch_fraction == 1.0
