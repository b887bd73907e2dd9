"""Where a training step's time goes: ``torch.profiler`` over real training steps (CPU).

    PYTHONPATH=src python benchmarks/profile_step.py misa dmd [--steps 6] [--batch-size 16] \
        [--set model.freeze_language_model=true ...] [--cached]

For each model: builds it with its shipped defaults, takes real batches of the 229 word-aligned
MOSI clips through the trainer's own loader, runs two warm-up steps and profiles ``--steps`` steps
(data loading, forward, loss, backward, optimiser step, hooks). Prints, per model, the step time
split by phase and the operators with the most self CPU time (with the environment variable
``PROFILE_SHAPES=1`` also by input shape). ``--preset`` applies a preset of every model named (e.g.
``--preset mosi --set model.language_model=all-MiniLM-L6-v2``, the MMSA settings
``benchmarks/vs_mmsa.py`` runs); ``--data`` may be any file with a training split. With
``--cached`` (and a frozen LM) the batches carry the LM's cached states, as in every epoch after a
cache's first fill, so the profile shows the model's own cost. The numbers are CPU time on a shared
machine: read the shares, not the absolute milliseconds.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from msakit.config import build_config
from msakit.data import load_dataset
from msakit.lm_cache import SplitTextStates
from msakit.models import create_model
from msakit.training.loading import EpochLoader, feature_dims
from msakit.training.seeding import seed_everything
from msakit.training.trainer import make_optimizer, move_batch, weighted_loss

SHAPES = bool(os.environ.get("PROFILE_SHAPES"))
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi" / "word_aligned_valid.pkl"


def profile_model(name: str, data: Path, steps: int, batch_size: int,
                  overrides: list[str], cached: bool = False, preset: str | None = None) -> None:
    dataset = load_dataset(data)
    config = build_config(name, [f"train.batch_size={batch_size}", "train.grad_accumulation=1",
                                 *overrides], preset=preset)
    split = dataset.split("all" if "all" in dataset.splits else "train")
    seed_everything(0)  # as the trainer does (deterministic algorithms)
    model = create_model(config.model, feature_dims(dataset, config))
    model.on_fit_start(torch.as_tensor(split.labels, dtype=torch.float32))
    optimizer = make_optimizer(model, config)
    text_states = SplitTextStates.for_model(model, config, dataset.word_aligned) if cached else None
    if cached and text_states is None:
        raise SystemExit(f"--cached needs a frozen language model ({name}: set "
                         "model.freeze_language_model=true)")
    epoch_loader = EpochLoader(split, dataset, config, seed=1, text_states=text_states)
    weights = config.model.loss_weights
    model.train()

    def step(batch):
        with record_function("1 batch to device"):
            batch = move_batch(batch, torch.device("cpu"))
        with record_function("2 forward + loss"):
            output = model(batch)
            loss = weighted_loss(output, weights, name)
        with record_function("3 backward"):
            loss.backward()
        with record_function("4 optimiser step"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with record_function("5 hooks"):
            model.on_train_batch_end(batch, output, 1)

    def epochs():  # as many epochs as the warm-up and profiled steps need
        epoch = 1
        while True:
            yield from epoch_loader(epoch)
            epoch += 1

    batches = epochs()
    for _ in range(2):
        step(next(batches))
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=SHAPES) as prof:
        for _ in range(steps):
            with record_function("0 data loading"):
                batch = next(batches)
            step(batch)
    wall = (time.perf_counter() - started) / steps
    events = prof.key_averages()
    phases = sorted((e for e in events if e.key[:2] in {f"{i} " for i in range(6)}),
                    key=lambda e: e.key)
    total = sum(e.cpu_time_total for e in phases)
    print(f"\n## {name}: batch {batch_size}, {steps} profiled steps, {wall * 1000:.0f} ms/step "
          "wall (profiled)\n")
    print("| phase | ms/step | share |\n| --- | ---: | ---: |")
    for event in phases:
        print(f"| {event.key[2:]} | {event.cpu_time_total / 1000 / steps:.1f} | "
              f"{event.cpu_time_total / total:.0%} |")
    print(f"\ntop operators by self CPU time ({name}):\n")
    print(events.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=45))
    if SHAPES:
        by_shape = prof.key_averages(group_by_input_shape=True)
        print(by_shape.table(sort_by="self_cpu_time_total", row_limit=12,
                             max_name_column_width=30, max_shapes_column_width=80))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--preset", help="a preset of every model named (e.g. mosi)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cached", action="store_true",
                        help="feed the frozen LM's cached states (fills the cache first)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, as for msakit train")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models:
        profile_model(name, args.data, args.steps, args.batch_size, args.overrides, args.cached,
                      args.preset)


if __name__ == "__main__":
    main()
