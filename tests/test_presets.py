"""Presets: the papers' settings as shipped YAML files, validated and applied in order."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from msakit import presets as presets_module
from msakit.cli import main
from msakit.config import ConfigError, build_config
from msakit.models import list_models
from msakit.presets import PresetError, list_presets, load_preset, presets_markdown

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED = list_presets()


@pytest.mark.parametrize("preset", SHIPPED, ids=lambda p: f"{p.model}/{p.name}")
def test_every_shipped_preset_builds_a_valid_config(preset):
    config = build_config(preset.model, preset=preset.name)
    assert config.run.preset == preset.name
    assert config.model.name == preset.model
    for section, values in preset.config.items():
        resolved = getattr(config, section).model_dump(mode="json")
        for key, value in values.items():
            if isinstance(value, dict):  # nested (e.g. loss_weights): every given key is applied
                assert {k: resolved[key][k] for k in value} == pytest.approx(value), (section, key)
            else:
                assert resolved[key] == pytest.approx(value) if isinstance(value, float) \
                    else resolved[key] == value, (section, key)


def test_every_registered_model_has_a_preset_naming_the_official_language_model():
    by_model = {p.model for p in SHIPPED}
    assert by_model == set(list_models())
    for preset in SHIPPED:  # the official LM, unless the paper names none (then it says so)
        assert preset.language_model or "no language model" in preset.paper.note, (
            f"{preset.model}/{preset.name} names no language model")


def test_the_presets_doc_is_the_generated_table():
    doc = (REPO_ROOT / "docs" / "presets.md").read_text()
    assert presets_markdown(SHIPPED) in doc, (
        "docs/presets.md is out of date: regenerate its table with "
        "`msakit models --presets --markdown`")


@pytest.fixture
def preset_root(tmp_path, monkeypatch):
    """A presets folder of our own for the file-format tests."""
    monkeypatch.setattr(presets_module, "_presets_root", lambda: tmp_path)

    def write(name: str, text: str, model: str = "misa") -> None:
        (tmp_path / model).mkdir(exist_ok=True)
        (tmp_path / model / f"{name}.yaml").write_text(textwrap.dedent(text))

    return write


GOOD = """
    preset:
      description: MISA on a test dataset
      source: test
      paper:
        citation: Test et al.
        metrics: {Non0_acc_2: 83.4, MAE: 0.783}
    model:
      dropout: 0.25
      loss_weights: {diff: 0.1}
    train:
      lr: 2.0e-4
      batch_size: 16
"""


def test_precedence_defaults_then_preset_then_file_then_set(preset_root):
    preset_root("toy", GOOD)
    config = build_config("misa", ["train.batch_size=8"], base={"train": {"lr": 3e-4}},
                          preset="toy")
    assert config.model.dropout == pytest.approx(0.25)                 # preset over misa.yaml
    assert config.model.loss_weights["diff"] == pytest.approx(0.1)     # nested key from preset
    assert config.model.loss_weights["cmd"] == pytest.approx(1.0)      # the rest from misa.yaml
    assert config.train.lr == pytest.approx(3e-4)                      # --config over preset
    assert config.train.batch_size == 8                                # --set over all
    assert config.run.preset == "toy"
    assert build_config("misa").run.preset is None


def test_unknown_preset_lists_the_available_ones(preset_root):
    preset_root("toy", GOOD)
    with pytest.raises(ConfigError, match=r"no preset 'mosii'; available: toy"):
        build_config("misa", preset="mosii")


@pytest.mark.parametrize("text, fragment", [
    ("model: {dropout: 0.1}\n", "missing the 'preset' block"),
    ("preset: {description: d, source: s}\nmodle: {}\n", "unknown top-level key"),
    ("preset: {description: d, source: s, paper: {citation: c, metrics: {Acc_2: 80}}}\n",
     "unknown metric 'Acc_2'"),
    ("preset: {description: d, source: s, paper: {citation: c, metrics: {MAE: high}}}\n",
     "must be a number"),
    ("preset: {description: d}\n", "preset.source"),
    ("preset: {description: d, source: s}\nmodel: {name: mult}\n", "model.name says 'mult'"),
    ("preset: [unclosed\n", "not valid YAML"),
])
def test_malformed_preset_files_are_clear_errors(preset_root, text, fragment):
    preset_root("bad", text)
    with pytest.raises(PresetError, match=fragment) as info:
        load_preset("misa", "bad")
    assert "preset misa/bad" in str(info.value)


def test_train_prints_the_papers_row_beside_the_result(preset_root, mosi_word_aligned, tmp_path):
    preset_root("toy", """
        preset:
          description: LF-DNN, text only
          source: test
          paper: {citation: Test et al., metrics: {Non0_acc_2: 83.4, MAE: 0.783}}
        model: {modalities: [text], freeze_language_model: true}
    """, model="lf_dnn")
    result = CliRunner().invoke(main, [
        "train", "lf_dnn", "--preset", "toy", "--data", str(mosi_word_aligned), "--folds", "2",
        "--epochs", "1", "--output-dir", str(tmp_path), "--no-progress",
        "--set", "train.num_threads=1",
    ])
    assert result.exit_code == 0, result.output
    assert "paper (Test et al.) vs this run" in result.output
    rows = {cells[0]: cells[1:] for line in result.output.splitlines()
            if len(cells := [c.strip() for c in line.split("│") if c.strip()]) == 4}
    assert rows["Non0_acc_2"][0] == "83.4" and rows["MAE"][0] == "0.783"
    assert "±" in rows["Non0_acc_2"][1] and rows["Non0_acc_2"][2] == "2"  # mean ± std, n = 2


def test_models_presets_lists_them_and_prints_markdown(preset_root):
    preset_root("toy", GOOD)
    runner = CliRunner()
    result = runner.invoke(main, ["models", "--presets"])
    assert result.exit_code == 0, result.output
    assert "toy" in result.output and "MISA on a test dataset" in result.output
    result = runner.invoke(main, ["models", "--presets", "--markdown"])
    assert result.exit_code == 0
    assert result.output == presets_markdown([load_preset("misa", "toy")])


def test_unavailable_language_model_offline_is_a_clear_error_naming_it(tmp_path):
    """A preset names bert-base-uncased; with no hub the error says how to pass a local copy."""
    empty = tmp_path / "empty"
    empty.mkdir()
    code = textwrap.dedent(f"""
        from msakit.lm import LanguageModelUnavailable, load_tokenizer
        for name in ("bert-base-uncased", {str(tmp_path / 'missing')!r}, {str(empty)!r}):
            try:
                load_tokenizer(name)
            except LanguageModelUnavailable as err:
                print("ERROR", err)
    """)
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
           "PYTHONPATH": str(REPO_ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=300)
    errors = [line for line in out.stdout.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 3, out.stdout + out.stderr
    assert "'bert-base-uncased'" in errors[0] and "--set model.language_model=DIR" in errors[0]
    assert f"there is no folder {tmp_path / 'missing'}" in errors[1]
    assert "holds no loadable Hugging Face model" in errors[2]
