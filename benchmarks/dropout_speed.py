"""PyTorch's ``F.dropout`` vs msakit's :func:`msakit.modules.dropout.dropout` on one CPU thread.

    PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/dropout_speed.py [--repeats 30] [--p 0.5]

For a few input sizes (the first two are TFN's fusion tensor at MOSI's batch 32 and a tenth of
MTFN's, ``(64, 2.18M)``): the CPU time of a train-mode forward (dropout alone) and of a forward +
backward (``out.backward(grad)``), median and quartiles over ``--repeats`` runs (the two
functions in turn, so that load drift hits both alike), and msakit / PyTorch. CPU time of this
thread: on a machine shared with other jobs it moves far less with the load than wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from msakit.modules.dropout import dropout

#: (name, number of float32 elements)
SIZES = (("TFN fusion, B=32 x 19737", 32 * 19737), ("MTFN fusion / 10, 64 x 218k", 64 * 218_000),
         ("1M", 1_000_000), ("64k", 65_536))


def cpu_ms(step) -> float:
    started = time.thread_time()
    step()
    return (time.thread_time() - started) * 1000


def quartiles(values: list[float]) -> str:
    q1, median, q3 = statistics.quantiles(values, n=4)
    return f"{median:8.2f} [{q1:.2f}, {q3:.2f}]"


def timed_passes(size: int, p: float, repeats: int) -> dict[str, dict[str, list[float]]]:
    """CPU ms of each run: ``{pass: {function: [ms, ...]}}``."""
    functions = {"F.dropout": F.dropout, "msakit": dropout}
    x = torch.randn(size)
    leaf = torch.randn(size, requires_grad=True)
    grad = torch.randn(size)
    passes = {"forward": lambda f: f(x, p, True),
              "forward+backward": lambda f: f(leaf, p, True).backward(grad)}
    times = {name: {key: [] for key in functions} for name in passes}
    for pass_name, run in passes.items():
        for i in range(repeats + 2):
            for key, function in functions.items():
                elapsed = cpu_ms(lambda: run(function))  # noqa: B023 (called at once)
                if i >= 2:  # two warm-up runs
                    times[pass_name][key].append(elapsed)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--p", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"p = {args.p}, {args.repeats} runs each, CPU ms of one thread: median [quartiles]")
    print(f"{'input':32} {'pass':16} {'F.dropout':>22} {'msakit':>24} {'ratio':>6}")
    for name, size in SIZES:
        for pass_name, times in timed_passes(size, args.p, args.repeats).items():
            ratio = statistics.median(times["msakit"]) / statistics.median(times["F.dropout"])
            print(f"{name:32} {pass_name:16} {quartiles(times['F.dropout']):>22} "
                  f"{quartiles(times['msakit']):>24} {ratio:6.2f}", flush=True)


if __name__ == "__main__":
    main()
