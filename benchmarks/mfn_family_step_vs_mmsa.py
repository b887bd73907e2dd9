"""MFN, Graph-MFN, MFM: one training step and one test forward, msakit vs MMSA, alternating in one
process (CPU time, one thread), with the matrix-product MACs of each side's step.

    PYTHONPATH=src:MMSA/src:DIR python benchmarks/mfn_family_step_vs_mmsa.py [mfn graph_mfn mfm]
        [--steps 10]

Both sides read the MMSA pickle ``vs_mmsa.py`` builds from the 229 real MOSI clips, at MMSA's
batch size for the model: MMSA's model (its ``config_regression.json``, built as ``vs_mmsa.py``
builds it) on the first full training batch of its loader, msakit's (the ``mosi`` preset) on the
first full training batch of its own loader (the frozen LM's cached states). A step is forward,
the training loss as each trainer builds it, backward and Adam; MMSA's step and msakit's
alternate, so that a shared machine's load drifts over both alike. Prints the medians of
``--steps`` steps after 2 warm-up steps of each, the median of 3 no-grad forward passes of the
same batch, and ``torch.utils.flop_counter``'s matrix-product MACs of one step of each side.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_mmsa  # noqa: E402

BATCH_SIZES = {"mfn": 128, "graph_mfn": 32, "mfm": 64}  # MMSA's for MOSI


def mmsa_step(name: str, batch_size: int, pickle_path: Path, workdir: Path):
    """MMSA's model, a training-step closure and an eval closure on its first full batch."""
    vs_mmsa._map_pytorch_transformers()
    from MMSA.config import get_config_regression
    from MMSA.data_loader import MMDataLoader
    from MMSA.models import AMIO
    from MMSA.utils import setup_seed

    from msakit.lm import resolve_language_model

    args = get_config_regression(name, "mosi")
    args.update({"featurePath": str(pickle_path), "custom_feature": None, "feature_T": None,
                 "feature_A": None, "feature_V": None, "device": torch.device("cpu"),
                 "train_mode": "regression",
                 "pretrained": resolve_language_model(vs_mmsa.LANGUAGE_MODEL), "cur_seed": 1,
                 "model_save_path": str(workdir / "mmsa.pth"), "batch_size": batch_size})
    setup_seed(1)
    loader = MMDataLoader(args, num_workers=0)
    model = AMIO(args)
    batch = next(b for b in loader["train"] if len(b["labels"]["M"]) == batch_size)
    inputs = batch["text"], batch["audio"], batch["vision"]
    labels = batch["labels"]["M"].view(-1)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)

    def loss_of_step():  # MMSA's trainers' losses (MFM: singleTask/MFM.py)
        output = model(*inputs)
        if name == "mfm":
            prediction, generation, mmd, missing = output
            return (torch.nn.functional.l1_loss(prediction.squeeze(1), labels) + generation
                    + args.lda_mmd * mmd + missing)
        return torch.nn.functional.l1_loss(output["M"].view(-1), labels)

    return model, optimizer, loss_of_step, lambda: model(*inputs)


def msakit_step(name: str, batch_size: int, pickle_path: Path, workdir: Path):
    """msakit's model (the mosi preset), a training-step closure and an eval closure on the
    first full batch of its loader."""
    from msakit.config import build_config
    from msakit.lm_cache import SplitTextStates
    from msakit.models import create_model
    from msakit.training.loading import EpochLoader, feature_dims, load_experiment_data
    from msakit.training.seeding import seed_everything
    from msakit.training.trainer import make_optimizer, weighted_loss

    config = build_config(name, vs_mmsa.msakit_overrides(
        {"model": name, "seed": 1, "batch_size": batch_size, "dataset": "mosi"}, pickle_path, 1,
        workdir / "lm-cache"), preset="mosi")
    dataset, (partition,) = load_experiment_data(config)
    seed_everything(1)
    model = create_model(config.model, feature_dims(dataset, config))
    model.on_fit_start(torch.as_tensor(partition.train.labels, dtype=torch.float32))
    text_states = SplitTextStates.for_model(model, config, dataset.word_aligned)
    loader = EpochLoader(partition.train, dataset, config, seed=1, text_states=text_states)
    batch = next(b for b in loader(1) if len(b["labels"]) == batch_size)
    optimizer = make_optimizer(model, config)

    def loss_of_step():
        return weighted_loss(model(batch), config.model.loss_weights, name)

    return model, optimizer, loss_of_step, lambda: model(batch)  # with labels, as evaluation


def cpu_seconds(function) -> float:
    started = time.process_time()
    function()
    return time.process_time() - started


def compare(name: str, steps: int, pickle_path: Path, workdir: Path) -> None:
    batch_size = BATCH_SIZES[name]
    sides = {"MMSA": mmsa_step(name, batch_size, pickle_path, workdir),
             "msakit": msakit_step(name, batch_size, pickle_path, workdir)}
    macs, train, test = {}, {side: [] for side in sides}, {side: [] for side in sides}
    for side, (model, optimizer, loss_of_step, _) in sides.items():
        model.train()
        with FlopCounterMode(display=False) as counter:
            loss_of_step().backward()
        optimizer.zero_grad(set_to_none=True)
        macs[side] = counter.get_total_flops() / 2e9

    def step(model, optimizer, loss_of_step):
        loss_of_step().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for index in range(steps + 2):
        for side, (model, optimizer, loss_of_step, _) in sides.items():
            seconds = cpu_seconds(functools.partial(step, model, optimizer, loss_of_step))
            if index >= 2:
                train[side].append(seconds)
    for _ in range(3):
        for side, (model, _, _, evaluate) in sides.items():
            model.eval()
            with torch.no_grad():
                test[side].append(cpu_seconds(evaluate))
    median = {side: statistics.median(train[side]) for side in sides}
    print(f"{name} (batch {batch_size}, {steps} steps each, load {vs_mmsa.os.getloadavg()[1]:.1f})")
    for side in sides:
        print(f"  {side:6s} CPU ms/step {1000 * median[side]:7.1f} (min {1000 * min(train[side]):.1f})"
              f"  GMAC/step {macs[side]:6.2f}  GMAC/s {macs[side] / median[side]:5.1f}"
              f"  test forward CPU ms {1000 * statistics.median(test[side]):6.1f}")
    print(f"  ratio msakit / MMSA: step {median['msakit'] / median['MMSA']:.2f}, MACs "
          f"{macs['msakit'] / macs['MMSA']:.2f}, test forward "
          f"{statistics.median(test['msakit']) / statistics.median(test['MMSA']):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help=f"of {', '.join(BATCH_SIZES)} (default: all three)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--data", type=Path, default=vs_mmsa.DATA)
    args = parser.parse_args()
    if unknown := sorted(set(args.models) - set(BATCH_SIZES)):
        parser.error(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(BATCH_SIZES)}")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as directory:
        workdir = Path(directory)
        pickle_path = workdir / "mosi.pkl"
        vs_mmsa.build_pickle(args.data, pickle_path)
        for name in args.models or BATCH_SIZES:
            compare(name, args.steps, pickle_path, workdir)


if __name__ == "__main__":
    main()
