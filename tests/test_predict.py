"""``msakit predict`` end to end: extract -> train (tiny) -> predict on the two real MOSI clips."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

pytest.importorskip("av", reason="extraction needs the [extract] extra (PyAV)")
pytest.importorskip("mediapipe", reason="extraction needs the [extract] extra (mediapipe)")

from msakit.cli import main  # noqa: E402
from msakit.config import ExperimentConfig, ModelConfig  # noqa: E402
from msakit.models import ModelOutput, MSAModel  # noqa: E402
from msakit.predict import (  # noqa: E402
    RunIncompatibleError,
    load_trained_run,
    predict_clips,
    seven_class,
)

WAV = "03bSnISJMiM_1.wav"
MP4 = "Oz06ZWiO20M_6.mp4"
WAV_TEXT = "anyhow it was really good"
MP4_TEXT = ("and sucker punch is a failer but like a really ambitious weird the interesting "
            "idiosyncratic failure")


def _invoke(args):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, mosi_raw_dir):
    """A 6-clip folder built from the two real clips (3 copies each), extracted at 5 fps."""
    root = tmp_path_factory.mktemp("predict")
    clips = root / "clips"
    clips.mkdir()
    rows = ["video_id,clip_id,text,label,mode"]
    for copy, mode in zip((1, 2, 3), ("train", "valid", "test")):
        shutil.copy(mosi_raw_dir / WAV, clips / f"pos_{copy}.wav")
        shutil.copy(mosi_raw_dir / MP4, clips / f"neg_{copy}.mp4")
        rows += [f"pos,{copy},{WAV_TEXT},2.4,{mode}", f"neg,{copy},{MP4_TEXT},-0.8,{mode}"]
    (clips / "label.csv").write_text("\n".join(rows) + "\n")
    output = root / "features.pkl"
    result = _invoke(["extract", str(clips), "-o", str(output), "--set", "vision.fps=5",
                      "--workers", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "train 2, valid 2, test 2 clips" in result.output
    return root, output


@pytest.fixture(scope="module")
def trained_run(extracted):
    root, features = extracted
    result = _invoke(["train", "lf_dnn", "--data", str(features), "--epochs", "2",
                      "--output-dir", str(root / "runs"), "--set", "run.name=tiny",
                      "--set", "train.batch_size=2", "--no-progress",
                      # the fixture's splits are copies of the same two clips, on purpose
                      "--set", "data.allow_overlap=true"])
    assert result.exit_code == 0, result.output
    return root / "runs" / "tiny"


@pytest.mark.slow
def test_extract_train_predict_end_to_end(trained_run, mosi_raw_dir):
    result = _invoke(["predict", str(mosi_raw_dir / WAV), str(mosi_raw_dir / MP4),
                      "--run", str(trained_run), "--text", WAV_TEXT, "--text", MP4_TEXT,
                      "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("["):])
    assert [o["clip"].rsplit("/", 1)[-1] for o in out] == [WAV, MP4]
    for o in out:
        assert np.isfinite(o["score"]) and o["checkpoints"] == 1
        assert o["polarity"] == ("positive" if o["score"] > 0 else "negative"
                                 if o["score"] < 0 else "neutral")
        assert o["class7"] == int(np.clip(np.round(o["score"]), -3, 3))
        assert o["text_source"] == "given"
    # the run's extractor config (vision.fps=5) is what predict used
    assert out[1]["info"]["vision_frames"] == 38 and out[1]["info"]["vision_fps"] == 5.0
    assert out[1]["info"]["face_frames"] >= 34
    assert out[0]["info"]["vision_frames"] == 0 and any("audio-only" in w for w in out[0][
        "warnings"])

    # the same clips through the Python API give the same numbers
    api = predict_clips([mosi_raw_dir / MP4], trained_run, [MP4_TEXT])
    assert api[0].score == pytest.approx(out[1]["score"], abs=1e-5)

    # human-readable output
    result = _invoke(["predict", str(mosi_raw_dir / MP4), "--run", str(trained_run),
                      "--text", MP4_TEXT])
    assert result.exit_code == 0 and "polarity" in result.output and "7-class" in result.output


def _fake_run(folder, extractor, dims=None):
    """A run folder as `msakit train` writes it, without training (for refusals)."""
    from msakit.config import build_config

    (folder / "seed1" / "standard").mkdir(parents=True)
    build_config("lf_dnn").save(folder / "config.yaml")
    (folder / "data.json").write_text(json.dumps({
        "source": "/data/mosi/aligned_50.pkl", "dataset": "mosi", "word_aligned": False,
        "feature_dims": dims or {"audio": 5, "vision": 20}, "extractor": extractor}))
    (folder / "seed1" / "standard" / "best.safetensors").write_bytes(b"")
    return folder


def test_run_on_mmsa_features_is_refused(tmp_path, mosi_raw_dir):
    run = _fake_run(tmp_path / "run", extractor=None)
    with pytest.raises(RunIncompatibleError, match="not computed by `msakit extract`"):
        load_trained_run(run, require_clip_features=True)
    assert load_trained_run(run).serves == "features"  # precomputed feature files only
    result = CliRunner().invoke(main, ["predict", str(mosi_raw_dir / WAV), "--run", str(run),
                                       "--text", WAV_TEXT])
    assert result.exit_code != 0
    assert "aligned_50.pkl" in result.output and "msakit extract FOLDER" in result.output


def test_run_from_another_extractor_is_refused(tmp_path):
    run = _fake_run(tmp_path / "run", extractor={"tool": "MMSA-FET", "config": {}})
    with pytest.raises(RunIncompatibleError, match="'MMSA-FET'"):
        load_trained_run(run)
    other = _fake_run(tmp_path / "other", extractor={
        "tool": "msakit.extract", "config": {"layout_version": 99}})
    with pytest.raises(RunIncompatibleError, match="layout_version"):
        load_trained_run(other)


def test_not_a_run_folder(tmp_path):
    with pytest.raises(RunIncompatibleError, match="no trained checkpoint"):
        load_trained_run(tmp_path)


def test_one_text_per_clip(tmp_path, mosi_raw_dir):
    run = _fake_run(tmp_path / "run", extractor=None)
    result = CliRunner().invoke(main, ["predict", str(mosi_raw_dir / WAV), str(mosi_raw_dir / MP4),
                                       "--run", str(run), "--text", WAV_TEXT])
    assert result.exit_code != 0 and "1 --text for 2 clip(s)" in result.output


def test_seven_class_scale():
    assert seven_class(2.6, (-3.0, 3.0)) == 3 and seven_class(-0.4, (-3.0, 3.0)) == 0
    assert seven_class(-1.5001, (-3.0, 3.0)) == -2 and seven_class(9.0, (-3.0, 3.0)) == 3
    assert seven_class(0.5, (-1.0, 1.0)) == 2  # SIMS-like labels in [-1, 1]


# -- per-modality contributions ---------------------------------------------------------------

class GateProbeConfig(ModelConfig):
    name: str = "extract_test_gate_probe"


class GateProbe(MSAModel):
    """A small gated late-fusion model exposing its gates and unimodal heads as extras."""

    name = "extract_test_gate_probe"
    config_class = GateProbeConfig

    def __init__(self, config, dims):
        super().__init__(config, dims)
        self.audio_head = nn.Linear(dims.audio, 1)
        self.vision_head = nn.Linear(dims.vision, 1)
        self.gate = nn.Linear(dims.audio + dims.vision, 2)

    def forward(self, batch):
        def pooled(key):
            mask = batch[f"{key}_mask"].unsqueeze(-1).float()
            return (batch[key] * mask).sum(1) / mask.sum(1)

        audio, vision = pooled("audio"), pooled("vision")
        heads = torch.cat([self.audio_head(audio), self.vision_head(vision)], dim=1)
        gate = torch.softmax(self.gate(torch.cat([audio, vision], dim=1)), dim=1)
        prediction = (gate * heads).sum(1)
        return ModelOutput(prediction=prediction,
                           extras={"gate_audio_vision": gate, "unimodal_audio": heads[:, 0],
                                   "unimodal_vision": heads[:, 1]})


def test_contributions_come_from_model_extras(extracted, tmp_path, monkeypatch, mosi_raw_dir):
    import msakit.models as registry
    from msakit.data import load_dataset

    registry.list_models()  # discover the real models before adding the probe
    monkeypatch.setitem(registry._REGISTRY, GateProbe.name, GateProbe)
    _, features = extracted
    dataset = load_dataset(features, allow_overlap=True)  # the fixture repeats one clip
    run = tmp_path / "run"
    run.mkdir()
    ExperimentConfig(model=GateProbeConfig(loss_weights={"task": 1.0})).save(run / "config.yaml")
    (run / "data.json").write_text(json.dumps({
        "source": str(features), "dataset": dataset.name, "word_aligned": False,
        "feature_dims": dataset.feature_dims, "extractor": dataset.extractor}))
    torch.manual_seed(0)
    from msakit.models import FeatureDims

    model = GateProbe(GateProbeConfig(), FeatureDims(**dataset.feature_dims))
    from msakit.runfolder import save_best_state

    save_best_state(run, model.checkpoint_state_dict(), {"epoch": 1})

    (prediction,) = predict_clips([mosi_raw_dir / MP4], run, [MP4_TEXT])
    gate = prediction.contributions["gate_audio_vision"]
    assert len(gate) == 2 and sum(gate) == pytest.approx(1.0, abs=1e-5)
    heads = [prediction.contributions["unimodal_audio"],
             prediction.contributions["unimodal_vision"]]
    assert prediction.score == pytest.approx(float(np.dot(gate, heads)), abs=1e-4)


def test_a_model_configured_for_text_alone_needs_no_clip_features(tmp_path):
    """``model.modalities=[text]`` on MMSA features: a text-only model, whatever the data had."""
    from msakit.config import build_config

    run = _fake_run(tmp_path / "run", extractor=None)
    build_config("lf_dnn", ["model.modalities=[text]"]).save(run / "config.yaml")
    loaded = load_trained_run(run)
    assert loaded.text_only and loaded.extractor is None
    assert loaded.feature_dims == {"audio": 0, "vision": 0}
