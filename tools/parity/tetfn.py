"""Parity fixture for TETFN from MMSA's port (thuiar/MMSA; the authors published no other code).

    python tools/parity/tetfn.py --official /path/to/MMSA --out tests/parity/tetfn.pt

Loads MMSA's model (``models/multiTask/TETFN.py`` with its ``subNets``: BertTextEncoder and the
transformer encoder) and trainer (``trains/multiTask/TETFN.py``) from the checkout (see
``_mmsa.load_official``), patched at run time only where the environment needs it: the tiny
random BERT of ``_common.TINY_BERT`` instead of the downloaded one, float64, small layer sizes.
Inputs are what MMSA's aligned loader gives the model: the token ids, mask and segment ids of 6
real clips zero-padded or cut to ``STEPS`` tokens, their word-level audio/vision zero-padded or
cut to ``STEPS`` steps (two clips are cut, the others padded). Recorded:

1. **training** (dropout 0): MMSA's ``do_train`` (3 batches of 2, ``update_epochs`` 2,
   ``excludeZero``, a clip labelled 0.0) with scripted validation losses until its early
   stopping ends it: per forward pass the four predictions and ``Feature_*``, the four loss
   terms as the loop adds them, and the trainer's labels and centres after the batch; the
   gradients at the second optimiser step and the parameters after the last.
2. **dropout maps** at MMSA's MOSI rates and at distinct made-up rates (``DISTINCT_RATES``, so
   that every call's place in the order shows), train mode: ``(p, input shape)`` of every
   ``F.dropout`` call of one forward pass (MMSA's attention drops its weights with one too).
3. **eval-mode forward** at MMSA's MOSI rates, from the same initial weights: the predictions
   per batch, and once more with audio/vision arrays of ``ALIGN_STEPS`` steps, which MMSA's
   ``AlignSubNet`` (``avg_pool``, as ``need_model_aligned`` builds it) pools to the text's
   length first (the SIMS path).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    TINY_BERT,
    compact,
    packed,
    patch_bert_downloads,
    real_clips,
    record_rated,
    recording_adam,
    scripted_validation,
)
from _mmsa import AMIOLike, AttributeDict, fixed_length, generate  # noqa: E402

ROWS = [0, 5, 7, 1, 12, 9]  # labels of both signs and one 0.0; 7 to 31 tokens, 5 to 28 words
BATCH = 2
STEPS = 24  # MMSA's aligned arrays: 50; small here, so that two clips are cut
ALIGN_STEPS = (40, 30)  # audio, vision arrays pooled to STEPS (MMSA's SIMS: 400, 55 -> 39)
SIZES = {  # MMSA's argument names, small; conv kernels > 1 so that lengths differ
    "dst_feature_dims": 6, "nheads": 2, "a_lstm_hidden_size": 6, "v_lstm_hidden_size": 5,
    "a_lstm_layers": 1, "v_lstm_layers": 1, "conv1d_kernel_size_l": 3,
    "conv1d_kernel_size_a": 2, "conv1d_kernel_size_v": 1,  # MMSA never reads the vision one
    "post_fusion_dim": 12, "post_text_dim": 8, "post_audio_dim": 4, "post_video_dim": 6,
}
RATE_NAMES = ("a_lstm_dropout", "v_lstm_dropout", "attn_dropout", "attn_dropout_a",
              "attn_dropout_v", "relu_dropout", "embed_dropout", "res_dropout",
              "post_fusion_dropout", "post_text_dropout", "post_audio_dropout",
              "post_video_dropout")
NO_DROPOUT = {k: 0.0 for k in RATE_NAMES}
#: config_regression.json, tetfn, mosi
MOSI_RATES = {"a_lstm_dropout": 0.0, "v_lstm_dropout": 0.0, "attn_dropout": 0.1,
              "attn_dropout_a": 0.0, "attn_dropout_v": 0.1, "relu_dropout": 0.0,
              "embed_dropout": 0.0, "res_dropout": 0.1, "post_fusion_dropout": 0.0,
              "post_text_dropout": 0.0, "post_audio_dropout": 0.0, "post_video_dropout": 0.0}
DISTINCT_RATES = {k: 0.0 if "lstm" in k else round(0.11 + 0.01 * i, 2)
                  for i, k in enumerate(RATE_NAMES)}
OPTIMISER = {  # config_regression.json, tetfn, mosi
    "learning_rate_bert": 3e-5, "learning_rate_audio": 5e-4, "learning_rate_video": 3e-4,
    "learning_rate_other": 3e-4, "weight_decay_bert": 1e-3, "weight_decay_audio": 0.01,
    "weight_decay_video": 0.0, "weight_decay_other": 0.01,
}
#: validation losses returned instead of do_test: epoch 2 improves, epoch 3 by less than MMSA's
#: 1e-6 (not an improvement), early_stop 2 then stops after epoch 4
VALID_LOSSES = [1.0, 0.9, 0.9 - 5e-7, 0.95]
EARLY_STOP = 2
UPDATE_EPOCHS = 2


def make_batches(clips: dict, audio_steps: int = STEPS, vision_steps: int = STEPS) -> list[dict]:
    """MMSA's batch dicts (float64) and msakit's layout of the same clips (``msakit``: tokens
    padded to the batch's longest clip, word-level audio/vision to its longest, with lengths)."""
    ids, mask = clips["input_ids"], clips["attention_mask"]
    steps_mask = torch.arange(clips["audio"].shape[1])[None] < clips["lengths"][:, None]

    def fit(x):  # token ids to STEPS positions, zero-padded or cut (MMSA's text_bert arrays)
        x = x[:, :STEPS]
        return torch.nn.functional.pad(x, (0, STEPS - x.shape[1]))

    text = torch.stack([fit(ids), fit(mask), fit(torch.zeros_like(ids))], dim=1).double()
    batches = []
    for start in range(0, len(ROWS), BATCH):
        rows = slice(start, start + BATCH)
        text_len, steps = int(mask[rows].sum(1).max()), int(clips["lengths"][rows].max())
        batches.append({
            "text": text[rows].clone(),
            "audio": fixed_length(clips["audio"][rows], steps_mask[rows], audio_steps),
            "vision": fixed_length(clips["vision"][rows], steps_mask[rows], vision_steps),
            "index": torch.arange(start, start + BATCH), "id": clips["ids"][rows],
            "labels": {"M": clips["labels"][rows].clone()},
            "msakit": {"input_ids": ids[rows, :text_len].clone(),
                       "attention_mask": mask[rows, :text_len].clone(),
                       "audio": clips["audio"][rows, :steps].clone(),
                       "vision": clips["vision"][rows, :steps].clone(),
                       "lengths": clips["lengths"][rows].clone()},
        })
    return batches


def official_forward(model, batch: dict) -> dict:
    """MMSA's aligned call: ``model(text, (audio, 0), (vision, 0))``."""
    return model(batch["text"], (batch["audio"], 0), (batch["vision"], 0))


def record(model_module, train_module, data: Path) -> dict:
    clips = real_clips(data, ROWS)  # before the patch: it tokenises with the real tokenizer
    for name in ("audio", "vision"):  # float32 values (stored exactly), run in float64
        clips[name] = clips[name].float().double()
    patch_bert_downloads()
    batches = make_batches(clips)

    def official_args(**changes) -> AttributeDict:
        return AttributeDict({
            "train_mode": "regression", "dataset_name": "mosi", "model_name": "tetfn",
            "need_data_aligned": True, "need_model_aligned": True, "use_finetune": True,
            "transformers": "bert", "pretrained": "tiny-bert", "device": torch.device("cpu"),
            "feature_dims": (TINY_BERT["hidden_size"], clips["audio"].shape[-1],
                             clips["vision"].shape[-1]),
            "seq_lens": (STEPS, STEPS, STEPS), "train_samples": len(ROWS),
            "update_epochs": UPDATE_EPOCHS, "early_stop": EARLY_STOP, "KeyEval": "Loss",
            "H": 3.0, "excludeZero": True, "save_labels": False, "cur_seed": 1,
            **SIZES, **NO_DROPOUT, **OPTIMISER, **changes,
        })

    torch.manual_seed(0)
    official = model_module.TETFN(official_args())
    initial_state = {k: v.detach().clone() for k, v in official.state_dict().items()}
    official.double()

    # 2 + 3: dropout maps and eval forwards, from the same initial weights
    def rated(rates: dict, args: AttributeDict | None = None):
        model = model_module.TETFN(args or official_args(**rates))
        model.load_state_dict(initial_state)
        return model.double()

    def run(model, batch):
        return {k: v.reshape(-1) for k, v in official_forward(model, batch).items() if k in "MTAV"}

    dropout_map, eval_forwards = record_rated(rated(MOSI_RATES), batches, run)
    distinct_map, _ = record_rated(rated(DISTINCT_RATES), batches[:1], run)
    align_args = official_args(**MOSI_RATES, seq_lens=(STEPS, *ALIGN_STEPS))
    align_net = sys.modules["MMSA.models.subNets"].AlignSubNet(align_args, "avg_pool")
    aligned_model = AMIOLike(rated(MOSI_RATES, align_args)).eval()
    aligned_forwards = []
    with torch.no_grad():
        for batch in make_batches(clips, *ALIGN_STEPS):
            text, audio, vision = align_net(batch["text"], (batch["audio"], 0),
                                            (batch["vision"], 0))
            assert audio[0].shape[1] == vision[0].shape[1] == STEPS
            aligned_forwards.append(aligned_model(text, audio, vision)["M"].reshape(-1).clone())

    # 1: MMSA's do_train, dropout 0
    torch.set_default_dtype(torch.float64)  # the trainer's label, feature and centre banks
    trainer = train_module.TETFN(official_args())
    trainer.metrics = lambda pred, true: {}  # training-set metrics of 6 clips: not recorded
    wrapped = AMIOLike(official)
    steps: list[dict] = []
    optimizer_steps: list[dict] = []
    epochs_seen: list[int] = []
    forward = wrapped.forward

    def recording_forward(text, audio, video):
        outputs = forward(text, audio, video)
        if wrapped.training:
            steps.append({"outputs": {k: v.detach().clone().reshape(v.shape[0], -1).squeeze(-1)
                                      for k, v in outputs.items()}, "losses": {}})
        return outputs

    wrapped.forward = recording_forward
    weighted_loss = trainer.weighted_loss

    def recording_weighted_loss(y_pred, y_true, indexes=None, mode="fusion"):
        loss = weighted_loss(y_pred, y_true, indexes=indexes, mode=mode)
        steps[-1]["losses"][mode] = loss.detach().clone()
        return loss

    trainer.weighted_loss = recording_weighted_loss
    update_centers = trainer.update_centers

    def recording_update_centers():
        update_centers()
        steps[-1]["labels"] = {k: v.clone() for k, v in trainer.label_map.items()}
        steps[-1]["centres"] = {k: {c: v.clone() for c, v in cs.items()}
                                for k, cs in trainer.center_map.items()}

    trainer.update_centers = recording_update_centers
    trainer.do_test = scripted_validation(VALID_LOSSES, epochs_seen)

    def record_step(gradients):
        optimizer_steps.append({
            "after_forward": len(steps), "gradients": gradients,
            "parameters": {k: p.detach().clone() for k, p in official.named_parameters()}})

    train_module.optim.Adam = recording_adam(official, record_step)
    official_batches = [{k: v for k, v in b.items() if k != "msakit"} for b in batches]
    with tempfile.TemporaryDirectory() as tmp:
        trainer.args.model_save_path = str(Path(tmp) / "best.pth")
        trainer.args.res_save_dir = tmp
        trainer.do_train(wrapped, {"train": official_batches, "valid": [None]})
    torch.set_default_dtype(torch.float32)

    print(f"{len(steps)} forward passes, {len(optimizer_steps)} optimiser steps, "
          f"{len(epochs_seen)} epochs")
    last = len(optimizer_steps) - 1
    return {
        "tiny_bert": dict(TINY_BERT), "sizes": dict(SIZES), "steps_per_array": STEPS,
        "align_steps": ALIGN_STEPS, "optimiser": dict(OPTIMISER), "mosi_rates": dict(MOSI_RATES),
        "distinct_rates": dict(DISTINCT_RATES), "update_epochs": UPDATE_EPOCHS, "label_limit": 3.0,
        "exclude_zero": True, "clip_ids": clips["ids"],
        "initial_state": packed({k: v for k, v in initial_state.items()
                                 if v.is_floating_point()}),
        "batches": [{"index": b["index"], "labels": b["labels"]["M"].clone(),
                     **{k: compact({k: v})[k] for k, v in b["msakit"].items()}}
                    for b in batches],
        "steps": [{"outputs": compact(s["outputs"]), "losses": compact(s["losses"]),
                   "labels": compact(s["labels"]),
                   "centres": {k: compact(c) for k, c in s["centres"].items()}} for s in steps],
        # fixture size (< 1 MB): the gradients at the second step (generated labels in the loss
        # from epoch 2) and the parameters after the last step, each in one storage
        "optimizer_steps": [{"after_forward": s["after_forward"],
                             **({"gradients": packed(s["gradients"])} if i == 1 else {}),
                             **({"parameters": packed(s["parameters"])} if i == last else {})}
                            for i, s in enumerate(optimizer_steps)],
        "early_stopping": {"valid_losses": VALID_LOSSES, "early_stop": EARLY_STOP,
                           "epochs_run": len(epochs_seen), "min_improvement": 1e-6},
        "dropout_map": dropout_map, "distinct_dropout_map": distinct_map,
        "eval_forwards": eval_forwards,
        "aligned_eval_forwards": [compact({"M": m})["M"] for m in aligned_forwards],
    }


if __name__ == "__main__":
    generate(__doc__, "tetfn", ["models/multiTask/TETFN.py", "trains/multiTask/TETFN.py",
                                "models/subNets/transformers_encoder/transformer.py",
                                "models/subNets/transformers_encoder/multihead_attention.py",
                                "models/subNets/transformers_encoder/position_embedding.py",
                                "models/subNets/BertTextEncoder.py",
                                "models/subNets/AlignNets.py"], record)
