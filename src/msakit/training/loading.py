"""An experiment's data: the data file loaded and partitioned, the feature sizes a model is
built for, the record of what was trained on, and the batches of training and evaluation.

Used by :mod:`msakit.training.experiment` (orchestration), tuning, robustness and benchmarks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from msakit.config import ConfigError, ExperimentConfig
from msakit.data import Fold, dataset_splits, load_dataset, make_loader
from msakit.data.context import TextContext, context_report
from msakit.data.dataset import DataError, MSADataset, Split
from msakit.data.readers import data_fingerprint
from msakit.lm import load_tokenizer
from msakit.lm_cache import SplitTextStates
from msakit.models import FeatureDims
from msakit.training import distributed
from msakit.training.trainer import resolve_device

__all__ = ["EpochLoader", "data_record", "feature_dims", "load_experiment_data", "loader_for",
           "loader_options", "text_context_record"]


def feature_dims(dataset: MSADataset, config: ExperimentConfig) -> FeatureDims:
    """Input sizes the model is built for; modalities left out by ``data.modalities`` are 0."""
    keep = set(config.data.modalities)
    return FeatureDims(
        audio=dataset.feature_dims.get("audio", 0) if "audio" in keep else 0,
        vision=dataset.feature_dims.get("vision", 0) if "vision" in keep else 0,
    )


def load_experiment_data(config: ExperimentConfig) -> tuple[MSADataset, list[Fold]]:
    data = config.data
    if not data.path:
        raise ConfigError("no data file given: pass --data PATH (or set data.path)")
    dataset = load_dataset(data.path, format=data.format, dataset=data.dataset,
                           nonfinite=data.nonfinite, allow_overlap=data.allow_overlap)
    parts = dataset_splits(dataset, folds=data.folds, valid_fraction=data.valid_fraction,
                           seed=data.fold_seed)
    for part in parts:
        for role in ("train", "valid", "test"):
            if len(getattr(part, role)) == 0:
                raise DataError(
                    f"{dataset.source}: the {role} part of partition {part.name!r} is empty; "
                    "training needs clips in train, valid and test (use --folds K to "
                    "cross-validate a file whose own splits are empty)")
    return dataset, parts


def loader_options(config: ExperimentConfig) -> dict[str, Any]:
    """``num_workers``, ``pin_memory``, ``persistent_workers`` from ``train.*`` (None = the
    device's default: workers and pinned memory on CUDA only)."""
    train = config.train
    on_cuda = resolve_device(train.device).type == "cuda"
    return {
        "num_workers": train.num_workers if train.num_workers is not None else (2 if on_cuda else 0),
        "pin_memory": train.pin_memory if train.pin_memory is not None else on_cuda,
        "persistent_workers": train.persistent_workers,
    }


def loader_for(split: Split, dataset: MSADataset, config: ExperimentConfig, *, train: bool,
               seed: int = 0, transform=None, sampler=None,
               text_states: SplitTextStates | None = None):
    """Batches of ``split``: shuffled by ``seed`` (or ordered by ``sampler``) when ``train``.
    With ``text_states`` they carry the frozen LM's cached states (for training only while text
    augmentation is off: augmented text has no cached states)."""
    tokenizer = load_tokenizer(config.model.language_model)
    if train and config.augment.text.enabled:
        text_states = None
    return make_loader(
        split,
        tokenizer,
        batch_size=config.train.batch_size if train else config.train.eval_batch_size,
        shuffle=train,
        seed=seed,
        max_text_tokens=config.data.max_text_tokens,
        word_aligned=dataset.word_aligned,
        modalities=config.data.modalities,
        transform=transform if train else None,
        sampler=sampler,
        **loader_options(config),
        text_states=text_states(split) if text_states is not None else None,
        text_context=config.model.text_context,
    )


class EpochLoader:
    """The training loader, built once; ``epoch -> batches`` whose order depends only on the
    seed and the epoch (so a resumed run sees the batches it would have seen), and whose
    DataLoader workers can persist across epochs.

    Under torchrun each process gets every N-th clip of the epoch's order and
    ``train.batch_size / N`` clips per step (see :mod:`msakit.training.distributed`).
    """

    def __init__(self, split: Split, dataset: MSADataset, config: ExperimentConfig, seed: int,
                 transform=None, text_states: SplitTextStates | None = None):
        from torch.utils.data import DistributedSampler

        process = distributed.current()
        if config.train.batch_size % process.world_size:
            raise ConfigError(
                f"train.batch_size={config.train.batch_size} (the global batch) must be a "
                f"multiple of the {process.world_size} processes"
            )
        self.seed = seed
        self.transform = transform
        self.sampler = DistributedSampler(range(len(split)), num_replicas=process.world_size,
                                          rank=process.rank, shuffle=True, seed=seed * 100_003)
        local = config.model_copy(deep=True)
        local.train.batch_size = config.train.batch_size // process.world_size
        self.loader = loader_for(split, dataset, local, train=True, seed=seed,
                                 transform=transform, sampler=self.sampler,
                                 text_states=text_states)

    def __call__(self, epoch: int):
        self.sampler.set_epoch(epoch)
        if self.transform is not None:  # the augmentation's draws depend on (seed, epoch) too
            self.loader.dataset.rng = np.random.default_rng([self.seed, epoch])
        return self.loader


def data_record(dataset: MSADataset, partitions: list[Fold], config: ExperimentConfig) -> dict:
    return {
        **data_fingerprint(config.data.path),
        "source": str(dataset.source),
        "dataset": dataset.name,
        "word_aligned": dataset.word_aligned,
        "feature_dims": dict(feature_dims(dataset, config).__dict__),
        "extractor": dataset.extractor,
        "replaced_nonfinite": dataset.replaced_nonfinite,
        "partitions": {p.name: {"train": len(p.train), "valid": len(p.valid),
                                "test": len(p.test)} for p in partitions},
        **text_context_record(partitions, config),
    }


def text_context_record(partitions: list[Fold], config: ExperimentConfig) -> dict:
    """``{"text_context": {partition: {split: report}}}`` (:func:`context_report`: how many
    clips had all their neighbours, which fell back for missing ones); ``{}`` without context."""
    context = TextContext.parse(config.model.text_context)
    if not context.enabled or "text" not in config.data.modalities:
        return {}
    return {"text_context": {p.name: {name: context_report(getattr(p, name), context)
                                      for name in ("train", "valid", "test")}
                             for p in partitions}}
