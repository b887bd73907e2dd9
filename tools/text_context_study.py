"""Utterance-only vs with context on the honest text protocol (docs/context.md).

    OMP_NUM_THREADS=1 nice -n 10 python tools/text_context_study.py --model lf_dnn \\
        --contexts none previous:1 next:1 both:1 both:2 --seeds 1 2 3 \\
        --set model.modalities=[text] --set model.freeze_language_model=true

Each context value is one run (``msakit train`` with ``--seeds``) on MOSI's ``label.csv``
(1,281 / 229 / 685, trained on train, epoch selected on valid, test scored once per seed). The
context is chosen by the mean validation loss of the selected epochs (never by test numbers);
the table gives validation and test mean ± sample std over the seeds, and each run's wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from msakit.config import build_config  # noqa: E402
from msakit.training import run_experiment  # noqa: E402

METRICS = ("Non0_acc_2", "Non0_F1_score", "Mult_acc_7", "MAE", "Corr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lf_dnn")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mosi"))
    parser.add_argument("--contexts", nargs="+", default=["none", "both:1"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--max-text-tokens", type=int, default=128)
    parser.add_argument("--runs-dir", default="runs/context")
    parser.add_argument("--out", type=Path, default=Path("runs/context/study.json"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for context in args.contexts:
        key = f"{args.model}|{context}"
        if key in results:
            continue
        overrides = [f"data.path={json.dumps(args.data)}", "data.format=label_csv",
                     "data.dataset=mosi", "data.modalities=[text]",
                     f"data.max_text_tokens={args.max_text_tokens}",
                     f"model.text_context={context}", "train.num_threads=1",
                     f"run.output_dir={args.runs_dir}", *args.overrides]
        config = build_config(args.model, overrides)
        start = time.perf_counter()
        run_dir, _ = run_experiment(config, seeds=args.seeds, progress=False)
        seconds = time.perf_counter() - start
        per_seed = [json.loads((run_dir / f"seed{s}" / "standard" / "metrics.json").read_text())
                    for s in args.seeds]
        results[key] = {
            "run": str(run_dir), "seconds": seconds, "overrides": overrides,
            "valid_loss": [m["best_valid"] for m in per_seed],
            "best_epoch": [m["best_epoch"] for m in per_seed],
            "seconds_per_epoch": [m["seconds_per_epoch"] for m in per_seed],
            "test": {k: [m["test"][k] for m in per_seed] for k in METRICS},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"{key}: {seconds:.0f} s, valid loss {np.mean(results[key]['valid_loss']):.4f}",
              flush=True)
    print(table(results))


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    array = np.asarray(values, dtype=float) * scale
    std = array.std(ddof=1) if len(array) > 1 else 0.0
    return f"{array.mean():.{digits}f} ± {std:.{digits}f}"


def table(results: dict) -> str:
    """A markdown table of every stored run (validation loss first: the selection criterion)."""
    lines = ["| model | text_context | n | valid L1 (selection) | Non0 Acc-2 | Non0 F1 | Acc-7 | "
             "MAE | Corr | wall (s) |", "|" + " --- |" * 10]
    for key, row in results.items():
        model, context = key.split("|")
        test = row["test"]
        lines.append(
            f"| {model} | {context} | {len(row['valid_loss'])} | "
            f"{_mean_std(row['valid_loss'], digits=4)} | "
            f"{_mean_std(test['Non0_acc_2'], 100)} | {_mean_std(test['Non0_F1_score'], 100)} | "
            f"{_mean_std(test['Mult_acc_7'], 100)} | {_mean_std(test['MAE'], digits=3)} | "
            f"{_mean_std(test['Corr'], digits=3)} | {row['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
