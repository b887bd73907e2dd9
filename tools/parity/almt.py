"""Write the ALMT parity fixture from the official code (Haoyu-ha/ALMT).

    pip install einops   # the official model's one extra dependency (msakit[parity])
    python tools/parity/almt.py --official /path/to/ALMT --out tests/parity/almt.pt

Builds the official model (``models/almt.py``) at small sizes (width 8, 4 tokens, 2 heads, AHL
depth 3, fusion depth 2, every dropout 0: the official defaults) on a small random BERT, in
float64, and records for one batch of four clips with unequal real text lengths (fixed-length
audio/vision as in the official pickles): the initial weights, the inputs, the prediction, the MSE
loss of ``train.py`` and the gradient of every parameter. Then the official training loop:
``train.py``'s own ``train`` function (backward, AdamW step, zero_grad per batch) over 3 epochs of
two batches, with the official scheduler (``core/scheduler.py``'s ``get_scheduler``, stepped once
per epoch) for a 10-epoch budget; the learning rate of each epoch and the parameters after the
third are recorded. The scheduler's learning rates for 200, 30 and 6 epochs are recorded too.
Last, at the official default dropout rates (all 0: ``ahl_droup: 0.`` in ``configs/mosi.yaml``,
and the official ``Transformer``/``CrossTransformer`` never pass their ``dropout``/
``emb_dropout``, default 0), from the same initial weights: the dropout map (rate, input shape
and module of every dropout call of one train-mode forward pass, in call order) and the
eval-mode prediction of the batch and of its two halves.

The width is 8 (it was 16 up to this fixture's regeneration with the dropout map): the official
attention has a fixed ``dim_head`` of 64, and at width 16 the fixture was 1.2 MB.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import record_rated  # noqa: E402
from _official import (  # noqa: E402
    SMALL_BERT,
    float32,
    official_commit,
    patch_environment,
    random_text,
    save_fixture,
)

B = 4
TEXT_LENGTH, AUDIO_LENGTH, VISION_LENGTH = 12, 10, 9
REAL_TEXT = [12, 9, 6, 3]
AUDIO_DIM, VISION_DIM = 5, 20
LABELS = [1.2, -0.6, 2.4, -1.8]
N_EPOCHS, LOOP_EPOCHS, LR, WEIGHT_DECAY = 10, 3, 1e-3, 1e-4
MODEL = dict(
    bert_pretrained="bert-base-uncased", l_input_dim=SMALL_BERT["hidden_size"],
    a_input_dim=AUDIO_DIM, v_input_dim=VISION_DIM, l_proj_dst_dim=8, a_proj_dst_dim=8,
    v_proj_dst_dim=8, token_len=4, token_dim=8, l_input_length=TEXT_LENGTH,
    a_input_length=AUDIO_LENGTH, v_input_length=VISION_LENGTH, proj_input_dim=8, proj_depth=1,
    proj_heads=2, proj_mlp_dim=16, token_length=4, l_enc_heads=2, l_enc_mlp_dim=16, AHL_depth=3,
    ahl_heads=2, ahl_dim_head=8, ahl_droup=0.0, fusion_heads=2, fusion_mlp_dim=16,
    fusion_layer_depth=2,
)


def make_batch(seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    text = random_text(generator, REAL_TEXT, TEXT_LENGTH)
    # float32 draws: exact in the float32 fixture and in the float64 run
    audio = torch.randn(B, AUDIO_LENGTH, AUDIO_DIM, generator=generator).double()
    vision = torch.randn(B, VISION_LENGTH, VISION_DIM, generator=generator).double()
    return {"text": text, "audio": audio, "vision": vision,
            "labels": {"M": torch.tensor(LABELS, dtype=torch.float64)}}


def subset(batch: dict, rows: list[int]) -> dict:
    return {"text": batch["text"][rows], "audio": batch["audio"][rows],
            "vision": batch["vision"][rows], "labels": {"M": batch["labels"]["M"][rows]}}


def official_lrs(get_scheduler, epochs: int, lr: float) -> list[float]:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=lr)
    scheduler = get_scheduler(optimizer, SimpleNamespace(base=SimpleNamespace(n_epochs=epochs)))
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="Haoyu-ha/ALMT checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/parity/almt.pt"))
    parser.add_argument("--commit", default=None, help="commit of the checkout (else git)")
    options = parser.parse_args()
    patch_environment(options.official)
    # train.py logs to TensorBoard and parses its command line when imported
    tensorboard = types.ModuleType("tensorboardX")
    tensorboard.SummaryWriter = object
    sys.modules.setdefault("tensorboardX", tensorboard)
    sys.argv = [sys.argv[0], "--config_file", str(options.official / "configs" / "mosi.yaml")]
    import train as official_train
    from core.metric import MetricsTop
    from core.scheduler import get_scheduler
    from models.almt import build_model

    args = SimpleNamespace(model=SimpleNamespace(**MODEL))

    def build():
        torch.manual_seed(0)
        return build_model(args).double()

    model = build()
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    batch = make_batch()
    model.train()  # every dropout is 0
    output = model(batch["vision"], batch["audio"], batch["text"])
    loss = torch.nn.MSELoss()(output, batch["labels"]["M"].view(-1, 1))
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters()
             if p.grad is not None}

    # the official loop: train.py's train() per epoch, the official scheduler once per epoch
    model = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    scheduler = get_scheduler(optimizer, SimpleNamespace(base=SimpleNamespace(n_epochs=N_EPOCHS)))
    rows = [[0, 1], [2, 3]]
    epoch_lrs = []
    metrics = MetricsTop().getMetics("MOSI")
    for _ in range(LOOP_EPOCHS):
        epoch_lrs.append(optimizer.param_groups[0]["lr"])
        official_train.train(model, [subset(batch, r) for r in rows], optimizer,
                             torch.nn.MSELoss(), metrics)
        scheduler.step()
    after = dict(model.named_parameters())

    # at the official rates (MODEL's: all 0), same initial weights
    rated = build()
    halves = [batch, *(subset(batch, r) for r in rows)]
    dropout_map, eval_predictions = record_rated(
        rated, halves, lambda m, b: {"prediction": m(b["vision"], b["audio"], b["text"]).view(-1)})
    fixture = {
        "official": "Haoyu-ha/ALMT",
        "commit": options.commit or official_commit(options.official),
        "bert_config": SMALL_BERT,
        "model": MODEL,
        # built in float32 and run in float64: the float32 weights are exact
        "initial": float32(initial),
        "inputs": {"input_ids": batch["text"][:, 0].long(),
                   "attention_mask": batch["text"][:, 1].long(),
                   "token_type_ids": batch["text"][:, 2].long(),
                   "audio": batch["audio"].float(), "vision": batch["vision"].float(),
                   "labels": batch["labels"]["M"]},
        "prediction": output.detach().squeeze(-1),
        "losses": {"task": loss.detach()},
        "grads": float32(grads),
        "loop": {"batches": rows, "n_epochs": N_EPOCHS, "epochs_run": LOOP_EPOCHS, "lr": LR,
                 "weight_decay": WEIGHT_DECAY, "epoch_lrs": epoch_lrs,
                 "param_changes": float32({k: after[k].detach() - initial[k]
                                            for k in initial})},
        "scheduler_lrs": {n: official_lrs(get_scheduler, n, 1e-4) for n in (200, 30, 6)},
        "dropout_map": dropout_map,
        "eval": {"rows": [list(range(B)), *rows],
                 "predictions": [p["prediction"] for p in eval_predictions]},
    }
    save_fixture(fixture, options.out)
    print(f"{sum(v.numel() for v in initial.values())} parameters, commit "
          f"{fixture['commit'][:12]}; loss {loss.item():.6f}; epoch lrs {epoch_lrs}")


if __name__ == "__main__":
    main()
