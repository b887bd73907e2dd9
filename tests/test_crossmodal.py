"""MulT's cross-modal transformer encoder."""

from __future__ import annotations

import math

import pytest
import torch

from msakit.modules.crossmodal import (
    CrossModalTransformerEncoder,
    future_mask,
    per_sample_future_mask,
    sinusoidal_positions,
)


def _encoder(**kwargs) -> CrossModalTransformerEncoder:
    torch.manual_seed(0)
    defaults = dict(embed_dim=16, num_heads=4, num_layers=2)
    defaults.update(kwargs)
    return CrossModalTransformerEncoder(**defaults).eval()


def test_cross_modal_shapes_follow_query_with_different_key_length():
    encoder = _encoder()
    query, key = torch.randn(3, 7, 16), torch.randn(3, 11, 16)
    assert encoder(query, key).shape == (3, 7, 16)
    assert encoder(query).shape == (3, 7, 16)


def test_output_depends_on_key_in_cross_mode():
    encoder = _encoder()
    query, key = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    out = encoder(query, key)
    assert not torch.allclose(out, encoder(query, torch.randn(2, 9, 16)))
    # self-attention mode differs from attending to another sequence
    assert not torch.allclose(out, encoder(query))


def test_key_padding_mask_makes_padded_keys_irrelevant():
    encoder = _encoder()
    query, key = torch.randn(2, 4, 16), torch.randn(2, 6, 16)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[0, 4:] = True
    changed = key.clone()
    changed[0, 4:] = 100.0 * torch.randn(2, 16)
    first = encoder(query, key, key_padding_mask=padding)
    second = encoder(query, changed, key_padding_mask=padding)
    torch.testing.assert_close(first, second)
    # equals running the sample without its padding at all
    alone = encoder(query[:1], key[:1, :4])
    torch.testing.assert_close(first[:1], alone, atol=1e-5, rtol=1e-5)


def test_self_attention_padding_mask():
    encoder = _encoder()
    x = torch.randn(2, 6, 16)
    padding = torch.zeros(2, 6, dtype=torch.bool)
    padding[1, 3:] = True
    out = encoder(x, key_padding_mask=padding)
    alone = encoder(x[1:, :3])
    torch.testing.assert_close(out[1:, :3], alone, atol=1e-5, rtol=1e-5)


def test_future_mask_matches_official_offset_rule():
    mask = future_mask(3, 5)  # offset 1 + |5 - 3| = 3
    expected = torch.tensor([
        [False, False, False, True, True],
        [False, False, False, False, True],
        [False, False, False, False, False],
    ])
    assert torch.equal(mask, expected)
    square = future_mask(4, 4)
    assert torch.equal(square, torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1))


def test_causal_encoder_ignores_future_steps():
    encoder = _encoder(attn_mask=True)
    x = torch.randn(1, 6, 16)
    changed = x.clone()
    changed[:, 4:] = torch.randn(1, 2, 16)
    torch.testing.assert_close(encoder(x)[:, :4], encoder(changed)[:, :4])
    assert not torch.allclose(encoder(x)[:, 4:], encoder(changed)[:, 4:])


def test_sinusoidal_positions_values():
    table = sinusoidal_positions(3, 8)
    assert table.shape == (3, 8)
    # position 1, first frequency (rate 1): sin(1), cos(1)
    assert math.isclose(table[0, 0].item(), math.sin(1.0), rel_tol=1e-6)
    assert math.isclose(table[0, 4].item(), math.cos(1.0), rel_tol=1e-6)
    # last frequency is 1/10000
    assert math.isclose(table[2, 3].item(), math.sin(3e-4), rel_tol=1e-4)
    assert sinusoidal_positions(2, 7)[:, -1].abs().sum() == 0


def test_input_is_scaled_by_sqrt_dim_before_positions():
    encoder = _encoder(embed_dim=16)
    x = torch.randn(1, 3, 16)
    expected = 4.0 * x + sinusoidal_positions(3, 16).unsqueeze(0)
    torch.testing.assert_close(encoder._embed(x), expected)


def test_gradients_flow_to_query_and_key():
    encoder = _encoder()
    encoder.train()
    query = torch.randn(2, 4, 16, requires_grad=True)
    key = torch.randn(2, 5, 16, requires_grad=True)
    encoder(query, key).sum().backward()
    assert query.grad.abs().sum() > 0 and key.grad.abs().sum() > 0


def test_dropout_only_in_training():
    encoder = _encoder(attn_dropout=0.3, relu_dropout=0.3, res_dropout=0.3, embed_dropout=0.3)
    x = torch.randn(2, 4, 16)
    torch.testing.assert_close(encoder(x), encoder(x))
    encoder.train()
    assert not torch.allclose(encoder(x), encoder(x))


def test_keys_and_values_get_independent_embedding_dropout_in_training():
    """As the official code (``x_k``/``x_v`` embedded and dropped separately): in training the
    attention's keys and values differ by their dropout masks; in eval mode they are equal."""
    encoder = _encoder(embed_dropout=0.5, num_layers=1)
    seen = []
    hook = encoder.layers[0].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[1], kwargs["value"])), with_kwargs=True)
    query, key = torch.randn(2, 4, 16), torch.randn(2, 5, 16)
    encoder(query, key)
    encoder.train()
    encoder(query, key)
    hook.remove()
    (eval_key, eval_value), (train_key, train_value) = seen
    torch.testing.assert_close(eval_key, eval_value)
    assert not torch.allclose(train_key, train_value)
    # each is its own mask over the same embedded source: where both kept it, they agree
    both = (train_key != 0) & (train_value != 0)
    assert both.any() and torch.allclose(train_key[both], train_value[both])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda e: e(torch.randn(2, 4, 8)), "x_query must have shape"),
        (lambda e: e(torch.randn(2, 4, 16), torch.randn(3, 4, 16)), "batch size"),
        (lambda e: e(torch.randn(2, 4, 16), key_padding_mask=torch.zeros(2, 4)), "bool"),
        (lambda e: e(torch.randn(1, 2, 16), torch.randn(1, 3, 16),
                     query_lengths=torch.tensor([2])), "both query_lengths and key_lengths"),
    ],
)
def test_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(_encoder())


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        CrossModalTransformerEncoder(10, 4, 1)


def test_per_sample_future_mask_uses_each_samples_real_lengths():
    # sample 0: 2 real queries, 5 real keys -> offset 3; sample 1: 3 and 3 -> offset 0
    mask = per_sample_future_mask(torch.tensor([2, 3]), torch.tensor([5, 3]), 3, 5)
    assert mask.shape == (2, 3, 5)
    torch.testing.assert_close(mask[0, :2], future_mask(2, 5))
    torch.testing.assert_close(mask[1, :3, :3], future_mask(3, 3))
    assert not mask[:, :, 0].any()  # key 0 always visible: no fully masked row


def test_cross_attention_with_future_mask_ignores_the_batch_padding():
    torch.manual_seed(0)
    encoder = CrossModalTransformerEncoder(16, 4, 2, attn_mask=True).eval()
    query, key = torch.randn(1, 3, 16), torch.randn(1, 5, 16)
    alone = encoder(query, key)
    padded_query = torch.cat([query, torch.zeros(1, 4, 16)], dim=1)
    padded_key = torch.cat([key, torch.zeros(1, 2, 16)], dim=1)
    with_lengths = encoder(padded_query, padded_key,
                           key_padding_mask=torch.arange(7)[None] >= 5,
                           query_lengths=torch.tensor([3]), key_lengths=torch.tensor([5]))
    torch.testing.assert_close(with_lengths[:, :3], alone, atol=1e-6, rtol=0)
    # the offset from padded lengths (7 vs 7 -> 0 instead of 2) changes the result
    padded_offset = encoder(padded_query, padded_key, key_padding_mask=torch.arange(7)[None] >= 5)
    assert (padded_offset[:, :3] - alone).abs().max() > 1e-3


def test_official_positions_skip_steps_whose_first_feature_is_zero():
    torch.manual_seed(0)
    official = CrossModalTransformerEncoder(16, 4, 1, zero_step_positions=False).eval()
    x = torch.randn(1, 4, 16)
    x[0, 2] = 0.0
    embedded = official._embed(x)
    torch.testing.assert_close(embedded[0, 2], torch.zeros(16))
    positions = sinusoidal_positions(4, 16)
    torch.testing.assert_close(embedded[0, 1], official.embed_scale * x[0, 1] + positions[1])
