"""Parity fixture for MAG-BERT from MMSA's code (thuiar/MMSA ``bert_mag``).

    pip install --target /tmp/tf4 "transformers==4.46.3" "tokenizers>=0.20,<0.21" \
        "huggingface_hub>=0.23.2,<1.0" --no-deps
    PYTHONPATH=/tmp/tf4 python tools/parity/bert_mag.py --official /path/to/MMSA

MMSA's ``MAG_BertModel`` rebuilds BERT's forward from transformers 4.x parts
(``get_extended_attention_mask``, ``get_head_mask``), which transformers 5 removed: the official
side runs on a transformers 4.46 put first on ``PYTHONPATH`` (msakit's side, in the test, on the
project's transformers). Patched at run time: ``MAG_BertForSequenceClassification.from_pretrained``
builds the model from a tiny random BERT config (``SMALL_BERT``) and loads the tiny BERT's
weights, so no download is needed.

Inputs: six real clips of the 229-clip word-aligned MOSI pickle in three batches of two,
tokenised word by word with msakit's default tokenizer (ids folded into the tiny vocabulary);
each word's COVAREP/Facet row repeated for each of its sub-word tokens and zero rows for
[CLS]/[SEP] (msakit's ``expand_to_tokens``, the authors' ``convert_to_features``); MMSA's text
is ``(B, 3, L)`` ids / mask / segments. Recorded in float64, as ``_mmsa.py`` describes for the
feature-based models: MMSA's ``do_train`` with the gate's and BERT's dropout 0 (every forward's
prediction and loss, every gradient, the state after selected steps), the dropout map at MMSA's
MOSI rate (gate 0.3) with bert-base's dropout 0.1, and eval-mode forwards at those rates.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    CLS_ID,
    PAD_ID,
    SEP_ID,
    compact,
    fold_token_ids,
    recording_adam,
    scripted_validation,
)
from _mmsa import AttributeDict, generate, recorded_dropout  # noqa: E402

ROWS = [0, 5, 7, 1, 12, 9]
BATCH = 2
MAX_TEXT_TOKENS = 50  # MMSA's aligned_50 text and the authors' --max_seq_length
VALID_LOSSES = [1.0, 0.9, 0.95]  # epoch 2 is best; early_stop 1 ends the run after epoch 3
EARLY_STOP = 1
#: smaller than _common.TINY_BERT: the fixture stores BERT's gradient at every step
SMALL_BERT = {
    "vocab_size": 128, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 32, "max_position_embeddings": 64, "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
BERT_BASE_DROPOUT = 0.1  # bert-base-uncased's hidden and attention dropout
MOSI = {"beta_shift": 1.0, "dropout_prob": 0.3, "learning_rate": 2e-5}  # config_regression.json
#: Adam's step at MMSA's 2e-5 would stay within the comparison tolerance; the fixture's steps use
#: 1e-3 (the optimiser and its settings are otherwise MMSA's: one Adam, weight decay 0)
OPTIMISER = {"learning_rate": 1e-3, "weight_decay": 0.0}
STATE_AFTER_STEPS = (1, 9)  # the state after these optimiser steps (size)


def token_aligned_clips(data: Path) -> dict:
    """The clips' word-by-word tokens (folded ids), token-aligned audio/vision, labels."""
    from msakit.data import load_dataset
    from msakit.data.text import tokenize_words
    from msakit.lm import load_tokenizer

    split = load_dataset(data).split("all").subset(ROWS)
    tokenizer = load_tokenizer("all-MiniLM-L6-v2")
    special = {tokenizer.pad_token_id: PAD_ID, tokenizer.cls_token_id: CLS_ID,
               tokenizer.sep_token_id: SEP_ID}
    clips = []
    for i in range(len(ROWS)):
        tokens = tokenize_words(tokenizer, list(split.words[i]), MAX_TEXT_TOKENS)
        ids = fold_token_ids(tokens.input_ids.tolist(), special)

        clips.append({"ids": torch.tensor(ids),
                      "audio": _aligned(split.audio[i], tokens.word_index),
                      "vision": _aligned(split.vision[i], tokens.word_index),
                      "label": float(split.labels[i])})
    return clips


def _aligned(words: np.ndarray, word_index: np.ndarray) -> torch.Tensor:
    """``(L_words, D)`` -> ``(L_t, D)`` float64: each word's row per token, zeros for specials."""
    from msakit.data.text import expand_to_tokens

    words = np.nan_to_num(words.astype(np.float64), posinf=0.0, neginf=0.0)
    return torch.from_numpy(expand_to_tokens(words, word_index).astype(np.float64))


def make_batches(clips: list[dict]) -> list[dict]:
    """Batches of two, padded to the batch's longest clip (zero ids, mask, features)."""
    batches = []
    for start in range(0, len(clips), BATCH):
        part = clips[start:start + BATCH]
        length = max(len(c["ids"]) for c in part)
        ids = torch.zeros(len(part), length, dtype=torch.long)
        audio = torch.zeros(len(part), length, part[0]["audio"].shape[1], dtype=torch.float64)
        vision = torch.zeros(len(part), length, part[0]["vision"].shape[1], dtype=torch.float64)
        for i, clip in enumerate(part):
            n = len(clip["ids"])
            ids[i, :n], audio[i, :n], vision[i, :n] = clip["ids"], clip["audio"], clip["vision"]
        mask = (torch.arange(length)[None] < torch.tensor([len(c["ids"]) for c in part])[:, None])
        batches.append({
            "input_ids": ids, "attention_mask": mask.long(), "audio_full": audio,
            "vision_full": vision, "lengths": mask.sum(1), "index": torch.arange(start,
                                                                               start + BATCH),
            "labels": {"M": torch.tensor([c["label"] for c in part], dtype=torch.float64)},
        })
    return batches


def official_inputs(batch: dict) -> tuple:
    """MMSA's ``(text (B, 3, L), audio, vision)``: ids, mask and segment ids as floats."""
    ids = batch["input_ids"]
    text = torch.stack([ids, batch["attention_mask"], torch.zeros_like(ids)], dim=1).double()
    return text, batch["audio_full"], batch["vision_full"]


def record(model_module, train_module, data: Path) -> dict:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(**SMALL_BERT))
    bert_state = {k: v.clone() for k, v in bert.state_dict().items()}
    classifier = model_module.MAG_BertForSequenceClassification

    def tiny_from_pretrained(cls, path, args, num_labels):
        config = BertConfig(**{**SMALL_BERT, "hidden_dropout_prob": args.bert_dropout,
                               "attention_probs_dropout_prob": args.bert_dropout},
                            num_labels=num_labels)
        model = cls(config, args)
        missing, unexpected = model.bert.load_state_dict(bert_state, strict=False)
        assert not unexpected and all(k.startswith("MAG.") for k in missing), missing
        return model

    classifier.from_pretrained = classmethod(tiny_from_pretrained)
    batches = make_batches(token_aligned_clips(data))
    dims = (SMALL_BERT["hidden_size"], batches[0]["audio_full"].shape[-1],
            batches[0]["vision_full"].shape[-1])
    base = {"model_name": "bert_mag", "language": "en", "num_classes": 1,
            "train_mode": "regression", "dataset_name": "mosi", "KeyEval": "Loss",
            "early_stop": EARLY_STOP, "cur_seed": 1, "device": torch.device("cpu"),
            "feature_dims": dims, "beta_shift": MOSI["beta_shift"], **OPTIMISER}
    args = AttributeDict({**base, "dropout_prob": 0.0, "bert_dropout": 0.0})
    torch.manual_seed(1)
    official = model_module.BERT_MAG(args)
    initial_state = {k: v.clone() for k, v in official.state_dict().items()}
    official.double()

    # dropout map and eval-mode forward at MMSA's MOSI rates, the same initial weights
    rated = model_module.BERT_MAG(AttributeDict({**args, "dropout_prob": MOSI["dropout_prob"],
                                                 "bert_dropout": BERT_BASE_DROPOUT})).double()
    rated.load_state_dict(initial_state)
    rated.train()
    calls: list = []
    torch.manual_seed(2)
    with recorded_dropout(calls):
        rated(*official_inputs(batches[0]))
    rated.eval()
    with torch.no_grad():
        eval_forwards = [{"M": rated(*official_inputs(b))["M"].detach().clone()}
                         for b in batches]

    # MMSA's do_train, dropout 0
    trainer = train_module.BERT_MAG(args)
    trainer.metrics = lambda pred, true: {}
    forwards: list[dict] = []
    steps: list[dict] = []
    epochs_seen: list[int] = []
    original_forward = official.forward

    def recording_forward(text, audio, video):
        outputs = original_forward(text, audio, video)
        forwards.append({"M": outputs["M"].detach().clone()})
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
        keep = len(steps) + 1 in STATE_AFTER_STEPS
        steps.append({"after_forward": len(forwards), "gradients": compact(gradients),
                      "state": compact(official.state_dict()) if keep else {}})

    train_module.optim.Adam = recording_adam(official, record_step)
    official_batches = [{"text": t, "audio": a, "vision": v, "labels": b["labels"]}
                        for b in batches for t, a, v in [official_inputs(b)]]
    with tempfile.TemporaryDirectory() as tmp:
        args.model_save_path = str(Path(tmp) / "best.pth")
        trainer.do_train(official, {"train": official_batches, "valid": [None]})

    print(f"{len(forwards)} forward passes, {len(steps)} optimiser steps, "
          f"{len(epochs_seen)} epochs; dropout map {calls}")
    keep = {"input_ids", "attention_mask", "audio_full", "vision_full", "lengths", "index",
            "labels"}
    return {
        "tiny_bert": dict(SMALL_BERT),
        "bert_dropout": BERT_BASE_DROPOUT,
        "bert_state": compact(bert_state),
        "initial_state": compact(initial_state),
        # the pickle's features and labels are float32: stored float32, exactly
        "batches": [{k: ({"M": v["M"].float()} if k == "labels" else
                         v.float() if v.is_floating_point() else v)
                     for k, v in b.items() if k in keep} for b in batches],
        "forwards": [compact(f) for f in forwards],
        "optimizer_steps": steps,
        "early_stopping": {"valid_losses": VALID_LOSSES, "early_stop": EARLY_STOP,
                           "epochs_run": len(epochs_seen), "min_improvement": 1e-6},
        "dropout_map": {"calls": calls, "lstm": [], "batch": 0},
        "eval_forwards": [compact(f) for f in eval_forwards],
        "official_rates": {"gate_dropout": MOSI["dropout_prob"],
                           "bert_dropout": BERT_BASE_DROPOUT},
        "mosi_settings": dict(MOSI),
        "optimiser": dict(OPTIMISER),
    }


if __name__ == "__main__":
    generate(__doc__, "bert_mag", ["models/singleTask/BERT_MAG.py",
                                   "trains/singleTask/BERT_MAG.py"], record)
