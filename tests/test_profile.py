"""``msakit profile``: the numbers are computed, and computed right (no timing assertions)."""

from __future__ import annotations

import csv
import multiprocessing

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from msakit.cli import main
from msakit.config import ModelConfig
from msakit.models import FeatureDims, ModelOutput, MSAModel, list_models
from msakit.profiling import (
    SyntheticShape,
    count_flops,
    measure_cpu_memory,
    profile_model,
    synthetic_batch,
)

SHAPE = SyntheticShape(batch_size=2, text_len=10, audio_len=6, vision_len=5, audio_dim=8,
                       vision_dim=4)
TINY_SAGENET = ["model.hidden_size=16", "model.attention_heads=2", "model.feedforward_size=32",
                "model.head_hidden_size=8"]


class ToyConfig(ModelConfig):
    name: str = "toy"
    width: int = 32


class Toy(MSAModel):
    """Not registered: audio (B, L, D_a) -> Linear(D_a, w) -> Linear(w, w) -> mean -> Linear(w, 1)."""

    name = "toy"
    config_class = ToyConfig

    def __init__(self, config: ToyConfig, dims: FeatureDims):
        super().__init__(config, dims)
        self.inner = nn.Sequential(nn.Linear(dims.audio, config.width), nn.ReLU(),
                                   nn.Linear(config.width, config.width))
        self.out = nn.Linear(config.width, 1)

    def forward(self, batch):
        prediction = self.out(self.inner(batch["audio"]).mean(1)).squeeze(-1)
        return ModelOutput(prediction, {"task": ((prediction - batch["labels"]) ** 2).mean()})


def toy_flops(width: int, train: bool = False) -> int:
    model = Toy(ToyConfig(width=width, loss_weights={"task": 1.0}), FeatureDims(64, 0))
    shape = SyntheticShape(batch_size=4, text_len=3, audio_len=16, vision_len=1, audio_dim=64,
                           vision_dim=1)
    return count_flops(model, synthetic_batch(shape, vocab_size=10), train=train)


def test_flops_are_exact_for_linear_layers():
    # 2 FLOPs per multiply-add: B·L·(64·w + w·w)·2 + B·w·2
    assert toy_flops(32) == 4 * 16 * (64 * 32 + 32 * 32) * 2 + 4 * 32 * 2
    # backward of a Linear costs twice its forward (input and weight gradients), except the
    # first layer, which needs no gradient for its input (the batch)
    backward = 4 * 16 * (64 * 32 + 2 * 32 * 32) * 2 + 2 * 4 * 32 * 2
    assert toy_flops(32, train=True) == toy_flops(32) + backward


def test_twice_the_width_four_times_the_hidden_layer_flops():
    # the width x width layer dominates as the width grows: ratio -> 4
    ratio = toy_flops(2048) / toy_flops(1024)
    assert 3.8 < ratio < 4.0


def _allocate_64_mib() -> None:
    block = torch.ones(16 * 1024 * 1024, dtype=torch.float32)  # touched, so it is resident
    assert block.sum() > 0


def _measure_in_this_process(queue) -> None:
    queue.put(measure_cpu_memory(_allocate_64_mib))


def test_cpu_memory_sees_an_allocation():
    # in a fresh process: in a long-lived test worker the allocator may serve the block from
    # memory that earlier tests freed but the process kept, which is already resident
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure_in_this_process, args=(queue,))
    process.start()
    peak, extra, method = queue.get(timeout=120)
    process.join(timeout=30)
    assert method.startswith("cpu-rss")
    # the 64 MiB block, plus what the allocator and the torch build bring along (seen: 64-80)
    assert 0.9 * 64 <= extra <= 1.5 * 64 and peak >= extra


@pytest.mark.slow
def test_profile_model_sagenet():
    result = profile_model("sagenet", TINY_SAGENET, SHAPE, repeats=1, device="cpu", memory=True)
    torch.manual_seed(0)
    assert result.params_total == result.params_trainable > 22_000_000  # MiniLM is fine-tuned
    assert result.params_language_model == 22_713_216  # all-MiniLM-L6-v2
    assert result.flops_inference_per_sample > 0
    assert result.flops_train_per_sample > 2 * result.flops_inference_per_sample
    assert result.latency_inference_ms > 0 and result.latency_train_ms > 0
    # a first training step creates gradients and Adam state: 3 copies of 22M float32 weights
    assert result.memory_train_extra_mib > 3 * 22e6 * 4 / 2**20 * 0.9
    assert result.memory_train_peak_mib > result.memory_train_extra_mib > 0
    assert result.memory_inference_extra_mib is not None
    assert result.memory_inference_extra_mib < result.memory_train_extra_mib
    frozen = profile_model("sagenet", TINY_SAGENET + ["model.freeze_language_model=true"], SHAPE,
                           repeats=0, device="cpu", memory=False)
    assert frozen.params_total == result.params_total
    assert frozen.params_trainable < 100_000
    assert frozen.memory_train_peak_mib is None and frozen.latency_train_ms is None


def test_cli_table_and_csv(tmp_path):
    path = tmp_path / "profile.csv"
    runner = CliRunner()
    result = runner.invoke(main, [
        "profile", "sagenet", "sagenet@model.encoder_layers=2", "--set", TINY_SAGENET[0],
        "--set", TINY_SAGENET[1], "--set", TINY_SAGENET[2], "--batch-size", "2",
        "--text-len", "8", "--audio-len", "5", "--vision-len", "4", "--audio-dim", "6",
        "--vision-dim", "3", "--repeats", "0", "--no-memory", "--csv", str(path),
    ])
    assert result.exit_code == 0, result.output
    assert "sagenet@model.encoder_layers=2" in result.output
    rows = list(csv.DictReader(path.open()))
    assert [r["model"] for r in rows] == ["sagenet", "sagenet@model.encoder_layers=2"]
    one, two = (float(r["flops_inference_per_sample"]) for r in rows)
    assert two > one
    assert int(rows[1]["params_total"]) > int(rows[0]["params_total"])


def test_cli_unknown_model_is_a_clear_error():
    result = CliRunner().invoke(main, ["profile", "no_such_model", "--no-memory"])
    assert result.exit_code != 0
    assert "no_such_model" in result.output


@pytest.mark.parametrize("name", [n for n in list_models() if n != "sagenet"])
def test_every_registered_model_profiles(name):
    result = profile_model(name, [], SHAPE, repeats=0, device="cpu", memory=False)
    assert result.params_total > 0 and result.flops_inference_per_sample > 0
