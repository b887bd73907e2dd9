"""Parity fixture for TFR-Net from MMSA's code (thuiar/MMSA ``tfr_net``).

    python tools/parity/tfr_net.py --official /path/to/MMSA --out tests/parity/tfr_net.pt

Imports MMSA's ``models/missingTask/TFR_NET/`` (model, alignment, fusion, generator), its trainer
``trains/missingTask/TFR_NET.py`` and ``MMDataset.generate_m`` of ``data_loader.py`` from the
checkout (without the package ``__init__`` files), patched at run time only where a download is
needed (the tiny random BERT of ``_common.TINY_BERT``). Float64, small sizes (``SIZES``), fixed
lengths ``SEQ_LENS`` (the clips longer than them are truncated, as MMSA's arrays are).

The missing masks are MMSA's own: ``generate_m`` over the 6 clips (text ids, audio and vision
arrays at ``SEQ_LENS``) at rate 0.2, seed 1111 (config_regression.json); the test feeds the same
masks to msakit as ``<m>_missing_mask``. Recorded:

1. **training** (dropout 0): MMSA's ``do_train`` on 3 batches of 2 with ``update_epochs`` 2
   (its loop: gradients summed over 2 batches, a step after every batch and a second one after
   the 2nd), clip by value 0.8, its three Adam groups, the reconstruction loss from epoch 2, and
   scripted validation losses until early stopping ends it: per forward pass the prediction, the
   task loss and the three reconstruction terms; per optimiser step the after-forward count, the
   gradients (at epoch 2's first step) and the state after the last step;
2. **dropout map** at MMSA's MOSI rates, train mode: every ``F.dropout`` call of one forward pass
   with its rate, input shape, the transformer-encoder call it is in and its place there
   (``embed``, ``attention`` weights, ``layer``), or ``outside``;
3. **eval-mode forward** at MMSA's MOSI rates, same initial weights: the prediction and the three
   reconstruction terms per batch.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_DATA,
    TINY_BERT,
    compact,
    official_commit,
    patch_bert_downloads,
    real_clips,
    recording_adam,
    save_fixture,
    scripted_validation,
)

ROWS = [0, 5, 7, 1, 12, 9]  # token lengths 21/7/8/8/31/11, audio 18/5/6/6/28/9 steps
BATCH = 2
SEQ_LENS = (10, 10, 10)  # text, audio, vision: clips 0, 12 and 9 (text) are truncated
SIZES = {  # official argument names; small
    "dst_feature_dim_nheads": (6, 2), "nlevels": 1, "num_temporal_head": 5,
    "conv1d_kernel_size_l": 1, "conv1d_kernel_size_a": 5, "conv1d_kernel_size_v": 3,
    "fusion_t_hid": 4, "fusion_a_hid": 3, "fusion_v_hid": 5, "fusion_gru_layers": 2,
    "cls_hidden_dim": 6,
}
DROPOUT_KEYS = ("text_dropout", "attn_dropout", "attn_dropout_a", "attn_dropout_v",
                "relu_dropout", "embed_dropout", "res_dropout", "fusion_drop", "cls_dropout")
MOSI_RATES = {"text_dropout": 0.2, "attn_dropout": 0.2, "attn_dropout_a": 0.1,
              "attn_dropout_v": 0.0, "relu_dropout": 0.2, "embed_dropout": 0.2,
              "res_dropout": 0.2, "fusion_drop": 0.2, "cls_dropout": 0.0}
SETTINGS = {  # config_regression.json, tfr_net, commonParams + mosi
    "alignmentModule": "crossmodal_attn", "generatorModule": "linear", "fusionModule": "c_gate",
    "recloss_type": "combine", "without_generator": False, "use_bert_finetune": True,
    "attn_mask": True, "update_epochs": 2, "grad_clip": 0.8, "learning_rate_bert": 2e-6,
    "learning_rate_other": 1e-3, "weight_decay_bert": 1e-4, "weight_decay_other": 1e-3,
    "patience": 5, "weight_gen_loss": (5, 2, 20), "weight_sim_loss": 5,
}
MISSING = {"missing_rate": (0.2, 0.2, 0.2), "missing_seed": (1111, 1111, 1111)}
VALID_LOSSES = [1.0, 0.9, 0.95]  # epoch 2 is best; early_stop 1 ends the run after epoch 3
EARLY_STOP = 1
UNK_ID = 100  # MMSA's hard-coded [UNK]


class AttributeDict(dict):
    __getattr__ = dict.__getitem__
    __setattr__ = dict.__setitem__


class AMIOLike(nn.Module):
    """What MMSA's trainer expects of the model: the network as ``.Model``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.Model = model

    def forward(self, *inputs):
        return self.Model(*inputs)


def load_official(root: Path):
    """MMSA's TFR_NET model module, its trainer module and ``data_loader`` (no ``__init__``s)."""
    package = root / "src" / "MMSA"
    sys.modules.setdefault("pynvml", types.ModuleType("pynvml"))
    for name, folder in [
        ("MMSA", package), ("MMSA.models", package / "models"),
        ("MMSA.models.subNets", package / "models" / "subNets"),
        ("MMSA.models.subNets.transformers_encoder",
         package / "models" / "subNets" / "transformers_encoder"),
        ("MMSA.models.missingTask", package / "models" / "missingTask"),
        ("MMSA.models.missingTask.TFR_NET", package / "models" / "missingTask" / "TFR_NET"),
        ("MMSA.trains", package / "trains"),
        ("MMSA.trains.missingTask", package / "trains" / "missingTask"),
    ]:
        stub = types.ModuleType(name)
        stub.__path__ = [str(folder)]
        sys.modules[name] = stub

    def load(path: str):
        name = "MMSA." + path.removesuffix(".py").replace("/", ".")
        spec = importlib.util.spec_from_file_location(name, package / path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    return (load("models/missingTask/TFR_NET/model.py"), load("trains/missingTask/TFR_NET.py"),
            load("data_loader.py"))


def fixed(x: np.ndarray, steps: int) -> np.ndarray:
    """Zero-pad or truncate axis 1 to ``steps`` (MMSA's fixed-length arrays)."""
    x = x[:, :steps]
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, steps - x.shape[1])
    return np.pad(x, pad)


def official_arrays(clips: dict, generate_m) -> dict:
    """MMSA's inputs for all 6 clips, its missing masks drawn by ``generate_m``."""
    lt, la, lv = SEQ_LENS
    ids = fixed(clips["input_ids"].numpy(), lt).astype(np.float64)
    mask = fixed(clips["attention_mask"].numpy(), lt).astype(np.float64)
    segments = np.zeros_like(ids)
    rate, seed = MISSING["missing_rate"], MISSING["missing_seed"]
    ids_m, _, _, text_missing = generate_m(None, ids, mask, None, rate[0], seed[0], mode="text")
    out = {"text": np.stack([ids, mask, segments], 1),
           "text_m": np.stack([ids_m, mask, segments], 1), "text_missing_mask": text_missing}
    for key, modality, steps, i in (("audio", "audio", la, 1), ("vision", "vision", lv, 2)):
        x = fixed(clips[modality].numpy(), steps)
        lengths = [min(int(n), steps) for n in clips["lengths"]]
        x_m, _, real, missing = generate_m(None, x, None, lengths, rate[i], seed[i], mode=key)
        out.update({key: x, f"{key}_m": x_m, f"{key}_mask": real.astype(np.float64),
                    f"{key}_missing_mask": missing.astype(np.float64)})
    return {k: torch.from_numpy(np.ascontiguousarray(v)).double() for k, v in out.items()}


def packed(tensors: dict[str, torch.Tensor]) -> dict:
    """A state dict as one float32 vector with its names and shapes (a fixture of ~250 small
    tensors is a third smaller this way); integer buffers are stored as floats (exact)."""
    return {"names": list(tensors), "shapes": [list(v.shape) for v in tensors.values()],
            "values": torch.cat([v.detach().reshape(-1).to(torch.float32) for v in
                                 tensors.values()])}


def official_inputs(batch: dict) -> tuple:
    return ((batch["text"], batch["text_m"], batch["text_missing_mask"]),
            (batch["audio"], batch["audio_m"], batch["audio_mask"], batch["audio_missing_mask"]),
            (batch["vision"], batch["vision_m"], batch["vision_mask"],
             batch["vision_missing_mask"]))


@contextlib.contextmanager
def scoped_dropout_calls(model: nn.Module, transformer_module):
    """Record every train-mode ``F.dropout`` of ``model`` as ``(p, shape, encoder, scope)``:
    ``encoder`` the index of the enclosing ``TransformerEncoder`` call (-1 outside), ``scope``
    ``outside``, ``language_model`` (inside BERT), ``embed``, ``attention`` or ``layer``."""
    calls: list = []
    state = {"encoder": -1, "count": 0, "scope": "outside"}
    handles = []

    def enter(scope):
        def hook(module, inputs):
            if scope == "embed":
                state["encoder"] = state["count"]
                state["count"] += 1
            state["scope"] = scope
        return hook

    def leave(scope):
        def hook(module, inputs, output):
            state["scope"] = {"embed": "outside", "layer": "embed", "attention": "layer",
                              "language_model": "outside"}[scope]
            if scope == "embed":
                state["encoder"] = -1
        return hook

    handles.append(model.text_model.register_forward_pre_hook(enter("language_model")))
    handles.append(model.text_model.register_forward_hook(leave("language_model")))
    for module in model.modules():
        for cls, scope in ((transformer_module.TransformerEncoder, "embed"),
                           (transformer_module.TransformerEncoderLayer, "layer"),
                           (transformer_module.MultiheadAttention, "attention")):
            if isinstance(module, cls):
                handles.append(module.register_forward_pre_hook(enter(scope)))
                handles.append(module.register_forward_hook(leave(scope)))
    original = F.dropout

    def recording(input, p=0.5, training=True, inplace=False):
        if training:
            calls.append((float(p), tuple(input.shape), state["encoder"], state["scope"]))
        return original(input, p, training, inplace)

    F.dropout = recording
    try:
        yield calls
    finally:
        F.dropout = original
        for handle in handles:
            handle.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/parity/tfr_net.pt"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    commit = official_commit(args.official)
    clips = real_clips(args.data, ROWS)  # before the patch: it tokenises with the real tokenizer
    patch_bert_downloads()
    model_module, train_module, data_module = load_official(args.official)
    transformer_module = sys.modules["MMSA.models.subNets.transformers_encoder.transformer"]
    arrays = official_arrays(clips, data_module.MMDataset.generate_m)

    batches = []
    for start in range(0, len(ROWS), BATCH):
        rows = slice(start, start + BATCH)
        text_len = int(clips["attention_mask"][rows].sum(1).max())
        steps = int(clips["lengths"][rows].max())
        batches.append({
            **{k: v[rows].clone() for k, v in arrays.items()},
            "labels": {"M": clips["labels"][rows].clone()},
            # what msakit's collate gives: tokens and features to the batch's longest clip
            "input_ids": clips["input_ids"][rows, :text_len].clone(),
            "attention_mask": clips["attention_mask"][rows, :text_len].clone(),
            "audio_full": clips["audio"][rows, :steps].clone(),
            "vision_full": clips["vision"][rows, :steps].clone(),
            "lengths": clips["lengths"][rows].clone(),
        })

    base = AttributeDict({
        "train_mode": "regression", "dataset_name": "mosi", "model_name": "tfr_net",
        "KeyEval": "Loss", "early_stop": EARLY_STOP, "cur_seed": 1,
        "device": torch.device("cpu"), "seq_lens": SEQ_LENS,
        "feature_dims": [TINY_BERT["hidden_size"], clips["audio"].shape[-1],
                         clips["vision"].shape[-1]],
        **SIZES, **SETTINGS, **MISSING, **{k: 0.0 for k in DROPOUT_KEYS},
    })

    def build(settings: dict) -> nn.Module:
        model = model_module.TFR_NET(AttributeDict(settings))
        model.gen_loss.eps = model.gen_loss.eps.double()  # a float32 constant in float64 runs
        return model

    torch.manual_seed(1)
    official = build(base)
    initial_state = {k: v.clone() for k, v in official.state_dict().items()}
    official.double()

    # 2 + 3: dropout map and eval-mode forward at MMSA's MOSI rates, the same initial weights
    rated = build({**base, **MOSI_RATES})
    rated.load_state_dict(initial_state)
    rated.double().train()
    torch.manual_seed(2)
    with scoped_dropout_calls(rated, transformer_module) as calls:
        rated(*official_inputs(batches[0]))
    dropout_map = {"calls": list(calls), "batch": 0}
    rated.load_state_dict(initial_state)  # that forward moved the BatchNorm statistics
    rated.eval()
    eval_forwards = []
    for batch in batches:
        terms = []
        original = rated.gen_loss.forward
        rated.gen_loss.forward = lambda *a, o=original, t=terms: t.append(o(*a)) or t[-1]
        with torch.no_grad():
            prediction, _ = rated(*official_inputs(batch))
        rated.gen_loss.forward = original
        eval_forwards.append({"M": prediction.detach().reshape(-1).clone(),
                              "reconstruction": torch.stack([t.reshape(()) for t in terms])})

    # 1: MMSA's do_train, dropout 0
    wrapped = AMIOLike(official)
    trainer = train_module.TFR_NET(base)
    trainer.metrics = lambda pred, true: {}
    forwards: list[dict] = []
    optimizer_steps: list[dict] = []
    epochs_seen: list[int] = []
    original_forward = official.forward
    original_gen_loss = official.gen_loss.forward

    def recording_gen_loss(pred, target, mask):
        loss = original_gen_loss(pred, target, mask)
        forwards[-1]["reconstruction"].append(loss.detach().reshape(()).clone())
        return loss

    def recording_forward(*inputs):
        forwards.append({"reconstruction": []})
        prediction, gen_loss = original_forward(*inputs)
        forwards[-1]["M"] = prediction.detach().reshape(-1).clone()
        forwards[-1]["gen_loss"] = gen_loss.detach().reshape(()).clone()
        return prediction, gen_loss

    official.gen_loss.forward = recording_gen_loss
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
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
    train_module.ReduceLROnPlateau = lambda optimizer, verbose=None, **kw: plateau(optimizer, **kw)
    official_batches = [{k: v for k, v in b.items() if k not in ("input_ids", "attention_mask",
                                                                  "audio_full", "vision_full",
                                                                  "lengths")} for b in batches]
    with tempfile.TemporaryDirectory() as tmp:
        base.model_save_path = str(Path(tmp) / "best.pth")
        trainer.do_train(wrapped, {"train": official_batches, "valid": [None]})

    gradient_steps = (4,)  # epoch 2's first step (with the reconstruction terms)
    state_steps = (len(optimizer_steps) - 1,)  # the last (the fixture stays under 1 MB)
    keep = ("input_ids", "attention_mask", "audio_full", "vision_full", "lengths",
            "text_missing_mask", "audio_missing_mask", "vision_missing_mask", "labels")
    fixture = {
        "official": {"repo": "thuiar/MMSA", "commit": commit,
                     "files": ["src/MMSA/models/missingTask/TFR_NET/model.py",
                               "src/MMSA/models/missingTask/TFR_NET/alignment.py",
                               "src/MMSA/models/missingTask/TFR_NET/fusion.py",
                               "src/MMSA/models/missingTask/TFR_NET/generator.py",
                               "src/MMSA/trains/missingTask/TFR_NET.py",
                               "src/MMSA/data_loader.py"]},
        "tiny_bert": dict(TINY_BERT), "sizes": dict(SIZES), "settings": dict(SETTINGS),
        "missing": dict(MISSING), "seq_lens": SEQ_LENS, "unk_token_id": UNK_ID,
        "mosi_rates": dict(MOSI_RATES),
        "initial_state": packed(initial_state),
        "batches": [compact({k: b[k] for k in keep if k != "labels"}) | {"labels": b["labels"]}
                    for b in batches],
        "forwards": [{"M": f["M"].float(), "loss": f["loss"].float(),
                      "gen_loss": f["gen_loss"].float(),
                      "reconstruction": torch.stack(f["reconstruction"]).float()}
                     for f in forwards],
        "optimizer_steps": [{"after_forward": s["after_forward"],
                             **({"gradients": packed(s["gradients"])}
                                if i in gradient_steps else {}),
                             **({"state": packed(s["state"])} if i in state_steps else {})}
                            for i, s in enumerate(optimizer_steps)],
        "early_stopping": {"valid_losses": VALID_LOSSES, "early_stop": EARLY_STOP,
                           "epochs_run": len(epochs_seen), "min_improvement": 1e-6},
        "dropout_map": dropout_map,
        "eval_forwards": [{k: v.float() for k, v in f.items()} for f in eval_forwards],
    }
    print(f"{len(forwards)} forward passes, {len(optimizer_steps)} optimiser steps, "
          f"{len(epochs_seen)} epochs; {len(calls)} dropout calls")
    save_fixture(fixture, args.out)


if __name__ == "__main__":
    main()
