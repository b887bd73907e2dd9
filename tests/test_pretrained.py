"""The pretrained model shipped in the package: small, documented, and it predicts real MOSI
clips (with their transcripts) and plain text with no run folder and no training."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors import safe_open

import msakit
from msakit.cli import main
from msakit.pretrained import default_model_path

WAV = "03bSnISJMiM_1.wav"
MP4 = "Oz06ZWiO20M_6.mp4"
WAV_TEXT = "anyhow it was really good"  # label 2.4
MP4_TEXT = ("and sucker punch is a failer but like a really ambitious weird the interesting "
            "idiosyncratic failure")  # label -0.8


def _invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_shipped_model_is_small_and_documented():
    folder = default_model_path()
    weights = folder / "model.safetensors"
    assert weights.stat().st_size <= 5 * 1024 * 1024
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total <= 5 * 1024 * 1024
    with safe_open(str(weights), "pt") as handle:
        names = list(handle.keys())
    assert any("lora_" in n for n in names)  # LoRA adapters, not the 22.7 M frozen MiniLM
    assert not any("lora" not in n and ".base_layer." in n for n in names)
    spec = json.loads((folder / "feature_spec.json").read_text())
    assert spec["modalities"] == ["text"] and spec["extractor"] is None
    card = (folder / "README.md").read_text()
    metrics = json.loads((folder / "metrics.json").read_text())
    members = metrics["members"]
    assert len(members) == len({m["seed"] for m in members}) >= 1  # one per seed
    assert all(m["partition"] == "standard" for m in members)
    assert metrics["provenance"]["partitions"]["standard"] == {"train": 1281, "valid": 229,
                                                               "test": 685}
    summary = metrics["summary"]
    assert f"{summary['Non0_acc_2']['mean']:.4f}" in card and f"{summary['MAE']['mean']:.4f}" in card
    assert "**the transcript only**" in card and "tools/train_pretrained.py" in card
    for member in members:
        assert 0.7 < member["test"]["Non0_acc_2"] < 0.9  # a real text model on MOSI


@pytest.mark.slow
def test_shipped_model_predicts_real_clips(mosi_raw_dir):
    result = _invoke(["predict", str(mosi_raw_dir / WAV), str(mosi_raw_dir / MP4),
                      "--text", WAV_TEXT, "--text", MP4_TEXT, "--json"])
    assert result.exit_code == 0, result.output
    good, mixed = json.loads(result.output)
    members = len(json.loads((default_model_path() / "metrics.json").read_text())["members"])
    assert good["clip"].endswith(WAV) and mixed["clip"].endswith(MP4)
    assert good["score"] > 1.0 and good["polarity"] == "positive"  # label +2.4
    assert good["class7"] == int(np.clip(np.round(good["score"]), -3, 3))
    assert good["score"] > mixed["score"]  # label -0.8
    for answer in (good, mixed):
        assert answer["modalities"] == ["text"] and answer["low_quality"] is False
        assert answer["text_source"] == "given" and answer["checkpoints"] == members
        assert -3.5 < answer["score"] < 3.5 and answer["info"]["duration_s"] > 1
        assert any("text-only model" in w for w in answer["warnings"])


def test_predict_text_without_run_or_media():
    result = _invoke(["predict", "--text", WAV_TEXT, "--text", "it was boring and way too long",
                      "--json"])
    assert result.exit_code == 0, result.output
    good, bad = json.loads(result.output)
    assert good["clip"] is None and good["text"] == WAV_TEXT
    assert good["score"] > 0.5 > -0.5 > bad["score"]
    python = msakit.from_pretrained().predict(texts=[WAV_TEXT])
    assert python[0].score == good["score"]
    human = _invoke(["predict", "--text", WAV_TEXT])
    assert human.exit_code == 0 and "polarity positive" in human.output


def test_predict_needs_input_and_refuses_bad_text():
    nothing = _invoke(["predict"])
    assert nothing.exit_code != 0 and "nothing to predict" in nothing.output
    empty = _invoke(["predict", "--text", "  "])
    assert empty.exit_code != 0 and "empty" in empty.output


def _mosi_test_rows(mosi_label_dir):
    import csv

    with (mosi_label_dir / "label.csv").open(newline="") as handle:
        return [r for r in csv.DictReader(handle) if r["mode"] == "test"]


@pytest.mark.slow
def test_the_cards_protocol_figures_are_what_predict_gives(mosi_label_dir, tmp_path):
    """The shipped card's test figures by protocol (n = 685) are reproduced as a user gets
    them: ``msakit predict --texts`` on a CSV of MOSI's test transcripts (neighbours read when
    the model reads context) and the Python API on each transcript alone."""
    import csv

    from msakit.metrics import compute_metrics

    folder = default_model_path()
    metrics = json.loads((folder / "metrics.json").read_text())
    card = (folder / "README.md").read_text()
    evaluations = {e["protocol"]: e for e in metrics["evaluations"]}
    assert "utterance alone" in evaluations and "human annotators" in evaluations
    assert "## Test figures by protocol" in card
    for entry in evaluations.values():
        assert entry["protocol"] in card and entry["n"] == 685
    context = json.loads((folder / "config.json").read_text())["model"].get("text_context", "none")
    mode = context["mode"] if isinstance(context, dict) else str(context)

    rows = _mosi_test_rows(mosi_label_dir)
    assert len(rows) == 685
    transcripts = tmp_path / "mosi_test.csv"
    with transcripts.open("w", newline="") as handle:  # as a user writes it: no labels
        writer = csv.DictWriter(handle, fieldnames=["video_id", "clip_id", "text"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("video_id", "clip_id", "text")} for r in rows)
    labels = {(r["video_id"], r["clip_id"]): float(r["label"]) for r in rows}

    def assert_reproduces(scores: dict, expected: dict):
        keys = list(labels)
        got = compute_metrics(np.array([scores[k] for k in keys]),
                              np.array([labels[k] for k in keys]))
        for name in ("Non0_acc_2", "Has0_acc_2", "Mult_acc_7"):  # one clip may flip
            assert abs(got[name] - expected[name]) <= 1.5 / 685, (name, got, expected)
        for name in ("MAE", "Corr"):
            assert got[name] == pytest.approx(expected[name], rel=1e-3), (name, got)

    if mode != "none":
        scores_csv = tmp_path / "scores.csv"
        result = _invoke(["predict", "--texts", str(transcripts), "--out", str(scores_csv)])
        assert result.exit_code == 0, result.output
        with scores_csv.open(newline="") as handle:
            answered = list(csv.DictReader(handle))
        assert all(r["context"] != "none" for r in answered)
        with_context = next(e for name, e in evaluations.items()
                            if name.startswith("with context"))
        assert_reproduces({(r["video_id"], r["clip_id"]): float(r["score"])
                           for r in answered}, with_context["metrics"])
    model = msakit.from_pretrained("default")
    alone = model([r["text"] for r in rows])
    assert_reproduces({(r["video_id"], r["clip_id"]): s for r, s in zip(rows, alone)},
                      evaluations["utterance alone"]["metrics"])
