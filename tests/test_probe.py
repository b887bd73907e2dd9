"""The probe: closed-form ridge on frozen pooled features, on the 229 real MOSI clips (mosi-demo).

Most tests use the audio and vision statistics (no language model, a fit takes milliseconds);
one trains the text probe end to end through the CLI (run folder, leaderboard, export, predict).
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

import msakit
from msakit.cli import main
from msakit.config import ConfigError, build_config
from msakit.models import create_model
from msakit.models.probe import masked_time_mean_std, ridge_path
from msakit.predict import load_trained_run, predict_texts
from msakit.training import experiment, loading
from msakit.training.loading import feature_dims, load_experiment_data, loader_for

AUDIO_VISION = ["data.path=mosi-demo", "data.folds=3", "model.modalities=[audio,vision]",
                "train.num_threads=1"]


def _close(actual, expected, rtol=1e-5):
    """Equal up to ``rtol`` of the values' scale (float32 paths differ in the last bits)."""
    actual, expected = np.asarray(actual, float), np.asarray(expected, float)
    scale = max(np.abs(expected).max(), 1e-12)
    return np.abs(actual - expected).max() <= rtol * scale


@pytest.fixture(scope="module")
def fitted():
    """The audio+vision probe fitted on fold 0, with its raw features per part."""
    config = build_config("probe", AUDIO_VISION)
    dataset, partitions = load_experiment_data(config)
    fold = partitions[0]
    model = create_model(config.model, feature_dims(dataset, config))
    loaders = {part: loader_for(getattr(fold, part), dataset, config, train=part == "train")
               for part in ("train", "valid", "test")}
    statistics = model.fit_closed_form(loaders["train"], loaders["valid"])
    features = {part: model.collect(loader) for part, loader in loaders.items()}
    return model, statistics, features, config, dataset, fold


def test_ridge_equals_scikit_learn_on_the_standardised_training_features(fitted):
    model, statistics, features, *_ = fitted
    x, y = (t.numpy() for t in features["train"])
    scaler = StandardScaler().fit(x)  # audio/vision: every feature standardised on its own
    assert _close(model.feature_mean, scaler.mean_)
    assert _close(model.feature_scale, scaler.scale_)
    z = scaler.transform(x)
    alphas = model.config.alphas
    path, intercept = ridge_path(torch.from_numpy(z), torch.from_numpy(y), alphas)
    for alpha, coefficients in zip(alphas, path.numpy()):
        reference = Ridge(alpha=alpha).fit(z, y)
        assert _close(coefficients, reference.coef_, rtol=1e-8), alpha
        assert float(intercept) == pytest.approx(reference.intercept_, rel=1e-9)
    chosen = Ridge(alpha=float(model.alpha)).fit(z, y)
    assert _close(model.coefficients, chosen.coef_)
    assert float(model.intercept) == pytest.approx(chosen.intercept_, rel=1e-6)
    assert statistics["alpha"] == float(model.alpha) and statistics["clips"] == len(y)


def test_alpha_is_the_validation_argmin(fitted):
    model, _, features, *_ = fitted
    x, y = (t.numpy() for t in features["train"])
    x_valid, y_valid = (t.numpy() for t in features["valid"])
    scaler = StandardScaler().fit(x)
    errors = [np.abs(Ridge(alpha=a).fit(scaler.transform(x), y).predict(
        scaler.transform(x_valid)) - y_valid).mean() for a in model.config.alphas]
    assert float(model.alpha) == model.config.alphas[int(np.argmin(errors))]
    assert min(errors) < errors[0] or min(errors) < errors[-1]  # the grid brackets something


def test_standardisation_uses_the_training_part_only(fitted):
    model, _, _, config, dataset, fold = fitted
    other = create_model(config.model, feature_dims(dataset, config))
    train = loader_for(fold.train, dataset, config, train=False)
    shifted = []
    for batch in loader_for(fold.valid, dataset, config, train=False):
        for key in ("audio", "vision", "word_audio", "word_vision"):
            batch[key] = batch[key] * 10 + 100  # validation features far away
        shifted.append(batch)
    other.fit_closed_form(train, shifted)  # (the fixture's training batches are shuffled)
    assert _close(other.feature_mean, model.feature_mean)
    assert _close(other.feature_scale, model.feature_scale)


def test_text_block_shares_one_scale():
    features = torch.randn(50, 6, dtype=torch.float64) * torch.tensor([1, 2, 3, 4, 5, 6.0])
    from msakit.models.probe import standardisation

    mean, scale = standardisation(features, block=4)
    assert torch.allclose(mean, features.mean(0))
    variances = features.var(0, correction=0)
    assert torch.allclose(scale[:4], variances[:4].mean().sqrt().expand(4))
    assert torch.allclose(scale[4:], variances[4:].sqrt())


def test_test_labels_never_reach_the_fit(tmp_path, monkeypatch):
    """The same experiment with the test labels permuted: the same weights and predictions."""
    load = loading.load_experiment_data

    def permuted_test_labels(config):
        dataset, partitions = load(config)
        rng = np.random.default_rng(0)
        for partition in partitions:
            partition.test.labels[:] = rng.permutation(partition.test.labels)
        return dataset, partitions

    config = build_config("probe", AUDIO_VISION)
    runs = {}
    for name, loader in (("plain", load), ("permuted", permuted_test_labels)):
        monkeypatch.setattr(loading, "load_experiment_data", loader)
        config.run.name = name
        config.run.output_dir = str(tmp_path)
        runs[name], _ = experiment.run_experiment(config, progress=False)
    for fold in ("fold0", "fold1", "fold2"):
        plain, permuted = (runs[n] / "seed1" / fold for n in ("plain", "permuted"))
        assert (plain / "best.safetensors").read_bytes() == \
            (permuted / "best.safetensors").read_bytes()
        rows = [list(csv.DictReader((d / "predictions.csv").open())) for d in (plain, permuted)]
        assert [r["prediction"] for r in rows[0]] == [r["prediction"] for r in rows[1]]
        assert [r["label"] for r in rows[0]] != [r["label"] for r in rows[1]]


def test_time_statistics_read_the_real_steps_only(fitted):
    model, _, _, config, dataset, fold = fitted
    batch = next(iter(loader_for(fold.test, dataset, config, train=False)))
    expected = model.pooled_features(batch)
    # independent reference: numpy over each clip's own rows (one per word)
    for i, clip in enumerate(batch["index"].tolist()):
        rows = [np.asarray(fold.test.audio[clip], float), np.asarray(fold.test.vision[clip], float)]
        reference = np.concatenate([np.concatenate([r.mean(0), r.std(0)]) for r in rows])
        assert _close(expected[i], reference, rtol=1e-4)
    padded = dict(batch)
    for key in ("audio", "vision", "word_audio", "word_vision"):
        junk = torch.full((batch[key].shape[0], 5, batch[key].shape[2]), float("nan"))
        padded[key] = torch.cat([batch[key], junk], dim=1)
    for mask_key in ("audio_mask", "vision_mask", "word_mask"):
        padded[mask_key] = torch.cat(
            [batch[mask_key], torch.zeros(batch[mask_key].shape[0], 5, dtype=torch.bool)], 1)
    assert _close(model.pooled_features(padded), expected, rtol=1e-12)  # NaN would fail
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    assert torch.allclose(masked_time_mean_std(x, mask)[1], torch.cat([x[1, 0], torch.zeros(3)]))


def test_predictions_do_not_depend_on_the_batch(fitted):
    model, _, _, config, dataset, fold = fitted
    config = config.model_copy(deep=True)
    config.train.eval_batch_size = 1
    alone = torch.cat([model(b).prediction for b in loader_for(fold.test, dataset, config,
                                                               train=False)])
    config.train.eval_batch_size = len(fold.test)
    (together,) = [model(b).prediction for b in loader_for(fold.test, dataset, config,
                                                           train=False)]
    assert _close(together, alone)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="alphas"):
        build_config("probe", ["model.alphas=[1.0,-2.0]"])
    with pytest.raises(ConfigError, match="modalities"):
        build_config("probe", ["model.modalities=[]"])


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_text_probe_run_folder_export_and_predict(tmp_path):
    """``msakit train probe`` writes the run folder every model writes; the tools read it."""
    result = _invoke(["train", "probe", "--data", "mosi-demo", "--folds", "3", "--output-dir",
                      str(tmp_path), "--no-progress", "--set", "run.name=text", "--set",
                      "model.modalities=[text]", "--set", "train.num_threads=1"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "text"
    for name in ("config.yaml", "data.json", "experiment.json", "results.csv", "metrics.json"):
        assert (run / name).is_file(), name
    for fold in ("fold0", "fold1", "fold2"):
        folder = run / "seed1" / fold
        for name in ("config.yaml", "best.safetensors", "best.json", "metrics.json",
                     "predictions.csv", "artifacts.json"):
            assert (folder / name).is_file(), (fold, name)
        (row,) = list(csv.DictReader((folder / "epochs.csv").open()))
        assert row["epoch"] == "1" and row["selected"] == "1"
        assert float(row["train_alpha"]) in build_config("probe").model.alphas
        assert not (folder / "last.pt").exists()
    accuracy = json.loads((run / "metrics.json").read_text())["summary"]["Non0_acc_2"]
    assert accuracy["n"] == 3 and accuracy["mean"] > 0.6  # it learns (majority rate: 0.574)

    assert _invoke(["leaderboard", str(run), str(run), "--output-dir",
                    str(tmp_path / "board")]).exit_code == 0
    assert _invoke(["report", str(run)]).exit_code == 0 and (run / "report.html").is_file()

    out = tmp_path / "exported"
    assert _invoke(["export", str(run), str(out)]).exit_code == 0
    spec = json.loads((out / "feature_spec.json").read_text())
    assert spec["modalities"] == ["text"] and spec["feature_dims"] == {"audio": 0, "vision": 0}
    texts = ["i loved every minute of it", "it was the worst movie i have ever seen"]
    from_run = predict_texts(texts, load_trained_run(run))  # a text-only model: no features
    from_export = msakit.from_pretrained(out).predict(texts=texts)
    assert [p.score for p in from_export] == [p.score for p in from_run]
    assert from_run[0].score > 0 > from_run[1].score
    cli = _invoke(["predict", "--model", str(out), "--json", "--text", texts[0], "--text",
                   texts[1]])
    assert cli.exit_code == 0, cli.output
    assert [o["score"] for o in json.loads(cli.output)] == [p.score for p in from_run]
