"""One CM-BERT training step: msakit vs the authors' code, on the same batch, in one process.

    pip install --target /tmp/ppb "pytorch-pretrained-bert==0.6.1" --no-deps
    PYTHONPATH=/tmp/ppb:src python benchmarks/cm_bert_step.py --official /path/to/Cross-Modal-BERT

The authors' ``model.py`` (thuiar/Cross-Modal-BERT@3e44dce; its own BERT, ``BertFinetun``) and
``pytorch_pretrained_bert``'s ``BertAdam`` (imported as ``tools/parity/cm_bert.py`` does) against
msakit's ``cm_bert`` with its default config (the authors' training settings) on transformers'
``BertModel``. A batch of the authors' settings: 24 clips of 50 tokens (real lengths 10-50),
5-d audio (their MOSI pickle's width), a bert-base-sized BERT with random weights (no download),
CPU, one thread. A step is the authors' loop body (``model(..., labels).mean()``, ``backward``,
``BertAdam.step`` with its per-parameter clipping and warmup_linear schedule, ``zero_grad``;
the embeddings and the classifier frozen by their freezing rule) and msakit's trainer body
(forward, loss, ``backward``, per-parameter clipping, ``BertAdam.step``, the per-step
schedule, ``zero_grad``). Prints the median of ``--steps`` steps after ``--warmup`` for each
side; ``--alternate`` runs a step of each in turn (fairer when the machine's load changes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "parity"))
from _timing import print_medians, time_steps  # noqa: E402
from cm_bert import import_official, official_groups  # noqa: E402

BATCH, TOKENS, AUDIO = 24, 50, 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True,
                        help="thuiar/Cross-Modal-BERT checkout")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--alternate", action="store_true",
                        help="a step of each side in turn (both models in memory at once)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from transformers import BertConfig, BertModel

    from msakit.config import build_config
    from msakit.models import FeatureDims, create_model
    from msakit.training.trainer import clip_gradients, make_optimizer, make_scheduler

    torch.manual_seed(0)
    folder = Path(tempfile.mkdtemp()) / "bert"
    BertModel(BertConfig()).save_pretrained(folder)  # bert-base-uncased's sizes and dropouts
    official_model, BertAdam = import_official(args.official)

    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(10, TOKENS + 1, (BATCH,), generator=generator)
    mask = (torch.arange(TOKENS)[None] < lengths[:, None]).long()
    ids = torch.randint(1000, 30000, (BATCH, TOKENS), generator=generator) * mask
    audio = torch.randn(BATCH, TOKENS, AUDIO, generator=generator) * mask[..., None]
    audio[:, 0] = 0  # the [CLS] row
    labels = torch.rand(BATCH, generator=generator) * 6 - 3
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
             "audio": audio, "labels": labels}
    total_steps = 3 * 53  # the authors' t_total on MOSI: int(1284 / 24) * 3 epochs

    def official_step_function():
        config = official_model.BertConfig(30522)  # bert-base's other sizes are the defaults
        official = official_model.BertForSequenceClassification(config, num_labels=1).train()
        optimiser = BertAdam(official_groups(official, 0.01), lr=2e-5, warmup=0.1,
                             t_total=total_steps)

        def step():  # run_classifier.py's loop body
            loss = official(ids, audio, torch.zeros_like(ids), mask, labels).mean()
            loss.backward()
            optimiser.step()
            optimiser.zero_grad()

        return step

    def msakit_step_function():
        config = build_config("cm_bert", [f"model.language_model={folder}", "train.device=cpu"])
        ours = create_model(config.model, FeatureDims(AUDIO, 0)).train()
        optimiser = make_optimizer(ours, config)
        scheduler = make_scheduler(optimiser, config, "min", total_steps // config.train.epochs)
        parameters = [p for p in ours.parameters() if p.requires_grad]

        def step():  # the trainer's body
            output = ours(batch)
            loss = sum(config.model.loss_weights[k] * v for k, v in output.losses.items())
            loss.backward()
            clip_gradients(parameters, config)
            optimiser.step()
            scheduler.step()
            optimiser.zero_grad(set_to_none=True)

        return step

    sides = {"official": official_step_function, "msakit": msakit_step_function}
    print_medians(time_steps(sides, args.warmup, args.steps, args.alternate), "msakit", "official")


if __name__ == "__main__":
    main()
