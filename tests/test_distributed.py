"""``torchrun --nproc_per_node 2 -m msakit train``: two CPU processes (gloo) train like one
process with the same global batch, on the real 229 MOSI clips."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import pytest

from msakit.config import build_config
from msakit.training import run_experiment
from msakit.training.loading import EpochLoader

SETTINGS = [
    # Self-MM: its ULGM label bank is updated from every training batch (a model hook)
    "model.freeze_language_model=true", "model.post_fusion_dropout=0",
    "model.post_audio_dropout=0", "model.post_vision_dropout=0",
    "train.epochs=2", "train.batch_size=16", "train.grad_accumulation=2",
    "train.patience=null", "train.num_threads=1", "data.folds=2",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _predictions(run_dir):
    rows = {}
    for fold in ("fold0", "fold1"):
        with (run_dir / "seed1" / fold / "predictions.csv").open() as handle:
            for row in csv.DictReader(handle):
                assert row["id"] not in rows, f"{row['id']} scored twice"
                rows[row["id"]] = float(row["prediction"])
    return rows


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(mosi_word_aligned, tmp_path):
    single_dir, single = run_experiment(
        build_config("self_mm", [f"data.path={mosi_word_aligned}",
                                 f"run.output_dir={tmp_path / 'single'}", *SETTINGS]),
        seeds=[1], progress=False)

    src = os.path.join(os.path.dirname(__file__), os.pardir, "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.abspath(src), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
               "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), "-m", "msakit", "train", "self_mm",
               "--data", str(mosi_word_aligned), "--seeds", "1", "--no-progress",
               "--output-dir", str(tmp_path / "ddp"), *(a for s in SETTINGS for a in ("--set", s))]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run_dirs = list((tmp_path / "ddp").iterdir())
    assert len(run_dirs) == 1  # process 0 alone made the run folder
    ddp_dir = run_dirs[0]
    assert done.stdout.count("test metrics") == 1  # and printed the results

    # every test clip scored exactly once, the same clips as one process
    single_predictions, ddp_predictions = _predictions(single_dir), _predictions(ddp_dir)
    assert sorted(single_predictions) == sorted(ddp_predictions)
    for fold in ("fold0", "fold1"):
        with (ddp_dir / "seed1" / fold / "epochs.csv").open() as handle:
            assert len(list(csv.DictReader(handle))) == 2
    # the same training within the noise of the frozen LM's dropout and float summation order
    ddp = json.loads((ddp_dir / "metrics.json").read_text())["summary"]
    assert abs(ddp["MAE"]["mean"] - single["MAE"]["mean"]) < 0.03
    assert abs(ddp["Corr"]["mean"] - single["Corr"]["mean"]) < 0.05
    differences = [abs(ddp_predictions[k] - v) for k, v in single_predictions.items()]
    assert max(differences) < 0.3


def test_global_batch_must_divide_among_processes(mosi_word_aligned, monkeypatch):
    from msakit.config import ConfigError
    from msakit.data import load_dataset
    from msakit.training import distributed

    monkeypatch.setattr(distributed, "_CURRENT", distributed.Distributed(rank=1, world_size=3))
    dataset = load_dataset(mosi_word_aligned)
    config = build_config("lf_dnn", ["train.batch_size=16"])
    with pytest.raises(ConfigError, match="multiple of the 3 processes"):
        EpochLoader(dataset.split("all"), dataset, config, seed=1)
    config = build_config("lf_dnn", ["train.batch_size=15"])
    loader = EpochLoader(dataset.split("all"), dataset, config, seed=1)
    ids = [i for batch in loader(1) for i in batch["index"].tolist()]
    # rank 1 of 3: every third clip of the epoch's order, 5 per step
    assert len(ids) == -(-229 // 3) and next(iter(loader(1)))["index"].shape[0] == 5
