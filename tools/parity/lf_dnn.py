"""Parity fixture for LF-DNN from MMSA's code (thuiar/MMSA ``lf_dnn``).

    python tools/parity/lf_dnn.py --official /path/to/MMSA --out tests/parity/lf_dnn.pt

Loads MMSA's ``models/singleTask/LF_DNN.py`` and ``trains/singleTask/LF_DNN.py`` from the checkout
without running the package's ``__init__`` files (they import every model and its dependencies),
builds LF-DNN at small sizes in float64 with dropout 0, and runs the official ``do_train`` on 6
real clips (3 batches of 2) with scripted validation losses until its early stopping ends it.

MMSA's LF-DNN reads fixed text features (``use_bert`` false) and time-averaged audio/vision
(``need_normalized``: the mean over the zero-padded ``N``-step arrays). The fixture's text
features are the tiny random BERT's token states of each batch (the test rebuilds the same BERT
and lets msakit compute them); its audio/vision are the sums over the real steps / ``N``.

Recorded: the BERT's and LF-DNN's initial weights, the batches, per forward pass the prediction,
the four ``Feature_*`` and the L1 loss, per optimiser step the gradient of every parameter and the
state (parameters and BatchNorm buffers) after it, and where early stopping ended. Then, at
MMSA's MOSI dropout rates (0.2 each) from the same initial weights: the dropout map (rate and input
shape of every dropout call of one train-mode forward pass, in call order) and the eval-mode
prediction of every batch.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_DATA,
    TINY_BERT,
    compact,
    official_commit,
    real_clips,
    record_rated,
    recording_adam,
    save_fixture,
    scripted_validation,
    tiny_bert,
)
from _mmsa import AVERAGE_STEPS, BATCH, ROWS, AttributeDict, load_official  # noqa: E402

SIZES = {"hidden_dims": (8, 6, 10), "text_out": 7, "post_fusion_dim": 12,
         "dropouts": (0.0, 0.0, 0.0, 0.0)}  # official order: text/audio/video; a, v, t, post
MOSI_DROPOUTS = (0.2, 0.2, 0.2, 0.2)  # config_regression.json, lf_dnn, mosi
OPTIMISER = {"learning_rate": 1e-3, "weight_decay": 0.01}  # MMSA's MOSI values
VALID_LOSSES = [1.0, 0.9, 0.9 - 5e-7, 0.95]
EARLY_STOP = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/parity/lf_dnn.pt"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    commit = official_commit(args.official)
    clips = real_clips(args.data, ROWS)
    model_module, train_module = load_official(args.official, "models/singleTask/LF_DNN.py",
                                               "trains/singleTask/LF_DNN.py")

    n = len(ROWS)
    torch.manual_seed(0)
    bert = tiny_bert()
    bert_state = {k: v.clone() for k, v in bert.state_dict().items()}
    bert.double().eval()

    official_args = {
        "feature_dims": (TINY_BERT["hidden_size"], clips["audio"].shape[-1],
                         clips["vision"].shape[-1]),
        "num_classes": 1, "train_mode": "regression", "dataset_name": "mosi",
        "model_name": "lf_dnn", "KeyEval": "Loss", "early_stop": EARLY_STOP, "cur_seed": 1,
        "device": torch.device("cpu"), **SIZES, **OPTIMISER,
    }
    official_args = AttributeDict(official_args)
    torch.manual_seed(1)
    official = model_module.LF_DNN(official_args)
    initial_state = {k: v.clone() for k, v in official.state_dict().items()}
    official.double()

    batches = []
    steps_mask = torch.arange(clips["audio"].shape[1])[None] < clips["lengths"][:, None]
    for start in range(0, n, BATCH):
        rows = slice(start, start + BATCH)
        mask = clips["attention_mask"][rows]
        text_len = int(mask.sum(1).max())
        ids, mask = clips["input_ids"][rows, :text_len], mask[:, :text_len]
        with torch.no_grad():
            text = bert(input_ids=ids, attention_mask=mask,
                        token_type_ids=torch.zeros_like(ids)).last_hidden_state
        real = steps_mask[rows].unsqueeze(-1).double()
        batches.append({
            "input_ids": ids, "attention_mask": mask, "text_features": text,
            "audio": (clips["audio"][rows] * real).sum(1, keepdim=True) / AVERAGE_STEPS,
            "vision": (clips["vision"][rows] * real).sum(1, keepdim=True) / AVERAGE_STEPS,
            "audio_full": clips["audio"][rows], "vision_full": clips["vision"][rows],
            "lengths": clips["lengths"][rows], "index": torch.arange(start, start + BATCH),
            "labels": {"M": clips["labels"][rows].clone()},
        })
    official_batches = [{"text": b["text_features"], "audio": b["audio"], "vision": b["vision"],
                         "labels": b["labels"]} for b in batches]

    trainer = train_module.LF_DNN(official_args)
    trainer.metrics = lambda pred, true: {}
    forwards: list[dict] = []
    optimizer_steps: list[dict] = []
    epochs_seen: list[int] = []
    original_forward = official.forward

    def recording_forward(text, audio, video):
        outputs = original_forward(text, audio, video)
        forwards.append({k: v.detach().clone() for k, v in outputs.items()})
        return outputs

    official.forward = recording_forward
    criterion = trainer.criterion

    def recording_criterion(prediction, target):
        loss = criterion(prediction, target)
        forwards[-1]["loss"] = loss.detach().clone()
        return loss

    trainer.criterion = recording_criterion
    trainer.do_test = scripted_validation(VALID_LOSSES, epochs_seen)

    def record_step(gradients):
        optimizer_steps.append({"after_forward": len(forwards), "gradients": gradients,
                                "state": {k: v.detach().clone()
                                          for k, v in official.state_dict().items()}})

    train_module.optim.Adam = recording_adam(official, record_step)
    with tempfile.TemporaryDirectory() as tmp:
        official_args.model_save_path = str(Path(tmp) / "best.pth")
        trainer.do_train(official, {"train": official_batches, "valid": [None]})

    # at MMSA's rates, from the same initial weights (after the run: its records are unchanged)
    rated = model_module.LF_DNN(AttributeDict({**official_args, "dropouts": MOSI_DROPOUTS}))
    rated.load_state_dict(initial_state)
    dropout_map, eval_forwards = record_rated(
        rated.double(), official_batches,
        lambda m, b: {"M": m(b["text"], b["audio"], b["vision"])["M"]})

    keep = {"input_ids", "attention_mask", "audio_full", "vision_full", "lengths", "index",
            "labels"}
    fixture = {
        "official": {"repo": "thuiar/MMSA", "commit": commit,
                     "files": ["src/MMSA/models/singleTask/LF_DNN.py",
                               "src/MMSA/models/subNets/FeatureNets.py",
                               "src/MMSA/trains/singleTask/LF_DNN.py"]},
        "tiny_bert": dict(TINY_BERT), "bert_state": compact(bert_state),
        "sizes": dict(SIZES), "optimiser": dict(OPTIMISER), "average_steps": AVERAGE_STEPS,
        "initial_state": compact(initial_state),
        "batches": [{k: v for k, v in b.items() if k in keep} for b in batches],
        "forwards": [compact({k: v.reshape(v.shape[0], -1) if v.dim() else v
                              for k, v in f.items()}) for f in forwards],
        "optimizer_steps": [{"after_forward": s["after_forward"],
                             "gradients": compact(s["gradients"]),
                             "state": compact(s["state"])} for s in optimizer_steps],
        "early_stopping": {"valid_losses": VALID_LOSSES, "early_stop": EARLY_STOP,
                           "epochs_run": len(epochs_seen), "min_improvement": 1e-6},
        "official_dropouts": MOSI_DROPOUTS, "dropout_map": dropout_map,
        "eval_forwards": eval_forwards,
    }
    save_fixture(fixture, args.out)
    print(f"{len(forwards)} forward passes, {len(optimizer_steps)} optimiser steps, "
          f"{len(epochs_seen)} epochs")


if __name__ == "__main__":
    main()
