"""SAGE-Net: the gate equations, the model's contract, the single-layer claim."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from msakit.config import ConfigError, build_config
from msakit.models import FeatureDims, create_model, list_models
from msakit.modules.gates import CrossGatedSum
from msakit.profiling import SyntheticShape, synthetic_batch

SMALL = ["model.hidden_size=16", "model.attention_heads=2", "model.feedforward_size=32",
         "model.head_hidden_size=8"]
SHAPE = SyntheticShape(batch_size=3, text_len=12, audio_len=7, vision_len=5, audio_dim=6,
                       vision_dim=4)
DIMS = FeatureDims(audio=SHAPE.audio_dim, vision=SHAPE.vision_dim)
VOCAB = 30522  # all-MiniLM-L6-v2 (BERT uncased vocabulary)


def build(overrides=(), seed=0):
    torch.manual_seed(seed)
    config = build_config("sagenet", SMALL + list(overrides))
    return create_model(config.model, DIMS)


def test_gate_equations_match_hand_computation():
    fusion = CrossGatedSum(2)
    with torch.no_grad():
        # G_a = σ(W_a a + b_a) with W_a = I, b_a = 0
        fusion.gate_from_second.weight.copy_(torch.eye(2))
        fusion.gate_from_second.bias.zero_()
        # G_t = σ(W_t t + b_t) with W_t = 0, b_t = (0, -ln 3)
        fusion.gate_from_first.weight.zero_()
        fusion.gate_from_first.bias.copy_(torch.tensor([0.0, -math.log(3.0)]))
    t = torch.tensor([[2.0, 4.0]])
    a = torch.tensor([[0.0, math.log(3.0)]])
    out = fusion(t, a)
    # σ(0) = 1/2, σ(ln 3) = 3/4, σ(-ln 3) = 1/4
    assert torch.allclose(out.gate_on_first, torch.tensor([[0.5, 0.75]]))
    assert torch.allclose(out.gate_on_second, torch.tensor([[0.5, 0.25]]))
    # F = G_a ⊙ t + G_t ⊙ a = (1 + 0, 3 + ln3/4)
    assert torch.allclose(out.fused, torch.tensor([[1.0, 3.0 + math.log(3.0) / 4]]))


def test_gate_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="same shape"):
        CrossGatedSum(4)(torch.zeros(2, 4), torch.zeros(2, 3))


def test_registered_and_forward_contract():
    assert "sagenet" in list_models()
    model = build()
    batch = synthetic_batch(SHAPE, VOCAB)
    output = model(batch)
    assert output.prediction.shape == (3,)
    assert set(output.losses) == {"task"}
    assert torch.isclose(output.losses["task"], (output.prediction - batch["labels"]).abs().mean())
    assert set(output.extras) == {"gate_text_by_audio", "gate_audio_by_text",
                                  "gate_text_by_vision", "gate_vision_by_text"}
    for gate in output.extras.values():
        assert gate.shape == (3, 16)
        assert bool(((gate > 0) & (gate < 1)).all())
    output.losses["task"].backward()
    assert model.fuse_audio.gate_from_second.weight.grad is not None
    assert model.text_encoder.model.embeddings.word_embeddings.weight.grad is not None
    batch.pop("labels")
    assert model(batch).losses == {}


def test_text_audio_only_is_the_equations_as_written():
    model = build(["model.modalities=[text,audio]"])
    assert not hasattr(model, "vision_branch") and not hasattr(model, "fuse_vision")
    batch = synthetic_batch(SHAPE, VOCAB)
    model.eval()
    with torch.no_grad():
        output = model(batch)
        # F = G_a ⊙ t + G_t ⊙ a, recomputed from the branches
        text = model.text_branch(
            model.text_encoder(batch["input_ids"], batch["attention_mask"]),
            batch["attention_mask"].bool())
        audio = model.audio_branch(batch["audio"], batch["audio_mask"])
        fused = output.extras["gate_text_by_audio"] * text + \
            output.extras["gate_audio_by_text"] * audio
        assert torch.allclose(model.head(fused).squeeze(-1), output.prediction, atol=1e-5)
    assert set(output.extras) == {"gate_text_by_audio", "gate_audio_by_text"}
    # vision input is ignored entirely
    batch["vision"] = torch.randn_like(batch["vision"])
    with torch.no_grad():
        assert torch.allclose(model(batch).prediction, output.prediction)


def test_padding_is_masked():
    model = build()
    model.eval()
    batch = synthetic_batch(SHAPE, VOCAB)
    padded = dict(batch)
    extra = torch.randn(3, 4, SHAPE.audio_dim) * 100
    padded["audio"] = torch.cat([batch["audio"], extra], dim=1)
    padded["audio_mask"] = torch.cat([batch["audio_mask"], torch.zeros(3, 4, dtype=torch.bool)], 1)
    with torch.no_grad():
        assert torch.allclose(model(batch).prediction, model(padded).prediction, atol=1e-5)


def test_config_errors():
    with pytest.raises(ConfigError, match="text' and 'audio"):
        build_config("sagenet", ["model.modalities=[text,vision]"])
    with pytest.raises(ConfigError, match="divisible"):
        build_config("sagenet", ["model.hidden_size=10", "model.attention_heads=4"])
    with pytest.raises(ConfigError, match="(?i)extra"):
        build_config("sagenet", ["model.layers=2"])
    config = build_config("sagenet")
    with pytest.raises(ValueError, match="audio"):
        create_model(config.model, FeatureDims(audio=0, vision=4))
    with pytest.raises(ValueError, match="modalities=\\[text,audio\\]"):
        create_model(config.model, FeatureDims(audio=4, vision=0))


def _encoder_flops(model, batch) -> dict[str, int]:
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.enable_grad(), counter:
        model(batch)
    counts = counter.get_flop_counts()
    return {name: sum(counts[f"SAGENet.{name}.layers"].values())
            for name in ("text_branch", "audio_branch", "vision_branch")}


def test_l_layers_cost_l_times_the_single_layer_encoder():
    batch = synthetic_batch(SHAPE, VOCAB)
    single = _encoder_flops(build(), batch)
    triple = _encoder_flops(build(["model.encoder_layers=3"]), batch)
    for name in single:
        assert single[name] > 0
        assert triple[name] == pytest.approx(3 * single[name], rel=1e-9)
    # and the parameters of each encoder stack scale the same way
    one, three = build(), build(["model.encoder_layers=3"])
    stack = lambda m: sum(p.numel() for p in m.audio_branch.layers.parameters())  # noqa: E731
    assert stack(three) == 3 * stack(one)


def test_shipped_config_trains_with_the_posters_augmentation():
    """The poster defines SAGE-Net with its text and audio augmentation: the shipped config
    turns both families on (regression: it used to train without any)."""
    from msakit.augment import transform_from_config

    config = build_config("sagenet")
    assert config.augment.text.enabled and config.augment.audio.enabled
    assert not config.augment.vision.enabled  # the poster augments text and audio only
    assert transform_from_config(config) is not None
    off = build_config("sagenet", ["augment.text.enabled=false", "augment.audio.enabled=false"])
    assert transform_from_config(off) is None


def test_evaluation_artifacts_hold_each_clips_mean_gate():
    model = build()
    model.eval()
    with torch.no_grad():
        output = model(synthetic_batch(SHAPE, VOCAB))
    artifacts = model.evaluation_artifacts(output.extras)
    values = artifacts["gate_values"]
    assert set(values) == {"text_by_audio", "audio_by_text", "text_by_vision", "vision_by_text"}
    expected = output.extras["gate_text_by_audio"].mean(dim=1)
    assert values["text_by_audio"] == pytest.approx(expected.tolist(), abs=1e-5)
    assert artifacts["gates"]["text_by_audio"] == pytest.approx(float(expected.mean()), abs=1e-5)
