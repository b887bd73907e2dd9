"""msakit at MOSEI's scale: reading a large MMSA pickle, loader throughput, frozen-LM epochs.

    python benchmarks/scale.py                      # --scale 0.1: a tenth of MOSEI's clips
    python benchmarks/scale.py --scale 1 --keep big.pkl   # the full size (~4.6 GB of features)

Writes a synthetic MMSA pickle with CMU-MOSEI's unaligned shapes: 16,326 / 1,871 / 4,659 clips
(times ``--scale``), 50 tokens (``text_bert`` ``(N, 3, 50)``), audio ``(N, 500, 74)``, vision
``(N, 375, 35)`` float32 with random true lengths, random transcripts of 5-40 words, labels in
[-3, 3]. It does not hold MMSA's ``text`` feature array (msakit re-tokenises the transcripts),
so the figures concern the audio/vision arrays. Then it reports:

1. **load**: ``msakit.data.load_dataset`` in a fresh process: seconds, and the growth of the
   process's peak RSS (VmHWM) over its RSS before loading, as a multiple of the arrays' own size (the
   target is <= 1.5x);
2. **loader**: training batches per second of ``make_loader`` (batch 32, shuffled, one process),
   first epoch (tokenises) and second epoch (tokens cached);
3. **frozen-LM epoch**: seconds per epoch of ``--model`` with ``model.freeze_language_model=true``
   on ``--train-clips`` training clips (validation on 64), ``train.lm_cache=off`` vs ``auto``
   (cache filled first, as by an earlier run), one thread, median over epochs 2..N, and the
   time per epoch projected to the whole training split.

Nothing is asserted; the numbers go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MOSEI_CLIPS = {"train": 16_326, "valid": 1_871, "test": 4_659}
TOKENS, AUDIO, VISION = 50, (500, 74), (375, 35)
WORDS = ("the movie was really good and i liked it a lot but the ending felt too long "
         "honestly acting great boring plot music nice not bad sad happy story").split()


def synthetic_split(n: int, rng: np.random.Generator, offset: int) -> dict:
    words = rng.integers(5, 41, size=n)
    texts = np.array([" ".join(rng.choice(WORDS, size=k)) for k in words], dtype=object)
    ids = np.array([f"video{(offset + i) // 8:06d}$_${(offset + i) % 8}" for i in range(n)],
                   dtype=object)
    text_bert = np.zeros((n, 3, TOKENS), dtype=np.float32)
    text_bert[:, 0, 0] = 101
    for i, k in enumerate(np.minimum(words + 2, TOKENS)):
        text_bert[i, 1, :k] = 1
    return {
        "raw_text": texts,
        "id": ids,
        "text_bert": text_bert,
        "audio": rng.standard_normal((n, *AUDIO), dtype=np.float32),
        "audio_lengths": rng.integers(1, AUDIO[0] + 1, size=n),
        "vision": rng.standard_normal((n, *VISION), dtype=np.float32),
        "vision_lengths": rng.integers(1, VISION[0] + 1, size=n),
        "regression_labels": rng.uniform(-3, 3, size=n).astype(np.float32),
    }


def write_pickle(path: Path, scale: float, seed: int = 0) -> tuple[dict[str, int], int]:
    """Write the synthetic file one split at a time; returns clips per split, feature bytes."""
    rng = np.random.default_rng(seed)
    counts = {name: max(8, round(n * scale)) for name, n in MOSEI_CLIPS.items()}
    data, offset, feature_bytes = {}, 0, 0
    for name, n in counts.items():
        data[name] = synthetic_split(n, rng, offset)
        offset += n
        feature_bytes += data[name]["audio"].nbytes + data[name]["vision"].nbytes
    with path.open("wb") as handle:
        pickle.dump(data, handle, protocol=4)
    return counts, feature_bytes


LOAD_PROBE = r"""
import json, sys, time
import msakit.data, torch  # imports first: their memory is not the dataset's
def status_kib(field):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field))
def rss_kib():
    return status_kib("VmRSS")
before = rss_kib()
started = time.perf_counter()
dataset = msakit.data.load_dataset(sys.argv[1])
seconds = time.perf_counter() - started
# VmHWM is this process image's own high-water mark; ru_maxrss would carry the parent's RSS
# from before the exec (subprocess spawns by vfork), i.e. the benchmark's own memory
peak = status_kib("VmHWM")
print(json.dumps({"seconds": seconds, "before_kib": before, "peak_kib": peak,
                  "after_kib": rss_kib(), "clips": {n: len(s) for n, s in dataset.splits.items()}}))
"""


def measure_load(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD_PROBE, str(path)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_loader(split, batches: int) -> tuple[float, float]:
    from msakit.data import make_loader
    from msakit.data.collate import SplitDataset
    from msakit.lm import load_tokenizer

    dataset = SplitDataset(split, load_tokenizer("all-MiniLM-L6-v2"), 64)
    rates = []
    for epoch in (1, 2):
        loader = make_loader(dataset, batch_size=32, shuffle=True, seed=epoch)
        started, count = time.perf_counter(), 0
        for _ in zip(range(batches), loader):
            count += 1
        rates.append(count / (time.perf_counter() - started))
    return rates[0], rates[1]


def measure_epochs(path: Path, model_name: str, train_clips: int, epochs: int,
                   cache_dir: Path, work: Path) -> dict:
    import torch

    from msakit.config import build_config
    from msakit.lm_cache import SplitTextStates
    from msakit.models import create_model
    from msakit.training.loading import feature_dims, load_experiment_data, loader_for
    from msakit.training.trainer import Trainer

    results = {}
    for mode in ("off", "fill", "auto"):
        config = build_config(model_name, [
            f"data.path={path}", "model.freeze_language_model=true",
            f"train.epochs={1 if mode == 'fill' else epochs}", "train.patience=null",
            "augment.text.enabled=false", "augment.audio.enabled=false",
            "train.num_threads=1", "train.device=cpu", f"train.lm_cache={mode if mode != 'fill' else 'auto'}",
            f"train.lm_cache_dir={cache_dir}",
        ])
        torch.set_num_threads(1)
        dataset, partitions = load_experiment_data(config)
        train = partitions[0].train.subset(range(min(train_clips, len(partitions[0].train))))
        valid = partitions[0].valid.subset(range(min(64, len(partitions[0].valid))))
        torch.manual_seed(1)
        model = create_model(config.model, feature_dims(dataset, config))
        text_states = SplitTextStates.for_model(model, config, dataset.word_aligned)
        started = time.perf_counter()
        if text_states is not None:
            text_states(train)
            text_states(valid)
        fill = time.perf_counter() - started
        run_dir = work / mode
        run_dir.mkdir()
        if mode != "fill":
            Trainer(config, run_dir, dataset.name, progress=False).fit(
                # fit() runs within this iteration, so the lambda sees this iteration's values
                model, lambda epoch: loader_for(
                    train, dataset, config, train=True, seed=epoch, text_states=text_states),  # noqa: B023
                loader_for(valid, dataset, config, train=False, text_states=text_states),
                torch.as_tensor(train.labels, dtype=torch.float32))
            rows = (run_dir / "epochs.csv").read_text().splitlines()[1:]
            results[mode] = [float(r.split(",")[1]) for r in rows][1:]
        else:
            results["fill_seconds"] = fill
        results["train_split"] = len(partitions[0].train)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=0.1,
                        help="fraction of MOSEI's clips (1 = 22,856 clips, ~4.6 GB of features)")
    parser.add_argument("--keep", type=Path, help="write the pickle here and keep it")
    parser.add_argument("--model", default="sagenet")
    parser.add_argument("--train-clips", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--loader-batches", type=int, default=100)
    parser.add_argument("--no-epochs", action="store_true", help="skip part 3 (training)")
    args = parser.parse_args()
    import logging

    logging.getLogger("transformers").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = args.keep or tmp / "mosei_synthetic.pkl"
        started = time.perf_counter()
        counts, feature_bytes = write_pickle(path, args.scale)
        print(f"scale {args.scale}: {counts} clips, audio+vision arrays "
              f"{feature_bytes / 2**30:.2f} GiB, file {path.stat().st_size / 2**30:.2f} GiB "
              f"(written in {time.perf_counter() - started:.0f} s)")

        load = measure_load(path)
        growth = (load["peak_kib"] - load["before_kib"]) * 1024
        print(f"load: {load['seconds']:.1f} s; peak RSS growth {growth / 2**30:.2f} GiB = "
              f"{growth / feature_bytes:.2f}x the arrays (target <= 1.5x); RSS after "
              f"{(load['after_kib'] - load['before_kib']) / 2**20:.2f} GiB")

        from msakit.data import load_dataset

        dataset = load_dataset(path)
        first, second = measure_loader(dataset.split("train"), args.loader_batches)
        print(f"loader (batch 32, {args.loader_batches} batches): {first:.1f} batches/s first "
              f"epoch (tokenising), {second:.1f} batches/s after")
        del dataset

        if args.no_epochs:
            return
        epochs = measure_epochs(path, args.model, args.train_clips, args.epochs, tmp / "cache",
                                tmp)
        off, cached = statistics.median(epochs["off"]), statistics.median(epochs["auto"])
        per_clip = args.train_clips + 64
        print(f"{args.model}, frozen LM, {args.train_clips} train + 64 valid clips, s/epoch "
              f"(median over epochs 2..{args.epochs}): off {off:.2f} "
              f"[{min(epochs['off']):.2f}-{max(epochs['off']):.2f}], cached {cached:.2f} "
              f"[{min(epochs['auto']):.2f}-{max(epochs['auto']):.2f}], ratio {off / cached:.2f}; "
              f"filling the cache {epochs['fill_seconds']:.1f} s once")
        full = epochs["train_split"]
        print(f"projected to the whole training split ({full} clips): off "
              f"{off / per_clip * full:.0f} s/epoch, cached {cached / per_clip * full:.0f} s/epoch")


if __name__ == "__main__":
    main()
