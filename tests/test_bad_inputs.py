"""Bad input and faults: each case class of the bad-input battery (issue #16) gets a clear error,
never a traceback or a silent wrong result. No training here (see test_run_safety.py)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from test_data_readers import build_mmsa

from msakit import runfolder as runs
from msakit.cli import main
from msakit.config import ConfigError, build_config
from msakit.data import DataError, load_dataset
from msakit.data.readers import find_overlaps
from msakit.data.safe_pickle import safe_loads


@pytest.fixture(scope="module")
def word_aligned(mosi_word_aligned):
    return load_dataset(mosi_word_aligned)


@pytest.fixture
def mmsa(word_aligned):
    return build_mmsa(word_aligned)


def _write(tmp_path, content, name="data.pkl"):
    path = tmp_path / name
    path.write_bytes(pickle.dumps(content, protocol=4))
    return path


# -- label.csv ----------------------------------------------------------------------------------

def _label_csv(mosi_label_dir, tmp_path, edit):
    lines = (mosi_label_dir / "label.csv").read_text().splitlines()
    folder = tmp_path / "mosi"
    folder.mkdir(exist_ok=True)
    lines = edit(lines)
    (folder / "label.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_label_csv_row_with_one_field_too_many_is_refused_by_train_and_extract(
        mosi_label_dir, tmp_path):
    from msakit.extract import ExtractionError
    from msakit.extract.pipeline import read_clip_list

    def unquoted_comma(lines):
        video, clip, text, label, mode = lines[5].split(",")
        lines[5] = f"{video},{clip},{text} and, 2,{label},{mode}"
        return lines

    folder = _label_csv(mosi_label_dir, tmp_path, unquoted_comma)
    with pytest.raises(DataError, match=r"label\.csv: line 6: 6 fields for 5 columns"):
        load_dataset(folder)
    with pytest.raises(ExtractionError, match=r"label\.csv: line 6: 6 fields for 5 columns"):
        read_clip_list(folder)


def test_label_csv_modes_are_the_same_for_train_and_extract(mosi_label_dir, tmp_path):
    def aliases(lines):
        out = [lines[0]]
        for line in lines[1:]:
            head, mode = line.rsplit(",", 1)
            out.append(f"{head},{ {'valid': 'Dev', 'test': 'TEST'}.get(mode, mode) }")
        return out

    folder = _label_csv(mosi_label_dir, tmp_path, aliases)
    dataset = load_dataset(folder)
    reference = load_dataset(mosi_label_dir)
    assert {k: len(v) for k, v in dataset.splits.items()} == \
        {k: len(v) for k, v in reference.splits.items()}


def test_label_csv_duplicates_and_overlap(mosi_label_dir, tmp_path):
    def duplicate_in_train(lines):
        train = next(line for line in lines[1:] if line.endswith(",train"))
        return lines + [train]

    folder = _label_csv(mosi_label_dir, tmp_path, duplicate_in_train)
    with pytest.raises(DataError, match=r"\[train\]: clip id .* appears more than once"):
        load_dataset(folder)

    def train_clip_also_in_test(lines):
        train = next(line for line in lines[1:] if line.endswith(",train"))
        return lines + [train.rsplit(",", 1)[0] + ",test"]

    folder = _label_csv(mosi_label_dir, tmp_path, train_clip_also_in_test)
    with pytest.raises(DataError, match=r"1 clip\(s\) shared between splits.*train and test"):
        load_dataset(folder)
    allowed = load_dataset(folder, allow_overlap=True)
    assert [o["kind"] for o in find_overlaps(allowed)] == ["id"]


# -- MMSA pickles -------------------------------------------------------------------------------

def test_mmsa_duplicate_ids_and_train_test_leakage_are_refused(mmsa, tmp_path):
    mmsa["train"]["id"][1] = mmsa["train"]["id"][0]
    with pytest.raises(DataError, match=r"\[train\]: clip id .* appears more than once"):
        load_dataset(_write(tmp_path, mmsa))


def test_mmsa_identical_clip_under_another_id_is_leakage(word_aligned, tmp_path):
    data = build_mmsa(word_aligned)
    for key in ("raw_text", "audio", "vision", "audio_lengths", "vision_lengths",
                "regression_labels"):
        data["test"][key][0] = data["train"][key][3]
    path = _write(tmp_path, data)
    with pytest.raises(DataError, match=r"identical \(transcript and features\) across train"):
        load_dataset(path)
    overlaps = find_overlaps(load_dataset(path, allow_overlap=True))
    assert overlaps == [{"kind": "identical", "splits": "train/test",
                         "first": data["train"]["id"][3], "second": data["test"]["id"][0]}]
    result = CliRunner().invoke(main, ["data", "inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "1 clip(s) shared between splits" in result.output


@pytest.mark.parametrize("field, value, message", [
    ("audio_lengths", 8.9, r"audio_lengths of clip .* is 8\.9, expected a whole number"),
    ("raw_text", None, r"field 'raw_text' of row 0 is None \(NoneType\), expected a string"),
    ("id", 7, r"field 'id' of row 0 is 7 \(int\), expected a string"),
])
def test_mmsa_values_that_would_be_silently_converted_are_refused(mmsa, tmp_path, field, value,
                                                                  message):
    column = mmsa["train"][field]
    if field == "audio_lengths":
        column = column.astype(np.float64)
    column[0] = value
    mmsa["train"][field] = column
    with pytest.raises(DataError, match=message):
        load_dataset(_write(tmp_path, mmsa))


def test_complex_features_are_refused(mmsa, tmp_path):
    mmsa["valid"]["vision"] = mmsa["valid"]["vision"].astype(np.complex64)
    with pytest.raises(DataError, match=r"\[valid\]: field 'vision' holds complex numbers"):
        load_dataset(_write(tmp_path, mmsa))


def test_empty_splits_are_inspected_and_refused_before_training(mmsa, tmp_path):
    for key, value in mmsa["valid"].items():
        mmsa["valid"][key] = value[:0]
    path = _write(tmp_path, mmsa)
    result = CliRunner().invoke(main, ["data", "inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "Empty split(s): valid" in result.output
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["train", "lf_dnn", "--data", str(path), "--output-dir",
                                       str(out), "--no-progress"])
    assert result.exit_code == 1
    assert "the valid part of partition 'standard' is empty" in result.output
    assert not out.exists() or not any(out.iterdir())  # refused before any run folder


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_non_regular_files_are_refused(tmp_path, special):
    if special == "fifo":
        special = tmp_path / "data.pkl"
        os.mkfifo(special)
    with pytest.raises(DataError, match="not a regular file"):
        load_dataset(special)


def test_unpickler_allocates_no_more_than_the_file_holds():
    tiny_bytes = b"\x80\x04\x8e" + struct.pack("<Q", 3 * 10**9) + b"."  # BINBYTES8 3 GB
    tiny_bytearray = b"cbuiltins\nbytearray\n(\x8a\x05\x00\x5e\xd0\xb2\x00tR."  # bytearray(3e9)
    tiny_array = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
                  b"(\x8a\x05\x00\x5e\xd0\xb2\x00\x85c__builtin__\nbytes\n)R\x8c\x02u1\x86R.")
    for payload in (tiny_bytes, tiny_bytearray, tiny_array):
        assert len(payload) < 100
        with pytest.raises(DataError):
            safe_loads(payload)
    # what numpy and pickle write is still read
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array(["x", "yz"]),
              "c": bytearray(b"ok"), "d": np.float64(2.5)}
    for protocol in (2, 4, 5):
        loaded = safe_loads(pickle.dumps(arrays, protocol=protocol))
        assert np.array_equal(loaded["a"], arrays["a"]) and loaded["c"] == b"ok"
        assert list(loaded["b"]) == ["x", "yz"] and loaded["d"] == 2.5


# -- configs and the command line ----------------------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("train.lr=.inf", "train.lr"), ("train.lr=.nan", "train.lr"),
    ("model.loss_weights.task=-1", "model.loss_weights"), ("run.name=../x", "run.name"),
    ("run.name=a/b", "run.name"), ("train.device=tpu", "train.device"),
    ("train.epochs=0", "train.epochs"), ("data.folds=1", "data.folds"),
    ("train.epochs=true", "train.epochs: expected int, not a boolean"),
    ("train.lr=false", "train.lr: expected float, not a boolean"),
    ("train.patience=true", "train.patience: expected int | None, not a boolean"),
])
def test_invalid_settings_are_refused_in_one_line(override, key):
    with pytest.raises(ConfigError, match=rf"^invalid config for lf_dnn: {key}[^\n]*$"):
        build_config("lf_dnn", [override])


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "train.epochs: Input should be greater than or equal to 1"),
    (["--folds", "0"], "data.folds: Input should be greater than or equal to 2"),
    (["--seeds", "-1"], "Invalid value for '--seeds'"),
    (["--folds", "2", "--set", "train.device=cuda:3"], "device 'cuda:3' is not available"),
    (["--folds", "2", "--epochs", "1", "--set", "train.epochs=0"],
     "--epochs 1 and --set train.epochs=0 both set train.epochs; give one"),
    (["--folds", "2", "--set", "data.folds=3"],
     "--folds 2 and --set data.folds=3 both set data.folds; give one"),
    (["--folds", "2", "--set", "train.epochs=0"], "train.epochs: Input should be greater than or "
     "equal to 1"),
])
def test_cli_refuses_zero_epochs_folds_and_bad_seeds(mosi_word_aligned, tmp_path, args, message):
    result = CliRunner().invoke(main, ["train", "lf_dnn", "--data", str(mosi_word_aligned),
                                       "--output-dir", str(tmp_path / "runs"), "--no-progress",
                                       *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_broken_config_yaml_is_one_clear_line_and_debug_shows_the_traceback(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  lr: [1e-3\n")
    result = CliRunner().invoke(main, ["train", "lf_dnn", "--config", str(broken)])
    assert result.exit_code == 1
    assert f"{broken}: line 3, column 1: not valid YAML" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["--debug", "train", "lf_dnn", "--config", str(broken)])
    assert result.exit_code != 0
    assert result.exc_info is not None or "Traceback" in result.output


def test_unknown_language_model_offline_names_it_and_the_way_out(mosi_word_aligned, tmp_path,
                                                                 monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the hub reads the variable once, at import: an earlier test may have imported it
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    result = CliRunner().invoke(main, [
        "train", "lf_dnn", "--data", str(mosi_word_aligned), "--folds", "2", "--output-dir",
        str(tmp_path / "runs"), "--set", "model.language_model=no-such-org/no-such-model"])
    assert result.exit_code == 1
    assert "language model 'no-such-org/no-such-model' could not be loaded" in result.output
    assert "--set model.language_model=DIR" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unwritable_output_dir_is_a_clear_error(mosi_word_aligned, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = CliRunner().invoke(main, ["train", "lf_dnn", "--data", str(mosi_word_aligned),
                                       "--folds", "2", "--output-dir", str(blocker / "runs")])
    assert result.exit_code == 1
    assert "Error: " in result.output and "Traceback" not in result.output


def test_an_unexpected_exception_says_it_is_a_bug(monkeypatch):
    import msakit.models

    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(msakit.models, "list_models", broken)
    result = CliRunner().invoke(main, ["models", "--no-params"])
    assert result.exit_code == 2
    assert "internal error, a bug in msakit: ZeroDivisionError: boom" in result.output


# -- checkpoints and run folders ------------------------------------------------------------------

def _model():
    from msakit.models import FeatureDims, create_model

    torch.manual_seed(0)
    config = build_config("lf_dnn", ["model.freeze_language_model=true"])
    return create_model(config.model, FeatureDims(74, 47))


def test_best_weights_round_trip_and_malformed_ones_are_refused(tmp_path):
    model = _model()
    state = model.checkpoint_state_dict()
    runs.save_best_state(tmp_path, state, {"epoch": 3})
    loaded = runs.load_best_state(tmp_path)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert runs.load_best_metadata(tmp_path)["epoch"] == 3
    fresh = _model()
    runs.load_best_into(fresh, tmp_path)

    cases = {}
    cases["missing"] = tmp_path / "missing"
    cases["missing"].mkdir()
    cases["directory"] = tmp_path / "directory"
    (cases["directory"] / runs.BEST_WEIGHTS).mkdir(parents=True)
    cases["text"] = tmp_path / "text"
    cases["text"].mkdir()
    (cases["text"] / runs.BEST_WEIGHTS).write_text("these are not weights")
    cases["nan"] = tmp_path / "nan"
    cases["nan"].mkdir()
    poisoned = dict(state)
    name = next(k for k, v in state.items() if v.is_floating_point())
    poisoned[name] = torch.full_like(state[name], float("nan"))
    runs.save_best_state(cases["nan"], poisoned, {})
    messages = {"missing": "no such weights file", "directory": "is not a regular file",
                "text": "not a readable safetensors", "nan": f"weight '{name}' holds NaN"}
    for case, folder in cases.items():
        with pytest.raises(runs.CheckpointError, match=messages[case]):
            runs.load_best_state(folder)

    renamed = tmp_path / "renamed"
    renamed.mkdir()
    runs.save_best_state(renamed, {f"renamed.{k}": v for k, v in state.items()}, {})
    with pytest.raises(runs.CheckpointError, match="do not fit the LFDNN model"):
        runs.load_best_into(_model(), renamed)
    partial = tmp_path / "partial"
    partial.mkdir()
    runs.save_best_state(partial, dict(list(state.items())[:3]), {})
    with pytest.raises(runs.CheckpointError, match="do not fit the LFDNN model"):
        runs.load_best_into(_model(), partial)


def test_checkpoint_outside_the_run_folder_is_refused(tmp_path):
    from msakit.predict import RunIncompatibleError, find_checkpoints

    run = tmp_path / "run"
    (run / "seed1" / "fold0").mkdir(parents=True)
    (run / "seed1" / "fold0" / runs.BEST_WEIGHTS).write_bytes(b"")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / runs.BEST_WEIGHTS).write_bytes(b"")
    assert find_checkpoints(run, "seed1/fold0") == [run / "seed1" / "fold0"]
    for outside in ("../elsewhere", str(tmp_path / "elsewhere")):
        with pytest.raises(RunIncompatibleError, match="outside the run folder"):
            find_checkpoints(run, outside)


def test_a_failed_named_run_is_reused_not_sent_to_name_2(tmp_path):
    failed = runs.new_run_dir(tmp_path, "m", "d", "trial")
    (failed / "seed1" / "fold0").mkdir(parents=True)
    runs.update_experiment_record(failed, seeds=[1], status="failed", error="boom")
    assert runs.new_run_dir(tmp_path, "m", "d", "trial") == failed
    assert not (failed / "seed1").exists()
    runs.update_experiment_record(failed, seeds=[1], status="finished")
    assert runs.new_run_dir(tmp_path, "m", "d", "trial") == tmp_path / "trial-2"
    unrelated = tmp_path / "mine"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("keep me")
    assert runs.new_run_dir(tmp_path, "m", "d", "mine") == tmp_path / "mine-2"
    assert (unrelated / "notes.txt").exists()


def test_epoch_log_is_cut_back_to_the_checkpointed_epoch(tmp_path):
    from msakit.training.trainer import Trainer

    trainer = Trainer(build_config("lf_dnn"), tmp_path, "mosi", progress=False)
    for epoch in (1, 2, 3):
        trainer._append_epoch_row({"epoch": epoch, "train_total": 0.5, "selected": 1})
    trainer._keep_epoch_rows_up_to(2)
    lines = (tmp_path / "epochs.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == ["epoch", "1", "2"]


def test_extract_refuses_to_write_over_its_input(mosi_raw_dir, tmp_path):
    import shutil

    from msakit.extract import ExtractionError
    from msakit.extract.pipeline import check_output_paths, read_clip_list

    folder = tmp_path / "clips"
    shutil.copytree(mosi_raw_dir, folder)
    (folder / "label.csv").write_text("video_id,clip_id,text,label,mode\n"
                                      "03bSnISJMiM,1,anyhow it was really good,2.4,train\n"
                                      "Oz06ZWiO20M,6,it was fine,0.5,test\n")
    specs, failures = read_clip_list(folder)
    assert len(specs) == 2 and not failures
    label = folder / "label.csv"
    before = label.read_bytes()
    for output, force, message in [
        (label, True, "is an input of the extraction"),
        (folder / "features.pkl", False, "inside the clip folder"),
        (folder, True, "is an input of the extraction"),
    ]:
        with pytest.raises(ExtractionError, match=message):
            check_output_paths(folder, output, tmp_path / "work", specs, force)
    check_output_paths(folder, folder / "features.pkl", folder / "work", specs, force=True)
    result = CliRunner().invoke(main, ["extract", str(folder), "-o", str(label)])
    assert result.exit_code == 1 and "is an input of the extraction" in result.output
    assert label.read_bytes() == before


def test_data_record_holds_absolute_path_and_hash(mosi_word_aligned):
    from msakit.data.readers import data_fingerprint

    record = data_fingerprint(os.path.relpath(mosi_word_aligned))
    assert record["path"] == str(mosi_word_aligned.resolve())
    assert len(record["sha256"]) == 64
    assert json.dumps(record)


# -- run folders read by compare, leaderboard and report (issue 25) ------------------------------

@pytest.fixture(scope="module")
def real_folds(mosi_word_aligned):
    from msakit.training.loading import load_experiment_data

    config = build_config("lf_dnn", [f"data.path={mosi_word_aligned}", "data.folds=5"])
    dataset, partitions = load_experiment_data(config)
    return config, dataset, partitions


def _finished_run(root, name, real_folds, noise=0.5, seed=0):
    """A hand-written finished run folder (as test_compare's) that report can also read."""
    from test_compare import write_run

    run_dir = write_run(root, name, real_folds, noise, seed=seed)
    runs.write_json(run_dir / runs.METRICS_FILE, {"summary": {}})
    for sub in run_dir.glob("seed*/*"):
        (sub / "epochs.csv").write_text("epoch,train_total,valid_task,selected\n"
                                        "1,1.5,1.4,0\n2,1.2,1.3,1\n")
    return run_dir


def _poison_prediction(run_dir, value):
    path = sorted(run_dir.glob("seed*/*/predictions.csv"))[0]
    lines = path.read_text().splitlines()
    fields = lines[3].split(",")
    fields[-1] = value
    lines[3] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    return path, fields[0]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_predictions_are_refused_by_compare_leaderboard_and_report(
        real_folds, tmp_path, value):
    a = _finished_run(tmp_path, "a", real_folds, seed=1)
    b = _finished_run(tmp_path, "b", real_folds, seed=2)
    path, clip = _poison_prediction(b, value)
    expected = f"{path}: line 4: prediction of clip '{clip}' is "
    for command in (["compare", str(a), str(b)], ["leaderboard", str(a), str(b)],
                    ["report", str(b)]):
        result = CliRunner().invoke(main, [*command, "--output-dir" if command[0] != "report"
                                           else "-o", str(tmp_path / f"out-{command[0]}")])
        assert result.exit_code == 1, (command, result.output)
        assert expected in result.output and "expected a finite number" in result.output
        assert "bug" not in result.output
    assert not (tmp_path / "out-report").exists()


def test_a_duplicated_prediction_row_is_named_not_called_a_clip_difference(real_folds, tmp_path):
    a = _finished_run(tmp_path, "a", real_folds, seed=1)
    b = _finished_run(tmp_path, "b", real_folds, seed=2)
    path = sorted(b.glob("seed*/*/predictions.csv"))[0]
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[2]]) + "\n")
    result = CliRunner().invoke(main, ["compare", str(a), str(b), "--output-dir",
                                       str(tmp_path / "out")])
    assert result.exit_code == 1
    clip = lines[2].split(",")[0]
    assert (f"{path}: line {len(lines) + 1}: clip id '{clip}' appears more than once "
            "(first on line 3)") in result.output
    assert "test clips differ" not in result.output


@pytest.mark.parametrize("garble, message", [
    ("epochs", r"epochs\.csv: line 3: column 'epoch' is 'two', expected a whole number"),
    ("epochs_value", r"epochs\.csv: line 2: column 'valid_task' is '1,4x', expected a number"),
    ("metrics", r"metrics\.json: not valid JSON \(Expecting value: line 2 column 1"),
])
def test_report_on_a_garbled_run_file_names_the_file(real_folds, tmp_path, garble, message):
    run_dir = _finished_run(tmp_path, "run", real_folds)
    epochs = sorted(run_dir.glob("seed*/*/epochs.csv"))[0]
    if garble == "epochs":
        epochs.write_text("epoch,train_total,valid_task,selected\n1,1.5,1.4,0\ntwo,1.2,1.3,1\n")
    elif garble == "epochs_value":
        epochs.write_text("epoch,train_total,valid_task,selected\n1,1.5,\"1,4x\",0\n")
    else:
        (run_dir / runs.METRICS_FILE).write_text("{\"summary\":\n")
    result = CliRunner().invoke(main, ["report", str(run_dir)])
    assert result.exit_code == 1, result.output
    assert re.search(message, result.output), result.output
    assert "invalid literal" not in result.output
    good = _finished_run(tmp_path, "good", real_folds)
    assert CliRunner().invoke(main, ["report", str(good)]).exit_code == 0


# -- msakit tune (issue 25) ----------------------------------------------------------------------

def _tune(tmp_path, *args):
    return CliRunner().invoke(main, ["tune", "lf_dnn", "--data", "mosi-demo", "--folds", "2",
                                     "--trials", "1", "--epochs", "1",
                                     "--output-dir", str(tmp_path / "out"), *args])


def test_tune_study_name_that_is_a_path_is_refused(tmp_path):
    before = set(tmp_path.iterdir())
    result = _tune(tmp_path, "--study", "../../outside_study")
    assert result.exit_code == 1, result.output
    assert "--study '../../outside_study' must be one folder name" in result.output
    assert set(tmp_path.iterdir()) == before and not (tmp_path.parent / "outside_study").exists()


def _driver_installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("storage, message", [
    ("not a url", "not a usable SQLAlchemy URL"),
    ("nosuchdb://u@host/db", "not a usable SQLAlchemy URL"),
    ("postgresql+nosuchdriver://u:secret@host/db", "not a usable SQLAlchemy URL"),
    ("postgresql://u:secret@127.0.0.1:1/db", "cannot open the study database: connection"),
    ("sqlite:///{tmp}/missing/folder/study.db",
     "cannot open the study database: unable to open database file (folder {tmp}/missing/folder "
     "does not exist)"),
])
def test_tune_storage_that_cannot_be_opened_is_a_user_error(tmp_path, storage, message):
    if storage.startswith("postgresql://") and not _driver_installed("psycopg"):
        pytest.skip("psycopg (msakit[postgres]) is not installed")
    storage, message = (s.replace("{tmp}", str(tmp_path)) for s in (storage, message))
    result = _tune(tmp_path, "--storage", storage, "--study", "s")
    assert result.exit_code == 1, result.output
    assert "--storage " in result.output and message in result.output
    assert "bug" not in result.output and "secret" not in result.output


def test_tune_search_space_error_names_the_config_file(tmp_path):
    config = tmp_path / "search.yaml"
    config.write_text("search:\n  train.lr: {type: float, low: 1.0e-3, high: 1.0e-4}\n")
    result = _tune(tmp_path, "--config", str(config))
    assert result.exit_code == 1, result.output
    assert f"{config}: search.train.lr: empty range" in result.output
    assert "None:" not in result.output


# -- msakit extract (issue 25) -------------------------------------------------------------------

def test_extract_clip_id_that_is_a_path_never_reads_outside_the_clip_folder(mosi_raw_dir,
                                                                             tmp_path):
    import shutil

    from msakit.extract import ExtractionError
    from msakit.extract.pipeline import find_media, read_clip_list

    folder = tmp_path / "clips"
    shutil.copytree(mosi_raw_dir, folder)
    (folder / "x").mkdir()  # a video folder: clips/x/../../outside is tmp_path/outside
    (tmp_path / "outside").mkdir()
    shutil.copy(folder / "03bSnISJMiM_1.wav", tmp_path / "outside" / "stolen.wav")
    (folder / "label.csv").write_text("video_id,clip_id,text,label,mode\n"
                                      "03bSnISJMiM,1,anyhow it was really good,2.4,train\n"
                                      "x,../../outside/stolen,secret,0.5,test\n"
                                      "..,outside,secret,0.5,test\n")
    specs, failures = read_clip_list(folder)
    assert [s.media for s in specs] == [folder / "03bSnISJMiM_1.wav"]
    assert [f.clip_id for f in failures] == ["../../outside/stolen", "outside"]
    assert "clip_id '../../outside/stolen' is not a plain file name" in failures[0].reason
    assert "video_id '..' is not a plain file name" in failures[1].reason
    with pytest.raises(ExtractionError, match="ids must be plain file names"):
        find_media(folder, "x", "../../outside/stolen")


def test_a_truncated_extract_cache_entry_is_extracted_again(tmp_path):
    from msakit.extract.features import ClipFeatures
    from msakit.extract.pipeline import load_cached, save_cached

    features = ClipFeatures(audio=np.ones((3, 4), np.float32), vision=np.ones((2, 5), np.float32),
                            text="hi", text_source="given", info={}, warnings=[])
    path = tmp_path / "clip.npz"
    save_cached(path, features, "sig")
    assert np.array_equal(load_cached(path, "sig").audio, features.audio)
    path.write_bytes(path.read_bytes()[:-40])
    assert load_cached(path, "sig") is None
    path.write_bytes(path.read_bytes()[:10])
    assert load_cached(path, "sig") is None


# -- MMSA pickle splits under other names (issue 25) ----------------------------------------------

def test_mmsa_dev_split_is_never_dropped(mmsa, tmp_path):
    import copy

    both = copy.deepcopy(mmsa)
    both["dev"] = copy.deepcopy(mmsa["valid"])
    path = _write(tmp_path, both, "both.pkl")
    with pytest.raises(DataError, match=r"keys 'valid' and 'dev' both name the valid split"):
        load_dataset(path)
    result = CliRunner().invoke(main, ["data", "inspect", str(path)])
    assert result.exit_code == 1 and "both name the valid split" in result.output

    renamed = {("dev" if k == "valid" else k): v for k, v in mmsa.items()}
    dataset = load_dataset(_write(tmp_path, renamed, "dev.pkl"))
    assert len(dataset.splits["valid"]) == len(mmsa["valid"]["id"]) > 0

    extra = copy.deepcopy(mmsa)
    extra["holdout"] = copy.deepcopy(mmsa["test"])
    with pytest.raises(DataError, match=r"key 'holdout' holds a split"):
        load_dataset(_write(tmp_path, extra, "extra.pkl"))


def test_tune_epochs_shortcut_and_set_conflict_is_refused(tmp_path):
    result = _tune(tmp_path, "--set", "train.epochs=0")
    assert result.exit_code == 1, result.output
    assert "--epochs 1 and --set train.epochs=0 both set train.epochs; give one" in result.output
    assert not (tmp_path / "out").exists()


def test_a_truncated_pickle_is_called_truncated_not_crafted(tmp_path):
    from msakit.data.safe_pickle import safe_load

    content = {"train": {"id": np.array(["a", "b"]), "audio": np.zeros((2, 3, 4), np.float32)}}
    for protocol in (2, 4):
        data = pickle.dumps(content, protocol=protocol)
        for cut in range(1, len(data)):
            with pytest.raises(DataError) as caught:
                safe_loads(data[:cut])
            assert "crafted" not in str(caught.value), (protocol, cut, str(caught.value))
            assert "truncated" in str(caught.value)
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps(content, protocol=2)[:36])
    with pytest.raises(DataError, match=rf"{path}: the pickle ends early \(truncated file\)"):
        safe_load(path)
    with pytest.raises(DataError, match=r"refused to unpickle the global os\.system.*crafted"):
        safe_loads(b"cos\nsystem\n(S'echo'\ntR.")


# -- exported model folders (issue 25) -----------------------------------------------------------

class _RunsCode:
    """Pickles as a call of ``os.getcwd`` (harmless, but refused by a weights-only load)."""

    def __reduce__(self):
        return (os.getcwd, ())


def _exported_copy(tmp_path, edit_config=None):
    import shutil

    from msakit.pretrained import default_model_path

    folder = tmp_path / "model"
    shutil.copytree(default_model_path(), folder)
    if edit_config is not None:
        tree = json.loads((folder / "config.json").read_text())
        edit_config(tree)
        (folder / "config.json").write_text(json.dumps(tree))
    return folder


def _predict_text(folder):
    return CliRunner().invoke(main, ["predict", "--model", str(folder), "--text", "it was great"])


def test_export_with_nan_weights_names_the_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _exported_copy(tmp_path)
    tensors = load_file(folder / "model.safetensors")
    name = "members.0.head.proj2.weight"
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, folder / "model.safetensors")
    result = _predict_text(folder)
    assert result.exit_code == 1, result.output
    assert (f"{folder / 'model.safetensors'}: tensor '{name}' holds NaN or infinite values"
            in result.output)


def test_export_naming_an_unknown_model_is_a_user_error(tmp_path):
    import msakit
    from msakit.pretrained import ExportError

    folder = _exported_copy(tmp_path, lambda tree: tree["model"].update(name="nosuch"))
    message = f"{folder / 'config.json'}: model.name 'nosuch' is not a model of this msakit"
    with pytest.raises(ExportError, match=re.escape(message)):
        msakit.from_pretrained(folder)
    result = _predict_text(folder)
    assert result.exit_code == 1 and message in result.output and "bug" not in result.output


def test_export_whose_language_model_is_a_code_bearing_pickle_is_refused_as_such(tmp_path):
    import shutil

    from msakit.lm import resolve_language_model

    lm = tmp_path / "lm"
    shutil.copytree(resolve_language_model("all-MiniLM-L6-v2"), lm)
    (lm / "model.safetensors").unlink()
    torch.save({"weight": _RunsCode()}, lm / "pytorch_model.bin")
    folder = _exported_copy(tmp_path, lambda tree: tree["model"].update(language_model=str(lm)))
    result = _predict_text(folder)
    assert result.exit_code == 1, result.output
    assert f"language model '{lm}' could not be loaded" in result.output
    assert "pickle that holds more than tensors; refused, nothing from it was executed" \
        in result.output
    assert "bug" not in result.output and "weights_only" not in result.output


# -- a full disk (issue 25) ----------------------------------------------------------------------

def _full_disk_save_file(tensors, filename, metadata=None):
    with open(filename, "wb") as handle:  # a partial file, as a real full disk leaves
        handle.write(b"\0" * 100)
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("lm_cache", ["off", "auto"])
def test_a_full_disk_during_training_names_the_file_and_keeps_no_partial_file(
        tmp_path, monkeypatch, lm_cache):
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", _full_disk_save_file)
    monkeypatch.setenv("MSAKIT_CACHE", str(tmp_path / "cache"))  # empty: shards are written
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["train", "lf_dnn", "--data", "mosi-demo", "--folds", "2",
                                       "--epochs", "1", "--set", "model.modalities=[text]",
                                       "--set", "model.freeze_language_model=true",
                                       "--set", f"train.lm_cache={lm_cache}",
                                       "--set", "run.name=full", "--output-dir", str(out),
                                       "--no-progress"])
    assert result.exit_code == 1, result.output
    written = {"off": r"full/seed\d+/fold0/best", "auto": r"cache/lm/.*/shard-\w+"}[lm_cache]
    assert re.search(rf"{written}\.safetensors: No space left on device", result.output), \
        result.output
    assert "bug" not in result.output
    assert not list(out.rglob("*.tmp")) and not list(tmp_path.rglob(".*.tmp"))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    result = CliRunner().invoke(main, ["train", "lf_dnn", "--data", "mosi-demo", "--folds", "2",
                                       "--seeds", "1", "--epochs", "1",
                                       "--set", "model.modalities=[text]",
                                       "--set", "model.freeze_language_model=true",
                                       "--set", "run.name=tiny", "--output-dir", str(out),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    return out / "tiny"


@pytest.mark.parametrize("failing", ["weights", "metrics"])
def test_a_full_disk_during_export_names_the_file_and_leaves_no_half_folder(
        tiny_run, tmp_path, monkeypatch, failing):
    import pathlib

    import safetensors.torch

    if failing == "weights":
        monkeypatch.setattr(safetensors.torch, "save_file", _full_disk_save_file)
        expected = "model.safetensors"
    else:
        real_write_text = pathlib.Path.write_text

        def write_text(self, *args, **kwargs):
            if self.name == "metrics.json":
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write_text(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "write_text", write_text)
        expected = "metrics.json"
    before = sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*"))
    out = tmp_path / "exported"
    result = CliRunner().invoke(main, ["export", str(tiny_run), str(out)])
    assert result.exit_code == 1, result.output
    assert f"{out / expected}: No space left on device" in result.output
    assert "bug" not in result.output
    assert not out.exists()
    assert sorted(p.relative_to(tiny_run) for p in tiny_run.rglob("*")) == before


def test_a_feature_whose_square_overflows_float32_is_refused_at_load(mmsa, tmp_path):
    mmsa["valid"]["audio"] = mmsa["valid"]["audio"].astype(np.float32)
    mmsa["valid"]["audio"][2, 0, 5] = 3e38
    clip = mmsa["valid"]["id"][2]
    path = _write(tmp_path, mmsa)
    with pytest.raises(DataError, match=re.escape(
            f"{path} [valid] field 'audio': clip {clip!r} (row 2) has the value 3e+38 at step 0, "
            "dim 5; expected features below 1.84e+19 in magnitude")):
        load_dataset(path)
    mmsa["valid"]["audio"][2, 0, 5] = 1e6  # large but harmless
    load_dataset(_write(tmp_path, mmsa, "ok.pkl"))
