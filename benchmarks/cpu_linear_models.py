"""Does ``train.cpu_linear=auto`` pick the faster route on this CPU? Whole training steps of real
models with oneDNN's products and with ``F.linear``, alternating in one process, as ratios.

    PYTHONPATH=src python benchmarks/cpu_linear_models.py tfn mtfn mfn [--preset mosi] \
        [--batch-size 32] [--steps 5] [--rounds 3] [--set KEY=VALUE ...]

For each model: built with its shipped defaults (``--preset`` applies a preset of every model
named, e.g. ``mosi``: MMSA's settings, with the packaged MiniLM as ``benchmarks/vs_mmsa.py`` runs
them), real batches of the 229 word-aligned MOSI clips through the trainer's own loader (a frozen
language model's states from the on-disk cache, as in every epoch after its first fill), one
epoch of warm-up steps (the routes in turn; it fills the cache), then ``--rounds`` rounds of
``--steps`` training steps (forward, loss, backward, optimiser step) with each route in turn.
Prints the median CPU ms per step of each route
and the ratio oneDNN / ``F.linear`` (< 1: oneDNN faster), the CPU (vendor, AVX-512 or not) and
what ``auto`` picks on it (:func:`msakit.modules.linear.onednn_preferred`).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from msakit.config import build_config
from msakit.data import load_dataset
from msakit.lm_cache import SplitTextStates
from msakit.models import create_model
from msakit.modules import linear as linear_module
from msakit.modules.linear import ONEDNN_AVAILABLE, ONEDNN_PREFERRED, cpu_linear
from msakit.training.loading import EpochLoader, feature_dims
from msakit.training.seeding import seed_everything
from msakit.training.trainer import make_optimizer, move_batch, weighted_loss

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi" / "word_aligned_valid.pkl"


def step_times(name: str, data: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    dataset = load_dataset(data)
    config = build_config(name, [f"train.batch_size={args.batch_size}",
                                 "train.grad_accumulation=1", *args.overrides],
                          preset=args.preset)
    split = dataset.split("all" if "all" in dataset.splits else "train")
    seed_everything(0)
    model = create_model(config.model, feature_dims(dataset, config))
    model.on_fit_start(torch.as_tensor(split.labels, dtype=torch.float32))
    optimizer = make_optimizer(model, config)
    text_states = SplitTextStates.for_model(model, config, dataset.word_aligned)
    loader = EpochLoader(split, dataset, config, seed=1, text_states=text_states)
    model.train()

    def batches():
        epoch = 1
        while True:
            yield from loader(epoch)
            epoch += 1

    stream = batches()

    def train_step() -> None:
        batch = move_batch(next(stream), torch.device("cpu"))
        output = model(batch)
        weighted_loss(output, config.model.loss_weights, name).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.on_train_batch_end(batch, output, 1)

    times: dict[str, list[float]] = {"torch": [], "onednn": []}
    # warm-up: one epoch (it fills the language model's cache), each route in turn
    for index in range(len(split) // args.batch_size + 1):
        with cpu_linear("torch" if index % 2 else "onednn"):
            train_step()
    for _ in range(args.rounds):
        for backend, samples in times.items():
            with cpu_linear(backend):
                for _ in range(args.steps):
                    started = time.process_time()
                    train_step()
                    samples.append((time.process_time() - started) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--preset", help="a preset of every model named (e.g. mosi)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="steps per route and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, as for msakit train")
    args = parser.parse_args()
    if not ONEDNN_AVAILABLE:
        raise SystemExit("this PyTorch build has no oneDNN on an x86-64 CPU: nothing to compare")
    if not args.data.exists():
        raise SystemExit(f"{args.data}: not found (the real MOSI clips of ../shared/data)")
    torch.set_num_threads(args.threads)
    vendor, avx512 = linear_module._cpu_vendor() or "unknown vendor", linear_module._has_avx512()
    print(f"{vendor}, {'with' if avx512 else 'without'} AVX-512, torch {torch.__version__}, "
          f"{args.threads} thread(s): auto = {'onednn' if ONEDNN_PREFERRED else 'torch'}")
    print("\n| model | CPU ms / step F.linear | oneDNN | ratio oneDNN / F.linear |")
    print("| --- | ---: | ---: | ---: |")
    for name in args.models:
        times = step_times(name, args.data, args)
        plain, onednn = (statistics.median(times[k]) for k in ("torch", "onednn"))
        print(f"| {name} | {plain:.1f} | {onednn:.1f} | {onednn / plain:.2f} |", flush=True)


if __name__ == "__main__":
    main()
