"""One EMT-DLFR training step: msakit vs the authors' code (sunlicai/EMT-DLFR), same batches.

    git --git-dir=<mirror> archive HEAD | tar -x -C /tmp/emt-official   # the official code
    PYTHONPATH=src python benchmarks/emt_step.py --official /tmp/emt-official [--steps 20]

Both sides train on the same ``--steps + 2`` random batches of MOSI's shapes (MMSA's
``unaligned_50``: 50 text tokens, audio 375 x 5, vision 500 x 20; real lengths drawn per clip
between ``--longest / 4`` and ``--longest`` (default 0.5) of those, so that both sides' autograd
graphs fit a small machine: both trim to the batch's longest clip),
batch size 32 (the official MOSI preset), the official MOSI hyper-parameters and dropout rates,
missing rate 0 (the complete-data setting), ``update_epochs`` 1 (one optimiser step per batch),
one CPU thread, in one process, official first. The language model is the packaged
all-MiniLM-L6-v2 on both sides (the official ``BertModel.from_pretrained`` is patched to load it:
no hub here). A step's time is the time between two optimiser steps of each toolkit's own
training loop (the official ``do_train``; msakit's ``Trainer``): forward of both views, the
losses, backward, the Adam step and each loop's bookkeeping. Printed: the median over the
``--steps`` steps after the first two, each side, and the ratio msakit / official. Nothing of the
official code is copied; only the environment is patched (CUDA calls, the LM download).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
BATCH, TEXT, AUDIO, VISION = 32, 50, (375, 5), (500, 20)
MOSI = {  # config/config_regression.py __EMT_DLFR, mosi
    "batch_size": 32, "learning_rate_bert": 5e-5, "learning_rate_audio": 1e-3,
    "learning_rate_video": 1e-4, "learning_rate_other": 1e-3, "weight_decay_bert": 0.001,
    "weight_decay_audio": 0.01, "weight_decay_video": 0.001, "weight_decay_other": 0.001,
    "a_lstm_hidden_size": 32, "v_lstm_hidden_size": 64, "a_lstm_layers": 1, "v_lstm_layers": 1,
    "audio_out": 16, "video_out": 32, "a_lstm_dropout": 0.0, "v_lstm_dropout": 0.0,
    "d_model": 128, "fusion_layers": 3, "heads": 4, "learnable_pos_emb": False,
    "emb_dropout": 0.0, "attn_dropout": 0.3, "ff_dropout": 0.1, "ff_expansion": 4,
    "mpu_share": True, "modality_share": True, "layer_share": True, "attn_act_fn": "tanh",
    "gmc_tokens_pred_dim": 128, "text_pred_dim": 256, "audio_pred_dim": 8, "video_pred_dim": 16,
    "recon_loss": "SmoothL1Loss", "loss_attra_weight": 1, "loss_recon_weight": 1,
    "post_fusion_dim": 256, "post_fusion_dropout": 0.3,
}


def random_batches(count: int, vocab: int, longest: float) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for i in range(count):
        text_len = torch.randint(6, TEXT + 1, (BATCH,), generator=generator)
        ids = torch.randint(1000, vocab, (BATCH, TEXT), generator=generator)
        mask = (torch.arange(TEXT)[None] < text_len[:, None]).long()
        ids[:, 0] = 101
        ids[torch.arange(BATCH), text_len - 1] = 102
        ids = ids * mask
        batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                 "labels": torch.rand(BATCH, generator=generator) * 6 - 3,
                 "index": torch.arange(i * BATCH, (i + 1) * BATCH)}
        for name, (steps, dim) in (("audio", AUDIO), ("vision", VISION)):
            top = max(2, int(steps * longest))
            lengths = torch.randint(max(1, top // 4), top + 1, (BATCH,), generator=generator)
            real = torch.arange(steps)[None] < lengths[:, None]
            batch[name] = torch.randn(BATCH, steps, dim, generator=generator) * real[..., None]
            batch[f"{name}_lengths"], batch[f"{name}_mask"] = lengths, real
        batches.append(batch)
    return batches


def official_batches(batches: list[dict]) -> list[dict]:
    """The official loader's dicts at missing rate 0 (the incomplete view equals the complete)."""
    out = []
    for b in batches:
        text = torch.stack([b["input_ids"], b["attention_mask"], b["token_type_ids"]], 1).float()
        item = {"text": text, "text_m": text.clone(), "text_missing_mask": text[:, 1].clone(),
                "labels": {"M": b["labels"].reshape(-1, 1)}}
        for name in ("audio", "vision"):
            item.update({name: b[name], f"{name}_m": b[name].clone(),
                         f"{name}_lengths": b[f"{name}_lengths"],
                         f"{name}_mask": b[f"{name}_mask"].long(),
                         f"{name}_missing_mask": b[f"{name}_mask"].long()})
        out.append(item)
    return out


def time_official(official_dir: Path, batches: list[dict]) -> list[float]:
    import transformers

    from msakit.lm import load_language_model

    language_model = load_language_model("all-MiniLM-L6-v2")
    transformers.BertModel.from_pretrained = classmethod(
        lambda cls, *a, **k: copy.deepcopy(language_model))
    transformers.BertTokenizer.from_pretrained = classmethod(lambda cls, *a, **k: None)
    torch.Tensor.cuda = lambda self, *a, **k: self
    nn.Module.cuda = lambda self, *a, **k: self
    sys.path.insert(0, str(official_dir))
    from models.missingTask.EMT_DLFR import EMT_DLFR
    from utils.functions import Storage

    train_module = importlib.import_module("trains.missingTask.EMT_DLFR")
    args = Storage({
        **MOSI, "train_mode": "regression", "datasetName": "mosi", "modelName": "emt-dlfr",
        "need_data_aligned": False, "language": "en", "use_finetune": True,
        "feature_dims": (language_model.config.hidden_size, AUDIO[1], VISION[1]),
        "text_out": language_model.config.hidden_size, "device": torch.device("cpu"),
        "gpu_ids": [], "update_epochs": 1, "early_stop": 1, "KeyEval": "Loss", "seed": 1,
        "seeds": [1], "num_seeds": 1,
    })
    torch.manual_seed(0)
    model = EMT_DLFR(args)

    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.Model = inner

        def forward(self, text, audio, video):
            return self.Model(text, audio, video)

    stamps: list[float] = []

    class TimedAdam(torch.optim.Adam):
        def step(self, closure=None):
            result = super().step(closure)
            stamps.append(time.perf_counter())
            return result

    train_module.optim.Adam = TimedAdam
    trainer = train_module.EMT_DLFR(args)
    trainer.metrics = lambda pred, true: {}
    calls = iter([{"Loss": 1.0}, {"Loss": 2.0}])
    trainer.do_test = lambda *a, **k: next(calls)
    data = official_batches(batches)

    class OneEpoch:  # the official loop runs until early stopping: time the first epoch only
        epoch = 0

        def __iter__(self):
            self.epoch += 1
            return iter(data if self.epoch == 1 else data[:1])

        def __len__(self):
            return len(data)

    with tempfile.TemporaryDirectory() as tmp:
        args.model_save_path = str(Path(tmp) / "best.pth")
        trainer.do_train(Wrapper(model), {"train": OneEpoch(), "valid": [None]})
    return [b - a for a, b in zip(stamps[:len(data) - 1], stamps[1:len(data)])]


def time_msakit(batches: list[dict]) -> list[float]:
    from msakit.config import build_config
    from msakit.models import FeatureDims, create_model
    from msakit.training.trainer import Trainer, _progress, make_optimizer

    config = build_config("emt", ["train.grad_accumulation=1", "train.device=cpu",
                                  "model.missing_rate=0", "model.language_model=all-MiniLM-L6-v2"],
                          preset="mosi")
    torch.manual_seed(0)
    model = create_model(config.model, FeatureDims(AUDIO[1], VISION[1]))
    data = []
    for b in batches:
        item = dict(b)
        item["host_lengths"] = {"audio": b["audio_lengths"], "vision": b["vision_lengths"]}
        item["ids"] = [str(int(i)) for i in b["index"]]
        data.append(item)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp), "mosi", progress=False)
        optimizer = make_optimizer(model, config)
        step = optimizer.step

        def timed_step(*args, **kwargs):
            result = step(*args, **kwargs)
            stamps.append(time.perf_counter())
            return result

        optimizer.step = timed_step
        with _progress(False) as progress:
            trainer._train_epoch(model, optimizer, data, 1, config.model.loss_weights, progress)
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--longest", type=float, default=0.5,
                        help="longest audio/vision clip as a share of MOSI's 375/500 steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = random_batches(args.steps + 2, vocab=30522, longest=args.longest)
    official = time_official(args.official, batches)[1:]  # the first interval: warm-up
    ours = time_msakit(batches)[1:]
    o, m = statistics.median(official), statistics.median(ours)
    print(f"EMT-DLFR training step, batch {BATCH}, MOSI shapes (clips up to {args.longest:.2f} "
          f"of 375/500 steps), 1 thread, median of "
          f"{len(ours)}/{len(official)} steps: official {o:.3f} s, msakit {m:.3f} s, "
          f"ratio msakit/official {m / o:.2f}")


if __name__ == "__main__":
    main()
