"""LRCMT, LoRA vs full fine-tuning: parameters, checkpoint size and cost of one training epoch.

    python benchmarks/lrcmt_lora_vs_full.py \
        --data ../shared/data/mosi/word_aligned_valid.pkl --folds 5    # 229 clips, fold 0
    python benchmarks/lrcmt_lora_vs_full.py --data ../shared/data/mosi  # text split
    python benchmarks/lrcmt_lora_vs_full.py --bert-base                 # counts only

One epoch on the training part of the first partition, batch size and learning rates from
``configs/lrcmt.yaml``. Both wall-clock and process CPU seconds are printed: on a shared machine
the wall clock mostly measures the other processes, the CPU time measures the model. The
checkpoint size is that of ``checkpoint_state_dict()`` as ``torch.save`` writes it (the ``model``
entry of a run's ``best.pt``). Nothing here is asserted; the numbers are for the docs.
"""

from __future__ import annotations

import argparse
import io
import time
from unittest import mock

import torch

from msakit.config import build_config
from msakit.models import FeatureDims, create_model


def checkpoint_bytes(model) -> int:
    buffer = io.BytesIO()
    torch.save(model.checkpoint_state_dict(), buffer)
    return buffer.getbuffer().nbytes


def bert_base_counts() -> None:
    """Parameter arithmetic on a randomly initialised bert-base (no download needed)."""
    from transformers import BertConfig, BertModel

    for full in (False, True):
        config = build_config("lrcmt", [f"model.lm_mode={'full_finetune' if full else 'lora'}",
                                        "model.language_model=bert-base-uncased"]).model
        torch.manual_seed(0)
        with mock.patch("msakit.modules.text.load_language_model",
                        side_effect=lambda name: BertModel(BertConfig())):
            model = create_model(config, FeatureDims(audio=5, vision=20))
        counts = model.parameter_counts()
        print(f"bert-base {'full' if full else 'lora'}: {counts}, "
              f"trainable {100 * model.trainable_fraction:.3f} %, "
              f"checkpoint {checkpoint_bytes(model) / 2**20:.2f} MiB")


def one_epoch(data: str, folds: int | None, full: bool, threads: int) -> dict:
    from msakit.training.loading import feature_dims, load_experiment_data, loader_for
    from msakit.training.trainer import make_optimizer, weighted_loss

    overrides = [f"data.path={data}", f"model.lm_mode={'full_finetune' if full else 'lora'}"]
    if folds:
        overrides.append(f"data.folds={folds}")
    config = build_config("lrcmt", overrides)
    dataset, partitions = load_experiment_data(config)
    part = partitions[0]
    torch.manual_seed(1)
    model = create_model(config.model, feature_dims(dataset, config))
    optimizer = make_optimizer(model, config)
    batches = list(loader_for(part.train, dataset, config, train=True, seed=1))  # tokenise first
    torch.set_num_threads(threads)
    model.train()
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        weighted_loss(model(batch), config.model.loss_weights, "lrcmt").backward()
        optimizer.step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    counts = model.parameter_counts()
    return {"mode": "full" if full else "lora", "train_clips": len(part.train),
            "trainable": counts["trainable"], "total": counts["total"],
            "fraction_%": round(100 * model.trainable_fraction, 3),
            "epoch_wall_s": round(wall, 1), "epoch_cpu_s": round(cpu, 1),
            "checkpoint_MiB": round(checkpoint_bytes(model) / 2**20, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="data file or label.csv folder")
    parser.add_argument("--folds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bert-base", action="store_true", help="parameter counts on bert-base")
    args = parser.parse_args()
    if args.bert_base:
        bert_base_counts()
    if args.data:
        for full in (False, True):
            print(one_epoch(args.data, args.folds, full, args.threads))


if __name__ == "__main__":
    main()
