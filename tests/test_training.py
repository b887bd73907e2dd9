"""The generic trainer and experiment runner on the real 229 MOSI clips."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from _real_training import train_one_fold

from msakit.config import ConfigError, build_config
from msakit.models import ModelOutput
from msakit.training import run_experiment
from msakit.training.trainer import weighted_loss


def _config(model, pkl, tmp_path, *extra):
    return build_config(model, [
        f"data.path={pkl}", "data.folds=5", f"run.output_dir={tmp_path}", *extra,
    ])


def _fast_lf_dnn(pkl, tmp_path, *extra):
    """LF-DNN with a frozen language model: the trainer's mechanics at a fraction of the cost."""
    return _config("lf_dnn", pkl, tmp_path, "model.freeze_language_model=true", *extra)


def _epochs(run_dir):
    with (run_dir / "epochs.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_weighted_loss_sums_configured_terms_and_refuses_unweighted_ones():
    output = ModelOutput(prediction=torch.zeros(2), losses={
        "task": torch.tensor(2.0), "cmd": torch.tensor(4.0)})
    total = weighted_loss(output, {"task": 1.0, "cmd": 0.25, "unused": 9.0}, "m")
    assert total.item() == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="cmd"):
        weighted_loss(output, {"task": 1.0}, "m")


@pytest.mark.slow
def test_misa_short_training_learns_and_beats_the_training_mean(mosi_word_aligned, tmp_path):
    _, rows, mean_mae, _ = train_one_fold("misa", mosi_word_aligned, tmp_path, "train.epochs=4")
    assert len(rows) == 4
    # every loss term of MISA is logged, finite, and the training loss goes down
    for term in ("task", "cmd", "diff", "recon"):
        values = [float(r[f"train_{term}"]) for r in rows]
        assert all(np.isfinite(values)), term
    assert float(rows[-1]["train_total"]) < float(rows[0]["train_total"])
    # the selected checkpoint beats predicting the training mean on its validation part
    selected = [r for r in rows if r["selected"] == "1"][-1]  # the weights kept in best.safetensors
    assert float(selected["valid_MAE"]) < mean_mae


def test_same_seed_same_run(mosi_word_aligned, tmp_path):
    threads = torch.get_num_threads()
    config = _fast_lf_dnn(mosi_word_aligned, tmp_path, "train.epochs=2", "data.folds=2",
                          f"train.num_threads={threads + 1}")
    first, _ = run_experiment(config, seeds=[3], progress=False)
    assert torch.get_num_threads() == threads  # train.num_threads held for the experiment only
    cpu = json.loads((first / "env.json").read_text())["cpu"]
    # which kernel path and how many threads produced these numbers (docs/reproducibility.md)
    assert cpu["capability"] == torch.backends.cpu.get_cpu_capability()
    assert cpu["threads"] == threads + 1
    assert cpu["model"]
    second, _ = run_experiment(config, seeds=[3], progress=False)
    assert first != second  # never the same folder
    for fold in ("fold0", "fold1"):
        a = (first / "seed3" / fold / "predictions.csv").read_text()
        b = (second / "seed3" / fold / "predictions.csv").read_text()
        assert a == b


def test_resume_continues_an_interrupted_run_exactly(mosi_word_aligned, tmp_path, monkeypatch):
    from msakit.models.lf_dnn import LFDNN

    config = _fast_lf_dnn(mosi_word_aligned, tmp_path, "train.epochs=3", "data.folds=2",
                     "train.patience=null")
    reference, _ = run_experiment(config, seeds=[1], progress=False)

    class Interrupted(RuntimeError):
        pass

    original = LFDNN.on_epoch_end

    def crash_in_epoch_two(self, epoch):
        if epoch == 2:
            raise Interrupted
        original(self, epoch)

    monkeypatch.setattr(LFDNN, "on_epoch_end", crash_in_epoch_two)
    config.run.name = "interrupted"
    with pytest.raises(Interrupted):
        run_experiment(config, seeds=[1], progress=False)
    monkeypatch.setattr(LFDNN, "on_epoch_end", original)
    interrupted = tmp_path / "interrupted"
    assert len(_epochs(interrupted / "seed1" / "fold0")) == 1
    assert not (interrupted / "metrics.json").exists()

    resumed, _ = run_experiment(config, resume_dir=interrupted, progress=False)
    assert resumed == interrupted
    for fold in ("fold0", "fold1"):
        assert (resumed / "seed1" / fold / "predictions.csv").read_text() == \
            (reference / "seed1" / fold / "predictions.csv").read_text()
    summary = json.loads((resumed / "metrics.json").read_text())["summary"]
    assert summary == json.loads((reference / "metrics.json").read_text())["summary"]


def test_results_table_has_every_run_and_sample_std(mosi_word_aligned, tmp_path):
    config = _fast_lf_dnn(mosi_word_aligned, tmp_path, "train.epochs=1", "data.folds=2")
    run_dir, summary = run_experiment(config, seeds=[1, 2], progress=False)
    with (run_dir / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    runs_rows = [r for r in rows if r["seed"] not in ("mean", "std")]
    assert {(r["seed"], r["partition"]) for r in runs_rows} == {
        ("1", "fold0"), ("1", "fold1"), ("2", "fold0"), ("2", "fold1")}
    maes = [float(r["MAE"]) for r in runs_rows]
    assert summary["MAE"]["mean"] == pytest.approx(np.mean(maes))
    assert summary["MAE"]["std"] == pytest.approx(np.std(maes, ddof=1))
    assert summary["MAE"]["n"] == 4
    assert "± " in (run_dir / "results.md").read_text()
    for seed in (1, 2):
        for fold in ("fold0", "fold1"):
            sub = run_dir / f"seed{seed}" / fold
            for name in ("config.yaml", "data.json", "epochs.csv", "best.safetensors",
                         "best.json", "metrics.json", "predictions.csv"):
                assert (sub / name).exists(), sub / name
            assert not (sub / "last.pt").exists()  # finished: no resumable state kept


def test_artifact_summary_averages_numeric_groups_only():
    from msakit.training.results import summarise_artifacts

    runs_artifacts = [
        {"edges": {"a": 0.2, "b": 0.8}, "pair_order": ["a", "b"], "num_samples": 3,
         "mixed": {"x": 1.0}, "text": {"k": "v"}},
        {"edges": {"a": 0.4, "b": 0.6}, "pair_order": ["a", "b"], "num_samples": 5,
         "mixed": {"y": 1.0}, "text": {"k": "w"}},
    ]
    summary = summarise_artifacts(runs_artifacts)
    assert list(summary) == ["edges"]
    assert summary["edges"]["a"]["mean"] == pytest.approx(0.3)
    assert summary["edges"]["a"]["std"] == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert summary["edges"]["b"]["n"] == 2
    assert summarise_artifacts([]) == {}


def test_loss_accumulator_reads_means_and_names_the_first_non_finite_step():
    from msakit.training.trainer import LossAccumulator, NonFiniteLossError

    losses = LossAccumulator(epoch=3, model_name="m")
    losses.add(1, torch.tensor(2.0), {"task": torch.tensor(1.0), "cmd": torch.tensor(4.0)}, 2)
    losses.add(2, torch.tensor(5.0), {"task": torch.tensor(4.0), "cmd": torch.tensor(1.0)}, 1)
    means = losses.read()
    assert means == pytest.approx({"total": 3.0, "task": 2.0, "cmd": 3.0})
    losses.add(3, torch.tensor(1.0), {"task": torch.tensor(1.0), "cmd": torch.tensor(1.0)}, 1)
    losses.add(4, torch.tensor(float("inf")),
               {"task": torch.tensor(1.0), "cmd": torch.tensor(float("inf"))}, 1)
    losses.add(5, torch.tensor(float("nan")),
               {"task": torch.tensor(float("nan")), "cmd": torch.tensor(1.0)}, 1)
    with pytest.raises(NonFiniteLossError, match=r"'cmd' of m .* epoch 3, step 4") as raised:
        losses.read()
    assert (raised.value.term, raised.value.epoch, raised.value.step) == ("cmd", 3, 4)


def test_training_stops_with_non_finite_loss_error(mosi_word_aligned, tmp_path, monkeypatch):
    from msakit.models.lf_dnn import LFDNN
    from msakit.runfolder import RunError
    from msakit.training.trainer import NonFiniteLossError

    original = LFDNN.forward
    calls = []

    def nan_on_third_training_step(self, batch):
        output = original(self, batch)
        if self.training:
            calls.append(1)
            if len(calls) == 3:
                output.losses["task"] = output.losses["task"] * float("nan")
        return output

    monkeypatch.setattr(LFDNN, "forward", nan_on_third_training_step)
    config = _fast_lf_dnn(mosi_word_aligned, tmp_path, "train.epochs=1", "data.folds=2",
                          "train.batch_size=32")
    with pytest.raises(RunError, match="training diverged") as raised:
        run_experiment(config, seeds=[1], progress=False)
    cause = raised.value.__cause__
    assert isinstance(cause, NonFiniteLossError)
    assert (cause.term, cause.epoch, cause.step) == ("task", 1, 3)


def test_parameter_groups_hook_is_checked():
    """The trainer takes the model's groups but refuses a parameter in two groups or in none."""
    from msakit.models.base import FeatureDims, MSAModel
    from msakit.training.trainer import build_parameter_groups

    class TwoLayers(MSAModel):
        def __init__(self, config, dims, layout):
            super().__init__(config, dims)
            self.first, self.second = torch.nn.Linear(2, 2), torch.nn.Linear(2, 1)
            self.layout = layout

        def parameter_groups(self, train):
            return [{"name": name, "params": list(module.parameters()), "lr": 0.1,
                     "weight_decay": 0.0} for name, module in self.layout(self)]

    config = build_config("lf_dnn")
    dims = FeatureDims(1, 1)
    good = TwoLayers(config.model, dims, lambda m: [("a", m.first), ("b", m.second),
                                                     ("c", torch.nn.Sequential())])
    assert [g["name"] for g in build_parameter_groups(good, config)] == ["a", "b"]
    twice = TwoLayers(config.model, dims, lambda m: [("a", m.first), ("b", m)])
    with pytest.raises(RuntimeError, match="groups 'a' and 'b'"):
        build_parameter_groups(twice, config)
    missing = TwoLayers(config.model, dims, lambda m: [("a", m.first)])
    with pytest.raises(RuntimeError, match="second.weight"):
        build_parameter_groups(missing, config)
