"""Profile SAGE-Net (1 and 3 encoder layers), ALMT and MISA at batch 32 and set the poster's
parameter and memory claims beside ours.

    PYTHONPATH=src python benchmarks/profile_models.py [--out benchmarks/results] [--device cpu]

Writes ``profile.csv`` and ``profile.md`` into ``--out``. Sizes: MOSI word-aligned features
(audio 74, vision 47), 50 steps per modality (MMSA's ``aligned_50`` length).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from msakit.profiling import SyntheticShape, profile_model, write_csv

#: What the SAGE-Net poster reports (Params in M, GPU memory in GB; its text also claims "up to
#: 60.7 % fewer parameters and 68.73 % less memory").
POSTER = {"almt": (81.9, 68.93), "emt": (80.10, 67.40), "sagenet": (80.09, 68.71)}

MODELS = [
    ("sagenet", []),
    ("sagenet@model.encoder_layers=3", ["model.encoder_layers=3"]),
    ("almt", []),
    ("misa", []),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = SyntheticShape(batch_size=args.batch_size, text_len=50, audio_len=50, vision_len=50,
                           audio_dim=74, vision_dim=47)
    results = []
    for label, overrides in MODELS:
        name = label.split("@")[0]
        print(f"profiling {label} ...", flush=True)
        results.append(profile_model(name, overrides, shape, repeats=args.repeats,
                                     device=args.device, label=label))
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(results, args.out / "profile.csv")

    lines = [
        f"Batch {shape.batch_size}, 50 steps per modality, audio 74-d, vision 47-d, "
        f"device {results[0].device}, memory: {results[0].memory_method}.",
        "",
        "| model | params (M) | non-LM params (M) | GFLOPs/sample (fwd) | train step peak / extra "
        "(MiB) | inference peak / extra (MiB) | infer ms/batch | train ms/step | poster params (M) "
        "| poster GPU memory (GB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        poster = POSTER.get(r.model)
        lines.append(
            f"| {r.model} | {r.params_total / 1e6:.2f} | "
            f"{(r.params_total - r.params_language_model) / 1e6:.2f} | "
            f"{r.flops_inference_per_sample / 1e9:.3f} | "
            f"{r.memory_train_peak_mib:,.0f} / {r.memory_train_extra_mib:,.0f} | "
            f"{r.memory_inference_peak_mib:,.0f} / {r.memory_inference_extra_mib:,.0f} | "
            f"{r.latency_inference_ms:,.0f} | {r.latency_train_ms:,.0f} | "
            f"{poster[0] if poster else '-'} | {poster[1] if poster else '-'} |"
        )
    (args.out / "profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
