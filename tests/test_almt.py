"""ALMT: structure of the official model, the language-guided hyper-modality update, masking."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from msakit.config import build_config
from msakit.models import FeatureDims, create_model, list_models
from msakit.models.almt import HyperModalityLayer
from msakit.profiling import SyntheticShape, synthetic_batch

SMALL = ["model.hidden_size=16", "model.projection_heads=2", "model.attention_head_size=8",
         "model.text_encoder_heads=2", "model.hyper_heads=2", "model.hyper_head_size=8",
         "model.fusion_heads=2", "model.token_length=4", "model.projection_mlp_size=16",
         "model.text_encoder_mlp_size=16", "model.fusion_mlp_size=16"]
SHAPE = SyntheticShape(batch_size=3, text_len=12, audio_len=9, vision_len=7, audio_dim=5,
                       vision_dim=20)
DIMS = FeatureDims(audio=5, vision=20)
VOCAB = 30522


def build(overrides=(), seed=0):
    torch.manual_seed(seed)
    return create_model(build_config("almt", SMALL + list(overrides)).model, DIMS)


def test_official_defaults_and_structure():
    config = build_config("almt")
    m = config.model
    assert (m.hidden_size, m.token_length, m.hyper_layers, m.fusion_layers) == (128, 8, 3, 2)
    assert (m.hyper_heads, m.hyper_head_size, m.attention_head_size) == (8, 16, 64)
    assert config.train.optimizer == "adamw" and config.train.lr == 1e-4
    assert config.model.loss_weights == {"task": 1.0}
    model = create_model(m, DIMS)
    assert len(model.language_layers) == 2 and len(model.hyper_layers) == 3
    assert torch.equal(model.hyper_init, torch.ones(1, 8, 128))
    assert torch.equal(model.project_audio.tokens, torch.zeros(1, 8, 128))
    assert model.project_vision.positions.shape == (1, 500 + 8, 128)


def test_forward_contract():
    assert "almt" in list_models()
    model = build()
    batch = synthetic_batch(SHAPE, VOCAB)
    output = model(batch)
    assert output.prediction.shape == (3,)
    assert torch.isclose(output.losses["task"], F.mse_loss(output.prediction, batch["labels"]))
    assert output.extras["hyper_modality"].shape == (3, 4, 16)
    output.losses["task"].backward()
    assert model.hyper_init.grad is not None
    assert model.project_vision.project.weight.grad is not None


def test_hyper_modality_layer_matches_hand_computation():
    torch.manual_seed(0)
    config = build_config("almt", SMALL + ["model.hyper_heads=1", "model.hyper_head_size=16"])
    layer = HyperModalityLayer(config.model)
    assert isinstance(layer.to_out, torch.nn.Identity)  # one head of full width: no W_o
    text, audio, vision, hyper = (torch.randn(2, 4, 16) for _ in range(4))
    out = layer(text, audio, vision, hyper)
    ln = lambda x: F.layer_norm(x, (16,))  # noqa: E731 - fresh LayerNorms are the identity map
    q = ln(text) @ layer.to_query.weight.T

    def attend(source, key, value):
        k, v = ln(source) @ key.weight.T, ln(source) @ value.weight.T
        return torch.softmax(q @ k.transpose(1, 2) / 16 ** 0.5, dim=-1) @ v

    expected = ln(hyper) + attend(audio, layer.to_key_audio, layer.to_value_audio) + \
        attend(vision, layer.to_key_vision, layer.to_value_vision)
    assert torch.allclose(out, expected, atol=1e-5)
    # text is the query: the same audio/vision with another text moves the hyper-modality
    assert not torch.allclose(layer(torch.randn(2, 4, 16), audio, vision, hyper), out)


def test_padding_is_masked_unless_official_behaviour_asked():
    batch = synthetic_batch(SHAPE, VOCAB)
    padded = dict(batch)
    padded["vision"] = torch.cat([batch["vision"], torch.randn(3, 3, 20) * 50], 1)
    padded["vision_mask"] = torch.cat([batch["vision_mask"], torch.zeros(3, 3, dtype=torch.bool)], 1)
    model = build().eval()
    with torch.no_grad():
        assert torch.allclose(model(batch).prediction, model(padded).prediction, atol=1e-5)
    official = build(["model.mask_padding=false"]).eval()
    with torch.no_grad():
        assert not torch.allclose(official(batch).prediction, official(padded).prediction)


def test_errors():
    model = build(["model.max_audio_length=8"])
    with pytest.raises(ValueError, match="max_audio_length"):
        model(synthetic_batch(SHAPE, VOCAB))
    with pytest.raises(ValueError, match="audio and vision"):
        create_model(build_config("almt", SMALL).model, FeatureDims(audio=5, vision=0))
