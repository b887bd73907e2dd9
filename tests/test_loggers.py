"""``run.loggers``: each epoch's row to TensorBoard event files and to MLflow."""

from __future__ import annotations

import pytest

from msakit.config import ConfigError, build_config
from msakit.training.loggers import MLflowLogger, TensorBoardLogger, open_loggers

ROWS = [{"epoch": e, "seconds": 1.5, "train_total": 1.0 / e, "train_task": 0.9 / e,
         "train_homo_gd_L->A": 0.1 * e, "valid_task": 1.2 / e, "valid_MAE": 1.1 / e,
         "selected": 1} for e in (1, 2, 3)]


def test_tensorboard_event_files_hold_every_epoch(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (msakit[tensorboard])")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path)
    for row in ROWS:
        logger.log(row["epoch"], row)
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/total", "valid/MAE", "train/homo_gd_L->A"} <= set(events.Tags()["scalars"])
    mae = events.Scalars("valid/MAE")
    assert [e.step for e in mae] == [1, 2, 3]
    assert mae[-1].value == pytest.approx(1.1 / 3)


def test_mlflow_run_per_training_run_with_config_and_metrics(tmp_path):
    pytest.importorskip("mlflow", reason="mlflow not installed (msakit[mlflow])")
    config = build_config("lf_dnn", [f"run.output_dir={tmp_path}", "run.loggers=[mlflow]",
                                     "train.lr=0.002"])
    run_dir = tmp_path / "lf_dnn-mosi-x" / "seed1" / "fold0"
    [logger] = open_loggers(config, run_dir, 1, "fold0")
    assert isinstance(logger, MLflowLogger)
    for row in ROWS:
        logger.log(row["epoch"], row)
    logger.close()
    run = logger.client.get_run(logger.run_id)
    assert (tmp_path / "mlruns").is_dir()  # local by default, beside the run folders
    assert run.info.run_name == "lf_dnn-mosi-x/seed1/fold0" and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.002"
    history = logger.client.get_metric_history(logger.run_id, "valid_MAE")
    assert [m.step for m in history] == [1, 2, 3]
    assert "train_homo_gd_L_to_A" in run.data.metrics  # '->' is not allowed in MLflow names


def test_unknown_logger_is_a_config_error():
    with pytest.raises(ConfigError, match="loggers"):
        build_config("lf_dnn", ["run.loggers=[wandb]"])
