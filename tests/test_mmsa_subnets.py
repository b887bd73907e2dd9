"""MMSA's shared sub-networks (``msakit.modules.mmsa_subnets``) on real MOSI features."""

from __future__ import annotations

import re

import pytest
import torch
from _real_batches import real_batch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from msakit.config import ConfigError, build_config
from msakit.data import load_dataset
from msakit.models import create_model
from msakit.modules.mmsa_subnets import (
    TextLSTMSubNet,
    _outputs_at,
    lstm_final_state,
    tensor_fusion,
)
from msakit.modules.text import length_groups
from msakit.training.loading import feature_dims


@pytest.fixture(scope="module")
def audio_batch(mosi_word_aligned):
    """COVAREP sequences of 12 real clips (74-d, zero past each clip's real length)."""
    batch = real_batch(load_dataset(mosi_word_aligned), range(12))
    return batch["audio"], batch["audio_mask"]


def _packed_reference(subnet: TextLSTMSubNet, states, mask) -> torch.Tensor:
    """What the subnet computed before: PyTorch's packed LSTM over each clip's real steps."""
    lengths = mask.sum(1).clamp_min(1).cpu()
    packed = pack_padded_sequence(states, lengths, batch_first=True, enforce_sorted=False)
    _, (final, _) = subnet.rnn(packed)
    return subnet.linear_1(subnet.dropout(final[-1]))


def _gradients(module: nn.Module, states: torch.Tensor, output: torch.Tensor) -> list:
    weights = torch.linspace(-1, 1, output.numel()).view_as(output)
    return torch.autograd.grad((output * weights).sum(), [states, *module.parameters()])


@pytest.mark.parametrize("path", ["length groups (CPU)", "one call (other devices)"])
def test_last_real_step_equals_the_packed_lstm(audio_batch, path):
    states, mask = audio_batch
    lengths = mask.sum(1)
    assert len(length_groups(lengths.tolist())) > 1  # uneven real lengths: several groups
    torch.manual_seed(0)
    subnet = TextLSTMSubNet(states.shape[-1], 16, 8, reads_padding=False)
    states = states.clone().requires_grad_(True)
    if path.startswith("one call"):
        output = subnet.linear_1(subnet.dropout(_outputs_at(subnet.rnn, states, lengths)))
    else:
        output = subnet(states, mask)
    reference = _packed_reference(subnet, states, mask)
    scale = reference.abs().max().item()
    torch.testing.assert_close(output, reference, atol=1e-5 * scale, rtol=1e-5)
    for ours, packed in zip(_gradients(subnet, states, output),
                            _gradients(subnet, states, reference), strict=True):
        torch.testing.assert_close(ours, packed, atol=1e-5 * packed.abs().max().item(), rtol=1e-4)


def test_steps_after_the_last_real_one_are_not_read(audio_batch):
    states, mask = audio_batch
    torch.manual_seed(0)
    subnet = TextLSTMSubNet(states.shape[-1], 16, 8, reads_padding=False).eval()
    noisy = states + torch.randn_like(states) * (~mask.bool()).unsqueeze(-1)
    longer = torch.cat([noisy, torch.randn(states.shape[0], 5, states.shape[-1])], dim=1)
    longer_mask = torch.cat([mask, mask.new_zeros(mask.shape[0], 5)], dim=1)
    with torch.no_grad():
        expected = subnet(states, mask)
        torch.testing.assert_close(subnet(longer, longer_mask), expected,
                                   atol=1e-5 * expected.abs().max().item(), rtol=1e-5)
        # reading the padding (MMSA's unpacked LSTM) does depend on it
        subnet.reads_padding = True
        assert not torch.allclose(subnet(longer, longer_mask), subnet(states, mask), atol=1e-3)


def test_a_bidirectional_lstm_is_refused(audio_batch):
    states, mask = audio_batch
    rnn = nn.LSTM(states.shape[-1], 8, batch_first=True, bidirectional=True)
    with pytest.raises(ValueError, match="unidirectional"):
        lstm_final_state(rnn, states, mask)


def test_a_clip_without_tokens_reads_its_first_step(audio_batch):
    states, mask = audio_batch
    mask = mask.clone()
    mask[0] = 0
    torch.manual_seed(0)
    subnet = TextLSTMSubNet(states.shape[-1], 16, 8, reads_padding=False).eval()
    with torch.no_grad():
        torch.testing.assert_close(subnet(states, mask)[0],
                                   _packed_reference(subnet, states, mask)[0],
                                   atol=1e-5, rtol=1e-5)


def test_the_hint_for_missing_unimodal_labels_works(mosi_word_aligned):
    """MLF-DNN with its CH-SIMS preset on MOSI (no ``labels_T/_A/_V``): each error names the
    missing labels and an override; applying the overrides it gives trains the fusion head."""
    dataset = load_dataset(mosi_word_aligned)
    batch = real_batch(dataset, range(4))
    overrides = ["model.language_model=all-MiniLM-L6-v2"]
    for _ in range(4):
        config = build_config("mlf_dnn", overrides, preset="sims")
        model = create_model(config.model, feature_dims(dataset, config)).train()
        try:
            output = model(batch)
        except ConfigError as error:
            message = str(error)
            assert "unimodal labels 'labels_" in message and "(CH-SIMS)" in message
            overrides.append(re.search(r"--set (\S+)$", message).group(1))
        else:
            break
    assert overrides[1:] == [f"model.loss_weights.{term}=0" for term in ("text", "audio", "vision")]
    assert set(output.losses) == {"task"} and output.losses["task"].requires_grad


def test_tensor_fusion_without_gradients_is_the_same_outer_product_bit_for_bit():
    """Eval passes take broadcast products, training the batched ones: the same values, the
    flattened (1; a) (x) (1; v) (x) (1; t) in MMSA's order."""
    generator = torch.Generator().manual_seed(0)
    audio, vision, text = (torch.randn(5, d, generator=generator) for d in (4, 3, 6))
    with torch.no_grad():
        evaluated = tensor_fusion(audio, vision, text)
    leaves = [x.clone().requires_grad_(True) for x in (audio, vision, text)]
    trained = tensor_fusion(*leaves)
    assert trained.grad_fn is not None and evaluated.shape == (5, 5 * 4 * 7)
    assert torch.equal(evaluated, trained.detach())
    ones = torch.ones(5, 1)
    expected = torch.einsum("ba,bv,bt->bavt", *(torch.cat([ones, x], 1).double()
                                                 for x in (audio, vision, text))).reshape(5, -1)
    assert torch.allclose(evaluated.double(), expected, rtol=1e-6, atol=0)
