"""The trainer's extra training passes (``MSAModel.training_stages``, MMIM's MMILB pass): their
own optimiser, their share of the batches, their columns in epochs.csv, and resuming."""

from __future__ import annotations

import csv

import torch
from torch import nn

from msakit.config import build_config
from msakit.models.base import FeatureDims, ModelOutput, MSAModel, TrainingStage
from msakit.training.trainer import Trainer


class TwoPassModel(MSAModel):
    """``aux`` trains in its own stage (on half the batches); the main pass's loss reaches it
    too, but only the stage's optimiser may move it."""

    name = "two_pass_test"

    def __init__(self, config, dims):
        super().__init__(config, dims)
        self.aux = nn.Linear(3, 1)
        self.main = nn.Linear(3, 1)
        self.stage_batches = 0

    def parameter_groups(self, train):
        return [{"name": "main", "params": list(self.main.parameters()), "lr": 0.05,
                 "weight_decay": 0.0}]

    def training_stages(self, train):
        return [TrainingStage("aux", [{"name": "aux", "params": list(self.aux.parameters()),
                                       "lr": 0.05, "weight_decay": 0.0}], batch_fraction=0.5)]

    def forward(self, batch):
        aux = self.aux(batch["x"]).squeeze(-1)
        if self.training_stage == "aux":
            self.stage_batches += 1
            return ModelOutput(aux, {"fit": (aux - batch["labels"]).square().mean()})
        prediction = self.main(batch["x"]).squeeze(-1) + aux
        return ModelOutput(prediction, {"task": (prediction - batch["labels"]).abs().mean()})


def batches(count: int = 4) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        x = torch.randn(8, 3, generator=generator)
        out.append({"x": x, "labels": x @ torch.tensor([1.0, -2.0, 0.5])})
    return out


def fit(run_dir, epochs: int, resume: bool = False, model: TwoPassModel | None = None):
    config = build_config("mmim", [f"train.epochs={epochs}", "train.device=cpu",
                                   "train.patience=5", "train.scheduler=none"])
    torch.manual_seed(0)
    model = model or TwoPassModel(config.model, FeatureDims(1, 1))
    data = batches()
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = Trainer(config, run_dir, "mosi", progress=False).fit(
        model, lambda epoch: data, data[:1], torch.zeros(32), resume=resume)
    return model, summary


def test_stage_reads_its_share_and_only_its_optimiser_moves_its_parameters(tmp_path):
    torch.manual_seed(0)
    config = build_config("mmim", ["train.epochs=2", "train.device=cpu"])
    model = TwoPassModel(config.model, FeatureDims(1, 1))
    initial_aux = model.aux.weight.detach().clone()
    model, _ = fit(tmp_path, epochs=2, model=model)
    assert model.stage_batches == 2 * 2  # half of 4 batches, 2 epochs
    assert model.training_stage == "main"
    assert not torch.equal(model.aux.weight, initial_aux)
    rows = list(csv.DictReader((tmp_path / "epochs.csv").open()))
    assert len(rows) == 2 and float(rows[1]["train_aux_fit"]) < float(rows[0]["train_aux_fit"])

    # without its stage step, the main pass alone leaves aux where it was
    model.stage_batches = 0
    original = TwoPassModel.training_stages
    TwoPassModel.training_stages = lambda self, train: [TrainingStage(
        "aux", original(self, train)[0].parameter_groups, batch_fraction=0.0)]
    try:
        before = model.aux.weight.detach().clone()
        fit(tmp_path / "again", epochs=1, model=model)
    finally:
        TwoPassModel.training_stages = original
    assert model.stage_batches == 0 and torch.equal(model.aux.weight, before)


def test_resume_restores_the_stage_optimiser(tmp_path):
    straight, _ = fit(tmp_path / "straight", epochs=3)
    fit(tmp_path / "resumed", epochs=1)
    resumed, summary = fit(tmp_path / "resumed", epochs=3, resume=True)
    assert summary["epochs_run"] == 3
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=1e-6, atol=1e-7)
