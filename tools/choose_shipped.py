"""Choose the shipped model on validation: each candidate run's, and each group's ensemble's,
validation L1 on MOSI's transcripts, read as a user reads them (``predict_utterances``: with
the video's neighbours when the model reads context).

    python tools/choose_shipped.py --group none RUN1 RUN2 RUN3 --group next:1 RUN4 RUN5 RUN6

Prints one row per run and per group (the group's members averaged, as ``msakit export
--with-run`` ensembles them). The test split is not read unless ``--with-test`` is given (for the
docs' table, after the choice).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from train_pretrained import split_rows  # noqa: E402  (tools/, beside this script)

from msakit.metrics import compute_metrics  # noqa: E402
from msakit.predict import load_trained_run, predict_utterances  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", nargs="+", action="append", required=True,
                        metavar=("NAME", "RUN"), help="a name and its runs (one per seed)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "mosi")
    parser.add_argument("--with-test", action="store_true",
                        help="also print the test figures (after choosing)")
    args = parser.parse_args()

    modes = ["valid", "test"] if args.with_test else ["valid"]
    splits = {m: split_rows(args.data / "label.csv", m) for m in modes}

    def row(name: str, predictions: dict[str, np.ndarray]) -> str:
        valid = np.abs(predictions["valid"] - splits["valid"][1]).mean()
        line = f"| {name} | {valid:.4f} |"
        if args.with_test:
            m = compute_metrics(predictions["test"], splits["test"][1])
            line += f" {100 * m['Non0_acc_2']:.2f} | {m['MAE']:.3f} | {m['Corr']:.3f} |"
        return line

    header = "| candidate | valid L1 |" + (" test Non0 Acc-2 | test MAE | test Corr |"
                                           if args.with_test else "")
    lines = [header, "|" + " --- |" * (2 + 3 * args.with_test)]
    for name, *runs in args.group:
        members = []
        for run_dir in runs:
            run = load_trained_run(run_dir)
            members.append({m: np.array([p.score for p in
                                         predict_utterances(splits[m][0], run)])
                            for m in modes})
            lines.append(row(f"{name}: {Path(run_dir).name}", members[-1]))
            print(lines[-1], flush=True)
        if len(members) > 1:
            lines.append(row(f"**{name}: ensemble of {len(members)}**",
                             {m: np.mean([p[m] for p in members], axis=0) for m in modes}))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
