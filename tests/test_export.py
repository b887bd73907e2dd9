"""``msakit export`` -> ``from_pretrained`` / ``predict --model``: a real (tiny) training run on
MOSI transcripts, exported to safetensors, reloaded, and giving identical predictions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import msakit
from msakit.cli import main
from msakit.predict import load_trained_run, predict_texts
from msakit.pretrained import ExportError, export_run, from_pretrained, push_to_hub

TEXTS = ["anyhow it was really good", "it was the worst movie i have ever seen",
         "the plot was okay"]


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, mosi_label_dir):
    """LRCMT (LoRA on the packaged MiniLM, text only) trained 1 epoch with 2 seeds on 40 real
    MOSI transcripts: a run folder with two members."""
    root = tmp_path_factory.mktemp("export")
    frame = pd.read_csv(mosi_label_dir / "label.csv", dtype=str, keep_default_na=False)
    parts = [frame[frame["mode"] == m].head(n) for m, n in (("train", 24), ("valid", 8),
                                                            ("test", 8))]
    folder = root / "mosi_tiny"
    folder.mkdir()
    pd.concat(parts).to_csv(folder / "label.csv", index=False)
    result = _invoke(["train", "lrcmt", "--data", str(folder), "--epochs", "1", "--seeds", "1",
                      "2", "--output-dir", str(root / "runs"), "--set", "run.name=tiny",
                      "--set", "train.batch_size=8", "--set", "train.num_threads=1",
                      "--no-progress"])
    assert result.exit_code == 0, result.output
    return root / "runs" / "tiny"


@pytest.mark.slow
def test_export_round_trip_identical_predictions(tiny_run, tmp_path):
    out = tmp_path / "exported"
    result = _invoke(["export", str(tiny_run), str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "feature_spec.json", "metrics.json", "model.safetensors"]
    for path in out.iterdir():  # nothing pickled: no file starts with a pickle protocol byte
        assert path.read_bytes()[:1] != b"\x80", path
    spec = json.loads((out / "feature_spec.json").read_text())
    assert spec["modalities"] == ["text"] and spec["feature_dims"] == {"audio": 0, "vision": 0}
    assert spec["extractor"] is None and spec["label_range"] == [-3.0, 3.0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["seed"] for m in metrics["members"]] == [1, 2]
    assert metrics["summary"]["MAE"]["n"] == 2
    card = (out / "README.md").read_text()
    assert "Modalities: **the transcript only**" in card and "| MAE |" in card
    assert f"{metrics['summary']['MAE']['mean']:.4f}" in card
    # LoRA export: adapters and head only, not the 22.7M frozen MiniLM weights
    assert (out / "model.safetensors").stat().st_size < 3_000_000

    from_run = predict_texts(TEXTS, load_trained_run(tiny_run))
    loaded = msakit.from_pretrained(out)
    from_export = loaded.predict(texts=TEXTS)
    assert loaded.members == 2
    assert [p.score for p in from_export] == [p.score for p in from_run]
    assert [p.score_std for p in from_export] == [p.score_std for p in from_run]
    assert all(p.score_std > 0 for p in from_export)  # two different members

    cli = _invoke(["predict", "--model", str(out), "--json", *sum((["--text", t] for t in TEXTS),
                                                                  [])])
    assert cli.exit_code == 0, cli.output
    scores = [o["score"] for o in json.loads(cli.output)]
    assert scores == [p.score for p in from_run]

    one = tmp_path / "one"
    export_run(tiny_run, one, checkpoint="seed2/standard")
    single = predict_texts(TEXTS, from_pretrained(one))
    direct = predict_texts(TEXTS, load_trained_run(tiny_run, "seed2/standard"))
    np.testing.assert_array_equal([p.score for p in single], [p.score for p in direct])


def _train_tiny(tiny_run, name, seed, *extra):
    data = tiny_run.parent.parent / "mosi_tiny"
    result = _invoke(["train", "lrcmt", "--data", str(data), "--epochs", "1", "--seeds",
                      str(seed), "--output-dir", str(tiny_run.parent), "--set", f"run.name={name}",
                      "--set", "train.batch_size=8", "--set", "train.num_threads=1",
                      "--no-progress", *extra])
    assert result.exit_code == 0, result.output
    return tiny_run.parent / name


@pytest.mark.slow
def test_seeds_trained_in_separate_runs_export_as_one_ensemble(tiny_run, tmp_path):
    """``msakit export RUN --with-run OTHER``: the members of runs of one experiment (a seed
    trained separately) make one ensemble, the mean of all members; a run of another
    experiment is refused, naming the setting that differs."""
    third_seed = _train_tiny(tiny_run, "tiny_seed3", 3)
    out = tmp_path / "ensemble"
    result = _invoke(["export", str(tiny_run), str(out), "--with-run", str(third_seed)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert [m["seed"] for m in metrics["members"]] == [1, 2, 3]
    assert metrics["members"][2]["trained_in"] == "tiny_seed3/seed3/standard"
    assert metrics["provenance"]["more_runs"] == [str(third_seed.resolve())]
    assert "`tiny_seed3`" in (out / "README.md").read_text()
    two = [p.score for p in predict_texts(TEXTS, load_trained_run(tiny_run))]
    one = [p.score for p in predict_texts(TEXTS, load_trained_run(third_seed))]
    merged = [p.score for p in msakit.from_pretrained(out).predict(texts=TEXTS)]
    np.testing.assert_allclose(merged, (2 * np.array(two) + np.array(one)) / 3,
                               rtol=1e-5, atol=1e-6)

    other = _train_tiny(tiny_run, "tiny_other_lr", 3, "--set", "train.lr=0.01")
    refused = CliRunner().invoke(main, ["export", str(tiny_run), str(tmp_path / "no"),
                                        "--with-run", str(other)])
    assert refused.exit_code == 1
    assert "differs from" in refused.output and "train.lr (0.01 vs " in refused.output
    assert not (tmp_path / "no").exists()


@pytest.mark.slow
def test_export_refuses_to_overwrite_and_push_fails_clearly(tiny_run, tmp_path, monkeypatch):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_run(tiny_run, out)
    assert (out / "keep.txt").read_text() == "mine"
    target = tmp_path / "fresh"
    export_run(tiny_run, target)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="could not push .* local export is complete"):
        push_to_hub(target, "someone/msakit-test")


def test_from_pretrained_refuses_non_exports(tmp_path):
    with pytest.raises(ExportError, match="no such model folder"):
        from_pretrained(tmp_path / "missing")
    (tmp_path / "config.yaml").write_text("model: {name: lf_dnn}\n")
    with pytest.raises(ExportError, match="missing model.safetensors.*use --run"):
        from_pretrained(tmp_path)
    result = _invoke(["predict", "--model", str(tmp_path), "--text", "good"])
    assert result.exit_code != 0 and "not an exported msakit model" in result.output
    assert "Traceback" not in result.output
