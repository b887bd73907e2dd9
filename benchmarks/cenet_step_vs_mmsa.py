"""One CENET training step, msakit vs MMSA v2.2.1's own code, on the same batch (CPU).

    PYTHONPATH=src python benchmarks/cenet_step_vs_mmsa.py --official /path/to/MMSA \
        [--warmup 2] [--steps 10] [--threads 1] [--bert minilm|base]

``--official``: a checkout of thuiar/MMSA (v2.2.1, src/MMSA/...). MMSA's model and trainer are
loaded as ``tools/parity/cenet.py`` loads them (a stand-in for ``pytorch_transformers``); nothing
of MMSA's code is copied. The batch has the shapes of a MOSI batch of MMSA's preset (batch 64;
``unaligned_50``: 50 BERT tokens, audio 500 x 5, vision 375 x 20), random token ids and features
with random real lengths (one clip has all 50 tokens). Both sides use one randomly initialised
BERT with the same weights (no download): ``--bert minilm`` (default) has the shape of msakit's
packaged all-MiniLM-L6-v2 (6 layers, 384-d, as ``benchmarks/vs_mmsa.py`` stands it in for
MMSA's bert-base), ``--bert base`` bert-base's (12 layers, 768-d; about 8x the compute), and
MMSA's MOSI hyper-parameters: Adam in MMSA's three groups (lr 1e-5, weight decay 1e-4, eps
3e-8), L1 loss, gradient norm clipped to 2, dropout 0.1. msakit reads MMSA's padded arrays
(``model.audio_attended_steps=500``, ``vision_attended_steps=375``), so both compute the same.

MMSA's step is the body of its ``do_train`` loop (zero_grad, forward, L1, backward, clipping,
``optimizer.step()``, ``loss.item()`` and the ``.cpu()`` of the predictions) with the optimiser
its ``do_train`` builds (captured from it); msakit's step is its trainer's (forward, weighted
loss, backward, ``clip_gradients``, step). Each side: ``--warmup`` steps, then the median of
``--steps`` timed steps; MMSA first, then msakit, one after the other in this process (one model
in memory at a time). Prints both medians and the ratio msakit / MMSA.
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
BATCH, TOKENS, AUDIO, VISION = 64, 50, (500, 5), (375, 20)
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
           "labels": torch.empty(BATCH).uniform_(-3, 3, generator=generator)}
    for name, (steps, dim) in (("audio", AUDIO), ("vision", VISION)):
        lengths = torch.randint(steps // 4, steps + 1, (BATCH,), generator=generator)
        step_mask = torch.arange(steps)[None] < lengths[:, None]
        out[name] = torch.randn(BATCH, steps, dim, generator=generator) * step_mask[..., None]
        out[f"{name}_lengths"], out[f"{name}_mask"] = lengths, step_mask
    return out


def timed(step, warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - started)
    return seconds


def mmsa_step_times(official: Path, bert_config: dict, bert_state: dict, batch: dict,
                    warmup: int, steps: int):
    import transformers
    from _mmsa import AttributeDict, load_official
    from cenet import build_official, stub_pytorch_transformers

    stub_pytorch_transformers()
    model_module, train_module = load_official(official, "models/singleTask/CENET.py",
                                               "trains/singleTask/CENET.py")
    # the trainer loads a tokenizer it never uses (no download); BertModel stays as it is
    transformers.BertTokenizer.from_pretrained = classmethod(lambda cls, *a, **k: None)
    args = AttributeDict({
        "model_name": "cenet", "dataset_name": "mosi", "train_mode": "regression",
        "pretrained": "bert-base-uncased", "KeyEval": "Loss", "early_stop": 8,
        "device": torch.device("cpu"),
        "feature_dims": (bert_config["hidden_size"], AUDIO[1], VISION[1]),
        "learning_rate": 1e-5, "weight_decay": 1e-4, "adam_epsilon": 3e-8,
    })
    model = build_official(model_module, bert_config, args, bert_state)
    trainer = train_module.CENET(args)
    captured = {}
    adam = torch.optim.Adam

    class CapturingAdam(adam):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            captured["optimizer"] = self
            raise _Captured

    train_module.torch.optim.Adam = CapturingAdam
    try:
        trainer.do_train(model, {"train": [], "valid": []})
    except _Captured:
        pass
    finally:
        train_module.torch.optim.Adam = adam
    optimizer = captured["optimizer"]
    text = torch.stack([batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]],
                       dim=1).float()
    labels = batch["labels"].view(-1, 1)
    model.train()

    def step():  # the body of MMSA's do_train loop
        optimizer.zero_grad()
        logits = model(text, batch["audio"], batch["vision"])[0]
        loss = trainer.criterion(logits, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.args.max_grad_norm)
        optimizer.step()
        logits.detach().cpu()
        loss.item()

    return timed(step, warmup, steps)


def msakit_step_times(bert_dir: str, batch: dict, warmup: int, steps: int):
    from msakit.config import build_config
    from msakit.models import FeatureDims, create_model
    from msakit.training.trainer import clip_gradients, make_optimizer, weighted_loss

    config = build_config("cenet", [f"model.language_model={bert_dir}",
                                    f"model.audio_attended_steps={AUDIO[0]}",
                                    f"model.vision_attended_steps={VISION[0]}"],
                          preset="mosi")
    model = create_model(config.model, FeatureDims(AUDIO[1], VISION[1]))
    optimizer = make_optimizer(model, config)
    parameters = [p for p in model.parameters() if p.requires_grad]
    model.train()

    def step():
        output = model(batch)
        loss = weighted_loss(output, config.model.loss_weights, "cenet")
        loss.backward()
        clip_gradients(parameters, config)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return timed(step, warmup, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bert", choices=sorted(BERTS), default="minilm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(**BERTS[args.bert]))
    bert_config = bert.config.to_dict()
    batch = make_batch()
    with tempfile.TemporaryDirectory() as folder:
        bert.save_pretrained(folder)
        bert_state = bert.state_dict()
        del bert
        mmsa = mmsa_step_times(args.official, bert_config, bert_state, batch, args.warmup,
                               args.steps)
        print(f"MMSA   step: median {statistics.median(mmsa):.2f} s  (all: "
              f"{', '.join(f'{s:.2f}' for s in mmsa)})", flush=True)
        ours = msakit_step_times(folder, batch, args.warmup, args.steps)
    print(f"msakit step: median {statistics.median(ours):.2f} s  (all: "
          f"{', '.join(f'{s:.2f}' for s in ours)})")
    print(f"msakit / MMSA = {statistics.median(ours) / statistics.median(mmsa):.2f} "
          f"({args.threads} thread(s), {args.bert} BERT, batch {BATCH}, {TOKENS} tokens, audio {AUDIO}, "
          f"vision {VISION})")


if __name__ == "__main__":
    main()
