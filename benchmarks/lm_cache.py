"""Seconds per epoch of frozen-LM models without and with the language-model cache.

    python benchmarks/lm_cache.py --data ../shared/data/mosi/word_aligned_valid.pkl \
        --models sagenet mult dmd --epochs 4

Each model is trained with ``model.freeze_language_model=true`` and augmentation off (with text
augmentation the training split cannot use the cache) on the first of 5 grouped folds
of the data (229 clips: about 150 training, 37 validation clips), with ``train.lm_cache=off``
and then ``auto`` (the cache is filled first, in a folder of its own, so ``auto`` epochs are the
"after the first run" case), one torch thread, the same seed. An epoch is the training pass plus
the validation pass, as in ``epochs.csv``. Printed per model: the median and range over epochs
2..N of the wall-clock seconds and of the process CPU seconds (on a shared machine the wall clock
also measures the other processes; CPU time measures this one), the off/auto ratios, the
one-time cost of filling the cache, and whether both runs reached the same losses. Nothing is
asserted; the numbers are for docs/performance.md.

``--language-model bert-base-shape`` times the presets' case (they name ``bert-base-uncased``,
12 layers, 768-d, which this offline machine cannot download): a BertModel of exactly that shape
with random weights (seeded) and the packaged MiniLM's tokenizer (the same uncased WordPiece
vocabulary), saved to a temporary folder. Its compute per token is bert-base's; its hidden states
are meaningless, so read its timings, not its losses.
"""

from __future__ import annotations

import argparse
import csv
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from msakit.config import build_config
from msakit.lm_cache import SplitTextStates
from msakit.models import create_model
from msakit.training.loading import feature_dims, load_experiment_data, loader_for
from msakit.training.trainer import Trainer


def bert_base_shaped(folder: Path) -> str:
    """Save a randomly initialised bert-base-uncased-shaped BertModel with MiniLM's tokenizer."""
    from transformers import BertConfig, BertModel

    from msakit.lm import load_tokenizer

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                        num_attention_heads=12, intermediate_size=3072)
    BertModel(config).save_pretrained(folder)
    load_tokenizer("all-MiniLM-L6-v2").save_pretrained(folder)
    return str(folder)


def train_epochs(name: str, data: str, epochs: int, cache: str, cache_dir: Path,
                 work: Path, language_model: str | None = None) -> dict:
    lm = [f"model.language_model={language_model}"] if language_model else []
    config = build_config(name, [*lm,
        f"data.path={data}", "data.folds=5", "model.freeze_language_model=true",
        # augmentation off (SAGE-Net's default has it on): augmented text has no cached states
        "augment.text.enabled=false", "augment.audio.enabled=false",
        f"train.epochs={epochs}", "train.patience=null", "train.num_threads=1",
        "train.device=cpu", f"train.lm_cache={cache}", f"train.lm_cache_dir={cache_dir}",
    ])
    torch.set_num_threads(1)
    dataset, partitions = load_experiment_data(config)
    partition = partitions[0]
    torch.manual_seed(config.train.seed)
    model = create_model(config.model, feature_dims(dataset, config))
    run_dir = work / f"{name}-{cache}"
    run_dir.mkdir()
    trainer = Trainer(config, run_dir, dataset.name, progress=False)
    fill_seconds = 0.0
    text_states = SplitTextStates.for_model(model, config, dataset.word_aligned)
    if text_states is not None:
        started = time.perf_counter()
        for split in (partition.train, partition.valid):
            text_states(split)
        fill_seconds = time.perf_counter() - started
    cpu_marks = []
    original_train_epoch = trainer._train_epoch

    def timed_train_epoch(*args, **kwargs):
        cpu_marks.append(time.process_time())
        return original_train_epoch(*args, **kwargs)

    trainer._train_epoch = timed_train_epoch
    trainer.fit(model, lambda epoch: loader_for(partition.train, dataset, config, train=True,
                                                seed=epoch, text_states=text_states),
                loader_for(partition.valid, dataset, config, train=False,
                           text_states=text_states),
                torch.as_tensor(partition.train.labels, dtype=torch.float32))
    cpu_marks.append(time.process_time())
    with (run_dir / "epochs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return {
        "wall": [float(r["seconds"]) for r in rows][1:],
        "cpu": [b - a for a, b in zip(cpu_marks, cpu_marks[1:])][1:],  # includes validation
        "losses": [float(r["train_total"]) for r in rows],
        "fill": fill_seconds,
        "statistics": text_states.statistics if text_states is not None else None,
    }


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} [{min(values):.2f}-{max(values):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/mosi/word_aligned_valid.pkl")
    parser.add_argument("--models", nargs="+", default=["sagenet", "mult", "dmd"])
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (>= 2)")
    parser.add_argument("--language-model", choices=["default", "bert-base-shape"],
                        default="default", help="the models' default LM (packaged MiniLM) or a "
                        "random-weight LM of bert-base-uncased's shape (the presets' LM)")
    args = parser.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    print(f"frozen LM ({args.language_model}), fold 0 of 5 on {args.data}, {args.epochs} epochs, "
          "1 thread; "
          "seconds per epoch, median [range] over epochs 2..N")
    print(f"{'model':8} {'off wall':>20} {'cached wall':>20} {'ratio':>6} "
          f"{'off cpu':>20} {'cached cpu':>20} {'ratio':>6} {'fill s':>7} same-loss")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        lm = None
        if args.language_model == "bert-base-shape":
            lm = bert_base_shaped(tmp / "bert-base-shape")
        for name in args.models:
            off = train_epochs(name, args.data, args.epochs, "off", tmp / "cache", tmp, lm)
            # fill the cache as a first run would, then time a later run
            (tmp / f"fill-{name}").mkdir()
            warm = train_epochs(name, args.data, 1, "auto", tmp / "cache", tmp / f"fill-{name}",
                                lm)
            cached = train_epochs(name, args.data, args.epochs, "auto", tmp / "cache", tmp, lm)
            same = max(abs(a - b) for a, b in zip(off["losses"], cached["losses"]))
            print(f"{name:8} {summary(off['wall']):>20} {summary(cached['wall']):>20} "
                  f"{statistics.median(off['wall']) / statistics.median(cached['wall']):6.2f} "
                  f"{summary(off['cpu']):>20} {summary(cached['cpu']):>20} "
                  f"{statistics.median(off['cpu']) / statistics.median(cached['cpu']):6.2f} "
                  f"{warm['fill']:7.1f} max |d loss| {same:.1e}")
            if cached["statistics"].computed:
                print(f"  note: the timed cached run computed {cached['statistics'].computed} "
                      "states")


if __name__ == "__main__":
    main()
