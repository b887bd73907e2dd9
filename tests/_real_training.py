"""A short real training run on one fold, for the models' learning tests.

``train_one_fold(model_name, pkl, run_dir, *overrides)`` trains on fold 0 of the 229 word-aligned
MOSI clips with the generic trainer, without the experiment layer's seeds and folds.
"""

from __future__ import annotations

import csv

import numpy as np
import torch

from msakit.config import build_config
from msakit.metrics import compute_metrics
from msakit.models import create_model
from msakit.training.loading import feature_dims, load_experiment_data, loader_for
from msakit.training.trainer import Trainer


def train_one_fold(model_name: str, pkl, run_dir, *overrides):
    """Train ``model_name`` on fold 0 of the 229 clips with the generic trainer.

    Returns the model (best checkpoint loaded), the epoch rows, the training-mean MAE on the
    fold's validation part, and the fold.
    """
    config = build_config(model_name, [
        f"data.path={pkl}", "data.folds=5", "train.batch_size=16", "train.grad_accumulation=1",
        f"train.num_threads={torch.get_num_threads()}", "train.patience=null", *overrides,
    ])
    dataset, partitions = load_experiment_data(config)
    fold = partitions[0]
    torch.manual_seed(1)
    model = create_model(config.model, feature_dims(dataset, config))
    trainer = Trainer(config, run_dir, dataset.name, progress=False)
    trainer.fit(model, lambda epoch: loader_for(fold.train, dataset, config, train=True, seed=epoch),
                loader_for(fold.valid, dataset, config, train=False),
                torch.as_tensor(fold.train.labels, dtype=torch.float32))
    trainer.load_best(model)
    with (run_dir / "epochs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    mean_mae = compute_metrics(np.full(len(fold.valid), fold.train.labels.mean()),
                               fold.valid.labels)["MAE"]
    return model, rows, mean_mae, fold
