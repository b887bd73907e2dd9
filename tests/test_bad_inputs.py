"""Bad input and faults: each case class of the bad-input battery (issue #16) gets a clear error,
never a traceback or a silent wrong result. No training here (see test_run_safety.py)."""

from __future__ import annotations

import json
import os
import pickle
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
])
def test_invalid_settings_are_refused_in_one_line(override, key):
    with pytest.raises(ConfigError, match=rf"^invalid config for lf_dnn: {key}[^\n]*$"):
        build_config("lf_dnn", [override])


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "train.epochs: Input should be greater than or equal to 1"),
    (["--folds", "0"], "data.folds: Input should be greater than or equal to 2"),
    (["--seeds", "-1"], "Invalid value for '--seeds'"),
    (["--folds", "2", "--set", "train.device=cuda:3"], "device 'cuda:3' is not available"),
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
