"""One TETFN training step, msakit vs MMSA v2.2.1's own code, on the same batch (CPU).

    PYTHONPATH=src python benchmarks/tetfn_step_vs_mmsa.py --official /path/to/MMSA \
        [--warmup 2] [--steps 20] [--threads 1] [--bert minilm|base]

``--official``: a checkout of thuiar/MMSA (v2.2.1, src/MMSA/...). MMSA's model and trainer are
loaded as ``tools/parity/tetfn.py`` loads them; nothing of MMSA's code is copied. The batch has
the shapes of a MOSI batch of MMSA's TETFN preset (batch 64, ``aligned_50``: 50 BERT tokens,
audio 50 x 5, vision 50 x 20, random real lengths, one clip with all 50), random token ids and
features. Both sides use one randomly initialised BERT with the same weights (no download):
``--bert minilm`` (default) has the shape of msakit's packaged all-MiniLM-L6-v2 (6 layers,
384-d, as ``benchmarks/vs_mmsa.py`` stands it in for MMSA's bert-base), ``--bert base``
bert-base's (12 layers, 768-d), and MMSA's MOSI hyper-parameters (``config_regression.json``,
tetfn: width 50, 5 heads, its dropout rates and Adam's five groups). msakit reads MMSA's
50-step arrays (its default), so both compute the same.

A step, on each side, is one batch of the training loop in its second epoch (so ULGM's label
update runs too) followed by an optimiser step: MMSA's is the body of its ``do_train`` loop
(zero_grad, forward, the four weighted losses, backward, ``loss.item()``, the ``.cpu()`` of the
predictions and labels it keeps, ``update_labels``/``update_features``/``update_centers``)
plus ``optimizer.step()`` with the optimiser its ``do_train`` builds (captured from it);
msakit's is its trainer's (forward, weighted loss, backward, the model's
``on_train_batch_end`` ULGM step, optimiser step). ``--warmup`` untimed steps of each, then
``--steps`` timed steps of each, alternating MMSA and msakit in this process (so a change in a
shared machine's load affects both alike). Prints both medians and the ratio msakit / MMSA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "parity"))
BATCH, TOKENS, AUDIO_DIM, VISION_DIM = 64, 50, 5, 20
BERTS = {"minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                    "intermediate_size": 1536},
         "base": {}}


class _Captured(Exception):
    """Raised by the stand-in Adam once MMSA's do_train has built its optimiser."""


def make_batch(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(10, TOKENS + 1, (BATCH,), generator=generator)
    tokens[0] = TOKENS
    ids = torch.randint(1000, 30000, (BATCH, TOKENS), generator=generator)
    mask = (torch.arange(TOKENS)[None] < tokens[:, None]).long()
    ids[:, 0] = 101
    ids[torch.arange(BATCH), tokens - 1] = 102
    ids = ids * mask
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
           "labels": torch.empty(BATCH).uniform_(-3, 3, generator=generator),
           "index": torch.arange(BATCH)}
    for name, dim in (("audio", AUDIO_DIM), ("vision", VISION_DIM)):  # aligned: one per token
        out[name] = torch.randn(BATCH, TOKENS, dim, generator=generator) * mask[..., None]
        out[f"{name}_lengths"], out[f"{name}_mask"] = tokens.clone(), mask.bool()
    return out


def timed_alternately(first, second, warmup: int, steps: int) -> tuple[list[float], list[float]]:
    """``warmup`` untimed steps of each, then ``steps`` timed steps of each, alternating (so a
    change in the machine's load over the run affects both sides alike)."""
    for _ in range(warmup):
        first()
        second()
    seconds: tuple[list[float], list[float]] = ([], [])
    for _ in range(steps):
        for step, out in ((first, seconds[0]), (second, seconds[1])):
            started = time.perf_counter()
            step()
            out.append(time.perf_counter() - started)
    return seconds


def mmsa_args(official: Path, bert: str, hidden_size: int):
    """MMSA's arguments: config_regression.json's tetfn MOSI settings, aligned arrays."""
    import json

    from _mmsa import AttributeDict

    config = json.loads((official / "src/MMSA/config/config_regression.json").read_text())
    config = config["tetfn"]
    return AttributeDict({
        "model_name": "tetfn", "dataset_name": "mosi", "train_mode": "regression",
        "transformers": "bert", "KeyEval": "Loss", "device": torch.device("cpu"),
        **config["commonParams"], **config["datasetParams"]["mosi"],
        "feature_dims": (hidden_size, AUDIO_DIM, VISION_DIM),
        "seq_lens": (TOKENS, TOKENS, TOKENS), "train_samples": BATCH,
        "bert_config": BERTS[bert],
    })


def mmsa_step(official: Path, args, bert_state: dict, batch: dict):
    import transformers
    from _mmsa import AMIOLike, load_official

    model_module, train_module = load_official(official, "models/multiTask/TETFN.py",
                                               "trains/multiTask/TETFN.py")
    config = transformers.BertConfig(**args.bert_config)

    def pretrained(cls, *a, **k):
        bert = transformers.BertModel(config)
        bert.load_state_dict(bert_state)
        return bert

    transformers.BertModel.from_pretrained = classmethod(pretrained)
    transformers.BertTokenizer.from_pretrained = classmethod(lambda cls, *a, **k: None)
    model = AMIOLike(model_module.TETFN(args))
    trainer = train_module.TETFN(args)
    captured = {}
    adam = torch.optim.Adam

    class CapturingAdam(adam):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            captured["optimizer"] = self
            raise _Captured

    train_module.optim.Adam = CapturingAdam
    try:
        trainer.do_train(model, {"train": [], "valid": []})
    except _Captured:
        pass
    finally:
        train_module.optim.Adam = adam
    optimizer = captured["optimizer"]
    text = torch.stack([batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]],
                       dim=1).float()
    indexes = batch["index"]
    trainer.init_labels(indexes, batch["labels"])
    model.train()

    def step():  # the body of MMSA's do_train loop, epoch 2, then optimizer.step()
        optimizer.zero_grad()
        outputs = model(text, (batch["audio"], 0), (batch["vision"], 0))
        kept = []
        for m in trainer.args.tasks:
            kept += [outputs[m].cpu(), trainer.label_map[trainer.name_map[m]][indexes].cpu()]
        loss = 0.0
        for m in trainer.args.tasks:
            loss += trainer.weighted_loss(outputs[m], trainer.label_map[trainer.name_map[m]][indexes],
                                          indexes=indexes, mode=trainer.name_map[m])
        loss.backward()
        loss.item()
        features = [outputs[k].detach() for k in ("Feature_f", "Feature_t", "Feature_a",
                                                   "Feature_v")]
        trainer.update_labels(*features, 2, indexes, outputs)
        trainer.update_features(*features, indexes)
        trainer.update_centers()
        optimizer.step()

    return step


def msakit_step(bert_dir: str, batch: dict):
    from msakit.config import build_config
    from msakit.models import FeatureDims, create_model
    from msakit.training.trainer import make_optimizer, weighted_loss

    config = build_config("tetfn", [f"model.language_model={bert_dir}"], preset="mosi")
    model = create_model(config.model, FeatureDims(AUDIO_DIM, VISION_DIM))
    optimizer = make_optimizer(model, config)
    model.on_fit_start(batch["labels"])
    model.train()

    def step():
        output = model(batch)
        loss = weighted_loss(output, config.model.loss_weights, "tetfn")
        loss.backward()
        model.on_train_batch_end(batch, output, 2)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bert", choices=sorted(BERTS), default="minilm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(**BERTS[args.bert]))
    batch = make_batch()
    official = mmsa_args(args.official, args.bert, bert.config.hidden_size)
    with tempfile.TemporaryDirectory() as folder:
        bert.save_pretrained(folder)
        bert_state = bert.state_dict()
        del bert
        official_step = mmsa_step(args.official, official, bert_state, batch)
        ours_step = msakit_step(folder, batch)
        mmsa, ours = timed_alternately(official_step, ours_step, args.warmup, args.steps)
    print(f"MMSA   step: median {statistics.median(mmsa):.3f} s  (all: "
          f"{', '.join(f'{s:.3f}' for s in mmsa)})")
    print(f"msakit step: median {statistics.median(ours):.3f} s  (all: "
          f"{', '.join(f'{s:.3f}' for s in ours)})")
    paired = statistics.median(o / m for o, m in zip(ours, mmsa))
    print(f"median of the paired ratios (msakit step / the MMSA step before it): {paired:.2f}")
    print(f"msakit / MMSA = {statistics.median(ours) / statistics.median(mmsa):.2f} "
          f"({args.threads} thread(s), {args.bert} BERT, batch {BATCH}, {TOKENS} tokens, "
          f"audio {TOKENS} x {AUDIO_DIM}, vision {TOKENS} x {VISION_DIM})")


if __name__ == "__main__":
    main()
