"""MISA on real word-aligned MOSI clips: shapes of every block, loss terms, learning."""

from __future__ import annotations

import pytest
import torch

from _real_batches import real_batch
from msakit.config import ConfigError, build_config
from msakit.data import load_dataset
from msakit.models import FeatureDims, list_models
from msakit.models.misa import MISA, MISAConfig

DIMS = FeatureDims(audio=74, vision=47)  # COVAREP, FACET in the CMU-SDK word-aligned pickle


@pytest.fixture(scope="module")
def mosi(mosi_word_aligned):
    return load_dataset(mosi_word_aligned)


@pytest.fixture(scope="module")
def misa_model():
    torch.manual_seed(0)
    return MISA(MISAConfig(), DIMS)


def test_registered_with_official_defaults():
    assert "misa" in list_models()
    config = build_config("misa")
    assert config.model.loss_weights == {"task": 1.0, "cmd": 1.0, "diff": 0.3, "recon": 1.0}
    assert config.model.hidden_size == 128 and config.model.dropout == 0.5
    assert config.train.lr == 1e-4 and config.train.lm_lr == 1e-4
    assert config.train.batch_size == 64 and config.train.grad_clip_value == 1.0
    assert config.train.patience == 7 and config.train.selection_metric == "loss"


def test_config_errors_are_clear():
    with pytest.raises(ConfigError, match="loss_weights"):
        build_config("misa", ["model.loss_weights.similarity=1.0"])
    with pytest.raises(ConfigError, match="divisible"):
        build_config("misa", ["model.hidden_size=127"])


def test_needs_audio_and_vision():
    with pytest.raises(ValueError, match="no audio features"):
        MISA(MISAConfig(), FeatureDims(audio=0, vision=47))


def test_shapes_through_every_block(mosi, misa_model):
    batch = real_batch(mosi, range(6))
    misa_model.eval()
    with torch.no_grad():
        utterances = misa_model.encode(batch)
        assert utterances["text"].shape == (6, 384)       # MiniLM hidden size
        assert utterances["audio"].shape == (6, 4 * 74)   # sLSTM: 2 layers x 2 directions x D
        assert utterances["vision"].shape == (6, 4 * 47)
        parts = misa_model.representations(batch)
        for kind in ("projected", "private", "shared", "reconstructed"):
            for modality in ("text", "audio", "vision"):
                assert parts[kind][modality].shape == (6, 128), (kind, modality)
        for kind in ("private", "shared"):  # sigmoid outputs
            for vector in parts[kind].values():
                assert vector.min() >= 0 and vector.max() <= 1
        fused = misa_model.fuse(parts["private"], parts["shared"])
        assert fused.shape == (6, 6 * 128)
        output = misa_model(batch)
    assert output.prediction.shape == (6,)
    assert set(output.losses) == {"task", "cmd", "diff", "recon"}
    for name, value in output.losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    assert output.losses["task"].item() == pytest.approx(
        torch.mean((output.prediction - batch["labels"]) ** 2).item(), rel=1e-5
    )


def test_no_losses_without_labels(mosi, misa_model):
    batch = real_batch(mosi, range(2))
    del batch["labels"]
    misa_model.eval()
    with torch.no_grad():
        assert misa_model(batch).losses == {}


def test_padding_does_not_change_the_prediction(mosi, misa_model):
    misa_model.eval()
    with torch.no_grad():
        tight = misa_model(real_batch(mosi, range(5))).prediction
        padded = misa_model(real_batch(mosi, range(5), extra_padding=7)).prediction
    assert torch.allclose(tight, padded, atol=1e-5)


def test_batch_of_one_trains_without_nan(mosi, misa_model):
    misa_model.train()
    misa_model.zero_grad()
    output = misa_model(real_batch(mosi, range(1)))
    total = sum(misa_model.config.loss_weights[k] * v for k, v in output.losses.items())
    total.backward()
    for name, parameter in misa_model.named_parameters():
        if parameter.grad is not None:
            assert torch.isfinite(parameter.grad).all(), name
    misa_model.zero_grad()
    misa_model.eval()


def test_language_model_is_found_by_the_trainer(misa_model):
    assert misa_model.language_model_prefixes() == ("text_encoder.",)


@pytest.mark.slow
def test_optimiser_steps_reduce_the_loss_on_a_real_batch(mosi):
    torch.manual_seed(0)
    # A frozen LM keeps this cheap on CPU; everything MISA adds on top is trained.
    config = build_config("misa", ["model.dropout=0.0", "model.freeze_language_model=true"]).model
    model = MISA(config, DIMS)
    batch = real_batch(mosi, range(8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def total_loss():
        output = model(batch)
        return sum(config.loss_weights[k] * v for k, v in output.losses.items()), output

    model.eval()
    with torch.no_grad():
        start, start_output = total_loss()
    model.train()
    for _ in range(15):
        optimizer.zero_grad()
        loss, _ = total_loss()
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    with torch.no_grad():
        end, end_output = total_loss()
    assert end.item() < 0.5 * start.item()
    assert end_output.losses["task"].item() < 0.5 * start_output.losses["task"].item()


def test_freeze_lm_layers_freezes_only_the_first_layers():
    model = MISA(MISAConfig(freeze_lm_layers=4), DIMS)  # MiniLM has 6 layers
    layers = model.text_encoder.transformer_layers()
    assert not any(p.requires_grad for layer in layers[:4] for p in layer.parameters())
    assert all(p.requires_grad for layer in layers[4:] for p in layer.parameters())
    assert all(p.requires_grad for p in model.text_encoder.model.embeddings.parameters())
    with pytest.raises(ValueError, match="cannot freeze 7 layers"):
        MISA(MISAConfig(freeze_lm_layers=7), DIMS)


def test_recurrent_encoders_read_one_step_per_word(mosi, misa_model):
    batch = real_batch(mosi, range(4))
    misa_model.eval()
    with torch.no_grad():
        utterances = misa_model.encode(batch)
        words = batch["word_lengths"]
        for b in range(4):
            clip = batch["word_audio"][b : b + 1, : words[b]]
            alone = misa_model.audio_encoder(clip, words[b : b + 1])
            torch.testing.assert_close(utterances["audio"][b : b + 1], alone)
        # the sub-word-expanded copy (zero rows for [CLS]/[SEP]) is not what the LSTMs read
        expanded = misa_model.audio_encoder(batch["audio"], batch["audio_lengths"])
        assert (expanded - utterances["audio"]).abs().max() > 1e-3
