"""Parity fixture for Self-MM from the authors' code (thuiar/Self-MM).

    python tools/parity/self_mm.py --official /path/to/Self-MM --out tests/parity/self_mm.pt

Imports the official model (``models/multiTask/SELF_MM.py``) and training loop
(``trains/multiTask/SELF_MM.py``) from the checkout, patched at run time: the tiny random BERT of
``_common.TINY_BERT`` instead of the downloaded one, float64, small layer sizes, dropout 0 (so that
training-mode outputs are deterministic). The official ``do_train`` then runs on 6 real clips
(3 batches of 2, ``update_epochs`` 2) for as many epochs as its early-stopping rule allows, with a
scripted validation loss per epoch instead of ``do_test``. Recorded:

- ``initial_state``: the official model's initial weights (official parameter names);
- ``batches``: the inputs of each training batch (official order, no shuffling);
- ``steps``: per forward pass: the four predictions and ``F*`` representations, the four loss terms
  as the loop adds them, and ULGM's labels and centres after the batch;
- ``optimizer_steps``: per ``optimizer.step()``: the accumulated gradient of every parameter before
  it and every parameter after it;
- ``early_stopping``: the scripted validation losses, the epochs the loop ran and its best epoch;
- ``dropout_map`` / ``eval_forwards``: at the official MOSI dropout rates (``OFFICIAL_DROPOUTS``),
  from the same initial weights, the rate and input shape of every dropout call of one train-mode
  forward pass over the first batch (call order) and the four eval-mode predictions per batch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_DATA,
    TINY_BERT,
    add_to_path,
    compact,
    official_commit,
    patch_bert_downloads,
    real_clips,
    record_rated,
    recording_adam,
    save_fixture,
    scripted_validation,
)

ROWS = [0, 5, 7, 1, 12, 9]  # 6 clips, labels of both signs and one 0.0, lengths 18/5/6/6/...
BATCH = 2
SIZES = {  # official argument names, small
    "a_lstm_hidden_size": 8, "v_lstm_hidden_size": 6, "a_lstm_layers": 1, "v_lstm_layers": 1,
    "audio_out": 4, "video_out": 5, "a_lstm_dropout": 0.0, "v_lstm_dropout": 0.0,
    "post_fusion_dim": 12, "post_text_dim": 8, "post_audio_dim": 4, "post_video_dim": 6,
    "post_fusion_dropout": 0.0, "post_text_dropout": 0.0, "post_audio_dropout": 0.0,
    "post_video_dropout": 0.0,
}
#: config/config_regression.py, self_mm, mosi (the LSTM dropouts apply to the final states)
OFFICIAL_DROPOUTS = {"a_lstm_dropout": 0.0, "v_lstm_dropout": 0.0, "post_fusion_dropout": 0.1,
                     "post_text_dropout": 0.0, "post_audio_dropout": 0.1,
                     "post_video_dropout": 0.1}
OPTIMISER = {  # official MOSI learning rates / decays (config/config_regression.py)
    "learning_rate_bert": 5e-5, "learning_rate_audio": 1e-3, "learning_rate_video": 1e-4,
    "learning_rate_other": 1e-3, "weight_decay_bert": 1e-3, "weight_decay_audio": 0.01,
    "weight_decay_video": 1e-3, "weight_decay_other": 1e-3,
}
#: validation losses returned instead of do_test: epoch 2 improves, epoch 3 improves by less than
#: the official 1e-6 (not an improvement), early_stop 2 then stops after epoch 4
VALID_LOSSES = [1.0, 0.9, 0.9 - 5e-7, 0.95]
EARLY_STOP = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/Self-MM checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/parity/self_mm.pt"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    commit = official_commit(args.official)
    clips = real_clips(args.data, ROWS)  # before the patch: it tokenises with the real tokenizer
    patch_bert_downloads()
    add_to_path(args.official)
    from models.multiTask.SELF_MM import SELF_MM as OfficialModel
    official_train_module = importlib.import_module("trains.multiTask.SELF_MM")
    from utils.functions import Storage

    n = len(ROWS)
    official_args = Storage({
        "train_mode": "regression", "datasetName": "mosi", "modelName": "self_mm",
        "need_data_aligned": False, "language": "en", "use_finetune": True,
        "feature_dims": (TINY_BERT["hidden_size"], clips["audio"].shape[-1],
                         clips["vision"].shape[-1]),
        "text_out": TINY_BERT["hidden_size"], "train_samples": n, "device": torch.device("cpu"),
        "update_epochs": 2, "early_stop": EARLY_STOP, "KeyEval": "Loss", "H": 3.0,
        "save_labels": False, "cur_time": 1, **SIZES, **OPTIMISER,
    })

    torch.manual_seed(0)
    official = OfficialModel(official_args)
    initial_state = {k: v.clone() for k, v in official.state_dict().items()}
    official.double()

    class Wrapper(nn.Module):  # the official loop reads model.Model.<sub-network>
        def __init__(self, model):
            super().__init__()
            self.Model = model

        def forward(self, text, audio, video):
            return self.Model(text, audio, video)

    wrapped = Wrapper(official)

    batches = []
    for start in range(0, n, BATCH):
        rows = slice(start, start + BATCH)
        lengths = clips["lengths"][rows]
        steps = int(lengths.max())
        text = torch.stack([clips["input_ids"][rows], clips["attention_mask"][rows],
                            clips["token_type_ids"][rows]], dim=1).double()
        batches.append({
            "text": text, "audio": clips["audio"][rows, :steps].clone(),
            "vision": clips["vision"][rows, :steps].clone(),
            "audio_lengths": lengths.clone(), "vision_lengths": lengths.clone(),
            "index": torch.arange(start, min(start + BATCH, n)),
            "id": clips["ids"][rows], "labels": {"M": clips["labels"][rows].clone()},
        })

    torch.set_default_dtype(torch.float64)  # the loop's label and feature banks
    trainer = official_train_module.SELF_MM(official_args)
    trainer.metrics = lambda pred, true: {}  # training-set metrics of 6 clips: not recorded
    steps: list[dict] = []
    optimizer_steps: list[dict] = []
    epochs_seen: list[int] = []

    original_forward = wrapped.forward

    def recording_forward(text, audio, video):
        outputs = original_forward(text, audio, video)
        if wrapped.training:
            steps.append({"outputs": {k: v.detach().clone().reshape(v.shape[0], -1).squeeze(-1)
                                      for k, v in outputs.items()}, "losses": {}})
        return outputs

    wrapped.forward = recording_forward
    original_weighted_loss = trainer.weighted_loss

    def recording_weighted_loss(y_pred, y_true, indexes=None, mode="fusion"):
        loss = original_weighted_loss(y_pred, y_true, indexes=indexes, mode=mode)
        steps[-1]["losses"][mode] = loss.detach().clone()
        return loss

    trainer.weighted_loss = recording_weighted_loss
    original_update_centers = trainer.update_centers

    def recording_update_centers():
        original_update_centers()
        steps[-1]["labels"] = {k: v.clone() for k, v in trainer.label_map.items()}
        steps[-1]["centres"] = {k: {c: v.clone() for c, v in cs.items()}
                                for k, cs in trainer.center_map.items()}

    trainer.update_centers = recording_update_centers
    trainer.do_test = scripted_validation(VALID_LOSSES, epochs_seen)

    def record_step(gradients):
        optimizer_steps.append({
            "after_forward": len(steps), "gradients": gradients,
            "parameters": {k: p.detach().clone() for k, p in official.named_parameters()},
        })

    official_train_module.optim.Adam = recording_adam(official, record_step)
    with tempfile.TemporaryDirectory() as tmp:
        official_args.model_save_path = str(Path(tmp) / "best.pth")
        official_args.res_save_dir = tmp
        trainer.do_train(wrapped, {"train": batches, "valid": [None]})

    # at the official rates, from the same initial weights (after the run: its records unchanged)
    rated = OfficialModel(Storage({**official_args, **OFFICIAL_DROPOUTS}))
    rated.load_state_dict(initial_state)
    dropout_map, eval_forwards = record_rated(
        rated.double(), batches,
        lambda m, b: {k: v.reshape(-1) for k, v in m(
            b["text"], (b["audio"], b["audio_lengths"]),
            (b["vision"], b["vision_lengths"])).items() if k in "MTAV"})

    fixture = {
        "official": {"repo": "thuiar/Self-MM", "commit": commit,
                     "files": ["models/multiTask/SELF_MM.py", "trains/multiTask/SELF_MM.py"]},
        "tiny_bert": dict(TINY_BERT),
        "sizes": dict(SIZES), "optimiser": dict(OPTIMISER), "update_epochs": 2,
        "label_limit": 3.0, "clip_ids": clips["ids"],
        "initial_state": compact(initial_state),
        "batches": [{k: v for k, v in b.items() if k != "id"} for b in batches],
        "steps": [{"outputs": compact(s["outputs"]), "losses": compact(s["losses"]),
                   "labels": compact(s["labels"]),
                   "centres": {k: compact(c) for k, c in s["centres"].items()}} for s in steps],
        # fixture size: gradients at the second step (ULGM labels in the loss from epoch 2),
        # parameters after the first, the second and the last step
        "optimizer_steps": [{"after_forward": s["after_forward"],
                             **({"gradients": compact(s["gradients"])} if i == 1 else {}),
                             **({"parameters": compact(s["parameters"])}
                                if i in (0, 1, len(optimizer_steps) - 1) else {})}
                            for i, s in enumerate(optimizer_steps)],
        "early_stopping": {"valid_losses": VALID_LOSSES, "early_stop": EARLY_STOP,
                           "epochs_run": len(epochs_seen), "min_improvement": 1e-6},
        "official_dropouts": dict(OFFICIAL_DROPOUTS), "dropout_map": dropout_map,
        "eval_forwards": eval_forwards,
    }
    save_fixture(fixture, args.out)
    print(f"{len(steps)} forward passes, {len(optimizer_steps)} optimiser steps, "
          f"{len(epochs_seen)} epochs")


if __name__ == "__main__":
    main()
