"""Every registered model, one training epoch in fp32, bf16 and fp16 on CUDA: s/epoch and peak
GPU memory, side by side.

    PYTHONPATH=src python benchmarks/gpu_check.py [--models misa dmd] [--batch-size 32]

Data: the 229 real MOSI clips (``word_aligned_valid.pkl``), the train and valid parts of the
first fold of a 5-fold grouped split. Each (model, precision) run builds the model
from the same seed with its shipped defaults (``train.batch_size`` and accumulation overridden by
``--batch-size`` / 1), trains one warm-up epoch that is not counted (CUDA kernels and allocator
warm up), then ``--epochs`` timed epochs; the time is that of the training pass (synchronised),
the memory ``torch.cuda.max_memory_allocated`` over the timed epochs. The validation loss of the
last epoch is printed too (a precision that breaks a model shows there as NaN or far off fp32).
Prints a Markdown table with the bf16 and fp16 ratios to fp32. Exits with a message, running
nothing, when CUDA is unavailable.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import TimedPasses

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi" / "word_aligned_valid.pkl"
PRECISIONS = ("fp32", "bf16", "fp16")


def run(name: str, precision: str, data: Path, batch_size: int, epochs: int) -> dict:
    from msakit.config import build_config
    from msakit.models import create_model
    from msakit.training.loading import (
        EpochLoader,
        feature_dims,
        load_experiment_data,
        loader_for,
    )
    from msakit.training.trainer import Trainer

    config = build_config(name, [
        f"data.path={data}", "data.folds=5", "train.device=cuda", f"train.precision={precision}",
        f"train.batch_size={batch_size}", "train.grad_accumulation=1",
        f"train.epochs={epochs + 1}", "train.patience=null",
    ])
    dataset, partitions = load_experiment_data(config)
    part = partitions[0]
    train = part.train
    torch.manual_seed(1)
    model = create_model(config.model, feature_dims(dataset, config))
    seconds: list[float] = []
    loader = EpochLoader(train, dataset, config, seed=1)
    memory: list[int] = []

    def epoch_loader(epoch: int):
        if epoch == 2:  # after the warm-up epoch
            seconds.clear()
            torch.cuda.reset_peak_memory_stats()
        return TimedPasses(loader(epoch), seconds, synchronize=torch.cuda.synchronize)

    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(config, Path(run_dir), dataset.name, progress=False)
        trainer.fit(model, epoch_loader, loader_for(part.valid, dataset, config, train=False),
                    torch.as_tensor(train.labels, dtype=torch.float32))
        memory.append(torch.cuda.max_memory_allocated())
        with (Path(run_dir) / "epochs.csv").open() as handle:
            last = handle.read().strip().splitlines()
    header, values = last[0].split(","), last[-1].split(",")
    valid_loss = float(dict(zip(header, values))["valid_task"])
    return {"seconds": statistics.median(seconds), "memory_mib": memory[0] / 2**20,
            "valid_task": valid_loss}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="default: every registered model")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs (after 1 warm-up)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: CUDA is not available; nothing to measure")
    from msakit.models import list_models

    models = args.models or list_models()
    device = torch.cuda.get_device_name()
    print(f"{device}, torch {torch.__version__}, batch {args.batch_size}, 229 MOSI clips "
          f"(fold 0 train part), median of {args.epochs} timed epoch(s) after 1 warm-up\n")
    print("| model | fp32 s/epoch | bf16 s/epoch (x fp32) | fp16 s/epoch (x fp32) | fp32 MiB "
          "| bf16 MiB (x) | fp16 MiB (x) | valid task loss fp32 / bf16 / fp16 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name in models:
        results = {}
        for precision in PRECISIONS:
            if precision == "bf16" and not torch.cuda.is_bf16_supported():
                continue
            try:
                results[precision] = run(name, precision, args.data, args.batch_size,
                                         args.epochs)
            except Exception as err:  # report and go on with the other runs
                print(f"<!-- {name} {precision} failed: {type(err).__name__}: {err} -->",
                      flush=True)

        def cell(precision: str, key: str, fmt: str, results: dict = results) -> str:
            if precision not in results:
                return "failed / n/a"
            value, base = results[precision][key], results.get("fp32")
            text = format(value, fmt)
            if base and precision != "fp32":
                text += f" ({value / base[key]:.2f})"
            return text

        losses = " / ".join(f"{results[p]['valid_task']:.3f}" if p in results else "n/a"
                            for p in PRECISIONS)
        print(f"| {name} | {cell('fp32', 'seconds', '.2f')} | {cell('bf16', 'seconds', '.2f')} "
              f"| {cell('fp16', 'seconds', '.2f')} | {cell('fp32', 'memory_mib', '.0f')} | "
              f"{cell('bf16', 'memory_mib', '.0f')} | {cell('fp16', 'memory_mib', '.0f')} | "
              f"{losses} |", flush=True)


if __name__ == "__main__":
    main()
