"""One MAG-BERT training step: msakit vs MMSA v2.2.1's code, on the same batch, in one process.

    PYTHONPATH=/tmp/tf4:src python benchmarks/bert_mag_step.py --official /path/to/MMSA

MMSA's ``MAG_BertModel`` needs transformers 4.x (see tools/parity/bert_mag.py for the install
into ``/tmp/tf4``); both sides run on that transformers here, so their BERT layers are the same
code. A MOSI batch of MMSA's preset: 32 clips of 50 tokens (the real lengths spread over 10-50),
74-d audio, 47-d vision, a bert-base-sized BERT with random weights (no download), MMSA's MOSI
hyper-parameters (Adam 2e-5, no weight decay, gate dropout 0.3, L1 loss), CPU, one thread. A step
is forward, loss, backward and the optimiser step (MMSA's trainer body: ``zero_grad``, forward,
``L1Loss``, ``backward``, ``Adam.step``; msakit's model and the optimiser its trainer builds).
Prints the median of ``--steps`` steps after ``--warmup`` steps for each side, run alternately.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "parity"))
from _mmsa import AttributeDict, load_official  # noqa: E402

BATCH, TOKENS, AUDIO, VISION = 32, 50, 74, 47


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import BertConfig, BertModel

    from msakit.config import build_config
    from msakit.models import FeatureDims, create_model
    from msakit.training.trainer import make_optimizer

    bert_config = BertConfig()  # bert-base-uncased's sizes and dropouts
    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp()) / "bert"
    BertModel(bert_config).save_pretrained(folder)
    model_module, _ = load_official(args.official, "models/singleTask/BERT_MAG.py",
                                    "trains/singleTask/BERT_MAG.py")
    mmsa_args = AttributeDict(feature_dims=(768, AUDIO, VISION), beta_shift=1.0,
                              dropout_prob=0.3, device=torch.device("cpu"), language="en")
    classifier = model_module.MAG_BertForSequenceClassification
    classifier.from_pretrained = classmethod(
        lambda cls, path, args, num_labels: cls(BertConfig(num_labels=num_labels), args))
    official = model_module.BERT_MAG(mmsa_args).train()
    official_optimiser = torch.optim.Adam(official.parameters(), lr=2e-5, weight_decay=0.0)

    config = build_config("bert_mag", [f"model.language_model={folder}", "train.device=cpu"])
    ours = create_model(config.model, FeatureDims(AUDIO, VISION)).train()
    ours_optimiser = make_optimizer(ours, config)

    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, TOKENS + 1, (BATCH,), generator=generator)
    mask = (torch.arange(TOKENS)[None] < lengths[:, None]).long()
    ids = torch.randint(1000, 30000, (BATCH, TOKENS), generator=generator) * mask
    audio = torch.randn(BATCH, TOKENS, AUDIO, generator=generator) * mask[..., None]
    vision = torch.randn(BATCH, TOKENS, VISION, generator=generator) * mask[..., None]
    labels = torch.rand(BATCH, generator=generator) * 6 - 3
    text = torch.stack([ids, mask, torch.zeros_like(ids)], dim=1).float()
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
             "audio": audio, "vision": vision, "labels": labels}

    def official_step():
        official_optimiser.zero_grad()
        output = official(text, audio, vision)["M"]
        loss = torch.nn.functional.l1_loss(output, labels.view(-1, 1))
        loss.backward()
        official_optimiser.step()

    def ours_step():
        ours_optimiser.zero_grad(set_to_none=True)
        output = ours(batch)
        loss = sum(config.model.loss_weights[k] * v for k, v in output.losses.items())
        loss.backward()
        ours_optimiser.step()

    times = {"MMSA": [], "msakit": []}
    for i in range(args.warmup + args.steps):
        for name, step in (("MMSA", official_step), ("msakit", ours_step)):
            start = time.perf_counter()
            step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name}: median {value * 1000:.0f} ms over {args.steps} steps "
              f"(min {min(times[name]) * 1000:.0f}, max {max(times[name]) * 1000:.0f})")
    print(f"msakit / MMSA: {medians['msakit'] / medians['MMSA']:.2f}")


if __name__ == "__main__":
    main()
