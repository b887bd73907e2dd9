"""``msakit tune``: Optuna search on validation, on the real 229 MOSI clips with grouped folds."""

from __future__ import annotations

import os
import uuid

import pytest
import yaml
from click.testing import CliRunner

from msakit.cli import main
from msakit.config import ConfigError, build_config
from msakit.experiments import tune as tune_module
from msakit.experiments.tune import search_space, tune
from msakit.models import list_models
from msakit.training import loading

#: A tiny budget: LF-DNN on a frozen LM, 2 folds, 1 epoch per trial, a 2-parameter search.
FIXED = ["model.freeze_language_model=true", "train.epochs=1",
         "train.batch_size=64", "data.max_text_tokens=32"]
SEARCH = {"search": {"train.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
                     "model.post_fusion_dim": {"type": "categorical", "choices": [32, 64]}}}


def test_every_shipped_model_has_a_valid_search_space():
    from msakit.models import get_model_class

    for name in list_models():
        dimensions = search_space(name)
        assert dimensions, name
        if not get_model_class(name).fits_in_closed_form:  # the probe has no learning rate
            assert any(d.key == "train.lr" for d in dimensions), name


@pytest.mark.parametrize("entry, message", [
    ({"model.no_such_field": {"type": "float", "low": 0.0, "high": 1.0}},
     "search.model.no_such_field: not a valid setting of misa"),
    ({"train.lr": {"type": "float", "low": 1e-3, "high": 1e-3}}, "empty range"),
    ({"model.hidden_size": {"type": "categorical", "choices": []}}, "empty or missing choices"),
    ({"model.loss_weights.nope": {"type": "float", "low": 0.1, "high": 1.0}},
     "unknown loss term; misa's terms are"),
    ({"train.lr": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}}, "log range"),
    ({"train.lr": {"type": "uniform", "low": 0.0, "high": 1.0}}, "type must be one of"),
    ({"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "lgo": True}}, "unknown field"),
])
def test_bad_search_entries_are_clear_errors(entry, message):
    with pytest.raises(ConfigError, match=message):
        search_space("misa", {"search": entry}, "user.yaml")


def test_a_user_search_section_replaces_and_adds_entries():
    shipped = {d.key: d for d in search_space("misa")}
    user = {"search": {"train.lr": {"type": "float", "low": 1e-5, "high": 2e-5},
                       "train.batch_size": {"type": "int", "low": 16, "high": 64, "step": 16}}}
    merged = {d.key: d for d in search_space("misa", user)}
    assert merged["train.lr"].high == 2e-5 and not merged["train.lr"].log
    assert merged["train.batch_size"].step == 16
    assert set(merged) == set(shipped) | {"train.batch_size"}
    # a search section is not a setting: train --config accepts such a file
    assert build_config("misa", base=user).train.lr == build_config("misa").train.lr


@pytest.mark.slow
def test_tiny_search_never_touches_the_test_split_and_continues_when_rerun(
        mosi_word_aligned, tmp_path, monkeypatch, caplog):
    loaded_ids = []
    real_loader_for = loading.loader_for

    def recording_loader_for(split, *args, **kwargs):
        loaded_ids.append(set(split.ids))
        return real_loader_for(split, *args, **kwargs)

    monkeypatch.setattr(loading, "loader_for", recording_loader_for)
    import logging

    import optuna

    optuna.logging.enable_propagation()
    try:
        with caplog.at_level(logging.INFO, logger="optuna"):
            summary = tune("lf_dnn", str(mosi_word_aligned), trials=2, folds=2,
                           user_config=SEARCH, overrides=FIXED, output_dir=tmp_path)
    finally:
        optuna.logging.disable_propagation()
    # the log says once that the study was created, not then that an existing one is used
    # (one record, whichever handlers it reached: after another test left a second path to
    # the root logger, caplog sees each record twice)
    created = {(r.created, r.getMessage()) for r in caplog.records
               if "A new study created" in r.getMessage()}
    assert len(created) == 1, created
    assert not any("Using an existing study" in r.getMessage() for r in caplog.records)
    study_dir = tmp_path / "tune-lf_dnn-word_aligned_valid-2folds"
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] == 2
    # two trials: a caveat, and the history as a figure
    assert "fewer than 20" in summary["caveat"]
    assert "Caveat: only" in (study_dir / "trials.md").read_text()
    assert (study_dir / "history.png").read_bytes().startswith(b"\x89PNG")

    # every loader was built over a fold's training or validation part, none over a test
    # part, and nothing test-side was written
    config = build_config("lf_dnn", [f"data.path={mosi_word_aligned}", "data.folds=2"])
    _, partitions = loading.load_experiment_data(config)
    allowed = [set(p.train.ids) for p in partitions] + [set(p.valid.ids) for p in partitions]
    tests = [set(p.test.ids) for p in partitions]
    assert loaded_ids and all(ids in allowed for ids in loaded_ids)
    assert not any(ids == test for ids in loaded_ids for test in tests)
    assert {frozenset(ids) for ids in loaded_ids} == {frozenset(ids) for ids in allowed}
    trial_runs = sorted(study_dir.glob("trials/trial*/seed*/fold*"))
    assert len(trial_runs) == 4
    for run in trial_runs:
        assert not (run / "predictions.csv").exists()
        assert not list(run.glob("*.pt"))  # checkpoints are not kept
        saved = yaml.safe_load((run / "metrics.json").read_text())
        assert "test" not in saved and saved["best_valid"] > 0

    # the best trial's config trains as is, and carries the searched values
    best = summary["best"]
    tree = yaml.safe_load((study_dir / "best_config.yaml").read_text())
    config = build_config("lf_dnn", base=tree)
    assert config.train.lr == pytest.approx(best["params"]["train.lr"])
    assert config.model.post_fusion_dim == best["params"]["model.post_fusion_dim"]
    assert config.train.epochs == 1 and config.data.folds == 2
    assert best["value"] == pytest.approx(sum(best["per_partition"].values()) / 2)
    rows = (study_dir / "trials.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("number,state,value")
    assert "| number | state |" in (study_dir / "trials.md").read_text()

    # rerunning the command continues the same study up to the new total
    again = tune("lf_dnn", str(mosi_word_aligned), trials=3, folds=2, user_config=SEARCH,
                 overrides=FIXED, output_dir=tmp_path)
    assert again["trials"]["complete"] + again["trials"]["pruned"] == 3
    searched = {d.key for d in search_space("lf_dnn", SEARCH)}
    assert isinstance(again["importance"], dict) and set(again["importance"]) == searched
    if again["trials"]["complete"] >= 2:
        assert "importance.png" in again["figures"]
        assert (study_dir / "importance.png").read_bytes().startswith(b"\x89PNG")
    # other settings under the same study name are refused, not mixed in
    with pytest.raises(ConfigError, match="other settings"):
        tune("lf_dnn", str(mosi_word_aligned), trials=4, folds=2, user_config=SEARCH,
             overrides=[*FIXED, "train.weight_decay=0.5"], output_dir=tmp_path)


@pytest.mark.slow
def test_two_worker_processes_share_one_study(mosi_word_aligned, tmp_path):
    config_file = tmp_path / "search.yaml"
    config_file.write_text(yaml.safe_dump(SEARCH))
    result = CliRunner().invoke(main, [
        "tune", "lf_dnn", "--data", str(mosi_word_aligned), "--folds", "2", "--trials", "2",
        "--jobs", "2", "--config", str(config_file), "--output-dir", str(tmp_path),
        "--study", "shared", *[a for s in FIXED for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    import optuna

    study = optuna.load_study(study_name="shared", storage=tune_module.sqlite_url(
        tmp_path / "tune-shared" / "study.db"))
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 2
    assert len({t.user_attrs["worker_pid"] for t in finished}) == 2
    assert os.getpid() not in {t.user_attrs["worker_pid"] for t in finished}
    assert "best config:" in result.output


@pytest.mark.slow
def test_a_study_on_a_real_postgresql_server(mosi_word_aligned, tmp_path):
    url = os.environ.get("MSAKIT_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("MSAKIT_TEST_POSTGRES_URL not set (.ci/run starts Debian's postgresql and "
                    "sets it, e.g. postgresql://msakit:msakit@localhost/msakit_test)")
    import optuna

    name = f"msakit-test-{uuid.uuid4().hex[:8]}"
    try:
        summary = tune("lf_dnn", str(mosi_word_aligned), trials=1, folds=2, storage=url,
                       study_name=name, user_config=SEARCH, overrides=FIXED,
                       output_dir=tmp_path)
        assert summary["storage"].startswith("postgresql") and "msakit:***@" in \
            summary["storage"] or "***" in summary["storage"]
        study = optuna.load_study(study_name=name, storage=url)
        assert [t.state.name for t in study.trials] == ["COMPLETE"]
        assert (tmp_path / f"tune-{name}" / "best_config.yaml").exists()
    finally:
        try:
            optuna.delete_study(study_name=name, storage=url)
        except KeyError:
            pass
