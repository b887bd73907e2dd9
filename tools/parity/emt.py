"""Parity fixture for EMT-DLFR from the authors' code (sunlicai/EMT-DLFR).

    python tools/parity/emt.py --official /path/to/EMT-DLFR --out tests/parity/emt.pt

Imports the official model (``models/missingTask/EMT_DLFR.py``, ``models/subNets/EMT.py``), the
official training loop (``trains/missingTask/EMT_DLFR.py``) and the official mask generator
(``data/load_data.py`` ``MMDataset.generate_m``) from the checkout, patched at run time only
where the environment needs it: the tiny random BERT of ``_common.TINY_BERT`` instead of the
downloaded one, float64, small layer sizes. The official masks are drawn once for the 6 clips
(missing rate ``MISSING_RATE``, the official seeds 111/1111/11111), as the official dataset does,
and the test feeds the same masks to msakit. Recorded:

1. **training** (dropout 0, the official sharing of one MPU everywhere): ``do_train`` on 6 real
   clips (3 batches of 2, ``update_epochs`` 2) for as many epochs as its early stopping allows,
   scripted validation losses instead of ``do_test``: per forward pass the two predictions, the
   projector/predictor outputs and every loss term (read from ``do_train``'s locals at
   ``backward``); per optimiser step the gradients and the parameters after it.
2. **dropout map** at the official MOSI rates, train mode: ``(p, input shape)`` of every
   ``F.dropout`` call of one forward pass (both views), in call order.
3. **eval-mode forward** at the official rates (batch 1, both views), from the initial weights.
4. **unshared**: an eval-mode forward with ``mpu_share``/``modality_share``/``layer_share`` off
   (separate modules per direction, modality and layer): its initial weights and predictions.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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
    recording_adam,
    save_fixture,
    scripted_validation,
)

ROWS = [0, 5, 7, 1, 12, 9]  # 6 clips, labels of both signs and one 0.0
BATCH = 2
MISSING_RATE = 0.4
UNK_ID = 100  # the official hard-coded [UNK]; inside TINY_BERT's 128 ids
SIZES = {  # official argument names, small
    "a_lstm_hidden_size": 8, "v_lstm_hidden_size": 6, "a_lstm_layers": 1, "v_lstm_layers": 1,
    "audio_out": 4, "video_out": 5, "d_model": 8, "fusion_layers": 2, "heads": 2,
    "learnable_pos_emb": False, "ff_expansion": 2, "attn_act_fn": "tanh",
    "gmc_tokens_pred_dim": 6, "text_pred_dim": 10, "audio_pred_dim": 3, "video_pred_dim": 4,
    "post_fusion_dim": 12, "recon_loss": "SmoothL1Loss",
    "loss_attra_weight": 1.0, "loss_recon_weight": 1.0,
}
SHARED = {"mpu_share": True, "modality_share": True, "layer_share": True}  # official MOSI
NO_DROPOUT = {"a_lstm_dropout": 0.0, "v_lstm_dropout": 0.0, "emb_dropout": 0.0,
              "attn_dropout": 0.0, "ff_dropout": 0.0, "post_fusion_dropout": 0.0}
#: the official MOSI rates (config/config_regression.py __EMT_DLFR), emb_dropout raised from 0
#: to 0.1 so that the positional dropout's place in the order is checked too
RATES = {"a_lstm_dropout": 0.0, "v_lstm_dropout": 0.0, "emb_dropout": 0.1,
         "attn_dropout": 0.3, "ff_dropout": 0.1, "post_fusion_dropout": 0.3}
OPTIMISER = {  # official MOSI learning rates / decays
    "learning_rate_bert": 5e-5, "learning_rate_audio": 1e-3, "learning_rate_video": 1e-4,
    "learning_rate_other": 1e-3, "weight_decay_bert": 1e-3, "weight_decay_audio": 0.01,
    "weight_decay_video": 1e-3, "weight_decay_other": 1e-3,
}
VALID_LOSSES = [1.0, 0.9, 0.9 - 5e-7, 0.95]  # epoch 3's gain is below the official 1e-6
EARLY_STOP = 2
EXTRA_STEPS = 2  # audio/vision padded past the batch's longest clip (official: trimmed to it)
#: do_train's locals recorded at each backward: official name -> msakit loss term
LOSS_LOCALS = {
    "loss_pred_m": "task", "loss_pred": "task_complete",
    "loss_attra_gmc_tokens": "attraction_gmc", "loss_attra_text": "attraction_text",
    "loss_attra_audio": "attraction_audio", "loss_attra_video": "attraction_vision",
    "loss_recon_text": "reconstruction_text", "loss_recon_audio": "reconstruction_audio",
    "loss_recon_video": "reconstruction_vision", "loss": "total",
}


class Wrapper(nn.Module):  # the official loop reads model.Model.<sub-network>
    def __init__(self, model):
        super().__init__()
        self.Model = model

    def forward(self, text, audio, video):
        return self.Model(text, audio, video)


def official_masks(clips: dict, generate_m) -> dict:
    """The official ``generate_m`` over the 6 clips: masked token ids and kept-position masks.

    Audio/vision are padded to the longest clip + ``EXTRA_STEPS``; text to its longest clip."""
    ids = clips["input_ids"].numpy().astype(np.float64)
    attention = clips["attention_mask"].numpy().astype(np.float64)
    lengths = clips["lengths"].tolist()
    text_m, _, _, text_kept = generate_m(None, ids, attention, None, MISSING_RATE, 111,
                                         mode="text")
    out = {"text_m": torch.from_numpy(text_m), "text_kept": torch.from_numpy(text_kept)}
    for name, seed in (("audio", 1111), ("vision", 11111)):
        x = torch.nn.functional.pad(clips[name], (0, 0, 0, EXTRA_STEPS)).numpy()
        x_m, _, real, kept = generate_m(None, x, None, lengths, MISSING_RATE, seed, mode=name)
        out.update({name: torch.from_numpy(x), f"{name}_m": torch.from_numpy(x_m),
                    f"{name}_real": torch.from_numpy(real), f"{name}_kept": torch.from_numpy(kept)})
    return out


def make_batches(clips: dict, masks: dict) -> list[dict]:
    """The official loader's batch dicts (float64), 2 clips each, in order (no shuffling)."""
    batches = []
    for start in range(0, len(ROWS), BATCH):
        rows = slice(start, start + BATCH)
        steps = int(clips["lengths"][rows].max()) + EXTRA_STEPS
        text = torch.stack([clips["input_ids"][rows], clips["attention_mask"][rows],
                            clips["token_type_ids"][rows]], dim=1).double()
        text_m = text.clone()
        text_m[:, 0] = masks["text_m"][rows]
        batch = {"text": text, "text_m": text_m,
                 "text_missing_mask": masks["text_kept"][rows].double(),
                 "labels": {"M": clips["labels"][rows].clone()},
                 "index": torch.arange(start, min(start + BATCH, len(ROWS)))}
        for name in ("audio", "vision"):
            batch[name] = masks[name][rows, :steps].clone()
            batch[f"{name}_m"] = masks[f"{name}_m"][rows, :steps].clone()
            batch[f"{name}_lengths"] = clips["lengths"][rows].clone()
            batch[f"{name}_mask"] = masks[f"{name}_real"][rows, :steps].long()
            batch[f"{name}_missing_mask"] = masks[f"{name}_kept"][rows, :steps].long()
        batches.append(batch)
    return batches


def official_inputs(batch: dict) -> tuple:
    return ((batch["text"], batch["text_m"]),
            (batch["audio"], batch["audio_m"], batch["audio_lengths"]),
            (batch["vision"], batch["vision_m"], batch["vision_lengths"]))


def flat_outputs(outputs: dict) -> dict:
    keep = ("pred", "pred_m", "z_gmc_tokens", "p_gmc_tokens", "z_text", "p_text", "z_audio",
            "p_audio", "z_video", "p_video", "z_gmc_tokens_m", "p_gmc_tokens_m", "z_text_m",
            "p_text_m", "z_audio_m", "p_audio_m", "z_video_m", "p_video_m")
    return {k: outputs[k].detach().clone().reshape(outputs[k].shape[0], -1).squeeze(-1)
            for k in keep}


@contextmanager
def recorded_dropout(calls: list):
    """Within the block, every ``F.dropout`` call in train mode appends ``(p, shape)``."""
    original = F.dropout

    def recording(input, p=0.5, training=True, inplace=False):
        if training:
            calls.append((float(p), tuple(input.shape)))
        return original(input, p, training, inplace)

    F.dropout = recording
    try:
        yield
    finally:
        F.dropout = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="sunlicai/EMT-DLFR checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/parity/emt.pt"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    commit = official_commit(args.official)
    clips = real_clips(args.data, ROWS)  # before the patch: it tokenises with the real tokenizer
    for name in ("audio", "vision"):  # float32 values (stored exactly in the fixture), run in float64
        clips[name] = clips[name].float().double()
    patch_bert_downloads()
    add_to_path(args.official)
    from data.load_data import MMDataset
    from models.missingTask.EMT_DLFR import EMT_DLFR as OfficialModel
    official_train_module = importlib.import_module("trains.missingTask.EMT_DLFR")
    from utils.functions import Storage

    masks = official_masks(clips, MMDataset.generate_m)
    batches = make_batches(clips, masks)

    def official_args(**changes):
        return Storage({
            "train_mode": "regression", "datasetName": "mosi", "modelName": "emt-dlfr",
            "need_data_aligned": False, "language": "en", "use_finetune": True,
            "feature_dims": (TINY_BERT["hidden_size"], clips["audio"].shape[-1],
                             clips["vision"].shape[-1]),
            "text_out": TINY_BERT["hidden_size"], "device": torch.device("cpu"), "gpu_ids": [],
            "update_epochs": 2, "early_stop": EARLY_STOP, "KeyEval": "Loss", "seed": 1,
            "seeds": [1], "num_seeds": 1, "fusion_method": "emt",
            **SIZES, **SHARED, **NO_DROPOUT, **OPTIMISER, **changes,
        })

    def build(**changes):
        torch.manual_seed(0)
        model = OfficialModel(official_args(**changes))
        initial = {k: v.detach().clone() for k, v in model.named_parameters()}
        return model.double(), initial

    # 2 + 3: dropout map and eval forward at the official rates, from the same initial weights
    rated, initial_state = build(**RATES)
    calls: list = []
    rated.train()
    with recorded_dropout(calls), torch.no_grad():
        rated(*official_inputs(batches[0]))
    rated.eval()
    with torch.no_grad():
        eval_outputs = rated(*official_inputs(batches[0]))
    eval_forward = {"batch": 0, "pred": eval_outputs["pred"].reshape(-1).clone(),
                    "pred_m": eval_outputs["pred_m"].reshape(-1).clone()}

    # 4: no sharing
    unshared, _ = build(mpu_share=False, modality_share=False, layer_share=False)
    # the official copies start as equal deep copies: new random weights outside the LM make
    # each module's weights its own, so a wrong module order or sharing shows
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in unshared.named_parameters():
            if not name.startswith("text_model."):
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator,
                                                  dtype=torch.float32))
    unshared_state = {k: v.detach().float().clone() for k, v in unshared.named_parameters()}
    unshared.eval()
    with torch.no_grad():
        outputs = unshared(*official_inputs(batches[0]))
    # fixture size: the LM's weights are the shared model's (same seed), left out
    unshared_forward = {"initial_state": compact({
        k: v for k, v in unshared_state.items() if not k.startswith("text_model.")}),
        "batch": 0,
                        "pred": outputs["pred"].reshape(-1).clone(),
                        "pred_m": outputs["pred_m"].reshape(-1).clone()}

    # 1: the official do_train, dropout 0
    official, initial_training = build()
    assert all(torch.equal(initial_training[k], initial_state[k]) for k in initial_state)
    wrapped = Wrapper(official)
    trainer = official_train_module.EMT_DLFR(official_args())
    trainer.metrics = lambda pred, true: {}  # training-set metrics of 6 clips: not recorded
    steps: list[dict] = []
    optimizer_steps: list[dict] = []
    epochs_seen: list[int] = []
    original_forward = wrapped.forward

    def recording_forward(text, audio, video):
        outputs = original_forward(text, audio, video)
        if wrapped.training:
            steps.append({"outputs": flat_outputs(outputs)})
        return outputs

    wrapped.forward = recording_forward
    original_backward = torch.Tensor.backward

    def recording_backward(self, *a, **k):
        frame = inspect.currentframe().f_back
        if frame.f_code.co_name == "do_train":
            steps[-1]["losses"] = {LOSS_LOCALS[n]: frame.f_locals[n].detach().clone()
                                   for n in LOSS_LOCALS}
        return original_backward(self, *a, **k)

    torch.Tensor.backward = recording_backward
    trainer.do_test = scripted_validation(VALID_LOSSES, epochs_seen)

    def record_step(gradients):
        optimizer_steps.append({
            "after_forward": len(steps), "gradients": gradients,
            "parameters": {k: p.detach().clone() for k, p in official.named_parameters()},
        })

    official_train_module.optim.Adam = recording_adam(official, record_step)
    with tempfile.TemporaryDirectory() as tmp:
        trainer.args.model_save_path = str(Path(tmp) / "best.pth")
        trainer.do_train(wrapped, {"train": batches, "valid": [None]})
    torch.Tensor.backward = original_backward

    fixture = {
        "official": {"repo": "sunlicai/EMT-DLFR", "commit": commit,
                     "files": ["models/missingTask/EMT_DLFR.py", "models/subNets/EMT.py",
                               "trains/missingTask/EMT_DLFR.py", "data/load_data.py"]},
        "tiny_bert": dict(TINY_BERT), "sizes": dict(SIZES), "shared": dict(SHARED),
        "rates": dict(RATES), "optimiser": dict(OPTIMISER), "update_epochs": 2,
        "missing_rate": MISSING_RATE, "unk_id": UNK_ID, "clip_ids": clips["ids"],
        "initial_state": compact(initial_state),
        "batches": [compact({k: v for k, v in b.items() if k != "labels"}) | {"labels": b["labels"]}
                    for b in batches],
        "steps": [{"outputs": compact(s["outputs"]), "losses": compact(s["losses"])}
                  for s in steps],
        "optimizer_steps": [{"after_forward": s["after_forward"],
                             **({"gradients": compact(s["gradients"])} if i == 1 else {}),
                             **({"parameters": compact(s["parameters"])}
                                if i == len(optimizer_steps) - 1 else {})}
                            for i, s in enumerate(optimizer_steps)],
        "early_stopping": {"valid_losses": VALID_LOSSES, "early_stop": EARLY_STOP,
                           "epochs_run": len(epochs_seen), "min_improvement": 1e-6},
        "dropout_map": {"calls": calls, "batch": 0},
        "eval_forward": eval_forward,
        "unshared": unshared_forward,
    }
    save_fixture(fixture, args.out)
    print(f"{len(steps)} forward passes, {len(optimizer_steps)} optimiser steps, "
          f"{len(epochs_seen)} epochs; dropout calls {len(calls)}; "
          f"kept text {masks['text_kept'].sum():.0f}/{clips['attention_mask'].sum():.0f}")


if __name__ == "__main__":
    main()
