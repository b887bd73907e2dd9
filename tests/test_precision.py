"""Mixed precision (``train.precision``): every registered model trains in bf16 on CPU with finite
losses and predicts close to the same model trained in fp32, on real MOSI clips."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from msakit.config import ConfigError, build_config
from msakit.data import load_dataset
from msakit.models import create_model, list_models
from msakit.modules import precision
from msakit.modules.dropout import LSTM
from msakit.modules.mfn_core import lstm_layer
from msakit.training.loading import EpochLoader, feature_dims, loader_for
from msakit.training.trainer import Trainer, evaluate_model


@pytest.fixture(scope="module")
def clips(mosi_word_aligned):
    dataset = load_dataset(mosi_word_aligned)
    split = dataset.split("all")
    return dataset, split.subset(range(16)), split.subset(range(16, 40))


def _train(name, precision, clips, run_dir):
    dataset, train, valid = clips
    config = build_config(name, [
        "train.epochs=1", "train.batch_size=8", "train.grad_accumulation=1",
        "train.sync_every_steps=1", f"train.precision={precision}", "train.device=cpu",
    ])
    torch.manual_seed(0)
    model = create_model(config.model, feature_dims(dataset, config))
    trainer = Trainer(config, run_dir, dataset.name, progress=False)
    trainer.fit(model, EpochLoader(train, dataset, config, seed=1),
                loader_for(valid, dataset, config, train=False),
                torch.as_tensor(train.labels, dtype=torch.float32))
    with (run_dir / "epochs.csv").open() as handle:
        row = next(csv.DictReader(handle))
    evaluation = evaluate_model(model, loader_for(valid, dataset, config, train=False),
                                dataset.name, precision=precision)
    return row, evaluation


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_bf16_trains_every_model_close_to_fp32(name, clips, tmp_path):
    (tmp_path / "fp32").mkdir()
    (tmp_path / "bf16").mkdir()
    _, fp32 = _train(name, "fp32", clips, tmp_path / "fp32")
    row, bf16 = _train(name, "bf16", clips, tmp_path / "bf16")
    losses = {k: float(v) for k, v in row.items() if k.startswith(("train_", "valid_"))
              and k != "train_seconds" and v != ""}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    assert np.isfinite(bf16.predictions).all()
    # two steps in bf16 and in fp32 from the same initialisation end close together
    assert np.abs(bf16.predictions - fp32.predictions).max() < 0.25
    assert abs(bf16.metrics["MAE"] - fp32.metrics["MAE"]) < 0.05
    assert bf16.metrics["MAE"] != fp32.metrics["MAE"]  # bf16 did run in lower precision


def test_fp16_on_cpu_is_refused_with_a_clear_error(tmp_path):
    config = build_config("lf_dnn", ["train.precision=fp16", "train.device=cpu"])
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device.*bf16"):
        Trainer(config, tmp_path, "mosi", progress=False)


def test_the_lstm_probe_leaves_the_random_stream_alone():
    """The once-per-process probe of the CPU's bf16 LSTM draws no random number (an nn.LSTM's
    initialisation would shift every later dropout mask and weight)."""
    precision.cpu_autocast_lstm_supported.cache_clear()
    before = torch.get_rng_state()
    result = precision.cpu_autocast_lstm_supported()
    assert torch.equal(torch.get_rng_state(), before)
    assert isinstance(result, bool)


@pytest.mark.parametrize("layers, dropout", [(1, 0.0), (3, 0.5)])
def test_lstm_runs_in_float32_where_the_cpu_has_no_bf16_lstm(monkeypatch, layers, dropout):
    """Where oneDNN cannot run the LSTM under bf16 autocast (CPUs without AVX-512; forced here on
    any CPU), msakit's LSTM runs it in float32: the same values as outside autocast, for a bf16
    input and state too; a PackedSequence keeps PyTorch's own path."""
    monkeypatch.setattr(precision, "cpu_autocast_lstm_supported", lambda: False)
    torch.manual_seed(0)
    lstm = LSTM(6, 5, num_layers=layers, dropout=dropout, batch_first=True).eval()
    x = torch.randn(3, 7, 6)
    state = (torch.randn(layers, 3, 5), torch.randn(layers, 3, 5))
    expected, (h, c) = lstm(x, state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, (got_h, got_c) = lstm(x.bfloat16(), tuple(s.bfloat16() for s in state))
    assert got.dtype == got_h.dtype == torch.float32
    # the input and state were rounded to bf16 on the way in: errors of bf16's scale, no more
    tolerance = 2 ** -7 * max(expected.abs().max().item(), 1.0)
    assert (got - expected).abs().max().item() <= tolerance
    with torch.autocast("cpu", dtype=torch.bfloat16):
        exact, _ = lstm(x, state)
    assert torch.equal(exact, expected)  # float32 in: the float32 computation, unchanged
    packed = pack_padded_sequence(x, torch.tensor([7, 4, 2]), batch_first=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lstm(packed)  # PyTorch's packed path runs under autocast as it is


def test_mfn_lstm_layer_runs_in_float32_where_the_cpu_has_no_bf16_lstm(monkeypatch):
    monkeypatch.setattr(precision, "cpu_autocast_lstm_supported", lambda: False)
    torch.manual_seed(0)
    cell = torch.nn.LSTMCell(4, 3)
    weights = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    x = torch.randn(6, 2, 4)
    expected, _ = lstm_layer(x, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, (h, c) = lstm_layer(x, weights)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
