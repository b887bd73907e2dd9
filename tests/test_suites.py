"""Suites (msakit.experiments.suites, ``msakit suite``): the packaged tables parse and match the
papers' texts, rows that cannot run are reported, a tiny real suite runs, resumes and feeds
``msakit leaderboard``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from rich.console import Console

from msakit.cli import main
from msakit.experiments import suites
from msakit.experiments.suites import (
    AVAILABLE,
    NO_CODE,
    NOT_CHECKED,
    NOT_YET,
    SuiteError,
    load_suite,
    parse_suite,
    run_suite,
    suite_names,
)
from msakit.models import list_models
from msakit.presets import preset_names

PAPERS = Path(__file__).resolve().parents[1].parent / "shared" / "papers"
#: suite -> the stored paper texts its figures were transcribed from
SUITE_PAPERS = {"sagenet": ("000_5f33f519023090a9.txt",), "mmiln": ("001_e81c66899e293d24.txt",),
                "dmd": ("002_b7d478abae9e1bdd.txt",),
                "misa": ("001_e81c66899e293d24.txt", "000_5f33f519023090a9.txt")}


def test_packaged_suites_parse_and_name_their_models():
    assert {"dmd", "mmiln", "sagenet", "misa", "mmsa"} <= set(suite_names())
    registered = list_models()
    for name in suite_names():
        suite = load_suite(name)
        for row in suite.rows:
            status = row.status(registered)
            if row.model in registered:
                assert status == AVAILABLE
                for dataset, preset in row.presets.items():
                    assert preset in preset_names(row.model), (name, row.label, dataset, preset)
            elif row.measured_in is None:
                assert status in (NOT_YET, NO_CODE, NOT_CHECKED), (name, row.label)
        assert any(row.paper for row in suite.rows), name


@pytest.mark.parametrize("name", sorted(SUITE_PAPERS))
def test_suite_figures_are_printed_in_the_paper(name):
    paths = [PAPERS / paper for paper in SUITE_PAPERS[name]]
    missing = [p for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"paper text not found at {missing[0]}")
    text = "\n".join(p.read_text(encoding="utf-8") for p in paths)
    numbers = {float(x) for x in re.findall(r"\d+\.\d+", text)}  # every decimal they print
    suite = load_suite(name)
    for row in suite.rows:
        for dataset, figures in row.paper.items():
            for metric, value in figures.items():
                assert value in numbers, (name, row.label, dataset, metric, value)


def test_row_status_follows_the_registry():
    suite = parse_suite("t", """
suite: {title: t, source: s, datasets: {mosi: CMU-MOSI}}
rows:
  - {label: A, model: zoo_model, code: owner/repo}
  - {label: B, model: null, code: null}
  - {label: C, model: null, code: unknown}
  - {label: D, measured_in: zoo_model}
""", "test")
    rows = {r.label: r for r in suite.rows}
    assert rows["A"].status([]) == NOT_YET
    assert rows["A"].status(["zoo_model"]) == AVAILABLE  # picked up once registered
    assert rows["B"].status(["zoo_model"]) == NO_CODE
    assert rows["C"].status([]) == NOT_CHECKED
    assert rows["D"].status([]) == "measured in row zoo_model"


@pytest.mark.parametrize("rows, message", [
    ("- {label: A, model: misa}", "code"),
    ("- {label: A, model: misa, code: x/y, paper: {mosi: {Acc9: 1.0}}}", "unknown metric"),
    ("- {label: A, model: misa, code: x/y, paper: {mosi: {Non0_acc_2: 0.83}}}", None),
    ("- {label: A, model: misa, code: x/y, paper: {mosi: {Non0_acc_2: 830}}}", "percent"),
    ("- {label: A, model: misa, code: x/y, paper: {mosi: {Corr: '0.7'}}}", "number"),
    ("- {label: A, model: misa, code: x/y, paper: {mosei: {MAE: 0.7}}}", "unknown dataset"),
    ("- {label: A, model: misa, code: x/y}\n- {label: B, model: misa, code: x/y}", "repeated"),
    ("- {label: A, model: misa, code: x/y, typo: 1}", "unknown key"),
])
def test_malformed_suites_are_refused_naming_the_row(rows, message):
    text = f"suite: {{title: t, source: s, datasets: {{mosi: M}}}}\nrows:\n{rows}\n"
    if message is None:  # a fraction where percent is meant is in range: it parses
        parse_suite("t", text, "t.yaml")
        return
    with pytest.raises(SuiteError, match=message) as info:
        parse_suite("t", text, "t.yaml")
    assert "t.yaml" in str(info.value)


def test_cli_suite_show_and_unknown_suite():
    runner = CliRunner()
    shown = runner.invoke(main, ["suite", "show", "dmd"], terminal_width=300)
    assert shown.exit_code == 0, shown.output
    assert "MulT" in shown.output and "mdswyz/DMD" in shown.output
    unknown = runner.invoke(main, ["suite", "run", "nope", "--data", "mosi-demo"])
    assert unknown.exit_code == 1
    assert "no suite 'nope'" in unknown.output and "mmsa" in unknown.output
    for args in (["suite"], ["suite", "run"], ["suite", "list"], ["suite", "show"]):
        helped = runner.invoke(main, [*args, "--help"])
        assert helped.exit_code == 0 and "Usage" in helped.output, helped.output
    no_data = runner.invoke(main, ["suite", "run", "dmd"])
    assert no_data.exit_code == 2 and "--data" in no_data.output


def test_leaderboard_of_one_folder_that_is_not_a_suite_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["leaderboard", str(tmp_path)])
    assert result.exit_code == 2 and "suite folder" in result.output
    floor = CliRunner().invoke(main, ["leaderboard", str(tmp_path), str(tmp_path), "--floor",
                                      "x"])
    assert floor.exit_code == 2 and "--floor" in floor.output


# ----------------------------------------------------------------------------------------------
# A tiny real suite: two models on the 229 packaged MOSI clips, 2 folds, 1 epoch, frozen LM
# ----------------------------------------------------------------------------------------------

TINY = """
suite:
  title: tiny
  source: a test
  datasets: {mosi: CMU-MOSI}
rows:
  - label: LF-DNN
    model: lf_dnn
    code: thuiar/MMSA
    paper: {mosi: {Non0_acc_2: 78.63, MAE: 0.9548}}
  - label: Model from another branch
    model: not_registered_model
    code: owner/repo
    paper: {mosi: {Non0_acc_2: 99.0}}
  - label: MISA
    model: misa
    code: declare-lab/MISA
    presets: {mosi: mosi}
    paper: {mosi: {Non0_acc_2: 83.4, MAE: 0.783}}
  - label: MISA*
    id: misa-again
    measured_in: misa
    paper: {mosi: {Non0_acc_2: 83.0}}
"""
FROZEN = ["model.freeze_language_model=true", "train.batch_size=32", "train.eval_batch_size=64"]


def _offline_hub(monkeypatch, tmp_path):
    """No hub and an empty hub cache: the presets' bert-base-uncased cannot be loaded."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("suite")
    with pytest.MonkeyPatch.context() as patch:
        _offline_hub(patch, tmp)
        suite = parse_suite("tiny", TINY, "tiny.yaml")
        suite_dir, record = run_suite(suite, "mosi-demo", folds=2, epochs=1, seeds=[1],
                                      overrides=FROZEN, output_dir=tmp / "runs", progress=False,
                                      console=Console(quiet=True))
    return suite, suite_dir, record


def _rows(record):
    return {row["id"]: row for row in record["rows"]}


def test_tiny_suite_runs_and_reports_every_row(tiny_suite):
    _, suite_dir, record = tiny_suite
    rows = _rows(record)
    assert record["status"] == "finished" and record["dataset"] == "mosi"
    assert [r["id"] for r in record["rows"]] == ["lf_dnn", "not_registered_model", "misa",
                                                 "misa-again"]
    for row_id in ("lf_dnn", "misa"):
        assert rows[row_id]["state"] == "finished"
        assert rows[row_id]["summary"]["Non0_acc_2"]["n"] == 2  # 1 seed x 2 folds
        assert (suite_dir / row_id / "metrics.json").is_file()
    skipped = rows["not_registered_model"]
    assert skipped["state"] == "not run" and skipped["status"] == NOT_YET
    assert "'not_registered_model' is not registered" in skipped["reason"]
    assert not (suite_dir / "not_registered_model").exists()
    assert rows["misa-again"]["summary"] == rows["misa"]["summary"]
    # the misa preset names bert-base-uncased: with no hub, the packaged MiniLM stands in
    assert rows["misa"]["preset"] == "mosi"
    assert rows["misa"]["language_model_substituted"]["requested"] == "bert-base-uncased"
    assert rows["misa"]["language_model"] == "all-MiniLM-L6-v2"
    assert record["language_model_substituted"] == ["bert-base-uncased"]
    saved = json.loads((suite_dir / suites.SUITE_JSON).read_text())
    assert saved["rows"] == json.loads(json.dumps(record["rows"]))
    markdown = (suite_dir / suites.SUITE_MD).read_text()
    assert "Model from another branch" in markdown and NOT_YET in markdown
    assert "all-MiniLM-L6-v2 stands in" in markdown
    measured = 100 * rows["misa"]["summary"]["Non0_acc_2"]["mean"]
    assert f"| 83.4 | {measured:.1f} ± " in markdown


def test_leaderboard_reads_a_suite_folder(tiny_suite, tmp_path):
    _, suite_dir, _ = tiny_suite
    result = CliRunner().invoke(main, ["leaderboard", str(suite_dir),
                                       "--output-dir", str(tmp_path)], terminal_width=300)
    assert result.exit_code == 0, result.output
    board = json.loads((tmp_path / "leaderboard.json").read_text())
    assert [Path(r["run"]).name for r in board["rows"]] == ["lf_dnn", "misa"]
    floor = CliRunner().invoke(main, ["leaderboard", str(suite_dir), "--floor", "misa",
                                      "--output-dir", str(tmp_path)])
    assert floor.exit_code == 0, floor.output
    board = json.loads((tmp_path / "leaderboard-2.json").read_text())
    assert Path(board["baseline"]).name == "misa"
    missing = CliRunner().invoke(main, ["leaderboard", str(suite_dir), "--floor",
                                        "not_registered_model"])
    assert missing.exit_code != 0 and "not finished" in missing.output


def test_resume_keeps_finished_rows_and_continues_an_unfinished_one(tiny_suite, monkeypatch,
                                                                   tmp_path):
    suite, suite_dir, _ = tiny_suite
    kept = {p: p.stat().st_mtime_ns for p in (suite_dir / "lf_dnn").rglob("*") if p.is_file()}
    fold0 = suite_dir / "misa" / "seed1" / "fold0" / "best.safetensors"
    fold0_time = fold0.stat().st_mtime_ns
    # misa interrupted: its second fold never ran, the run is marked failed
    import shutil

    shutil.rmtree(suite_dir / "misa" / "seed1" / "fold1")
    record_path = suite_dir / "misa" / "experiment.json"
    experiment = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**experiment, "status": "failed", "error": "killed"}))

    with pytest.raises(SuiteError, match="folds"):  # a resume continues what was started
        run_suite(suite, resume_dir=suite_dir, folds=3, console=Console(quiet=True))
    _offline_hub(monkeypatch, tmp_path)
    _, record = run_suite(suite, resume_dir=suite_dir, progress=False,
                          console=Console(quiet=True))
    rows = _rows(record)
    assert rows["lf_dnn"].get("kept") is True
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # nothing of lf_dnn rewritten
    assert rows["misa"].get("resumed") is True and rows["misa"]["state"] == "finished"
    assert fold0.stat().st_mtime_ns == fold0_time  # the finished fold is not retrained
    assert (suite_dir / "misa" / "seed1" / "fold1" / "best.safetensors").is_file()
    assert rows["misa"]["summary"]["MAE"]["n"] == 2
    assert rows["misa"]["language_model_substituted"]["requested"] == "bert-base-uncased"
    assert record["language_model_substituted"] == ["bert-base-uncased"]


def test_cli_resume_of_a_finished_suite_trains_nothing_and_prints_the_table(tiny_suite,
                                                                              tmp_path):
    _, suite_dir, _ = tiny_suite
    suite_file = tmp_path / "tiny.yaml"  # a suite file by path; its name is the file's stem
    suite_file.write_text(TINY)
    result = CliRunner().invoke(main, ["suite", "run", str(suite_file), "--resume",
                                       str(suite_dir), "--no-progress"], terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "LF-DNN: finished in" in result.output and "kept" in result.output
    assert "Model from another branch" in result.output  # reported, not dropped
    assert "all-MiniLM-L6-v2 stands in" in result.output
    other = CliRunner().invoke(main, ["suite", "run", "mmsa", "--resume", str(suite_dir)])
    assert other.exit_code == 1 and "'tiny' then, 'mmsa' now" in other.output


# ----------------------------------------------------------------------------------------------
# Self-MM's official loop on 3 folds of the packaged clips: adapted, visibly; a failed row is
# recorded and the others run; --rows trains a subset and adds rows to a suite folder
# ----------------------------------------------------------------------------------------------

ADAPT = """
suite:
  title: adapt
  source: a test
  datasets: {mosi: CMU-MOSI}
rows:
  - label: SELF_MM
    model: self_mm
    code: thuiar/Self-MM
    presets: {mosi: mosi}
    paper: {mosi: {Non0_acc_2: 85.46, MAE: 0.708}}
  - label: Broken row
    id: lf_dnn-broken
    model: lf_dnn
    code: thuiar/MMSA
    presets: {mosi: no-such-preset}
    paper: {mosi: {Non0_acc_2: 78.63}}
  - label: LF-DNN
    model: lf_dnn
    code: thuiar/MMSA
    paper: {mosi: {Non0_acc_2: 78.63, MAE: 0.9548}}
"""
#: 3 folds of the 229 clips: a training part of 3 batches of 32 (Self-MM's preset: 4-batch
#: accumulation, the incomplete group dropped) would never take an optimiser step
ADAPT_ARGS = ["--data", "mosi-demo", "--folds", "3", "--epochs", "1", "--seeds", "1",
              "--no-progress", "--set", "model.freeze_language_model=true"]


@pytest.fixture(scope="module")
def adapted_suite(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapt")
    suite_file = tmp / "adapt.yaml"
    suite_file.write_text(ADAPT)
    with pytest.MonkeyPatch.context() as patch:
        _offline_hub(patch, tmp)
        result = CliRunner().invoke(main, [
            "suite", "run", str(suite_file), *ADAPT_ARGS, "--rows", "self_mm,lf_dnn-broken",
            "--output-dir", str(tmp / "runs")], terminal_width=400)
    (suite_dir,) = (tmp / "runs").iterdir()
    return suite_file, suite_dir, result


def test_a_preset_that_would_never_step_runs_adapted_and_says_so(adapted_suite):
    _, suite_dir, result = adapted_suite
    rows = _rows(json.loads((suite_dir / suites.SUITE_JSON).read_text()))
    self_mm = rows["self_mm"]
    assert self_mm["state"] == "finished", result.output
    assert self_mm["summary"]["MAE"]["n"] == 3
    (adaptation,) = self_mm["adaptations"]
    assert (adaptation["key"], adaptation["preset"], adaptation["used"]) == (
        "train.partial_accumulation", "drop", "step")
    assert re.search(r"fold\d has 3", adaptation["reason"])
    saved = yaml.safe_load((suite_dir / "self_mm" / "config.yaml").read_text())["train"]
    assert (saved["partial_accumulation"], saved["grad_accumulation"]) == ("step", 4)
    # said when it runs, under the table and in suite.md's row
    assert "runs with train.partial_accumulation=step instead of drop" in result.output
    markdown = (suite_dir / suites.SUITE_MD).read_text()
    assert "measured (LM all-MiniLM-L6-v2 for bert-base-uncased; " \
           "train.partial_accumulation=step)" in markdown
    assert "Adapted by the suite" in markdown and "fewer training batches of 32" in markdown


def test_a_failed_row_is_recorded_and_the_others_run(adapted_suite):
    _, suite_dir, result = adapted_suite
    assert result.exit_code == 1, result.output
    assert "1 row(s) failed (Broken row)" in result.output
    rows = _rows(json.loads((suite_dir / suites.SUITE_JSON).read_text()))
    broken = rows["lf_dnn-broken"]
    assert broken["state"] == "failed" and "no-such-preset" in broken["error"]
    assert rows["self_mm"]["state"] == "finished"  # ran before it, kept
    assert rows["lf_dnn"]["state"] == "not run"  # not in --rows
    assert rows["lf_dnn"]["reason"] == suites.NOT_SELECTED


def test_rows_adds_a_row_to_a_suite_folder_and_keeps_the_others(adapted_suite, monkeypatch,
                                                               tmp_path):
    suite_file, suite_dir, _ = adapted_suite
    kept = {p: p.stat().st_mtime_ns for p in (suite_dir / "self_mm").rglob("*") if p.is_file()}
    _offline_hub(monkeypatch, tmp_path)
    for wrong, message in (("nope", "has no row(s) nope"),):
        refused = CliRunner().invoke(main, ["suite", "run", str(suite_file), "--resume",
                                            str(suite_dir), "--rows", wrong])
        assert refused.exit_code == 1 and message in refused.output
    result = CliRunner().invoke(main, ["suite", "run", str(suite_file), "--resume",
                                       str(suite_dir), "--rows", "lf_dnn", "--no-progress"],
                                terminal_width=400)
    assert result.exit_code == 1, result.output  # the broken row is still failed
    rows = _rows(json.loads((suite_dir / suites.SUITE_JSON).read_text()))
    assert rows["lf_dnn"]["state"] == "finished" and rows["lf_dnn"]["summary"]["MAE"]["n"] == 3
    assert rows["self_mm"]["state"] == "finished" and rows["self_mm"]["adaptations"]
    assert rows["lf_dnn-broken"]["state"] == "failed"
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # self_mm not retrained
    board = CliRunner().invoke(main, ["leaderboard", str(suite_dir), "--output-dir",
                                      str(tmp_path)], terminal_width=400)
    assert board.exit_code == 0, board.output
    # what the suite changed, under the table (lf_dnn ran its defaults: nothing to say)
    assert "self_mm: language model all-MiniLM-L6-v2 for bert-base-uncased." in board.output
    assert "self_mm: train.partial_accumulation=step instead of the preset's drop" in board.output
    assert "lf_dnn:" not in board.output
