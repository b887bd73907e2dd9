"""``--jobs K``: the (seed, fold) runs of an experiment in parallel processes, on real MOSI clips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from msakit.config import build_config
from msakit.training import run_experiment
from msakit.training.experiment import JobsFailed
from msakit.training.loading import load_experiment_data

#: the transcript the failing transform refuses (set by the test, read in the worker processes)
FAILING_TEXT_FILE = "failing_text.txt"


def _tiny(pkl, tmp_path, name):
    return build_config("lf_dnn", [
        f"data.path={pkl}", "data.folds=2", f"run.output_dir={tmp_path}", f"run.name={name}",
        "model.freeze_language_model=true", "train.epochs=1", "train.num_threads=1",
        "train.device=cpu",
    ])


@pytest.mark.slow
def test_two_jobs_give_the_same_metrics_as_one(mosi_word_aligned, tmp_path):
    summaries, runs = {}, {}
    for jobs in (1, 2):
        run_dir, summaries[jobs] = run_experiment(_tiny(mosi_word_aligned, tmp_path, f"j{jobs}"),
                                                  seeds=[1], progress=False, jobs=jobs)
        runs[jobs] = json.loads((run_dir / "metrics.json").read_text())["runs"]
    assert [(r["seed"], r["partition"]) for r in runs[2]] == \
        [(r["seed"], r["partition"]) for r in runs[1]] == \
        [(1, "fold0"), (1, "fold1")]
    for sequential, parallel in zip(runs[1], runs[2]):
        assert parallel["test"] == sequential["test"]
        assert parallel["best_epoch"] == sequential["best_epoch"]
    assert summaries[2] == summaries[1]
    assert not np.isnan(summaries[1]["MAE"]["mean"])


class RefuseOneTranscript:
    """A training transform that fails on one clip (only the fold that trains on it fails)."""

    def __init__(self, text: str):
        self.text = text

    def __call__(self, item, rng):
        if item["text"] == self.text:
            raise RuntimeError("refusing this clip on purpose")
        return item


def failing_transform_factory(config):
    from pathlib import Path

    return RefuseOneTranscript(Path(config.run.output_dir, FAILING_TEXT_FILE).read_text())


@pytest.mark.slow
def test_a_failing_job_is_reported_and_the_others_finish(mosi_word_aligned, tmp_path):
    config = _tiny(mosi_word_aligned, tmp_path, "failing")
    _, partitions = load_experiment_data(config)
    fold0_only = set(partitions[0].train.texts) - set(partitions[1].train.texts)
    text = sorted(fold0_only)[0]
    (tmp_path / FAILING_TEXT_FILE).write_text(text)
    with pytest.raises(JobsFailed) as failure:
        run_experiment(config, seeds=[1], progress=False, jobs=2,
                       transform_factory=failing_transform_factory)
    message = str(failure.value)
    assert "1 of 2 runs failed" in message and "fold0" in message and "on purpose" in message
    run_dir = tmp_path / "failing"
    assert "refusing this clip on purpose" in (run_dir / "seed1/fold0/error.txt").read_text()
    assert (run_dir / "seed1/fold1/metrics.json").exists()
