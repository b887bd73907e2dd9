"""Fully connected products on the CPU: PyTorch's ``F.linear`` against msakit's oneDNN route
(:mod:`msakit.modules.linear`), side by side in one process, as ratios.

    python benchmarks/cpu_linear.py [--repeats 30] [--threads 1]

For each shape (taken from the models: an MFN cell's recurrent product, TFN's fusion layer, a
MiniLM and a bert-base feed-forward layer over 16 clips of 50 tokens, ...) it prints the CPU time
of a no-grad forward and of forward + backward (gradients for the input, the weight and the
bias), the minimum over ``--repeats`` after 3 warm-ups, alternating the two routes, and the
oneDNN / F.linear ratio. Also the largest relative difference of the outputs, and the CPU and
PyTorch's BLAS as PyTorch reports them (the ratio depends on both: MKL takes its AVX2 kernels on
AMD CPUs).
"""

from __future__ import annotations

import argparse
import platform
import re
import time

import torch
import torch.nn.functional as F

from msakit.modules.linear import MIN_MULTIPLY_ADDS, ONEDNN_AVAILABLE, cpu_linear, linear

SHAPES = [  # (name, input shape, out features)
    ("below the threshold (32 x 128 -> 256)", (32, 128), 256),
    ("Graph-MFN cell h W_hh^T (32 x 256 -> 1024)", (32, 256), 1024),
    ("MFN cell h W_hh^T (128 x 256 -> 1024)", (128, 256), 1024),
    ("MFN gamma1 (128 x 1488 -> 256)", (128, 1488), 256),
    ("TFN fusion (51 x 140481 -> 64)", (51, 140481), 64),
    ("MiniLM feed-forward (16 x 50 x 384 -> 1536)", (16, 50, 384), 1536),
    ("bert-base feed-forward (16 x 50 x 768 -> 3072)", (16, 50, 768), 3072),
]


def cpu_ms(function, repeats: int) -> float:
    for _ in range(3):
        function()
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        function()
        best = min(best, time.process_time() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not ONEDNN_AVAILABLE:
        raise SystemExit("this PyTorch build has no oneDNN on an x86-64 CPU: nothing to compare")
    torch.set_num_threads(args.threads)
    blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    print(f"{platform.machine()}, torch {torch.__version__}, capability "
          f"{torch.backends.cpu.get_cpu_capability()}, BLAS {blas.group(1) if blas else '?'}, "
          f"{args.threads} thread(s)")
    print(f"products below {MIN_MULTIPLY_ADDS:,} multiply-adds stay with F.linear")
    header = (f"{'shape':48} {'M MACs':>8} {'fwd torch':>10} {'onednn':>8} {'ratio':>6} "
              f"{'f+b torch':>10} {'onednn':>8} {'ratio':>6} {'max rel diff':>12}")
    print(header)
    generator = torch.Generator().manual_seed(0)
    for name, shape, out_features in SHAPES:
        x = torch.randn(*shape, generator=generator, requires_grad=True)
        weight = (torch.randn(out_features, shape[-1], generator=generator)
                  / shape[-1] ** 0.5).requires_grad_(True)
        bias = torch.randn(out_features, generator=generator, requires_grad=True)
        macs = x.numel() * out_features

        def forward(x=x, weight=weight, bias=bias):
            with torch.no_grad():
                return linear(x, weight, bias)

        def forward_backward(x=x, weight=weight, bias=bias):
            linear(x, weight, bias).sum().backward()

        times = {}
        for backend in ("torch", "onednn"):
            with cpu_linear(backend):
                times[backend] = (cpu_ms(forward, args.repeats),
                                  cpu_ms(forward_backward, max(3, args.repeats // 3)))
        with torch.no_grad():
            ours = linear(x, weight, bias)
            theirs = F.linear(x, weight, bias)
        difference = ((ours - theirs).abs().max() / theirs.abs().max()).item()
        (forward_torch, both_torch), (forward_onednn, both_onednn) = times["torch"], times["onednn"]
        print(f"{name:48} {macs / 1e6:8.1f} {forward_torch:10.3f} {forward_onednn:8.3f} "
              f"{forward_onednn / forward_torch:6.2f} {both_torch:10.3f} {both_onednn:8.3f} "
              f"{both_onednn / both_torch:6.2f} {difference:12.1e}")


if __name__ == "__main__":
    main()
