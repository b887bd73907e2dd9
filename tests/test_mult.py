"""MulT: shapes, padding invariance, aligned and unaligned batches, config."""

from __future__ import annotations

import pytest
import torch
from _msa_batches import make_batch, select

from msakit.config import ConfigError, build_config
from msakit.models import FeatureDims, create_model
from msakit.modules.crossmodal import (
    CrossModalFusion,
    TemporalConvProjection,
    fit_length,
    last_valid_step,
)

TEXTS = ["it was really good", "bad", "i did not like the ending at all"]
TINY = ["model.embed_dim=8", "model.num_heads=2", "model.num_layers=1", "model.memory_layers=1"]


def _mult(*overrides):
    torch.manual_seed(0)
    config = build_config("mult", list(TINY) + list(overrides))
    return create_model(config.model, FeatureDims(audio=5, vision=7)).eval()


def test_shipped_config_holds_official_values():
    config = build_config("mult")
    assert (config.model.embed_dim, config.model.num_heads, config.model.num_layers) == (30, 5, 5)
    assert config.model.attn_mask and config.train.lr == 1e-3 and config.train.batch_size == 24
    assert config.model.text_dropout == 0.25 and config.model.embed_dropout == 0.25
    assert config.train.grad_clip_norm == 0.8 and config.model.loss_weights == {"task": 1.0}


def test_unknown_loss_weight_is_an_error():
    with pytest.raises(ConfigError, match="unknown"):
        build_config("mult", ["model.loss_weights.cmd=1.0"])


@pytest.mark.parametrize("aligned", [True, False])
def test_forward_shapes_and_loss(aligned):
    model = _mult()
    batch = make_batch(TEXTS, [12, 3, 20], [9, 4, 30], labels=[1.0, -2.0, 0.4], aligned=aligned)
    out = model(batch)
    assert out.prediction.shape == (3,)
    assert set(out.losses) == {"task"}
    expected = (out.prediction - batch["labels"]).abs().mean()
    torch.testing.assert_close(out.losses["task"], expected)
    assert out.extras["hidden"].shape == (3, 6 * 8)


def test_prediction_does_not_depend_on_batch_padding():
    # the official future mask's offset |L_k - L_q| uses padded lengths, so test without it
    model = _mult("model.attn_mask=false")
    batch = make_batch(TEXTS, [12, 3, 20], [9, 4, 30], labels=[1.0, -2.0, 0.4])
    together = model(batch).prediction
    alone = model(select(batch, [1])).prediction
    torch.testing.assert_close(together[1:2], alone, atol=1e-4, rtol=1e-4)


def test_last_position_readout_uses_padding():
    model = _mult("model.readout=last_position", "model.attn_mask=false")
    batch = make_batch(TEXTS, [12, 3, 20], [9, 4, 30])
    together = model(batch).prediction
    alone = model(select(batch, [1])).prediction
    assert not torch.allclose(together[1:2], alone, atol=1e-4)


def test_needs_audio_and_vision():
    config = build_config("mult", TINY)
    with pytest.raises(ValueError, match="no vision"):
        create_model(config.model, FeatureDims(audio=5, vision=0))


def test_trains_on_a_tiny_batch():
    model = _mult("model.freeze_language_model=true")
    batch = make_batch(TEXTS, [12, 3, 20], [9, 4, 30], labels=[1.0, -2.0, 0.4])
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def eval_loss() -> float:  # without dropout: learning, not one draw of the masks
        with torch.no_grad():
            return model.eval()(batch).losses["task"].item()

    first = eval_loss()
    model.train()
    for _ in range(30):  # at 15 steps the eval loss was 0.31-0.67 of the first over seeds
        loss = model(batch).losses["task"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert eval_loss() < 0.5 * first


# -- sequence helpers --------------------------------------------------------------------------

def test_temporal_projection_shrinks_lengths():
    projection = TemporalConvProjection(3, 4, kernel_size=5)
    out, lengths = projection(torch.randn(2, 8, 3), torch.tensor([8, 2]))
    assert out.shape == (2, 4, 4) and lengths.tolist() == [4, 2]
    with pytest.raises(ValueError, match="shorter than the conv kernel"):
        projection(torch.randn(2, 4, 3), torch.tensor([4, 2]))


def test_projection_keeps_padding_zero():
    projection = TemporalConvProjection(3, 4, kernel_size=3)
    x, lengths = fit_length(torch.randn(1, 4, 3), torch.tensor([4]), 10)
    out, _ = projection(x, lengths)
    assert out[0, 4:].abs().sum() == 0 and out[0, :2].abs().sum() > 0


def test_fit_length_pads_truncates_and_zeroes():
    x = torch.ones(2, 5, 1)
    padded, lengths = fit_length(x, torch.tensor([5, 2]), 7)
    assert padded.shape == (2, 7, 1) and lengths.tolist() == [5, 2]
    assert padded[1, :, 0].tolist() == [1, 1, 0, 0, 0, 0, 0]
    cut, lengths = fit_length(x, torch.tensor([5, 2]), 3)
    assert cut.shape == (2, 3, 1) and lengths.tolist() == [3, 2]


def test_last_valid_step():
    x = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1)
    assert last_valid_step(x, torch.tensor([4, 2]))[:, 0].tolist() == [3.0, 5.0]


def test_cross_modal_fusion_streams_and_dropout_per_source():
    torch.manual_seed(0)
    fusion = CrossModalFusion(
        ("text", "audio", "vision"), 8, 2, 1, 1,
        attn_dropout={"text": 0.1, "audio": 0.2, "vision": 0.3},
    ).eval()
    assert sorted(fusion.streams) == sorted(
        ["audio_to_text", "vision_to_text", "text_to_audio", "vision_to_audio",
         "text_to_vision", "audio_to_vision"]
    )
    assert fusion.streams["audio_to_text"].layers[0].attention.dropout == 0.2
    sequences = {"text": torch.randn(2, 5, 8), "audio": torch.randn(2, 7, 8),
                 "vision": torch.randn(2, 3, 8)}
    lengths = {"text": torch.tensor([5, 2]), "audio": torch.tensor([7, 1]),
               "vision": torch.tensor([3, 3])}
    pooled, full = fusion(sequences, lengths, return_sequences=True)
    assert {m: tuple(v.shape) for m, v in pooled.items()} == {
        "text": (2, 16), "audio": (2, 16), "vision": (2, 16)}
    torch.testing.assert_close(pooled["text"][1], full["text"][1, 1])
