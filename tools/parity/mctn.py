"""Parity fixture for MCTN from MMSA's code (thuiar/MMSA ``mctn``).

    python tools/parity/mctn.py --official /path/to/MMSA --out tests/parity/mctn.pt

MMSA's MCTN reads word-aligned fixed-length arrays (``need_data_aligned``) and computes its loss
inside the model (``forward(text, audio, vision, labels, lengths) -> (loss, prediction)``), so
this generator drives MMSA's own ``do_train`` directly instead of ``_mmsa.run_official`` (which
expects a separate criterion), reusing its pieces: the tiny BERT's token states zero past each
transcript and padded/truncated to ``SEQ_LEN``, the word-level audio/vision the same way.

MMSA's model pads audio and vision to the text's width and needs the text to be the widest (its
``output_dim``, 768 for its BERT features): the tiny BERT here is 80 wide (COVAREP is 74).
MMSA hard-codes ``'cuda'`` as the device of its ``Seq2Seq`` outputs; the generator sets it to the
CPU on the built model. Patched at run time as well: the forward runs with float64 as the default
dtype (MMSA's ``torch.zeros`` buffers), and ``F.mse_loss``/``F.l1_loss`` are recorded to give
every loss term, in MMSA's order (vision, text, audio translations, then the task).

Recorded (dropout is hard-coded 0 in MMSA, its only rate): MMSA's ``do_train`` on 6 real clips
(2 batches of 3) with scripted validation losses until its early stopping ends it (per forward
pass the prediction, total loss and terms; per optimiser step every gradient and the parameters
after it), the dropout map of one train-mode pass and the eval-mode forward of every batch. The
batches hold 3 clips (not ``_mmsa``'s 2): MMSA's loops run over the clips of a batch, so each
translation then decodes two steps after the unwritten first, each from the previous clip's target.
"""

from __future__ import annotations

import contextlib
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
    record_rated,
    recording_adam,
    scripted_validation,
)
from _mmsa import (  # noqa: E402
    EARLY_STOP,
    ROWS,
    VALID_LOSSES,
    AttributeDict,
    fixed_length,
    generate,
    make_batches,
    run_forward_in_float64,
)

SEQ_LEN = 6
#: wider than COVAREP (74): MMSA needs the text to be the widest modality; one layer keeps it small
BERT = {**TINY_BERT, "hidden_size": 80, "num_hidden_layers": 1, "intermediate_size": 32}
SIZES = {"hid_dim": 4}
OPTIMISER = {"init_lr": 1e-4, "grad_clip": 1.0}  # MMSA's MOSI values
#: clips per batch: MMSA's batch-axis recurrence then decodes 2 steps per translation
BATCH = 3
KEEP_STATE = (1, 6)  # steps whose parameters the fixture keeps: the first and the last
#: MMSA's loss calls in order -> msakit's loss terms
TERMS = ("text_to_vision", "vision_to_text", "joint_to_audio", "task")


@contextlib.contextmanager
def recorded_losses(values: list):
    """Within the block, every ``F.mse_loss`` / ``F.l1_loss`` result is appended to ``values``
    (MMSA's ``nn.MSELoss()(...)`` and ``nn.L1Loss()(...)`` call them)."""
    originals = {"mse_loss": F.mse_loss, "l1_loss": F.l1_loss}

    def recording(original):
        def wrapper(*args, **kwargs):
            value = original(*args, **kwargs)
            values.append(value.detach().clone())
            return value
        return wrapper

    for name, original in originals.items():
        setattr(F, name, recording(original))
    try:
        yield values
    finally:
        for name, original in originals.items():
            setattr(F, name, original)


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each parameter once, under its first name (MMSA registers the attentions and encoders
    under several names: ``attn1`` is ``decoder1.attention`` is ``seq2seq1.decoder.attention``)."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def run(model, batch) -> dict[str, torch.Tensor]:
    """One MMSA forward: prediction ``M``, total loss and the terms in MMSA's order."""
    terms: list = []
    with recorded_losses(terms):
        loss, prediction = model(batch["text"], batch["audio"], batch["vision"],
                                 batch["labels"]["M"].view(-1, 1), lengths=None)
    return {"M": prediction.detach().clone(), "loss": loss.detach().clone(),
            "criterion_calls": torch.stack(terms)}


def record(model_module, train_module, data: Path) -> dict:
    from transformers import BertConfig, BertModel

    run_forward_in_float64(model_module.MCTN)
    clips = real_clips(data, ROWS)
    torch.manual_seed(0)
    bert = BertModel(BertConfig(**BERT))
    bert_state = {k: v.clone() for k, v in bert.state_dict().items()}
    bert.double().eval()
    steps = functools.partial(fixed_length, steps=SEQ_LEN)
    batches = make_batches(clips, bert, steps, text_steps=steps, size=BATCH)
    official_batches = [{"text": b["text_features"], "audio": b["official_audio"],
                         "vision": b["official_vision"], "labels": b["labels"]} for b in batches]

    args = AttributeDict({
        "model_name": "mctn", "dataset_name": "mosi", "train_mode": "regression",
        "KeyEval": "Loss", "early_stop": EARLY_STOP, "cur_seed": 1,
        "device": torch.device("cpu"), "train_samples": len(ROWS), "use_bert": False,
        "output_dim": BERT["hidden_size"], "max_seq_len": SEQ_LEN, **SIZES, **OPTIMISER})

    def build():
        model = model_module.MCTN(args)
        model.seq2seq1.device = model.seq2seq2.device = "cpu"  # MMSA hard-codes 'cuda'
        return model

    torch.manual_seed(1)
    official = build()
    initial_state = parameters(official)
    official.double()

    # dropout map (MMSA's rates: all hard-coded 0) and eval-mode forward, same initial weights
    rated = build().double()
    rated.load_state_dict(official.state_dict())
    dropout_map, eval_forwards = record_rated(rated, official_batches, run)

    # MMSA's do_train
    trainer = train_module.MCTN(args)
    trainer.metrics = lambda pred, true: {}
    epochs_seen: list[int] = []
    trainer.do_test = scripted_validation(VALID_LOSSES, epochs_seen)
    forwards: list[dict] = []
    optimizer_steps: list[dict] = []
    original_forward = official.forward

    def recording_forward(text, audio, vision, labels, lengths=None):
        terms: list = []
        with recorded_losses(terms):
            loss, prediction = original_forward(text, audio, vision, labels, lengths)
        forwards.append({"M": prediction.detach().clone(), "loss": loss.detach().clone(),
                         "criterion_calls": torch.stack(terms)})
        return loss, prediction

    official.forward = recording_forward

    def record_step(gradients):
        optimizer_steps.append({"after_forward": len(forwards), "gradients": gradients,
                                "state": parameters(official)})

    train_module.optim.Adam = recording_adam(official, record_step)
    with tempfile.TemporaryDirectory() as tmp:
        args.model_save_path = str(Path(tmp) / "best.pth")
        trainer.do_train(official, {"train": official_batches, "valid": [None]})

    def flat(outputs):
        return compact({k: v.reshape(v.shape[0], -1) if k == "M" else v
                        for k, v in outputs.items()})

    keep = {"input_ids", "attention_mask", "audio_full", "vision_full", "lengths", "index",
            "labels"}
    print(f"{len(forwards)} forward passes, {len(optimizer_steps)} optimiser steps, "
          f"{len(epochs_seen)} epochs")
    return {
        "tiny_bert": dict(BERT), "bert_state": compact(bert_state),
        "sizes": dict(SIZES), "seq_len": SEQ_LEN, "optimiser": {
            "learning_rate": OPTIMISER["init_lr"], "grad_clip_norm": OPTIMISER["grad_clip"]},
        "loss_terms": list(TERMS),
        "initial_state": compact(initial_state),
        "batches": [{k: v for k, v in b.items() if k in keep} for b in batches],
        "forwards": [flat(f) for f in forwards],
        # every step's gradients; the parameters after KEEP_STATE's steps (size)
        "optimizer_steps": [{"after_forward": s["after_forward"],
                             "gradients": packed(s["gradients"]),
                             "state": packed(s["state"]) if i in KEEP_STATE else {}}
                            for i, s in enumerate(optimizer_steps, 1)],
        "early_stopping": {"valid_losses": VALID_LOSSES, "early_stop": EARLY_STOP,
                           "epochs_run": len(epochs_seen), "min_improvement": 1e-6},
        "dropout_map": dropout_map,
        "eval_forwards": [flat(f) for f in eval_forwards],
    }


if __name__ == "__main__":
    generate(__doc__, "mctn", ["models/singleTask/MCTN.py", "trains/singleTask/MCTN.py"], record)
