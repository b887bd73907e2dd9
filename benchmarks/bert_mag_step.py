"""One MAG-BERT training step: msakit vs MMSA v2.2.1's code, on the same batch, in one process.

    PYTHONPATH=/tmp/tf4:src python benchmarks/bert_mag_step.py --official /path/to/MMSA

MMSA's ``MAG_BertModel`` needs transformers 4.x (see tools/parity/bert_mag.py for the install
into ``/tmp/tf4``); both sides run on that transformers here, so their BERT layers are the same
code. A MOSI batch of MMSA's preset: 32 clips of 50 tokens (the real lengths spread over 10-50),
74-d audio, 47-d vision, a bert-base-sized BERT with random weights (no download), MMSA's MOSI
hyper-parameters (Adam 2e-5, no weight decay, gate dropout 0.3, L1 loss), CPU, one thread. A step
is forward, loss, backward and the optimiser step (MMSA's trainer body: ``zero_grad``, forward,
``L1Loss``, ``backward``, ``Adam.step``; msakit's model and the optimiser its trainer builds).
Prints the median of ``--steps`` steps after ``--warmup`` steps for each side, one side after
the other, or with ``--alternate`` a step of each in turn (fairer when the machine's load
changes; both models with their Adam states at once need ~6 GB).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "parity"))
from _mmsa import AttributeDict, load_official  # noqa: E402
from _timing import print_medians, time_steps  # noqa: E402

BATCH, TOKENS, AUDIO, VISION = 32, 50, 74, 47


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--alternate", action="store_true",
                        help="a step of each side in turn (fairer under a changing load; both "
                        "models in memory at once, ~6 GB)")
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
    classifier = model_module.MAG_BertForSequenceClassification
    classifier.from_pretrained = classmethod(
        lambda cls, path, args, num_labels: cls(BertConfig(num_labels=num_labels), args))

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

    def mmsa_step_function():
        mmsa_args = AttributeDict(feature_dims=(768, AUDIO, VISION), beta_shift=1.0,
                                  dropout_prob=0.3, device=torch.device("cpu"), language="en")
        official = model_module.BERT_MAG(mmsa_args).train()
        optimiser = torch.optim.Adam(official.parameters(), lr=2e-5, weight_decay=0.0)

        def step():  # MMSA's trainer body
            optimiser.zero_grad()
            output = official(text, audio, vision)["M"]
            loss = torch.nn.functional.l1_loss(output, labels.view(-1, 1))
            loss.backward()
            optimiser.step()

        return step

    def msakit_step_function():
        config = build_config("bert_mag", [f"model.language_model={folder}", "train.device=cpu"])
        ours = create_model(config.model, FeatureDims(AUDIO, VISION)).train()
        optimiser = make_optimizer(ours, config)

        def step():
            optimiser.zero_grad(set_to_none=True)
            output = ours(batch)
            loss = sum(config.model.loss_weights[k] * v for k, v in output.losses.items())
            loss.backward()
            optimiser.step()

        return step

    sides = {"MMSA": mmsa_step_function, "msakit": msakit_step_function}
    print_medians(time_steps(sides, args.warmup, args.steps, args.alternate), "msakit", "MMSA")


if __name__ == "__main__":
    main()
