"""``train.host_allocator``: msakit's training step with glibc's malloc keeping freed memory
(``keep``, the default) and with malloc's own settings (``system``), side by side.

    PYTHONPATH=src python benchmarks/host_allocator.py [--models tfn lmf mtfn] [--epochs 3]

Each (model, mode) trains in its own process with one thread (malloc's settings are the
process's) on the first fold of the 229 word-aligned MOSI clips, with the model's preset for
MOSI (``mtfn``, a CH-SIMS model in MMSA, with its SIMS preset and its fusion loss alone: MOSI has
no unimodal labels), the
packaged MiniLM as the language model and its states cached before the timed passes. Prints the
CPU time per training step (median pass over the epochs / batches), per test pass (median of
``--test-repeats``), the minor page faults per step, peak resident memory, and the ratio
keep / system. The values computed are the same in both modes: the test MAE is printed to show it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import TimedPasses

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mosi" / "word_aligned_valid.pkl"
PRESETS = {"mtfn": "sims", "mlf_dnn": "sims", "mlmf": "sims"}  # MMSA's SIMS-only models


def run(model_name: str, mode: str, data: Path, epochs: int, repeats: int) -> dict:
    import torch

    from msakit.config import build_config
    from msakit.lm_cache import SplitTextStates
    from msakit.models import create_model
    from msakit.training.loading import (
        EpochLoader,
        feature_dims,
        load_experiment_data,
        loader_for,
    )
    from msakit.training.trainer import Trainer, evaluate_model

    torch.set_num_threads(1)
    preset = PRESETS.get(model_name, "mosi")
    with tempfile.TemporaryDirectory() as workdir:
        overrides = [f"data.path={data}", "data.folds=5", "model.language_model=all-MiniLM-L6-v2",
                     f"train.epochs={epochs}", "train.patience=1000", "train.device=cpu",
                     f"train.host_allocator={mode}", f"train.lm_cache_dir={workdir}/lm"]
        if preset == "sims":  # MOSI has no unimodal labels: the fusion loss alone
            overrides += [f"model.loss_weights.{m}=0" for m in ("text", "audio", "vision")]
        config = build_config(model_name, overrides, preset=preset)
        dataset, partitions = load_experiment_data(config)
        partition = partitions[0]
        torch.manual_seed(1)
        model = create_model(config.model, feature_dims(dataset, config))
        run_dir = Path(workdir) / "run"
        run_dir.mkdir()
        trainer = Trainer(config, run_dir, dataset.name, progress=False)
        text_states = SplitTextStates.for_model(model, config, dataset.word_aligned)
        if text_states is not None:
            for split in (partition.train, partition.valid, partition.test):
                text_states(split)
        epoch_loader = EpochLoader(partition.train, dataset, config, 1, text_states=text_states)
        cpu_seconds: list[float] = []
        faults: list[int] = []
        trainer.fit(model, lambda epoch: TimedPasses(epoch_loader(epoch), cpu_seconds=cpu_seconds,
                                                     minor_faults=faults),
                    loader_for(partition.valid, dataset, config, train=False,
                               text_states=text_states),
                    torch.as_tensor(partition.train.labels, dtype=torch.float32))
        test_loader = loader_for(partition.test, dataset, config, train=False,
                                 text_states=text_states)
        test_seconds, result = [], None
        for _ in range(repeats):
            started = time.process_time()
            result = evaluate_model(model, test_loader, dataset.name)
            test_seconds.append(time.process_time() - started)
    steps = len(epoch_loader(1))
    return {"step_ms": statistics.median(cpu_seconds) / steps * 1e3,
            "faults_per_step": statistics.median(faults) / steps,
            "test_s": statistics.median(test_seconds),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "mae": float(result.metrics["MAE"]), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tfn", "lmf", "mtfn"])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--test-repeats", type=int, default=3)
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run(*args.worker, args.data, args.epochs,
                                         args.test_repeats)), flush=True)
        return
    if not args.data.exists():
        sys.exit(f"{args.data} is missing: this benchmark reads the 229 MOSI clips of ../shared")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    results: dict[tuple[str, str], dict] = {}
    for model_name in args.models:
        for mode in ("system", "keep"):
            done = subprocess.run(
                [sys.executable, __file__, "--worker", model_name, mode, "--data", str(args.data),
                 "--epochs", str(args.epochs), "--test-repeats", str(args.test_repeats)],
                env=env, capture_output=True, text=True, check=False)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.exit(f"{model_name} ({mode}) failed:\n{done.stderr[-3000:]}")
            results[model_name, mode] = json.loads(lines[-1][len("RESULT "):])
            print(f"  {model_name} {mode}: {results[model_name, mode]}", flush=True)
    print("\nCPU time of one thread; ratio = keep / system (< 1: keep is faster)\n")
    print("| model | steps / pass | CPU ms / step system | keep | ratio | page faults / step "
          "system | keep | CPU s / test pass system | keep | ratio | peak RSS MiB system | "
          "keep | test MAE system | keep |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
          "| ---: | ---: |")
    for model_name in args.models:
        system, keep = results[model_name, "system"], results[model_name, "keep"]
        print(f"| {model_name} | {keep['steps']} | {system['step_ms']:.1f} | {keep['step_ms']:.1f} "
              f"| {keep['step_ms'] / system['step_ms']:.2f} | {system['faults_per_step']:.0f} "
              f"| {keep['faults_per_step']:.0f} | {system['test_s']:.3f} | {keep['test_s']:.3f} "
              f"| {keep['test_s'] / system['test_s']:.2f} | {system['peak_rss_mib']:.0f} "
              f"| {keep['peak_rss_mib']:.0f} | {system['mae']:.4f} | {keep['mae']:.4f} |")


if __name__ == "__main__":
    main()
