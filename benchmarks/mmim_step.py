"""One MMIM training step, msakit vs MMSA v2.2.1, on the same batch (CPU, one thread).

    PYTHONPATH=src python benchmarks/mmim_step.py --official /path/to/MMSA [--repeats 20]

A step is what one batch costs in an epoch: its step of the MMILB pass (forward, ``-lld``
backward, clipping, the MMILB Adam) plus its step of the main pass (forward with labels, the
task + CPC + MMILB loss backward, clipping, the main Adam). MMSA runs its own ``train_mmilb`` and
``train_others`` on a one-batch loader (after ``do_train`` has re-initialised the weights and
built its optimisers); msakit runs ``Trainer._train_stage`` and ``Trainer._train_epoch`` on the
same batch (its default, the LM run on length groups, and ``lm_group_by_length=false``, one
padded batch as MMSA). Both with MMSA's MOSI hyper-parameters (config_regression.json, mmim), the packaged
all-MiniLM-L6-v2 as the fine-tuned BERT (MMSA's bert-base-uncased needs the hub), one MOSI
batch of MMSA's preset size 32: 50 text tokens, audio (32, 500, 5), vision (32, 375, 20) with
random real lengths, random features and labels. Printed: the median of ``--repeats`` timed steps
after ``--warmup`` untimed ones, both toolkits in one process, their steps taken in turn.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "parity"))

BATCH, TEXT, AUDIO, VISION = 32, 50, (500, 5), (375, 20)
SETTINGS = {  # MMSA's config_regression.json, mmim, mosi
    "need_data_aligned": False, "use_finetune": True, "use_bert": True, "early_stop": 8,
    "add_va": False, "mem_size": 1, "contrast": True, "dropout_a": 0.1, "dropout_v": 0.1,
    "dropout_prj": 0.1, "n_layer": 1, "cpc_layers": 1, "d_vh": 16, "d_ah": 16, "d_vout": 16,
    "d_aout": 16, "bidirectional": True, "d_prjh": 128, "mmilb_mid_activation": "ReLU",
    "mmilb_last_activation": "Tanh", "cpc_activation": "Tanh", "batch_size": 32,
    "grad_clip": 1.0, "lr_main": 1e-3, "weight_decay_main": 1e-4, "lr_bert": 5e-5,
    "weight_decay_bert": 1e-4, "lr_mmilb": 1e-3, "weight_decay_mmilb": 1e-4, "optim": "Adam",
    "when": 20, "alpha": 0.1, "beta": 0.1, "transformers": "bert",
}


def make_batch() -> dict:
    generator = torch.Generator().manual_seed(0)
    text_lengths = torch.randint(8, TEXT + 1, (BATCH,), generator=generator)
    mask = (torch.arange(TEXT)[None] < text_lengths[:, None]).long()
    ids = torch.randint(1000, 20000, (BATCH, TEXT), generator=generator) * mask
    audio_lengths = torch.randint(50, AUDIO[0] + 1, (BATCH,), generator=generator)
    vision_lengths = torch.randint(50, VISION[0] + 1, (BATCH,), generator=generator)
    audio = torch.randn(BATCH, *AUDIO, generator=generator)
    vision = torch.randn(BATCH, *VISION, generator=generator)
    audio *= (torch.arange(AUDIO[0])[None] < audio_lengths[:, None])[..., None]
    vision *= (torch.arange(VISION[0])[None] < vision_lengths[:, None])[..., None]
    labels = torch.randint(-15, 16, (BATCH,), generator=generator).float() / 5
    return {"input_ids": ids, "attention_mask": mask, "audio": audio, "vision": vision,
            "audio_lengths": audio_lengths, "vision_lengths": vision_lengths, "labels": labels}


def time_steps(steps: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of each step, the steps taken in turn (one of each per round), so that the load
    of a shared machine weighs on all of them alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def mmsa_step(official: Path, batch: dict, minilm: str):
    from _mmsa import AttributeDict, load_official

    model_module, train_module = load_official(official, "models/singleTask/MMIM.py",
                                               "trains/singleTask/MMIM.py")
    plateau = train_module.ReduceLROnPlateau  # newer PyTorch has no verbose argument
    train_module.ReduceLROnPlateau = lambda *a, verbose=None, **k: plateau(*a, **k)
    args = AttributeDict({
        **SETTINGS, "pretrained": minilm, "train_mode": "regression", "dataset_name": "mosi",
        "model_name": "mmim", "KeyEval": "Loss", "cur_seed": 1, "num_classes": 1,
        "device": torch.device("cpu"), "train_samples": BATCH,
        "feature_dims": (384, AUDIO[1], VISION[1]),
    })
    model = model_module.MMIM(AttributeDict(dict(args)))
    trainer = train_module.MMIM(args)
    trainer.metrics = lambda pred, true: {}

    class Built(Exception):
        pass

    def stop(*_):
        raise Built

    trainer.train_mmilb = stop  # do_train: re-initialise, build the optimisers, then stop
    try:
        trainer.do_train(model, {})
    except Built:
        pass
    del trainer.train_mmilb
    ids = batch["input_ids"]
    loader = {"train": [{
        "text": torch.stack([ids, batch["attention_mask"], torch.zeros_like(ids)], 1).float(),
        "audio": batch["audio"], "vision": batch["vision"],
        "audio_lengths": batch["audio_lengths"], "vision_lengths": batch["vision_lengths"],
        "labels": {"M": batch["labels"]}}]}

    def step():
        trainer.train_mmilb(loader)
        trainer.train_others(loader)

    return step


def msakit_step(batch: dict, extra: list[str]):
    from msakit.config import build_config
    from msakit.models import FeatureDims, create_model
    from msakit.training.trainer import (
        Trainer,
        _progress,
        make_optimizer,
        make_stage_optimizers,
    )

    config = build_config("mmim", ["train.device=cpu", *extra])
    model = create_model(config.model, FeatureDims(AUDIO[1], VISION[1]))
    import tempfile

    trainer = Trainer(config, Path(tempfile.mkdtemp()), "mosi", progress=False)
    stages = model.training_stages(config.train)
    optimizer = make_optimizer(model, config)
    stage_optimizers = make_stage_optimizers(model, config)
    trainer._stage_parameters = [p for s in stages for g in s.parameter_groups
                                 for p in g["params"]]
    lengths = {"audio": batch["audio_lengths"], "vision": batch["vision_lengths"]}
    ours = {**batch, "token_type_ids": torch.zeros_like(batch["input_ids"]),
            "audio_mask": torch.arange(AUDIO[0])[None] < batch["audio_lengths"][:, None],
            "vision_mask": torch.arange(VISION[0])[None] < batch["vision_lengths"][:, None],
            "host_lengths": lengths, "ids": [str(i) for i in range(BATCH)]}

    def step():
        with _progress(False) as progress:
            trainer._train_stage(model, stages[0], stage_optimizers["mmilb"], [ours], 1,
                                 progress)
            trainer._train_epoch(model, optimizer, [ours], 1, config.model.loss_weights,
                                 progress)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from msakit.lm import resolve_language_model

    minilm = resolve_language_model("all-MiniLM-L6-v2")
    batch = make_batch()
    torch.manual_seed(0)
    steps = {"MMSA 2.2.1": mmsa_step(args.official, batch, minilm)}
    torch.manual_seed(0)
    steps["msakit"] = msakit_step(batch, [])
    torch.manual_seed(0)
    steps["msakit, one padded LM batch"] = msakit_step(batch, ["model.lm_group_by_length=false"])
    medians = {}
    for name, seconds in time_steps(steps, args.warmup, args.repeats).items():
        medians[name] = statistics.median(seconds)
        print(f"{name}: median {medians[name] * 1000:.0f} ms per step (MMILB + main) over "
              f"{args.repeats} steps, min {min(seconds) * 1000:.0f}, max "
              f"{max(seconds) * 1000:.0f}")
    for name in list(medians)[1:]:
        print(f"{name} / MMSA: {medians[name] / medians['MMSA 2.2.1']:.2f}")


if __name__ == "__main__":
    main()
