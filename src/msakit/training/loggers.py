"""Per-epoch scalars to TensorBoard and/or MLflow (``run.loggers``), beside the run folder.

The run folder stays the record (``epochs.csv`` has every number); these loggers copy each
epoch's row to the tools people already watch:

* ``tensorboard``: event files in ``<training run>/tensorboard/`` (``pip install
  'msakit[tensorboard]'``); ``tensorboard --logdir runs/`` shows every run.
* ``mlflow``: one MLflow run per training run, in experiment ``run.mlflow_experiment`` at
  ``run.mlflow_tracking_uri`` (default: an SQLite database ``mlruns/mlflow.db`` in
  ``run.output_dir``, ``mlflow ui --backend-store-uri sqlite:///runs/mlruns/mlflow.db``; any
  tracking URI works), with the resolved config as parameters (``pip install 'msakit[mlflow]'``).
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any

from msakit.config import ConfigError, ExperimentConfig

#: Characters MLflow accepts in metric and parameter names.
_MLFLOW_UNSAFE = re.compile(r"[^\w\-./ ]")


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    out = {}
    for name, value in row.items():
        if name == "epoch" or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
    return out


class TensorBoardLogger:
    """Scalars ``train/<term>``, ``valid/<metric>`` ... per epoch into ``run_dir/tensorboard``."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ConfigError("run.loggers: tensorboard needs the tensorboard package "
                              "(pip install 'msakit[tensorboard]')") from err
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, epoch: int, row: dict[str, Any]) -> None:
        for name, value in _scalars(row).items():
            self.writer.add_scalar(name.replace("_", "/", 1), value, global_step=epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[_MLFLOW_UNSAFE.sub("_", name)] = str(value)[:500]
    return out


class MLflowLogger:
    """One MLflow run per training run; metrics per epoch (step = epoch)."""

    def __init__(self, config: ExperimentConfig, run_dir: Path, seed: int, partition: str):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise ConfigError("run.loggers: mlflow needs the mlflow package "
                              "(pip install 'msakit[mlflow]')") from err
        uri = config.run.mlflow_tracking_uri
        if uri is None:  # MLflow 3 wants a database even locally: an SQLite file in mlruns/
            local = (Path(config.run.output_dir) / "mlruns").resolve()
            local.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{local / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(config.run.mlflow_experiment)
        experiment_id = (experiment.experiment_id if experiment is not None else
                         self.client.create_experiment(config.run.mlflow_experiment))
        run_dir = Path(run_dir)
        name = f"{run_dir.parent.parent.name}/seed{seed}/{partition}"
        self.run_id = self.client.create_run(
            experiment_id, run_name=name,
            tags={"msakit.run_dir": str(run_dir.resolve()), "msakit.model": config.model.name,
                  "msakit.seed": str(seed), "msakit.partition": partition},
        ).info.run_id
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in _flatten(config.to_dict()).items()]
        for start in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log(self, epoch: int, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(_MLFLOW_UNSAFE.sub("_", name.replace("->", "_to_")), value, stamp,
                          epoch) for name, value in _scalars(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def open_loggers(config: ExperimentConfig, run_dir: Path, seed: int, partition: str) -> list:
    """The loggers ``config.run.loggers`` names, opened for one training run."""
    loggers = []
    for name in config.run.loggers:
        if name == "tensorboard":
            loggers.append(TensorBoardLogger(run_dir))
        elif name == "mlflow":
            loggers.append(MLflowLogger(config, run_dir, seed, partition))
    return loggers
