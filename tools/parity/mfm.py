"""Parity fixture for MFM from MMSA's code (thuiar/MMSA ``mfm``).

    python tools/parity/mfm.py --official /path/to/MMSA --out tests/parity/mfm.pt

MMSA's MFM reads word-aligned fixed-length sequences (``need_data_aligned``, no time averaging):
here the tiny BERT's token states and the word-level audio/vision, each zero past its real steps
and padded/truncated to ``SEQ_LEN``. Its forward returns ``(prediction, gen_loss, mmd_loss,
missing_loss)`` and its trainer computes the L1 task loss itself, so this generator records
what ``_mmsa.run_official`` records for the other MMSA models in its own loop, with the same
pieces (real clips, tiny BERT, batches, scripted validation, recording Adam):

1. **training** (dropout 0) with MMSA's ``do_train``, the torch RNG seeded with ``TRAIN_SEED``
   just before it (the seed msakit's ``Trainer.fit`` starts from), so that both draw the same
   prior samples of the MMD terms: per forward pass the prediction and the loss terms in
   msakit's order (task L1, the text/audio/vision reconstruction MSEs, the MMD sum), per
   optimiser step every gradient and the state after it, and the learning rate and weight decay
   MMSA's trainer actually gave Adam (its config's ``learning_rate`` is not passed on);
2. **dropout map** at MMSA's MOSI rates, train mode: ``(p, input shape)`` of every dropout call;
3. **eval-mode forward** at those rates: the predictions per batch.
"""

from __future__ import annotations

import functools
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    TINY_BERT,
    compact,
    packed,
    real_clips,
    recording_adam,
    scripted_validation,
    tiny_bert,
)
from _mmsa import (  # noqa: E402
    AVERAGE_STEPS,
    BATCH,
    EARLY_STOP,
    ROWS,
    VALID_LOSSES,
    AttributeDict,
    block_configs,
    fixed_length,
    generate,
    lstm_dropouts,
    make_batches,
    official_inputs,
    recorded_dropout,
    run_forward_in_float64,
)

SEQ_LEN = 8
TRAIN_SEED = 7
SIZES = {"hidden_dims": (8, 4, 6), "memsize": 7, "windowsize": 2,
         "zy_size": 5, "zl_size": 6, "za_size": 4, "zv_size": 3,
         "fy_size": 4, "fl_size": 3, "fa_size": 5, "fv_size": 2}
SHAPES = {"NN1Config": 5, "NN2Config": 6, "gamma1Config": 5, "gamma2Config": 4, "outConfig": 6}
FACTOR_DROPOUTS = ("zy_to_fy_dropout", "zl_to_fl_dropout", "za_to_fa_dropout",
                   "zv_to_fv_dropout", "fy_to_y_dropout")
# config_regression.json, mfm, mosi
MOSI_RATES = {"NN1Config": 0.7, "NN2Config": 0.0, "gamma1Config": 0.0, "gamma2Config": 0.5,
              "outConfig": 0.2}
MOSI_FACTOR_RATES = {"zy_to_fy_dropout": 0.5, "zl_to_fl_dropout": 0.5, "za_to_fa_dropout": 0.7,
                     "zv_to_fv_dropout": 0.5, "fy_to_y_dropout": 0.0}
LOSS_WEIGHTS = {"lda_xl": 0.5, "lda_xa": 0.01, "lda_xv": 0.5, "lda_mmd": 100}
CONFIGURED = {"learning_rate": 2e-3, "weight_decay": 1e-3}  # MMSA's MOSI values


def record(model_module, train_module, data: Path) -> dict:
    run_forward_in_float64(model_module.MFM)
    clips = real_clips(data, ROWS)
    torch.manual_seed(0)
    bert = tiny_bert()
    bert_state = {k: v.clone() for k, v in bert.state_dict().items()}
    bert.double().eval()
    to_seq_len = functools.partial(fixed_length, steps=SEQ_LEN)
    batches = make_batches(clips, bert, to_seq_len, to_seq_len)

    args = AttributeDict({
        "num_classes": 1, "train_mode": "regression", "dataset_name": "mosi", "KeyEval": "Loss",
        "early_stop": EARLY_STOP, "cur_seed": 1, "device": torch.device("cpu"),
        "model_name": "mfm", "feature_dims": (bert.config.hidden_size, clips["audio"].shape[-1],
                                              clips["vision"].shape[-1]),
        **SIZES, **LOSS_WEIGHTS, **CONFIGURED,
        **block_configs(SHAPES, dict.fromkeys(SHAPES, 0.0)), **dict.fromkeys(FACTOR_DROPOUTS, 0.0),
    })
    torch.manual_seed(1)
    official = model_module.MFM(args)
    initial_state = {k: v.clone() for k, v in official.state_dict().items()}
    official.double()

    # 2 + 3: dropout map and eval-mode forward at MMSA's MOSI rates, same initial weights
    rated = model_module.MFM(AttributeDict({**args, **block_configs(SHAPES, MOSI_RATES),
                                            **MOSI_FACTOR_RATES})).double()
    rated.load_state_dict(initial_state)
    rated.train()
    calls: list = []
    torch.manual_seed(2)
    with recorded_dropout(calls):
        rated(*official_inputs(batches[0]))
    dropout_map = {"calls": calls, "lstm": lstm_dropouts(rated), "batch": 0}
    rated.eval()
    with torch.no_grad():
        eval_forwards = [{"M": rated(*official_inputs(b))[0].detach().clone()} for b in batches]

    # 1: MMSA's do_train, dropout 0; the loss terms of each forward pass recorded
    forwards: list[dict] = []
    reconstructions: list[torch.Tensor] = []
    for decoder in (official.decoder_l, official.decoder_a, official.decoder_v):
        decode = decoder.forward
        decoder.forward = functools.partial(
            lambda decode, *a: reconstructions.append(decode(*a)) or reconstructions[-1], decode)
    mmd_terms: list[torch.Tensor] = []
    loss_mmd = model_module.loss_MMD
    model_module.loss_MMD = lambda z, a: mmd_terms.append(loss_mmd(z, a)) or mmd_terms[-1]
    original_forward = official.forward

    def recording_forward(text, audio, video):
        reconstructions.clear()
        mmd_terms.clear()
        prediction, gen_loss, mmd_loss, missing_loss = original_forward(text, audio, video)
        targets = [x.permute(1, 0, 2) for x in (text, audio, video)]
        squared = [F.mse_loss(x_hat, x).detach() for x_hat, x in zip(reconstructions, targets)]
        weights = (args.lda_xl, args.lda_xa, args.lda_xv)
        assert torch.allclose(sum(w * s for w, s in zip(weights, squared)), gen_loss)
        assert len(mmd_terms) == 4 and torch.equal(sum(mmd_terms), mmd_loss)
        forwards.append({"M": prediction.detach().clone(), "reconstruction": squared,
                         "mmd": mmd_loss.detach().clone(), "gen_loss": gen_loss.detach().clone()})
        return prediction, gen_loss, mmd_loss, missing_loss

    official.forward = recording_forward
    trainer = train_module.MFM(args)
    trainer.metrics = lambda pred, true: {}
    epochs_seen: list[int] = []
    trainer.do_test = scripted_validation(VALID_LOSSES, epochs_seen)
    optimizer_steps: list[dict] = []
    adam_settings: list[dict] = []

    def record_step(gradients):
        optimizer_steps.append({"after_forward": len(forwards), "gradients": gradients,
                                "state": {k: v.detach().clone()
                                          for k, v in official.state_dict().items()}})

    class SettingsRecordingAdam(recording_adam(official, record_step)):
        def __init__(self, params, **kwargs):
            super().__init__(params, **kwargs)
            adam_settings.extend({"lr": g["lr"], "weight_decay": g["weight_decay"]}
                                 for g in self.param_groups)

    train_module.optim.Adam = SettingsRecordingAdam
    official_batches = [{"text": t, "audio": a, "vision": v, "labels": b["labels"]}
                        for b in batches for t, a, v in [official_inputs(b)]]
    torch.manual_seed(TRAIN_SEED)  # the prior samples of the MMD terms come from here on
    with tempfile.TemporaryDirectory() as tmp:
        args.model_save_path = str(Path(tmp) / "best.pth")
        trainer.do_train(official, {"train": official_batches, "valid": [None]})
    assert len(adam_settings) == 1, adam_settings  # one group: every parameter

    # the task loss as MMSA's trainer computes it (L1 of the squeezed prediction)
    labels = [b["labels"]["M"] for b in batches] * len(epochs_seen)
    for outputs, label in zip(forwards, labels):
        task = F.l1_loss(outputs["M"].squeeze(1), label.view(-1, 1).squeeze())
        mmd = outputs.pop("mmd")
        outputs["loss"] = task + outputs["gen_loss"] + args.lda_mmd * mmd  # what MMSA minimises
        outputs["criterion_calls"] = torch.stack(
            [task, *outputs.pop("reconstruction"), mmd]).float()

    print(f"{len(forwards)} forward passes, {len(optimizer_steps)} optimiser steps, "
          f"{len(epochs_seen)} epochs; Adam {adam_settings}; dropout map {calls}")
    keep = {"input_ids", "attention_mask", "audio_full", "vision_full", "lengths", "index",
            "labels"}
    for batch in batches:  # features read from float32 files: float32 is exact
        for key in ("audio_full", "vision_full"):
            assert torch.equal(batch[key].float().double(), batch[key])
            batch[key] = batch[key].float()
    # to keep the fixture under 1 MB: every gradient, the state after the last step of each
    # epoch, each as one shared storage (packed)
    per_epoch = len(optimizer_steps) // len(epochs_seen)
    return {
        "sizes": dict(SIZES), "shapes": dict(SHAPES), "seq_len": SEQ_LEN,
        "official_rates": {**MOSI_RATES, **MOSI_FACTOR_RATES}, "loss_weights": dict(LOSS_WEIGHTS),
        "configured": dict(CONFIGURED), "train_seed": TRAIN_SEED,
        # what MMSA's trainer gave Adam: the optimiser msakit must reproduce
        "optimiser": {"learning_rate": adam_settings[0]["lr"],
                      "weight_decay": adam_settings[0]["weight_decay"]},
        "tiny_bert": dict(TINY_BERT),
        "bert_state": compact(bert_state),
        "initial_state": packed(initial_state),
        "batches": [{k: v for k, v in b.items() if k in keep} for b in batches],
        "forwards": [compact(f) for f in forwards],
        "optimizer_steps": [{"after_forward": s["after_forward"],
                             "gradients": packed(s["gradients"]),
                             "state": packed(s["state"]) if number % per_epoch == 0 else {}}
                            for number, s in enumerate(optimizer_steps, start=1)],
        "early_stopping": {"valid_losses": VALID_LOSSES, "early_stop": EARLY_STOP,
                           "epochs_run": len(epochs_seen), "min_improvement": 1e-6},
        "dropout_map": dropout_map,
        "eval_forwards": [compact(f) for f in eval_forwards],
        "average_steps": AVERAGE_STEPS, "batch_size": BATCH,
    }


if __name__ == "__main__":
    generate(__doc__, "mfm", ["models/singleTask/MFM.py", "trains/singleTask/MFM.py",
                              "models/singleTask/MFN.py"], record)
