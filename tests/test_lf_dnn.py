"""LF-DNN on real word-aligned MOSI clips, with all modalities and text only."""

from __future__ import annotations

import pytest
import torch
from _real_batches import real_batch

from msakit.config import ConfigError, build_config
from msakit.data import load_dataset
from msakit.models import FeatureDims, list_models
from msakit.models.lf_dnn import LFDNN, LFDNNConfig

DIMS = FeatureDims(audio=74, vision=47)


@pytest.fixture(scope="module")
def mosi(mosi_word_aligned):
    return load_dataset(mosi_word_aligned)


@pytest.fixture(scope="module")
def lf_dnn_model():
    torch.manual_seed(0)
    return LFDNN(LFDNNConfig(), DIMS)


def test_registered_with_mmsa_defaults():
    assert "lf_dnn" in list_models()
    config = build_config("lf_dnn")
    assert config.model.modalities == ["text", "audio", "vision"]
    assert (config.model.text_hidden, config.model.audio_hidden, config.model.vision_hidden) == (
        128, 16, 128)
    assert config.model.loss == "l1"
    assert config.train.lr == 1e-3 and config.train.weight_decay == 0.01


def test_text_only_override_and_validation():
    config = build_config("lf_dnn", ["model.modalities=[text]"])
    assert config.model.modalities == ["text"]
    # The order given does not matter; it is normalised to text, audio, vision.
    assert build_config("lf_dnn", ["model.modalities=[vision, text]"]).model.modalities == [
        "text", "vision"]
    with pytest.raises(ConfigError, match="at least one"):
        build_config("lf_dnn", ["model.modalities=[]"])
    with pytest.raises(ConfigError, match="duplicates"):
        build_config("lf_dnn", ["model.modalities=[text, text]"])


def test_missing_features_for_a_requested_modality_is_an_error():
    with pytest.raises(ValueError, match=r"model.modalities=\[text,vision\]"):
        LFDNN(LFDNNConfig(), FeatureDims(audio=0, vision=47))


def test_all_modalities_shapes_and_loss(mosi, lf_dnn_model):
    model = lf_dnn_model.eval()
    batch = real_batch(mosi, range(6))
    with torch.no_grad():
        features = model.unimodal_features(batch)
        output = model(batch)
    assert features["text"].shape == (6, 256)
    assert features["audio"].shape == (6, 16)
    assert features["vision"].shape == (6, 128)
    assert model.fused_dim == 256 + 16 + 128
    assert output.prediction.shape == (6,)
    assert set(output.losses) == {"task"}
    assert output.losses["task"].item() == pytest.approx(
        (output.prediction - batch["labels"]).abs().mean().item(), rel=1e-5
    )


def test_padding_does_not_change_the_prediction(mosi, lf_dnn_model):
    model = lf_dnn_model.eval()
    with torch.no_grad():
        tight = model(real_batch(mosi, range(5))).prediction
        padded = model(real_batch(mosi, range(5), extra_padding=4)).prediction
    assert torch.allclose(tight, padded, atol=1e-5)


def test_batch_of_one_trains(mosi, lf_dnn_model):
    model = lf_dnn_model.train()
    model.zero_grad()
    running_mean = model.audio_subnet.norm.running_mean.clone()
    output = model(real_batch(mosi, range(1)))
    output.losses["task"].backward()
    assert torch.isfinite(output.prediction).all()
    # One sample is normalised with the running statistics, which it does not update.
    assert torch.equal(model.audio_subnet.norm.running_mean, running_mean)
    model.zero_grad()
    model.eval()


@pytest.mark.slow
def test_text_only_needs_no_audio_or_vision_and_learns(mosi):
    torch.manual_seed(0)
    config = build_config(
        "lf_dnn", ["model.modalities=[text]", "model.text_dropout=0.0",
                   "model.post_fusion_dropout=0.0",
                   "model.freeze_language_model=true"]
    ).model
    model = LFDNN(config, FeatureDims(audio=0, vision=0))
    assert not hasattr(model, "audio_subnet") and not hasattr(model, "vision_subnet")
    batch = real_batch(mosi, range(8), modalities=("text",))
    # Remove every audio/vision key: the text-only model must not read them.
    batch = {k: v for k, v in batch.items() if not k.startswith(("audio", "vision"))}
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.eval()
    with torch.no_grad():
        start = model(batch).losses["task"].item()
    model.train()
    for _ in range(15):
        optimizer.zero_grad()
        model(batch).losses["task"].backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        end = model(batch).losses["task"].item()
    assert end < 0.5 * start
