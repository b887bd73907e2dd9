"""Mixed precision (``train.precision``): every registered model trains in bf16 on CPU with finite
losses and predicts close to the same model trained in fp32, on real MOSI clips."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from msakit.config import ConfigError, build_config
from msakit.data import load_dataset
from msakit.models import create_model, list_models
from msakit.training.loading import EpochLoader, feature_dims, loader_for
from msakit.training.trainer import Trainer, evaluate_model


@pytest.fixture(scope="module")
def clips(mosi_word_aligned):
    dataset = load_dataset(mosi_word_aligned)
    split = dataset.split("all")
    return dataset, split.subset(range(16)), split.subset(range(16, 40))


def _train(name, precision, clips, run_dir):
    dataset, train, valid = clips
    config = build_config(name, [
        "train.epochs=1", "train.batch_size=8", "train.grad_accumulation=1",
        "train.sync_every_steps=1", f"train.precision={precision}", "train.device=cpu",
    ])
    torch.manual_seed(0)
    model = create_model(config.model, feature_dims(dataset, config))
    trainer = Trainer(config, run_dir, dataset.name, progress=False)
    trainer.fit(model, EpochLoader(train, dataset, config, seed=1),
                loader_for(valid, dataset, config, train=False),
                torch.as_tensor(train.labels, dtype=torch.float32))
    with (run_dir / "epochs.csv").open() as handle:
        row = next(csv.DictReader(handle))
    evaluation = evaluate_model(model, loader_for(valid, dataset, config, train=False),
                                dataset.name, precision=precision)
    return row, evaluation


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_bf16_trains_every_model_close_to_fp32(name, clips, tmp_path):
    (tmp_path / "fp32").mkdir()
    (tmp_path / "bf16").mkdir()
    _, fp32 = _train(name, "fp32", clips, tmp_path / "fp32")
    row, bf16 = _train(name, "bf16", clips, tmp_path / "bf16")
    losses = {k: float(v) for k, v in row.items() if k.startswith(("train_", "valid_"))
              and k != "train_seconds" and v != ""}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert np.isfinite(bf16.predictions).all()
    # two steps in bf16 and in fp32 from the same initialisation end close together
    assert np.abs(bf16.predictions - fp32.predictions).max() < 0.25
    assert abs(bf16.metrics["MAE"] - fp32.metrics["MAE"]) < 0.05
    assert bf16.metrics["MAE"] != fp32.metrics["MAE"]  # bf16 did run in lower precision


def test_fp16_on_cpu_is_refused_with_a_clear_error(tmp_path):
    config = build_config("lf_dnn", ["train.precision=fp16", "train.device=cpu"])
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device.*bf16"):
        Trainer(config, tmp_path, "mosi", progress=False)
