"""A practitioner's first hour (issue 25): the Python API of a loaded model, exports that say
what they can serve, precomputed feature files, hub ids and offline errors, a fast CLI start
and a lean base install.

The trained models are real LF-DNN runs on ``mosi-demo`` (the 229 packaged MOSI clips with
COVAREP/FACET features, which msakit cannot compute from raw clips) and the shipped model."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import msakit
from msakit import hub
from msakit.cli import main
from msakit.errors import MissingExtraError, require_extra
from msakit.lm import LanguageModelUnavailable, load_tokenizer
from msakit.predict import (
    SERVES_FEATURES,
    SERVES_TRANSCRIPTS,
    ClipPrediction,
    RunIncompatibleError,
    load_trained_run,
    predict_features,
    predict_texts,
)
from msakit.pretrained import ExportError, from_pretrained

ROOT = Path(__file__).resolve().parents[1]


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _train(root: Path, name: str, *overrides: str) -> Path:
    args = ["train", "lf_dnn", "--data", "mosi-demo", "--folds", "2", "--epochs", "1",
            "--seeds", "1", "--output-dir", str(root), "--no-progress",
            "--set", f"run.name={name}", "--set", "train.num_threads=1"]
    for override in overrides:
        args += ["--set", override]
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    return root / name


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """Two real 1-epoch LF-DNN runs on mosi-demo: all three modalities with the language model
    fine-tuned, and text only with it frozen."""
    root = tmp_path_factory.mktemp("practitioner")
    return {"full": _train(root, "full"),
            "text": _train(root, "text", "model.modalities=[text]",
                           "model.freeze_language_model=true")}


# ---------------------------------------------------------------------------------------------
# The Python API
# ---------------------------------------------------------------------------------------------

def test_loaded_model_is_callable_and_takes_one_string():
    model = msakit.from_pretrained("default")
    one = model("worst film ever")
    assert isinstance(one, float) and one < 0
    both = model(["worst film ever", "i loved every minute of it"])
    assert isinstance(both, list) and len(both) == 2 and both[1] > 0
    assert both[0] == pytest.approx(one, rel=1e-5, abs=1e-5)  # batch of 2 vs 1
    # a string is a transcript, never a media path, and never split into characters
    for prediction in (model.predict("worst film ever"),
                       model.predict(texts="worst film ever")):
        assert isinstance(prediction, ClipPrediction)
        assert prediction.text == "worst film ever" and prediction.score == one
    assert [p.score for p in model.predict(["a good film", "a bad film"])] == \
        model(["a good film", "a bad film"])
    assert [p.score for p in predict_texts("worst film ever", model)] == [one]


def test_repr_is_short_and_says_what_the_model_is():
    model = msakit.from_pretrained()
    text = repr(model)
    assert len(text) < 400, text
    summary = json.loads((model.run_dir / "metrics.json").read_text())["summary"]
    for part in ("lrcmt", "reads=text", f"serves={SERVES_TRANSCRIPTS}", "trained_on='mosi'",
                 f"Non0_acc_2={summary['Non0_acc_2']['mean']:.3f}",
                 f"MAE={summary['MAE']['mean']:.3f}", f"members={model.members}"):
        assert part in text, (part, text)


def test_hub_id_is_downloaded_with_snapshot_download(monkeypatch, tmp_path):
    import huggingface_hub

    calls = []

    def fake_snapshot(repo_id, allow_patterns=None, local_files_only=False):
        calls.append((repo_id, local_files_only))
        if local_files_only:
            raise FileNotFoundError("not cached")
        return str(msakit.pretrained.default_model_path())

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(hub, "offline_reason", lambda: None)
    monkeypatch.setattr(msakit.pretrained, "offline_reason", lambda: None)
    model = from_pretrained("someone/msakit-model")
    assert calls == [("someone/msakit-model", True), ("someone/msakit-model", False)]
    assert model("worst film ever") < 0


def test_hub_id_without_a_hub_fails_at_once_with_the_reason(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="HF_HUB_OFFLINE=1 is set"):
        from_pretrained("someone/not-cached-msakit-model")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    # port 9 (discard) on the loopback refuses at once: an unreachable hub
    monkeypatch.setattr(hub, "endpoint", lambda: "http://127.0.0.1:9")
    monkeypatch.setattr(hub, "_reachable", {})
    with pytest.raises(ExportError, match="127.0.0.1:9 is unreachable"):
        from_pretrained("someone/not-cached-msakit-model")
    with pytest.raises(ExportError, match="no such model folder"):
        from_pretrained("./missing-folder")


def test_language_model_from_an_unreachable_hub_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LanguageModelUnavailable, match="HF_HUB_OFFLINE=1 is set"):
        load_tokenizer("someone/not-cached-language-model")
    load_tokenizer("all-MiniLM-L6-v2")  # the packaged default needs no hub


# ---------------------------------------------------------------------------------------------
# Exports that tell the truth
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_text_only_run_exports_and_predicts_as_text_only(demo_runs, tmp_path):
    out = tmp_path / "text_export"
    result = _invoke(["export", str(demo_runs["text"]), str(out)])
    assert result.exit_code == 0, result.output
    assert "transcripts only" in result.output
    spec = json.loads((out / "feature_spec.json").read_text())
    assert spec["modalities"] == ["text"]
    assert spec["feature_dims"] == {"audio": 0, "vision": 0}
    assert spec["serves"] == SERVES_TRANSCRIPTS
    assert "Modalities: **the transcript only**" in (out / "README.md").read_text()
    cli = _invoke(["predict", "--model", str(out), "--text", "it was great", "--json"])
    assert cli.exit_code == 0, cli.output
    from_run = load_trained_run(demo_runs["text"]).predict(["it was great"])[0]
    assert json.loads(cli.output)[0]["score"] == from_run.score


def _demo_clip(fold_dir: Path):
    """A test clip of ``fold_dir`` with its features and the run's own prediction of it."""
    from msakit.data.readers import load_dataset

    with (fold_dir / "predictions.csv").open() as handle:
        row = next(csv.DictReader(handle))
    dataset = load_dataset("mosi-demo")
    split = next(iter(dataset.splits.values()))
    index = split.ids.index(row["id"])
    return split, index, row


@pytest.mark.slow
def test_features_model_says_so_and_scores_feature_files(demo_runs, tmp_path, mosi_raw_dir):
    run = demo_runs["full"]
    out = tmp_path / "full_export"
    result = _invoke(["export", str(run), str(out), "--checkpoint", "seed1/fold0"])
    assert result.exit_code == 0, result.output
    assert "only precomputed audio/vision features" in result.output
    spec = json.loads((out / "feature_spec.json").read_text())
    assert spec["serves"] == SERVES_FEATURES and spec["modalities"] == ["text", "audio", "vision"]
    assert "Serves: **features**" in (out / "README.md").read_text()
    model = from_pretrained(out)
    assert model.serves == SERVES_FEATURES

    # a raw clip: refused, saying what the model can take instead (no garbled self-reference)
    clip = next(mosi_raw_dir.glob("*.wav"))
    refused = _invoke(["predict", str(clip), "--model", str(out), "--text", "it was good"])
    assert refused.exit_code == 1
    assert "--features" in refused.output and "cannot compute" in refused.output
    assert f"features of {out}" not in refused.output

    # a precomputed feature file gives the run's own test prediction of that clip
    split, index, row = _demo_clip(run / "seed1" / "fold0")
    path = tmp_path / "clip.npz"
    np.savez(path, audio=split.audio[index], vision=split.vision[index],
             words=np.array(split.words[index]))
    cli = _invoke(["predict", "--model", str(out), "--features", str(path), "--json"])
    assert cli.exit_code == 0, cli.output
    score = json.loads(cli.output)[0]["score"]
    expected = float(row["prediction"])
    assert score == pytest.approx(expected, abs=1e-4 * max(1.0, abs(expected)))
    assert model(features=str(path)) == score

    # feature files are checked against the feature spec
    bad = tmp_path / "bad.npz"
    np.savez(bad, audio=split.audio[index][:, :3], vision=split.vision[index],
             words=np.array(split.words[index]))
    with pytest.raises(RunIncompatibleError, match=r"bad.npz: array 'audio' .*expected \(L, 74\)"):
        predict_features([bad], model)
    unaligned = tmp_path / "nowords.npz"
    np.savez(unaligned, audio=split.audio[index], vision=split.vision[index])
    with pytest.raises(RunIncompatibleError, match="nowords.npz: the model is word-aligned"):
        predict_features([unaligned], model)


@pytest.mark.slow
def test_serve_refuses_a_model_it_cannot_serve(demo_runs, tmp_path):
    pytest.importorskip("fastapi", reason="msakit serve needs the [serve] extra (fastapi)")
    from msakit.serve import create_app

    with pytest.raises(RunIncompatibleError, match="scores only precomputed features"):
        create_app(load_trained_run(demo_runs["full"]))
    result = _invoke(["serve", "--run", str(demo_runs["full"]), "--port", "1"])
    assert result.exit_code == 1
    assert "not serving" in result.output and "--features" in result.output


def test_healthz_says_what_the_model_serves():
    pytest.importorskip("fastapi", reason="msakit serve needs the [serve] extra (fastapi)")
    from msakit.serve import create_app

    app = create_app(from_pretrained())
    try:
        healthz = next(r.endpoint for r in app.routes if getattr(r, "path", "") == "/healthz")
        answer = healthz()
    finally:
        app.state.executor.shutdown(wait=False)
    assert answer["status"] == "ok" and answer["serves"] == SERVES_TRANSCRIPTS
    assert answer["modalities"] == ["text"]


@pytest.mark.slow
def test_fine_tuned_language_model_is_stored_as_its_changed_rows(demo_runs):
    from safetensors import safe_open

    from msakit.lm import pretrained_language_model_state

    fold = demo_runs["full"] / "seed1" / "fold0"
    with safe_open(str(fold / "best.safetensors"), "pt") as handle:
        keys = set(handle.keys())
        rows = handle.get_tensor("text_encoder.model.embeddings.word_embeddings.weight"
                                 ".changed_rows")
    assert "text_encoder.model.embeddings.word_embeddings.weight" not in keys
    vocabulary = pretrained_language_model_state("all-MiniLM-L6-v2")[
        "embeddings.word_embeddings.weight"].shape[0]
    assert 0 < rows.numel() < vocabulary // 10  # only the rows of tokens seen in training
    whole_lm = sum(v.numel() * v.element_size()
                   for v in pretrained_language_model_state("all-MiniLM-L6-v2").values())
    assert (fold / "best.safetensors").stat().st_size < 0.6 * whole_lm
    # reloaded, the weights give the run's own test predictions exactly (msakit evaluate)
    result = _invoke(["evaluate", str(demo_runs["full"])])
    assert result.exit_code == 0, result.output
    trained = json.loads((demo_runs["full"] / "metrics.json").read_text())
    evaluated = json.loads((demo_runs["full"] / "evaluation.json").read_text())
    by_run = {(r["seed"], r["partition"]): r["test"] for r in trained["runs"]}
    for entry in evaluated["runs"]:
        assert entry["test"] == by_run[(entry["seed"], entry["partition"])]


# ---------------------------------------------------------------------------------------------
# Fast start, lean install
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_do_not_import_torch(flag):
    code = ("import sys\nfrom msakit.cli import main\ntry:\n"
            f"    main([{flag!r}])\nexcept SystemExit:\n"
            "    pass\nprint('torch loaded:', 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "torch loaded: False" in result.stdout, result.stdout


def test_heavy_optional_packages_are_extras():
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(project["dependencies"])
    for heavy in ("audiomentations", "wn", "nltk", "optuna", "matplotlib", "pandas", "librosa"):
        assert f'"{heavy}' not in json.dumps(project["dependencies"]), (heavy, base)
    extras = project["optional-dependencies"]
    assert {"augment", "tune", "report", "serve", "extract", "hub"} <= set(extras)
    pulled = extras["test"][0]
    for extra in ("augment", "tune", "report", "serve", "extract", "hub"):
        assert extra in pulled, extra  # the test extra runs the whole suite


def test_missing_extra_is_a_one_line_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'msakit\[tune\]'"):
        require_extra("optuna", "tune", "msakit tune")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "pip install 'msakit[report]'" in result.output and "bug" not in result.output
