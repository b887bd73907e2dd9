"""Sequence encoders: output sizes, real lengths, absent modalities."""

from __future__ import annotations

import pytest
import torch

from msakit.modules.encoders import LSTMEncoder, StackedBiLSTMEncoder, masked_time_mean


def _padded(seed: int = 0):
    torch.manual_seed(seed)
    lengths = torch.tensor([5, 2, 3])
    x = torch.randn(3, 5, 4)
    mask = torch.arange(5)[None, :] < lengths[:, None]
    return x * mask.unsqueeze(-1), lengths, mask


def test_stacked_bilstm_size_and_layout():
    x, lengths, _ = _padded()
    encoder = StackedBiLSTMEncoder(4).eval()
    out = encoder(x, lengths)
    assert encoder.hidden_dim == 4 and encoder.output_dim == 16
    assert out.shape == (3, 16)
    # Layout [h1_fwd, h2_fwd, h1_bwd, h2_bwd]: the first block is layer 1's forward final
    # state, which for sample 1 (length 2) is the LSTM run over its two real steps only.
    _, (h, _) = encoder.rnn1(x[1:2, :2])
    assert torch.allclose(out[1, :4], h[0, 0], atol=1e-6)
    assert torch.allclose(out[1, 8:12], h[1, 0], atol=1e-6)


@pytest.mark.parametrize("encoder_cls", ["stacked", "lstm"])
def test_padding_is_ignored(encoder_cls):
    x, lengths, _ = _padded()
    encoder = StackedBiLSTMEncoder(4) if encoder_cls == "stacked" else LSTMEncoder(4, 6, 3)
    encoder.eval()
    longer = torch.cat([x, torch.randn(3, 4, 4)], dim=1)  # garbage after the real steps
    assert torch.allclose(encoder(x, lengths), encoder(longer, lengths), atol=1e-6)
    # Each sample alone gives the same vector as in the batch.
    alone = encoder(x[1:2, :2], lengths[1:2])
    assert torch.allclose(alone, encoder(x, lengths)[1:2], atol=1e-6)


def test_lstm_encoder_sizes():
    x, lengths, _ = _padded()
    assert LSTMEncoder(4, 8, 16)(x, lengths).shape == (3, 16)
    assert LSTMEncoder(4, 8, 16, bidirectional=True, num_layers=2)(x, lengths).shape == (3, 16)


def test_absent_modality_and_bad_input_are_errors():
    with pytest.raises(ValueError, match="modality absent"):
        StackedBiLSTMEncoder(0)
    with pytest.raises(ValueError, match="modality absent"):
        LSTMEncoder(0, 8, 8)
    encoder = StackedBiLSTMEncoder(4)
    with pytest.raises(ValueError, match=r"\(B, L, 4\)"):
        encoder(torch.zeros(2, 3, 5), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="lengths must lie"):
        encoder(torch.zeros(2, 3, 4), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="lengths must lie"):
        encoder(torch.zeros(2, 3, 4), torch.tensor([4, 2]))


def test_masked_time_mean():
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [0.0], [0.0]]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert torch.equal(masked_time_mean(x, mask), torch.tensor([[2.0], [2.0]]))
    with pytest.raises(ValueError, match="mask"):
        masked_time_mean(x, mask[:, :2])
