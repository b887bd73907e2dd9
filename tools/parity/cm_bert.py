"""Parity fixture for CM-BERT from the authors' code (thuiar/Cross-Modal-BERT, not in MMSA).

    pip install --target /tmp/ppb "pytorch-pretrained-bert==0.6.1" --no-deps
    git clone https://github.com/thuiar/Cross-Modal-BERT /tmp/cmbert    # or an archive + COMMIT
    PYTHONPATH=/tmp/ppb python tools/parity/cm_bert.py --official /tmp/cmbert

The official ``model.py`` carries its own pytorch_pretrained_bert-style BERT; it imports
``pytorch_pretrained_bert`` (0.6.1, its requirements.txt) for ``cached_path`` and its training
script for ``BertAdam``. Adapted at run time only: ``boto3``/``botocore`` (imported by
``pytorch_pretrained_bert.file_utils``, never used here) are stub modules; the model is built
from a tiny random ``BertConfig`` (``TINY_BERT``; its encoder has ``num_attention_heads`` layers,
so heads = layers = 2) instead of ``from_pretrained``; ``BertFinetun``'s sub-modules that
hard-code bert-base's width 768 (``proj_t``, ``dense``, ``LayerNorm1``) and the 5-d audio of the
authors' pickle (``proj_a``) are rebuilt at the tiny width and the data's 74 COVAREP dims, then
initialised as the official constructor does (``init_bert_weights``; the Conv1d's keep
PyTorch's default).

``run_classifier.py``'s ``main`` cannot run without its data files and bert-base; its training
steps are replayed here on the official objects: the freezing rule (only BERT's layers, its
pooler and ``BertFinetun`` train: the embeddings and the classifier stay fixed), the
three parameter groups (``no_decay``/``new_decay`` name rules, the new layer at lr 0.01),
``BertAdam(lr, warmup=0.1, t_total=int(N / batch) * epochs)``, and per batch ``loss =
model(input_ids, audio, segment_ids, input_mask, labels).mean()`` (``n_gpu = 2`` in the script:
the mean is taken; ``DataParallel`` on one device runs the module itself), ``backward``,
``step``, ``zero_grad``, for 3 epochs (no early stopping; validation scripted as for the MMSA
fixtures, the checkpoint of the lowest validation loss kept).

Inputs: six real clips of the 229-clip word-aligned MOSI pickle in three batches of two
(``bert_mag.py``'s: word-by-word tokens folded into the tiny vocabulary, each word's COVAREP row
repeated per sub-word token, a zero row for [CLS]/[SEP] -- the paper's zero vector), float64.
Recorded: with every dropout 0, each forward's prediction and loss, each step's gradients (after
BertAdam's per-parameter clipping: what the update used; the first step's also before it) and
the state after each step; at bert-base's dropout (0.1) and ``BertFinetun``'s 0.3, the dropout
map of one train-mode pass and eval-mode predictions; and a stand-alone record of the official
``BertAdam`` on given gradients (two groups, clipping, warm-up).
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    DEFAULT_DATA,
    add_to_path,
    compact,
    official_commit,
    record_rated,
    save_fixture,
)
from bert_mag import make_batches, token_aligned_clips  # noqa: E402

REPO = "thuiar/Cross-Modal-BERT"
FILES = ["model.py", "run_classifier.py"]
#: tiny random BERT for both sides (transformers' BertConfig keys; the official one is built
#: from the same values); 2 heads = 2 layers, as the official encoder has one layer per head
TINY_BERT = {
    "vocab_size": 128, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 32, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
BERT_BASE_DROPOUT = 0.1  # bert-base-uncased's hidden and attention dropout
#: run_classifier.py's defaults; the fixture's steps use learning_rate 1e-3 (2e-5 moves the
#: weights by less than the tolerance); the new layer's 0.01 and the rest are official
OFFICIAL = {"learning_rate": 2e-5, "new_layer_lr": 0.01, "warmup_proportion": 0.1,
            "num_train_epochs": 3, "weight_decay": 0.01, "max_grad_norm": 1.0,
            "train_batch_size": 24, "max_seq_length": 50, "attention_dropout": 0.3}
OPTIMISER = {"learning_rate": 1e-3, "new_layer_lr": 0.01, "warmup_proportion": 0.1}
EPOCHS = 3
STATE_AFTER_STEPS = (1, 5, 9)  # the state after these optimiser steps (the fixture's size)
VALID_LOSSES = [1.0, 0.9, 0.95]  # scripted: epoch 2 is kept


def import_official(checkout: Path):
    """The official ``model.py`` (and ``pytorch_pretrained_bert.optimization``)."""
    for name in ("boto3", "botocore", "botocore.exceptions"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["botocore.exceptions"].ClientError = type("ClientError", (Exception,), {})
    add_to_path(checkout)
    import model as official_model  # the repository's model.py
    from pytorch_pretrained_bert.optimization import BertAdam

    return official_model, BertAdam


def build_official(official_model, hidden_dropout: float, attention_dropout: float,
                   audio_dim: int) -> nn.Module:
    """``BertForSequenceClassification`` on the tiny BERT, ``BertFinetun`` at the tiny width."""
    config = official_model.BertConfig(
        TINY_BERT["vocab_size"], hidden_size=TINY_BERT["hidden_size"],
        num_hidden_layers=TINY_BERT["num_hidden_layers"],
        num_attention_heads=TINY_BERT["num_attention_heads"],
        intermediate_size=TINY_BERT["intermediate_size"],
        max_position_embeddings=TINY_BERT["max_position_embeddings"],
        hidden_dropout_prob=hidden_dropout, attention_probs_dropout_prob=hidden_dropout)
    model = official_model.BertForSequenceClassification(config, num_labels=1)
    width = TINY_BERT["hidden_size"]
    layer = model.BertFinetun
    layer.proj_t = nn.Conv1d(width, 30, kernel_size=1, padding=0, bias=False)
    layer.proj_a = nn.Conv1d(audio_dim, 30, kernel_size=1, padding=0, bias=False)
    layer.dense = nn.Linear(width, width)
    layer.LayerNorm1 = official_model.BertLayerNorm(width)
    layer.dropout1 = nn.Dropout(attention_dropout)
    layer.dense.apply(model.init_bert_weights)
    layer.LayerNorm1.apply(model.init_bert_weights)
    return model


def official_groups(model: nn.Module, new_layer_lr: float) -> list[dict]:
    """run_classifier.py's freezing rule and optimiser groups, on the official model."""
    for name, param in model.named_parameters():
        param.requires_grad = False
        if "encoder.layer." in name or "BertFinetun" in name or "pooler" in name:
            param.requires_grad = True
    named = list(model.named_parameters())
    no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
    new_decay = ["BertFine"]
    return [
        {"params": [p for n, p in named if not any(nd in n for nd in no_decay)
                    and not any(nw in n for nw in new_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in named if any(nd in n for nd in no_decay)],
         "weight_decay": 0.0},
        {"params": [p for n, p in named if not any(nd in n for nd in no_decay)
                    and any(nw in n for nw in new_decay)], "lr": new_layer_lr},
    ]


def official_inputs(batch: dict) -> tuple:
    """``(input_ids, audio, segment_ids, input_mask)`` as ``run_classifier.py`` passes them."""
    ids = batch["input_ids"]
    return ids, batch["audio_full"], torch.zeros_like(ids), batch["attention_mask"]


def record_bert_adam(BertAdam) -> dict:
    """The official BertAdam on fixed gradients: two groups (decay 0.01 / 0), three shapes,
    gradients large enough that per-parameter clipping acts, warm-up and linear decay."""
    generator = torch.Generator().manual_seed(7)
    shapes = {"a": (3, 4), "b": (5,), "c": (2, 2, 2)}
    initial = {k: torch.randn(s, generator=generator, dtype=torch.float64)
               for k, s in shapes.items()}
    steps = 6
    gradients = [{k: torch.randn(s, generator=generator, dtype=torch.float64) * scale
                  for k, s in shapes.items()} for scale in (0.1, 3.0, 0.5, 2.0, 0.05, 1.5)]
    params = {k: nn.Parameter(v.clone()) for k, v in initial.items()}
    settings = {"lr": 0.1, "warmup": 0.3, "t_total": steps}
    optimizer = BertAdam([{"params": [params["a"], params["c"]], "weight_decay": 0.01},
                          {"params": [params["b"]], "weight_decay": 0.0}], **settings)
    states = []
    for step in range(steps):
        for k, p in params.items():
            p.grad = gradients[step][k].clone()
        optimizer.step()
        states.append({k: p.detach().clone() for k, p in params.items()})
    return {"initial": initial, "gradients": gradients, "states": states,
            "groups": [["a", "c"], ["b"]], "weight_decay": [0.01, 0.0], **settings,
            "max_grad_norm": 1.0, "eps": 1e-6}


def record(official_model, BertAdam, data: Path) -> dict:
    batches = make_batches(token_aligned_clips(data))
    audio_dim = batches[0]["audio_full"].shape[-1]
    torch.manual_seed(1)
    official = build_official(official_model, 0.0, 0.0, audio_dim)
    initial_state = {k: v.clone() for k, v in official.state_dict().items()}
    official.double()

    # dropout map and eval-mode predictions at the official rates, the same initial weights
    rated = build_official(official_model, BERT_BASE_DROPOUT, OFFICIAL["attention_dropout"],
                           audio_dim).double()
    rated.load_state_dict(initial_state)
    dropout_map, eval_forwards = record_rated(
        rated, batches, lambda m, b: {"M": m(*official_inputs(b))[0]})

    # run_classifier.py's training steps, dropout 0
    groups = official_groups(official, OPTIMISER["new_layer_lr"])
    examples, batch_size = sum(len(b["index"]) for b in batches), len(batches[0]["index"])
    t_total = int(examples / batch_size) * EPOCHS
    optimizer = BertAdam(groups, lr=OPTIMISER["learning_rate"],
                         warmup=OPTIMISER["warmup_proportion"], t_total=t_total)
    forwards, steps, logits = [], [], []
    # the forward with labels returns the loss only: the classifier's output is recorded
    official.classifier.register_forward_hook(lambda m, i, out: logits.append(out.detach()))
    for _ in range(EPOCHS):
        official.train()
        for batch in batches:
            loss = official(*official_inputs(batch), batch["labels"]["M"]).mean()
            forwards.append({"M": logits[-1].reshape(-1).clone(), "loss": loss.detach().clone()})
            loss.backward()
            raw = {k: p.grad.detach().clone() for k, p in official.named_parameters()
                   if p.grad is not None} if not steps else None
            optimizer.step()  # clips each gradient in place, then updates
            used = {k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                    for k, p in official.named_parameters()}
            keep = len(steps) + 1 in STATE_AFTER_STEPS
            steps.append({"after_forward": len(forwards), "gradients": compact(used),
                          "state": compact(official.state_dict()) if keep else {}})
            if raw is not None:
                steps[-1]["raw_gradients"] = compact(raw)
            optimizer.zero_grad()
    clipped = [k for k, g in steps[0]["raw_gradients"].items()
               if not torch.equal(g, steps[0]["gradients"][k])]
    print(f"{len(forwards)} forward passes, {len(steps)} optimiser steps; clipped at step 1: "
          f"{clipped}; dropout map {dropout_map['calls']}")
    assert clipped, "no gradient was clipped: the fixture would not test the clipping"
    keep = {"input_ids", "attention_mask", "audio_full", "vision_full", "lengths", "index",
            "labels"}
    return {
        "tiny_bert": dict(TINY_BERT),
        "bert_dropout": BERT_BASE_DROPOUT,
        "initial_state": compact(initial_state),
        "batches": [{k: ({"M": v["M"].float()} if k == "labels" else
                         v.float() if v.is_floating_point() else v)
                     for k, v in b.items() if k in keep} for b in batches],
        "forwards": [compact(f) for f in forwards],
        "optimizer_steps": steps,
        "early_stopping": {"valid_losses": VALID_LOSSES, "epochs_run": EPOCHS,
                           "min_improvement": 0.0},
        "t_total": t_total,
        "dropout_map": dropout_map,
        "eval_forwards": eval_forwards,
        "official_settings": dict(OFFICIAL),
        "optimiser": dict(OPTIMISER),
        "bert_adam": record_bert_adam(BertAdam),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True,
                        help="thuiar/Cross-Modal-BERT checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/parity/cm_bert.pt"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    commit = official_commit(args.official)
    official_model, BertAdam = import_official(args.official)
    recorded = record(official_model, BertAdam, args.data)
    save_fixture({"official": {"repo": REPO, "commit": commit, "files": FILES}, **recorded},
                 args.out)


if __name__ == "__main__":
    main()
