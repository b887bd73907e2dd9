"""Parity fixture for MMIM from MMSA's port (thuiar/MMSA v2.2.1).

    python tools/parity/mmim.py --official /path/to/MMSA --out tests/parity/mmim.pt

Imports MMSA's ``models/singleTask/MMIM.py`` and ``trains/singleTask/MMIM.py`` (see
``_mmsa.load_official``), patched at run time: a tiny random BERT (``BERT`` below) instead of the
downloaded one, float64, small layer sizes, and ``ReduceLROnPlateau`` without its ``verbose``
argument (removed from newer PyTorch). Records:

1. **training** (dropout 0): MMSA's own ``do_train`` on 12 real clips (3 batches of 4, labels of
   both signs and a 0, so that the entropy memory has enough samples of each sign) with scripted
   validation losses until its early stopping ends it (3 epochs): per forward pass its stage
   (``mmilb``: ``train_mmilb``; ``main``: ``train_others``), prediction, ``lld``, ``nce``, ``H``
   and (main) the L1 task loss; per optimiser step (both optimisers) which one stepped, and for
   some steps every gradient and the state after it;
2. **dropout map** at MMSA's MOSI rates (``dropout_prj`` 0.1; ``dropout_a``/``dropout_v`` are
   0 with one LSTM layer), train mode: ``(p, input shape)`` of every ``F.dropout`` call;
3. **eval-mode forward** at those rates, from the same initial weights (after MMSA's Xavier
   re-initialisation in ``do_train``).
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
    save_fixture,
    scripted_validation,
)
from _mmsa import AttributeDict, load_official, recorded_dropout  # noqa: E402

#: labels (batch by batch): +2.2 -1.4 +1.4 -0.6 | +1.2 -2.0 0.0 -2.2 | +1.8 -0.4 +0.4 -2.2
ROWS = [1, 5, 8, 10, 2, 24, 7, 26, 3, 27, 21, 30]
BATCH = 4
BERT = {**TINY_BERT, "hidden_size": 16, "num_hidden_layers": 1, "intermediate_size": 32}
SIZES = {"d_vh": 6, "d_ah": 5, "d_vout": 8, "d_aout": 8, "d_prjh": 12, "n_layer": 1,
         "bidirectional": True, "cpc_layers": 1}
#: MMSA's MOSI values (config_regression.json, mmim)
SETTINGS = {
    "mmilb_mid_activation": "ReLU", "mmilb_last_activation": "Tanh", "cpc_activation": "Tanh",
    "grad_clip": 1.0, "lr_main": 1e-3, "weight_decay_main": 1e-4, "lr_bert": 5e-5,
    "weight_decay_bert": 1e-4, "lr_mmilb": 1e-3, "weight_decay_mmilb": 1e-4, "optim": "Adam",
    "when": 20, "alpha": 0.1, "beta": 0.1, "add_va": False, "mem_size": 1, "contrast": True,
}
RATES = {"dropout_a": 0.1, "dropout_v": 0.1, "dropout_prj": 0.1}
VALID_LOSSES = [1.0, 0.9, 0.95]  # epoch 2 is best; early_stop 1 ends the run after epoch 3
EARLY_STOP = 1
#: optimiser steps whose gradients and state are kept (fixture size): the first MMILB step,
#: the first main step, the first main step with -beta H in the loss, the last step
KEPT_STEPS = (0, 3, 5, -1)


def patch_downloads() -> None:
    import transformers

    def tiny(*args, **kwargs):
        return transformers.BertModel(transformers.BertConfig(**BERT))

    transformers.BertModel.from_pretrained = classmethod(lambda cls, *a, **k: tiny())
    transformers.BertTokenizer.from_pretrained = classmethod(lambda cls, *a, **k: None)


def make_batches(clips: dict) -> list[dict]:
    batches = []
    for start in range(0, len(ROWS), BATCH):
        rows = slice(start, start + BATCH)
        mask = clips["attention_mask"][rows]
        text_len = int(mask.sum(1).max())
        lengths = clips["lengths"][rows]
        steps = int(lengths.max())
        batches.append({
            "input_ids": clips["input_ids"][rows, :text_len],
            "attention_mask": mask[:, :text_len],
            "audio": clips["audio"][rows, :steps].clone(),
            "vision": clips["vision"][rows, :steps].clone(), "lengths": lengths.clone(),
            "labels": clips["labels"][rows].clone(),
        })
    return batches


def official_batch(batch: dict) -> dict:
    ids = batch["input_ids"]
    text = torch.stack([ids, batch["attention_mask"], torch.zeros_like(ids)], dim=1).double()
    return {"text": text, "audio": batch["audio"], "vision": batch["vision"],
            "audio_lengths": batch["lengths"], "vision_lengths": batch["lengths"],
            "labels": {"M": batch["labels"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/parity/mmim.pt"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    commit = official_commit(args.official)
    clips = real_clips(args.data, ROWS)  # before the patch: it tokenises with the real tokenizer
    patch_downloads()
    files = ["models/singleTask/MMIM.py", "trains/singleTask/MMIM.py"]
    model_module, train_module = load_official(args.official, *files)
    plateau = train_module.ReduceLROnPlateau
    train_module.ReduceLROnPlateau = lambda *a, verbose=None, **k: plateau(*a, **k)

    batches = make_batches(clips)
    base = AttributeDict({
        "train_mode": "regression", "dataset_name": "mosi", "model_name": "mmim",
        "KeyEval": "Loss", "early_stop": EARLY_STOP, "cur_seed": 1, "num_classes": 1,
        "device": torch.device("cpu"), "need_data_aligned": False, "use_bert": True,
        "use_finetune": True, "transformers": "bert", "pretrained": "tiny",
        "train_samples": len(ROWS),
        "feature_dims": (BERT["hidden_size"], clips["audio"].shape[-1],
                         clips["vision"].shape[-1]),
        **SIZES, **SETTINGS, "dropout_a": 0.0, "dropout_v": 0.0, "dropout_prj": 0.0,
    })

    # MMSA's do_train re-initialises the weights (Xavier) before it builds its optimisers:
    # the initial state is the model's when the first optimiser is made
    forwards: list[dict] = []
    steps: list[dict] = []
    initial: dict = {}
    optimizers: dict[int, str] = {}
    torch.manual_seed(0)
    official = model_module.MMIM(AttributeDict(dict(base))).double()
    bert_state = {k: v.clone() for k, v in official.bertmodel.model.state_dict().items()}

    class RecordingAdam(torch.optim.Adam):
        def __init__(self, params, *a, **k):
            if not initial:  # float32-exact initial weights: the fixture stores float32
                with torch.no_grad():
                    for value in official.state_dict().values():
                        if value.is_floating_point():
                            value.copy_(value.float().double())
                initial.update({k: v.detach().clone() for k, v in official.state_dict().items()})
            super().__init__(params, *a, **k)
            optimizers[id(self)] = "mmilb" if not optimizers else "main"

        def step(self, closure=None):
            gradients = {k: (p.grad.detach().clone() if p.grad is not None
                             else torch.zeros_like(p)) for k, p in official.named_parameters()}
            result = super().step(closure)
            steps.append({"optimizer": optimizers[id(self)], "after_forward": len(forwards),
                          "gradients": gradients,
                          "state": {k: v.detach().clone()
                                    for k, v in official.state_dict().items()}})
            return result

    train_module.torch.optim.Adam = RecordingAdam
    original_forward = official.forward

    def recording_forward(text, audio, vision, y=None, mem=None):
        out = original_forward(text, audio, vision, y=y, mem=mem)
        if official.training:
            h = out["H"]
            forwards.append({
                "stage": "main" if y is not None else "mmilb",
                "M": out["M"].detach().reshape(-1).clone(), "lld": out["lld"].detach().clone(),
                "nce": out["nce"].detach().clone(),
                "H": h.detach().clone() if torch.is_tensor(h) else torch.tensor(float(h)),
                "memory_given": mem is not None and mem.get("tv") is not None,
            })
        return out

    official.forward = recording_forward
    trainer = train_module.MMIM(AttributeDict(dict(base)))
    trainer.metrics = lambda pred, true: {}
    criterion = trainer.criterion

    def recording_criterion(prediction, target):
        loss = criterion(prediction, target)
        forwards[-1]["task"] = loss.detach().clone()
        return loss

    trainer.criterion = recording_criterion
    epochs_seen: list[int] = []
    trainer.do_test = scripted_validation(VALID_LOSSES, epochs_seen)
    with tempfile.TemporaryDirectory() as tmp:
        trainer.args.model_save_path = str(Path(tmp) / "best.pth")
        trainer.do_train(official, {"train": [official_batch(b) for b in batches],
                                    "valid": [None]})
    del official.forward

    # 2 + 3: dropout map and eval-mode forward at MMSA's rates, from the same initial weights
    rated = model_module.MMIM(AttributeDict({**base, **RATES})).double()
    rated.load_state_dict(initial)
    rated.train()
    calls: list = []
    torch.manual_seed(2)
    first = official_batch(batches[0])
    with recorded_dropout(calls):
        rated(first["text"], (first["audio"], first["audio_lengths"]),
              (first["vision"], first["vision_lengths"]))
    rated.eval()
    with torch.no_grad():
        eval_predictions = [
            rated(o["text"], (o["audio"], o["audio_lengths"]),
                  (o["vision"], o["vision_lengths"]))["M"].reshape(-1).clone()
            for o in map(official_batch, batches)]

    kept = {k % len(steps) for k in KEPT_STEPS}
    print(f"{len(forwards)} forward passes, {len(steps)} optimiser steps, {len(epochs_seen)} "
          f"epochs; stages {[f['stage'] for f in forwards]}; dropout map {calls}")
    fixture = {
        "official": {"repo": "thuiar/MMSA", "commit": commit,
                     "files": [f"src/MMSA/{f}" for f in files]},
        "tiny_bert": dict(BERT), "bert_state": compact(bert_state),
        "sizes": dict(SIZES), "settings": dict(SETTINGS), "rates": dict(RATES),
        "clip_ids": clips["ids"],
        "initial_state": compact(initial),
        "batches": batches,
        "forwards": [{k: (compact({"v": v})["v"] if torch.is_tensor(v) else v)
                      for k, v in f.items()} for f in forwards],
        "optimizer_steps": [
            {"optimizer": s["optimizer"], "after_forward": s["after_forward"],
             **({"gradients": compact(s["gradients"]), "state": compact(s["state"])}
                if i in kept else {})} for i, s in enumerate(steps)],
        "early_stopping": {"valid_losses": VALID_LOSSES, "early_stop": EARLY_STOP,
                           "epochs_run": len(epochs_seen), "min_improvement": 1e-6},
        "dropout_map": {"calls": calls, "batch": 0},
        "eval_predictions": [p.float() for p in eval_predictions],
    }
    save_fixture(fixture, args.out)


if __name__ == "__main__":
    main()
