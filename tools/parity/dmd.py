"""Write the DMD parity fixture from the official code (mdswyz/DMD).

    python tools/parity/dmd.py --official /path/to/DMD --out tests/parity/dmd.pt

Builds the official model (``trains/singleTask/model/dmd.py``) and its two graph distillation
kernels at small sizes (d 4, 2 heads, 2 levels, kernels 5/1/3, every dropout 0) on a small random
BERT, in float64, and records for one batch of four clips with unequal real lengths: the initial
weights, the inputs, the prediction, every loss term, and the gradient of every parameter of the
combined loss. The loss terms are recomputed from the official loss modules as the official loop
(``trains/singleTask/DMD.py``) combines them, and checked against the gradient the official loop
itself produces (its own ``do_train`` run on that batch, stopped at the optimiser step). Then the
official loop runs on four batches of two clips (10 -> 2 accumulated batches per step, clip by
value 0.6, Adam 1e-4) and the parameters after its two optimiser steps are recorded. Last, at the
official MOSI dropout rates (``config/config.json``, ``OFFICIAL_DROPOUTS``), from the same initial
weights: the dropout map (rate, input shape and module of every dropout call of one train-mode
forward pass of the model, ``is_distill=True`` as the loop runs it, in call order) and the
eval-mode prediction of the batch and of its two halves. Weights, gradients and parameter changes
are stored packed (one storage each: the fixture stays under 1 MB).

Needs the official checkout's dependencies (torch, transformers, scikit-learn, tqdm).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import packed, record_rated  # noqa: E402
from _official import (  # noqa: E402
    SMALL_BERT,
    official_commit,
    parameters_by_name,
    patch_environment,
    random_text,
    save_fixture,
)

B, T = 4, 50  # the official aligned MOSI length is hard-coded to 50 for every modality
REAL_LENGTHS = [50, 37, 23, 12]
LABELS = [1.2, -0.6, 1.2, -1.8]  # a repeated label gives same-label pairs across clips
AUDIO_DIM, VISION_DIM = 5, 20
SIZES = dict(dst_feature_dim_nheads=[4, 2], nlevels=2, conv1d_kernel_size_l=5,
             conv1d_kernel_size_a=1, conv1d_kernel_size_v=3)
#: config/config.json, dmd, mosi
OFFICIAL_DROPOUTS = dict(attn_dropout=0.3, attn_dropout_a=0.2, attn_dropout_v=0.0,
                         relu_dropout=0.0, embed_dropout=0.2, res_dropout=0.0,
                         output_dropout=0.5, text_dropout=0.5)


class _Stop(Exception):
    pass


def official_args(update_epochs: int, grad_clip: float, **dropouts) -> SimpleNamespace:
    """The official settings at small sizes, every dropout 0 unless ``dropouts`` sets it."""
    args = SimpleNamespace(
        use_bert=True, use_finetune=True, transformers="bert", pretrained="bert-base-uncased",
        dataset_name="mosi", need_data_aligned=True, feature_dims=[32, AUDIO_DIM, VISION_DIM],
        attn_dropout=0.0, attn_dropout_a=0.0, attn_dropout_v=0.0, relu_dropout=0.0,
        embed_dropout=0.0, res_dropout=0.0, output_dropout=0.0, text_dropout=0.0,
        attn_mask=True, learning_rate=1e-4, patience=5, KeyEval="Loss", early_stop=10,
        update_epochs=update_epochs, grad_clip=grad_clip, device="cpu", model_name="dmd",
        cur_seed=1, train_mode="regression", **SIZES,
    )
    for name, value in dropouts.items():
        assert hasattr(args, name), name
        setattr(args, name, value)
    return args


def build(args, seed: int = 0):
    from trains.singleTask.distillnets import get_distillation_kernel, get_distillation_kernel_homo
    from trains.singleTask.misc import softmax
    from trains.singleTask.model import dmd

    torch.manual_seed(seed)
    model = dmd.DMD(args)
    d = args.dst_feature_dim_nheads[0]
    common = dict(n_classes=1, to_idx=[0, 1, 2], from_idx=[0, 1, 2], gd_reg=10,
                  w_losses=[1, 10], metric="l1", alpha=1 / 8, hyp_params=args)
    homo = get_distillation_kernel_homo.DistillationKernel(
        hidden_size=d, gd_size=64, gd_prior=softmax([0, 0, 1, 0, 1, 0], 0.25), **common)
    hetero = get_distillation_kernel.DistillationKernel(
        hidden_size=2 * d, gd_size=32, gd_prior=softmax([0, 0, 1, 0, 1, 1], 0.25), **common)
    modules = [m.double() for m in (model, homo, hetero)]
    for kernel in modules[1:]:  # the fixed prior in float64 (the official code keeps float32)
        kernel.gd_prior = kernel.gd_prior.double()
    return modules


def make_batch(seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    text = random_text(generator, REAL_LENGTHS, T)
    mask = text[:, 1]
    # float32 draws: every value is exact in the float32 fixture and the float64 run
    audio = torch.randn(B, T, AUDIO_DIM, generator=generator).double()
    vision = torch.randn(B, T, VISION_DIM, generator=generator).double()
    audio, vision = audio * mask.unsqueeze(-1), vision * mask.unsqueeze(-1)  # zero padding
    labels = torch.tensor(LABELS, dtype=torch.float64)
    return {"text": text, "audio": audio, "vision": vision, "labels": {"M": labels}}


def loss_terms(trainer, modules, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The official loop's loss terms for one batch, combined with the official weights."""
    model, homo, hetero = modules
    labels = batch["labels"]["M"].view(-1, 1)
    out = model(batch["text"], batch["audio"], batch["vision"], is_distill=True)
    names = ("l", "v", "a")
    logits_homo = torch.stack([out[f"logits_{m}_homo"] for m in names])
    reprs_homo = torch.stack([out[f"repr_{m}_homo"] for m in names])
    logits_hetero = torch.stack([out[f"logits_{m}_hetero"] for m in names])
    reprs_hetero = torch.stack([out[f"repr_{m}_hetero"] for m in names])
    edges_homo, _ = homo(logits_homo, reprs_homo)
    edges_hetero, _ = hetero(logits_hetero, reprs_hetero)
    l1, mse, target = trainer.criterion, trainer.MSE, torch.tensor([-1])
    terms = {
        "task": l1(out["output_logit"], labels),
        "task_common": l1(out["logits_c"], labels),
        "task_homo": sum(l1(out[f"logits_{m}_homo"], labels) for m in names),
        "task_hetero": sum(l1(out[f"logits_{m}_hetero"], labels) for m in names),
        "recon": sum(mse(out[f"recon_{m}"], out[f"origin_{m}"]) for m in names),
        "self_regression": sum(mse(out[f"s_{m}"].permute(1, 2, 0), out[f"s_{m}_r"])
                               for m in names),
        "ortho": sum(trainer.cosine(out[f"s_{m}"], out[f"c_{m}"], target).mean(0)
                     for m in names),
    }
    # the official margin loss reads rows (c_l[i], c_v[i], c_a[i]) for each clip i in turn
    features = torch.stack([out[f"c_{m}_sim"] for m in names], 1).reshape(3 * B, -1)
    terms["margin"] = trainer.sim_loss(labels.repeat_interleave(3, 0), features)
    reg, logit, _ = homo.distillation_loss(logits_homo, reprs_homo, edges_homo)
    terms["distill_homo"], terms["distill_homo_prior"] = logit, reg / 10  # gd_reg 10
    reg, logit, representation = hetero.distillation_loss(logits_hetero, reprs_hetero,
                                                          edges_hetero)
    terms["distill_hetero"] = logit
    terms["distill_hetero_repr"] = representation / 10  # w_losses [1, 10]
    terms["distill_hetero_prior"] = reg / 10
    combined = (
        terms["task"] + terms["task_common"] + terms["task_homo"] + terms["task_hetero"]
        + 0.05 * (terms["distill_homo"] + 10 * terms["distill_homo_prior"])
        + 0.05 * (terms["distill_hetero"] + 10 * terms["distill_hetero_repr"]
                  + 10 * terms["distill_hetero_prior"])
        + 0.1 * (terms["self_regression"] + terms["recon"]
                 + 0.1 * (terms["margin"] + terms["ortho"]))
    )
    return out["output_logit"].squeeze(-1), {**terms, "combined": combined}


def run_official_loop(trainer_class, args, modules, batches, steps: int) -> dict:
    """The official ``do_train`` on ``batches``, stopped after ``steps`` optimiser steps.

    Returns the parameters and gradients seen at the last step (before the update's effect on
    the gradient: they are read inside ``optimizer.step``).
    """
    official_loop = sys.modules["trains.singleTask.DMD"]  # the package re-exports the class

    seen = {}
    adam = torch.optim.Adam

    class RecordingAdam(adam):
        count = 0

        def step(self, closure=None):
            named = parameters_by_name(dict(zip(("dmd", "homo_gd", "hetero_gd"), modules)))
            seen["grads"] = {k: p.grad.detach().clone() for k, p in named.items()
                             if p.grad is not None}
            super().step(closure)
            RecordingAdam.count += 1
            if RecordingAdam.count == steps:
                seen["params"] = {k: p.detach().clone() for k, p in named.items()}
                raise _Stop

    def plateau(optimizer, **kwargs):  # 'verbose' was removed from later PyTorch
        kwargs.pop("verbose", None)
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **kwargs)

    official_loop.optim.Adam = RecordingAdam
    official_loop.ReduceLROnPlateau = plateau
    try:
        trainer_class(args).do_train(list(modules), {"train": batches})
    except _Stop:
        pass
    finally:
        official_loop.optim.Adam = adam
    return seen


def subset(batch: dict, rows: list[int]) -> dict:
    return {"text": batch["text"][rows], "audio": batch["audio"][rows],
            "vision": batch["vision"][rows], "labels": {"M": batch["labels"]["M"][rows]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="mdswyz/DMD checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/parity/dmd.pt"))
    parser.add_argument("--commit", default=None, help="commit of the checkout (else git)")
    options = parser.parse_args()
    patch_environment(options.official)
    from trains.singleTask.DMD import DMD as OfficialTrainer

    args = official_args(update_epochs=1, grad_clip=-1.0)
    modules = build(args)
    names = ("dmd", "homo_gd", "hetero_gd")
    initial = {k: v.detach().clone()
               for k, v in parameters_by_name(dict(zip(names, modules))).items()}
    batch = make_batch()
    for m in modules:
        m.train()  # every dropout is 0: train mode is deterministic
    trainer = OfficialTrainer(args)
    prediction, terms = loss_terms(trainer, modules, batch)
    terms["combined"].backward()
    named = parameters_by_name(dict(zip(names, modules)))
    grads = {k: p.grad.detach().clone() for k, p in named.items() if p.grad is not None}

    # the official loop on the same batch gives the same gradient: the combination is its own
    for m in modules:
        m.zero_grad(set_to_none=True)
    loop = run_official_loop(OfficialTrainer, args, modules, [batch], steps=1)
    worst = max((loop["grads"][k] - g).abs().max().item() for k, g in grads.items())
    assert set(loop["grads"]) == set(grads) and worst < 1e-10, worst
    print(f"official loop gradient == recombined loss gradient (max diff {worst:.1e})")

    # training-loop trajectory: 4 batches of 2 clips, 2 accumulated batches per step, clip 0.6
    args_loop = official_args(update_epochs=2, grad_clip=0.6)
    modules = build(args_loop)
    rows = [[0, 1], [2, 3], [1, 2], [3, 0]]
    trajectory = run_official_loop(OfficialTrainer, args_loop, modules,
                                   [subset(batch, r) for r in rows], steps=2)
    # at the official rates, same initial weights
    rated = build(official_args(update_epochs=1, grad_clip=-1.0, **OFFICIAL_DROPOUTS))[0]
    assert all(torch.equal(p, initial[f"dmd.{k}"]) for k, p in rated.named_parameters())
    halves = [batch, subset(batch, [0, 1]), subset(batch, [2, 3])]
    dropout_map, eval_predictions = record_rated(rated, halves, lambda m, b: {
        "prediction": m(b["text"], b["audio"], b["vision"], is_distill=True)
        ["output_logit"].view(-1)})

    fixture = {
        "official": "mdswyz/DMD",
        "commit": options.commit or official_commit(options.official),
        "bert_config": SMALL_BERT,
        "sizes": {"embed_dim": 4, "num_heads": 2, "num_layers": 2, "length": T,
                  "kernels": {"text": 5, "audio": 1, "vision": 3},
                  "audio_dim": AUDIO_DIM, "vision_dim": VISION_DIM},
        # built in float32 and run in float64: the float32 weights are exact; gradients and
        # the trajectory's parameter changes are stored in float32 (relative error ~6e-8)
        "initial": packed(initial),
        "inputs": {"input_ids": batch["text"][:, 0].long(), "attention_mask": batch["text"][:, 1].long(),
                   "token_type_ids": batch["text"][:, 2].long(), "audio": batch["audio"].float(),
                   "vision": batch["vision"].float(), "labels": batch["labels"]["M"],
                   "lengths": torch.tensor(REAL_LENGTHS)},
        "prediction": prediction.detach(),
        "losses": {k: v.detach() for k, v in terms.items()},
        "grads": packed(grads),
        "loop": {"batches": rows, "update_epochs": 2, "grad_clip": 0.6, "lr": 1e-4,
                 "steps": 2,
                 "param_changes": packed({k: p - initial[k]
                                           for k, p in trajectory["params"].items()})},
        "official_dropouts": dict(OFFICIAL_DROPOUTS), "dropout_map": dropout_map,
        "eval": {"rows": [list(range(B)), [0, 1], [2, 3]],
                 "predictions": [p["prediction"] for p in eval_predictions]},
    }
    save_fixture(fixture, options.out)
    print(f"{sum(v.numel() for v in initial.values())} parameters, commit "
          f"{fixture['commit'][:12]}; losses: "
          + ", ".join(f"{k} {v.item():.5f}" for k, v in terms.items()))
    assert math.isfinite(terms["combined"].item())


if __name__ == "__main__":
    main()
