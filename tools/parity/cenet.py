"""Parity fixture for CENET from MMSA's code (thuiar/MMSA ``cenet``).

    python tools/parity/cenet.py --official /path/to/MMSA --out tests/parity/cenet.pt

MMSA's CENET (``models/singleTask/CENET.py``) is its own copy of BERT with the CE block before
layer 1; its trainer (``trains/singleTask/CENET.py``) fine-tunes all of it with Adam in three
groups and clips the gradient norm to 2. The model imports ``pytorch_transformers`` (BERT's
config and ``PreTrainedModel`` of 2019), which is replaced at run time by a stand-in with the
few names it reads (:func:`stub_pytorch_transformers`). BERT is a tiny random one
(``CENET_BERT``); its weights are copied into MMSA's BERT, and the test builds msakit's model on
the same ``transformers`` BERT. Audio/vision are given to MMSA as its fixed-length zero-padded
arrays (``AVERAGE_STEPS`` steps), which CE attends to whole.

Recorded, in float64 (as ``_mmsa.py`` records the feature-based models):

1. **training** (BERT dropout 0): MMSA's own ``do_train`` on 6 real clips (3 batches of 2) with
   scripted validation losses until its early stopping ends it: per forward pass the prediction
   and the loss, per optimiser step the gradient of every parameter that has one and the state
   after the first and the last step;
2. **dropout map** at bert-base's rates (hidden and attention dropout 0.1, which MMSA's
   ``BertClassificationHead`` uses too), train mode: ``(p, input shape)`` of every ``F.dropout``
   call of one forward pass, in call order;
3. **eval-mode forward** at those rates, from the same initial weights: the predictions per
   batch, and per clip alone with its audio/vision cut to its real steps (no padding to attend
   to: what msakit's default, padding-masked CE must give for the clip in any batch).
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    TINY_BERT,
    compact,
    patch_bert_downloads,
    real_clips,
    recording_adam,
    scripted_validation,
)
from _mmsa import (  # noqa: E402
    AVERAGE_STEPS,
    BATCH,
    EARLY_STOP,
    ROWS,
    VALID_LOSSES,
    AMIOLike,
    AttributeDict,
    fixed_length,
    generate,
    recorded_dropout,
)

#: the tiny BERT of this fixture: TINY_BERT at hidden size 16 (the fixture holds a gradient of
#: every parameter per step, BERT's included, and must stay under 1 MB), its weights drawn at
#: std 0.2 instead of 0.02 so that its layers' gradients are well above the tolerance
CENET_BERT = {**TINY_BERT, "hidden_size": 16, "intermediate_size": 32, "initializer_range": 0.2}
#: bert-base's dropout rates, which MMSA's CENET reads from BERT's config
RATED_BERT = {**CENET_BERT, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
#: MMSA's MOSI values (config_regression.json, cenet), recorded as the official setting
OPTIMISER = {"learning_rate": 1e-5, "weight_decay": 1e-4, "adam_epsilon": 3e-8}
#: what the recorded run uses instead: a learning rate at which the parameters move by more than
#: the tolerance in a few steps, and a weight decay large enough (Adam adds it to the gradient)
#: that a parameter in the wrong group (the CE block's biases decay, BERT's and the head's do
#: not) changes the result by more than the tolerance
RUN_OPTIMISER = {**OPTIMISER, "learning_rate": 1e-3, "weight_decay": 0.1}
#: CE's and the head's weights and biases are drawn at this std (BERT's initialiser uses 0.02 and
#: zero biases: predictions would then differ between clips by less than the tolerance)
OWN_WEIGHTS_STD = 0.2
STATE_STEPS = (0, -1)  # the optimiser steps whose state is kept (fixture size)


def stub_pytorch_transformers() -> None:
    """``pytorch_transformers`` as MMSA's CENET.py reads it: ``BertConfig`` (``transformers``'),
    ``modeling_utils.PreTrainedModel`` (keeps the config; ``init_weights`` applies the
    subclass's ``_init_weights`` to every module, as pytorch_transformers 1.x does),
    ``prune_linear_layer`` (only in head pruning, never called) and an empty archive map."""
    from transformers import BertConfig

    class PreTrainedModel(nn.Module):
        def __init__(self, config, *args, **kwargs):
            super().__init__()
            self.config = config

        def init_weights(self):
            self.apply(self._init_weights)

    def prune_linear_layer(*args, **kwargs):
        raise NotImplementedError("head pruning is not part of the fixture")

    package = types.ModuleType("pytorch_transformers")
    utils = types.ModuleType("pytorch_transformers.modeling_utils")
    utils.PreTrainedModel, utils.prune_linear_layer = PreTrainedModel, prune_linear_layer
    package.BertConfig, package.BERT_PRETRAINED_MODEL_ARCHIVE_MAP = BertConfig, {}
    package.modeling_utils = utils
    sys.modules["pytorch_transformers"] = package
    sys.modules["pytorch_transformers.modeling_utils"] = utils


def build_official(model_module, bert_config: dict, args: AttributeDict,
                   bert_state: dict) -> nn.Module:
    """MMSA's ``AMIO`` for cenet: ``CENET(config, pos_tag/senti/polarity embeddings, args)``
    wrapped as ``.Model``, with the tiny BERT's weights in its BERT."""
    from transformers import BertConfig

    config = BertConfig(**bert_config, num_labels=1)
    model = model_module.CENET(config, pos_tag_embedding=True, senti_embedding=True,
                               polarity_embedding=True, args=args)
    missing, unexpected = model.bert.load_state_dict(bert_state, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith(("encoder.CE.", "embeddings.senti_", "embeddings.pos_tag_",
                             "embeddings.polarity_")) for k in missing), missing
    return AMIOLike(model)


def make_batches(clips: dict) -> list[dict]:
    """3 batches of 2: token ids and mask (to the batch's longest transcript), MMSA's
    ``text`` ``(B, 3, L)`` (ids, mask, segment ids), audio/vision as MMSA's fixed-length arrays,
    and the word-level ``audio_full``/``vision_full`` with ``lengths`` for msakit."""
    batches = []
    steps_mask = torch.arange(clips["audio"].shape[1])[None] < clips["lengths"][:, None]
    for start in range(0, len(ROWS), BATCH):
        rows = slice(start, start + BATCH)
        mask = clips["attention_mask"][rows]
        text_len = int(mask.sum(1).max())
        ids, mask = clips["input_ids"][rows, :text_len], mask[:, :text_len]
        batches.append({
            "input_ids": ids, "attention_mask": mask,
            "text": torch.stack([ids, mask, torch.zeros_like(ids)], dim=1).double(),
            "official_audio": fixed_length(clips["audio"][rows], steps_mask[rows], AVERAGE_STEPS),
            "official_vision": fixed_length(clips["vision"][rows], steps_mask[rows],
                                            AVERAGE_STEPS),
            "audio_full": clips["audio"][rows], "vision_full": clips["vision"][rows],
            "lengths": clips["lengths"][rows], "index": torch.arange(start, start + BATCH),
            "labels": {"M": clips["labels"][rows].clone()},
        })
    return batches


def unpadded_clips(batches: list[dict]) -> list[tuple]:
    """Each clip alone, MMSA's inputs without padding: ``(text (1, 3, L_t), audio (1, L, D_a),
    vision (1, L, D_v))`` cut to the clip's tokens and steps."""
    out = []
    for b in batches:
        for i in range(len(b["lengths"])):
            tokens, steps = int(b["attention_mask"][i].sum()), int(b["lengths"][i])
            out.append((b["text"][i:i + 1, :, :tokens], b["audio_full"][i:i + 1, :steps],
                        b["vision_full"][i:i + 1, :steps]))
    return out


def record(model_module, train_module, data: Path) -> dict:
    clips = real_clips(data, ROWS)
    patch_bert_downloads()  # the trainer loads a tokenizer it never uses
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert_state = BertModel(BertConfig(**CENET_BERT)).state_dict()
    batches = make_batches(clips)
    args = AttributeDict({
        "model_name": "cenet", "dataset_name": "mosi", "train_mode": "regression",
        "pretrained": "bert-base-uncased", "KeyEval": "Loss", "early_stop": EARLY_STOP,
        "device": torch.device("cpu"), "cur_seed": 1,
        "feature_dims": (CENET_BERT["hidden_size"], clips["audio"].shape[-1],
                         clips["vision"].shape[-1]),
        **RUN_OPTIMISER,
    })
    torch.manual_seed(1)
    official = build_official(model_module, CENET_BERT, args, bert_state)
    with torch.no_grad():
        for name, parameter in official.named_parameters():
            if name.startswith(("Model.bert.encoder.CE.", "Model.classifier.")):
                parameter.normal_(0.0, OWN_WEIGHTS_STD)
    initial_state = {k: v.clone() for k, v in official.state_dict().items()}
    official.double()

    def inputs(b):
        return b["text"], b["official_audio"], b["official_vision"]

    # 2 + 3: dropout map and eval-mode forwards at bert-base's rates, same initial weights
    rated = build_official(model_module, RATED_BERT, args, bert_state).double()
    rated.load_state_dict(initial_state)
    rated.train()
    calls: list = []
    torch.manual_seed(2)
    with recorded_dropout(calls):
        rated(*inputs(batches[0]))
    rated.eval()
    with torch.no_grad():
        eval_forwards = [{"M": rated(*inputs(b))[0].detach().clone()} for b in batches]
        eval_unpadded = torch.cat([rated(*clip)[0] for clip in unpadded_clips(batches)])

    # 1: MMSA's do_train, dropout 0
    trainer = train_module.CENET(args)
    trainer.metrics = lambda pred, true: {}
    forwards: list[dict] = []
    optimizer_steps: list[dict] = []
    epochs_seen: list[int] = []
    original_forward = official.forward

    def recording_forward(text, audio, video):
        outputs = original_forward(text, audio, video)
        forwards.append({"M": outputs[0].detach().clone()})
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

    train_module.torch.optim.Adam = recording_adam(official, record_step)
    official_batches = [{"text": b["text"], "audio": b["official_audio"],
                         "vision": b["official_vision"], "labels": b["labels"]} for b in batches]
    with tempfile.TemporaryDirectory() as tmp:
        args.model_save_path = str(Path(tmp) / "best.pth")
        trainer.do_train(official, {"train": official_batches, "valid": [None]})

    trained = {name for name, p in official.named_parameters() if p.grad is not None}
    kept_states = {range(len(optimizer_steps))[i] for i in STATE_STEPS}
    keep = {"input_ids", "attention_mask", "audio_full", "vision_full", "lengths", "index",
            "labels"}
    print(f"{len(forwards)} forward passes, {len(optimizer_steps)} optimiser steps, "
          f"{len(epochs_seen)} epochs; {len(trained)} parameters with gradients; dropout map "
          f"{calls}")
    return {
        "tiny_bert": dict(CENET_BERT), "rated_bert": dict(RATED_BERT),
        "bert_state": compact(bert_state),
        "optimiser": dict(RUN_OPTIMISER),
        "official_optimiser": dict(OPTIMISER),
        "initial_state": compact(initial_state),
        "batches": [compact({k: v for k, v in b.items() if k in keep and k != "labels"})
                    | {"labels": b["labels"]} for b in batches],
        "forwards": [compact({"M": f["M"].reshape(-1, 1), "loss": f["loss"]}) for f in forwards],
        # gradients of the parameters that have one (BERT's embeddings never do: MMSA computes
        # them under no_grad; the pooler's output is unused)
        "optimizer_steps": [{"after_forward": s["after_forward"],
                             "gradients": compact({k: v for k, v in s["gradients"].items()
                                                   if k in trained}),
                             "state": compact(s["state"]) if i in kept_states else {}}
                            for i, s in enumerate(optimizer_steps)],
        "early_stopping": {"valid_losses": VALID_LOSSES, "early_stop": EARLY_STOP,
                           "epochs_run": len(epochs_seen), "min_improvement": 1e-6},
        "dropout_map": {"calls": calls, "lstm": [], "batch": 0},
        "eval_forwards": [compact({"M": f["M"].reshape(-1, 1)}) for f in eval_forwards],
        "eval_unpadded": eval_unpadded.detach().reshape(-1).float(),
        "average_steps": AVERAGE_STEPS,
    }


if __name__ == "__main__":
    stub_pytorch_transformers()
    generate(__doc__, "cenet", ["models/singleTask/CENET.py", "trains/singleTask/CENET.py"],
             record)
