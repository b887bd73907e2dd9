"""Experiments: every (seed, partition) pair trained, tested once, and summarised as mean ± std.

A *partition* is one (train, valid, test) triple: the data file's own splits, or one fold of
grouped cross-validation (``data.folds``). The test part of a partition is scored exactly once,
with the checkpoint selected on its validation part.
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from msakit.config import (
    ConfigError,
    ExperimentConfig,
    build_config,
    deep_update,
    load_saved_config,
)
from msakit.data import Fold, dataset_splits, load_dataset, make_loader
from msakit.data.context import TextContext, context_report
from msakit.data.dataset import DataError, MSADataset, Split
from msakit.data.readers import data_fingerprint
from msakit.lm import load_tokenizer
from msakit.lm_cache import SplitTextStates
from msakit.models import FeatureDims, create_model
from msakit.provenance import ENV_FILE, environment_record
from msakit.training import distributed, runs
from msakit.training.loggers import open_loggers
from msakit.training.results import (
    artifacts_table,
    summarise,
    summarise_artifacts,
    write_results,
)
from msakit.training.runs import RunError
from msakit.training.trainer import Trainer, evaluate_model, resolve_device

log = logging.getLogger(__name__)


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
        raise ValueError("no data file given: pass --data PATH (or set data.path)")
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


def check_data_unchanged(config: ExperimentConfig, run_dir: Path) -> None:
    """Refuse to resume or re-evaluate ``run_dir`` on data other than it was trained on.

    The run records the data's absolute path and SHA-256 (``data.json``); a file at that path
    with another hash is refused, naming both.
    """
    record_path = Path(run_dir) / runs.DATA_FILE
    recorded = runs.read_json(record_path).get("sha256") if record_path.exists() else None
    if recorded is None:  # a run from before data hashes were recorded
        return
    current = data_fingerprint(config.data.path)["sha256"]
    if current != recorded:
        raise RunError(
            f"{config.data.path}: the data changed since {run_dir} was trained on it (SHA-256 "
            f"{current[:12]}... now, {recorded[:12]}... then); refusing to score other data as "
            "the run's own. To score this file anyway, pass it explicitly: --data PATH")


def check_resume_request(run_dir: str | Path, model_name: str, overrides: list[str],
                         base: dict[str, Any] | None, seeds: list[int] | None) -> None:
    """Refuse a ``--resume`` whose model, options or seeds differ from the saved run's.

    A resumed run continues exactly what was started; anything else is a new run.
    """
    run_dir = Path(run_dir)
    saved = load_saved_config(run_dir / runs.CONFIG_FILE)
    if model_name != saved.model.name:
        raise RunError(f"{run_dir} is a {saved.model.name} run; --resume cannot continue it as "
                       f"{model_name}")
    if overrides or base:
        try:
            requested = build_config(model_name, overrides, base=deep_update(saved.to_dict(),
                                                                             base or {}))
        except ConfigError as err:
            raise RunError(f"--resume {run_dir}: {err}") from err
        differences = _differences(saved.to_dict(), requested.to_dict())
        if differences:
            raise RunError(
                f"--resume continues {run_dir} exactly as it was started, but these settings "
                f"differ: {'; '.join(differences[:6])}. Start a new run for other settings.")
    if seeds is not None:
        saved_seeds = runs.read_json(run_dir / "experiment.json")["seeds"]
        if list(seeds) != list(saved_seeds):
            raise RunError(f"--resume {run_dir}: the run has seeds {saved_seeds}, not {seeds}")


def _differences(saved: Any, requested: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(requested, dict):
        out = []
        for key in sorted(set(saved) | set(requested)):
            out += _differences(saved.get(key), requested.get(key),
                                f"{prefix}.{key}" if prefix else key)
        return out
    return [] if saved == requested else [f"{prefix} {saved!r} -> {requested!r}"]


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


def _train_one(config: ExperimentConfig, dataset: MSADataset, partition: Fold, seed: int,
               run_dir: Path, resume: bool, progress: bool, transform=None,
               evaluate_test: bool = True, epoch_callback=None) -> dict[str, Any]:
    """Train, select on valid, test once; write everything into ``run_dir``.

    With ``evaluate_test=False`` (hyper-parameter tuning) the test part is never loaded: the
    run folder holds the training and validation record only, no test metrics or predictions.
    ``epoch_callback`` goes to :class:`Trainer`. Under torchrun, process 0 alone writes.
    """
    is_main = distributed.current().is_main
    metrics_path = run_dir / runs.METRICS_FILE
    if resume and metrics_path.exists():
        return runs.read_json(metrics_path)
    if is_main and not (run_dir / runs.LAST_CHECKPOINT).exists():
        # nothing resumable: whatever an interrupted first epoch left is started over
        for stale in ("epochs.csv", runs.BEST_WEIGHTS, runs.BEST_METADATA):
            (run_dir / stale).unlink(missing_ok=True)
    config = config.model_copy(deep=True)
    config.train.seed = seed
    if is_main:
        config.save(run_dir / runs.CONFIG_FILE)  # the sub-run's own seed, so it stands alone
    torch.manual_seed(seed)  # model initialisation depends on the seed alone
    model = create_model(config.model, feature_dims(dataset, config))
    loggers = open_loggers(config, run_dir, seed, partition.name) if is_main else []

    def on_epoch(epoch: int, value: float, row: dict[str, Any]) -> None:
        for logger in loggers:
            logger.log(epoch, row)
        if epoch_callback is not None:
            epoch_callback(epoch, value, row)

    trainer = Trainer(config, run_dir, dataset.name, progress=progress and is_main,
                      epoch_callback=on_epoch if loggers or epoch_callback else None)
    model.to(trainer.device)  # the LM cache computes missing states on the training device
    text_states = SplitTextStates.for_model(model, config, dataset.word_aligned)

    train_loader = EpochLoader(partition.train, dataset, config, seed, transform, text_states)
    valid_loader = loader_for(partition.valid, dataset, config, train=False,
                              text_states=text_states)
    try:
        summary = trainer.fit(model, train_loader, valid_loader,
                              torch.as_tensor(partition.train.labels, dtype=torch.float32),
                              resume=resume)
    finally:
        for logger in loggers:
            logger.close()
    if not evaluate_test:
        result = {"seed": seed, "partition": partition.name, **summary,
                  "parameters": model.parameter_counts()}
        if is_main:
            runs.write_json(metrics_path, result)
            _drop_resume_state(run_dir, config)
        return result
    trainer.load_best(model)
    test = evaluate_model(model, loader_for(partition.test, dataset, config, train=False,
                                            text_states=text_states),
                          dataset.name, trainer.device, keep_extras=True,
                          precision=config.train.precision)
    artifacts = model.run_artifacts()
    evaluation_artifacts = getattr(model, "evaluation_artifacts", None)
    if evaluation_artifacts is not None:
        artifacts = {**artifacts, "test": evaluation_artifacts(test.extras)}
    if is_main:
        video_of = dict(zip(partition.test.ids, partition.test.video_ids))
        with (run_dir / "predictions.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "video_id", "label", "prediction"])
            writer.writerows(zip(test.ids, [video_of[i] for i in test.ids],
                                 test.labels.tolist(), test.predictions.tolist()))
        if artifacts:
            runs.write_json(run_dir / "artifacts.json", artifacts)
    result = {
        "seed": seed,
        "partition": partition.name,
        "test": test.metrics,
        "test_losses": test.losses,
        **summary,
        "parameters": model.parameter_counts(),
    }
    if text_states is not None:  # clips whose frozen-LM states came from disk / were computed
        result["lm_cache"] = {"directory": str(text_states.cache.directory),
                              "hits": text_states.statistics.hits,
                              "computed": text_states.statistics.computed}
    if is_main:
        runs.write_json(metrics_path, result)
        _drop_resume_state(run_dir, config)
    return result


def _drop_resume_state(run_dir: Path, config: ExperimentConfig) -> None:
    """A finished training run needs no ``last.pt`` (weights + optimiser state) unless
    ``train.keep_last``; ``best.safetensors`` stays."""
    if not config.train.keep_last:
        (run_dir / runs.LAST_CHECKPOINT).unlink(missing_ok=True)


def _result_line(result: dict[str, Any]) -> str:
    return (f"  seed {result['seed']} {result['partition']}: best epoch {result['best_epoch']}, "
            "test " + ", ".join(f"{k} {v:.4f}" for k, v in result["test"].items()
                                if k in ("Non0_acc_2", "Has0_acc_2", "Mult_acc_2", "MAE", "Corr")))


class JobsFailed(RuntimeError):
    """Some (seed, partition) runs of a ``--jobs`` experiment failed; the others finished."""


# -- one worker process of --jobs ---------------------------------------------------------------
_worker: dict[str, Any] = {}


def _init_worker(config: ExperimentConfig, device_queue, threads: int | None,
                 transform_factory) -> None:
    """Load the data once per worker process and claim a device for its lifetime."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    device = device_queue.get() if device_queue is not None else None
    if device is not None:
        config.train.device = device
    if threads:
        torch.set_num_threads(threads)
    dataset, partitions = load_experiment_data(config)
    if transform_factory is None:
        from msakit.augment import transform_from_config as transform_factory
    _worker.update(config=config, dataset=dataset, partitions=partitions,
                   transform=transform_factory(config))


def _worker_job(seed: int, index: int, sub: str, resume: bool) -> dict[str, Any]:
    import traceback

    try:
        return _train_one(_worker["config"], _worker["dataset"], _worker["partitions"][index],
                          seed, Path(sub), resume=resume, progress=False,
                          transform=_worker["transform"])
    except BaseException as err:  # noqa: BLE001 - reported by the parent with the log's path
        Path(sub, "error.txt").write_text(traceback.format_exc())
        raise JobsFailed(f"{type(err).__name__}: {err}") from None


def _prefill_lm_cache(config: ExperimentConfig, dataset: MSADataset,
                      partitions: list[Fold]) -> None:
    """Compute a frozen LM's missing states once, before parallel jobs would each do it."""
    if config.train.lm_cache == "off":
        return
    model = create_model(config.model, feature_dims(dataset, config))
    text_states = SplitTextStates.for_model(model, config, dataset.word_aligned)
    if text_states is not None:
        for partition in partitions:
            for split in (partition.train, partition.valid, partition.test):
                text_states(split)


def _run_parallel(config: ExperimentConfig, dataset: MSADataset, partitions: list[Fold],
                  jobs_list: list[tuple[int, int, Path]], jobs: int, *, resume: bool,
                  console: Console, transform_factory) -> list[dict[str, Any]]:
    """Train ``jobs_list`` (seed, partition index, run folder) ``jobs`` at a time.

    Each worker process loads the data once and trains one run at a time; runs are seeded as
    in a sequential experiment, so with the same ``train.num_threads`` the results are the same.
    Where CUDA devices are visible (and ``train.device`` is ``auto`` or ``cuda``) each worker
    takes its own, round-robin. Without ``train.num_threads`` each worker gets
    ``cpu_count // jobs`` torch threads. A failed run is reported with its traceback file
    (``<run>/error.txt``); the others finish, then :class:`JobsFailed` names every failure.
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    jobs = min(jobs, len(jobs_list))
    context = multiprocessing.get_context("spawn")
    device_queue = None
    if config.train.device in ("auto", "cuda") and torch.cuda.is_available():
        device_queue = context.Manager().Queue()
        for worker in range(jobs):
            device_queue.put(f"cuda:{worker % torch.cuda.device_count()}")
    threads = config.train.num_threads or max(1, (os.cpu_count() or 1) // jobs)
    _prefill_lm_cache(config, dataset, partitions)
    console.print(f"  {len(jobs_list)} runs, {jobs} at a time (processes)")
    results: dict[int, dict[str, Any]] = {}
    failures: list[str] = []
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                             initargs=(config, device_queue, threads,
                                       transform_factory)) as pool:
        futures = {pool.submit(_worker_job, seed, index, str(sub), resume): (position, seed, sub)
                   for position, (seed, index, sub) in enumerate(jobs_list)}
        for future in as_completed(futures):
            position, seed, sub = futures[future]
            done = len(results) + len(failures) + 1
            try:
                results[position] = future.result()
            except Exception as err:  # noqa: BLE001 - every failure is collected and reported
                log_file = sub / "error.txt"
                failures.append(f"seed {seed} {sub.name}: {err}"
                                + (f" (traceback: {log_file})" if log_file.exists() else ""))
                console.print(f"  [red]failed[/] [{done}/{len(jobs_list)}] {failures[-1]}")
                continue
            console.print(f"[{done}/{len(jobs_list)}]" + _result_line(results[position]))
    if failures:
        raise JobsFailed(f"{len(failures)} of {len(jobs_list)} runs failed: "
                         + "; ".join(failures))
    return [results[position] for position in range(len(jobs_list))]


def run_experiment(
    config: ExperimentConfig,
    seeds: list[int] | None = None,
    resume_dir: str | Path | None = None,
    progress: bool = True,
    console: Console | None = None,
    transform_factory=None,
    jobs: int = 1,
) -> tuple[Path, dict[str, Any]]:
    """Train ``config`` for every seed and partition; return the run folder and the summary.

    Args:
        config: resolved experiment config.
        seeds: seeds to run (default: ``[config.train.seed]``).
        resume_dir: an interrupted run folder to continue: finished training runs are kept,
            the interrupted one continues from its ``last.pt``, missing ones are trained.
        transform_factory: ``config -> transform | None`` for training-time augmentation;
            default: :func:`msakit.augment.transform_from_config` (the ``augment`` section).
        jobs: train this many (seed, partition) runs at a time, each in its own process (one
            GPU each where several are visible; see :func:`_run_parallel`).

    ``experiment.json`` records ``status``: ``running``, then ``finished`` or ``failed`` (with
    the error). A diverging run (a non-finite loss) is a :class:`RunError`. The data must be the
    file the run recorded (same SHA-256) to resume.
    """
    with restored_torch_threads():  # train.num_threads applies to this experiment only
        return _run_experiment(config, seeds, resume_dir, progress, console, transform_factory,
                               jobs)


@contextmanager
def restored_torch_threads() -> Iterator[None]:
    """Give torch back the thread count it had on entry, whatever ``train.num_threads`` set."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _run_experiment(config, seeds, resume_dir, progress, console, transform_factory, jobs):
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    process = distributed.setup(config.train.device if config is not None else "auto")
    if jobs > 1 and process.world_size > 1:
        raise ValueError("--jobs runs independent runs in parallel processes; under torchrun "
                         "every process already trains the same run: use one or the other")
    console = console or Console()
    if not process.is_main:
        console = Console(quiet=True)  # process 0 reports
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        config = load_saved_config(run_dir / runs.CONFIG_FILE)
        saved = runs.read_json(run_dir / "experiment.json")
        seeds = saved["seeds"]
        check_data_unchanged(config, run_dir)
    else:
        seeds = list(seeds or [config.train.seed])
        if len(set(seeds)) != len(seeds):
            raise ConfigError(f"seeds must be distinct, got {seeds}")
        if any(not 0 <= s < 2**32 for s in seeds):
            raise ConfigError(f"seeds must be integers in [0, 2**32), got {seeds}")
        if config.data.path and Path(config.data.path).exists():
            # the run records where its data is, so it is found from any folder
            config = config.model_copy(deep=True)
            config.data.path = str(Path(config.data.path).resolve())
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    dataset, partitions = load_experiment_data(config)
    # an unavailable LM or device fails before any run folder is made
    load_tokenizer(config.model.language_model)
    resolve_device(config.train.device)
    if resume_dir is None:
        run_dir = None
        if process.is_main:
            run_dir = runs.new_run_dir(config.run.output_dir, config.model.name, dataset.name,
                                       config.run.name)
            config.save(run_dir / runs.CONFIG_FILE)
            runs.write_json(run_dir / runs.DATA_FILE, data_record(dataset, partitions, config))
            runs.write_json(run_dir / ENV_FILE, environment_record(config.data.path))
        run_dir = Path(process.broadcast_object(str(run_dir) if run_dir else None))
    if process.is_main:
        runs.update_experiment_record(run_dir, seeds=seeds, status="running", error=None)
    try:
        summary = _run_all(config, dataset, partitions, seeds, run_dir, resume_dir, progress,
                           console, transform_factory, process, jobs)
    except BaseException as err:
        if process.is_main:
            runs.update_experiment_record(run_dir, status="failed",
                                          error=f"{type(err).__name__}: {err}")
        if isinstance(err, FloatingPointError):
            raise RunError(f"training diverged: {err}. The run folder {run_dir} is kept and "
                           "marked failed") from err
        raise
    if process.is_main:
        runs.update_experiment_record(run_dir, status="finished")
    return run_dir, summary


def _run_all(config, dataset, partitions, seeds, run_dir, resume_dir, progress, console,
             transform_factory, process, jobs) -> dict[str, Any]:
    if transform_factory is None:
        from msakit.augment import transform_from_config as transform_factory
    transform = transform_factory(config)
    if dataset.replaced_nonfinite:
        console.print(f"[yellow]replaced non-finite feature values with 0: "
                      f"{dataset.replaced_nonfinite}")
    console.print(f"[bold]{config.model.name}[/] on {dataset.name} ({dataset.source}): "
                  f"{len(partitions)} partition(s) x {len(seeds)} seed(s) -> {run_dir}")
    jobs_list = []
    for seed in seeds:
        for index, partition in enumerate(partitions):
            sub = runs.sub_run_dir(run_dir, seed, partition.name)
            if process.is_main:
                sub.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(run_dir / runs.DATA_FILE, sub / runs.DATA_FILE)
            jobs_list.append((seed, index, sub))
    process.barrier()
    if jobs > 1 and len(jobs_list) > 1:
        results = _run_parallel(config, dataset, partitions, jobs_list, jobs,
                                resume=resume_dir is not None, console=console,
                                transform_factory=transform_factory)
    else:
        results = []
        for seed, index, sub in jobs_list:
            result = _train_one(config, dataset, partitions[index], seed, sub,
                                resume=resume_dir is not None, progress=progress,
                                transform=transform)
            console.print(_result_line(result))
            results.append(result)
    summary = summarise(results)
    if not process.is_main:
        process.barrier()  # process 0 writes the results
        return summary
    write_results(run_dir, config.model.name, results, summary)
    test_artifacts = []
    for result in results:
        path = runs.sub_run_dir(run_dir, result["seed"], result["partition"]) / "artifacts.json"
        if path.exists() and "test" in (saved := runs.read_json(path)):
            test_artifacts.append(saved["test"])
    if artifacts := summarise_artifacts(test_artifacts):
        runs.write_json(run_dir / "artifacts.json", {"test_summary": artifacts})
        console.print(artifacts_table(f"{config.model.name}: test-split artifacts, mean ± std "
                                      "over runs", artifacts))
    process.barrier()
    return summary


def evaluate_run(
    run_dir: str | Path,
    data_path: str | None = None,
    split: str = "test",
    progress: bool = False,
) -> dict[str, Any]:
    """Re-evaluate every trained checkpoint of a run folder.

    Without ``data_path`` each checkpoint is scored on the test part of the partition it was
    trained for (recomputed deterministically from the saved config). With ``data_path`` every
    checkpoint is scored on ``split`` of that file, whose feature dimensions must match.
    """
    from msakit.data.readers import check_feature_dims

    run_dir = Path(run_dir)
    sub_dirs = runs.checkpoint_dirs(run_dir)
    config = load_saved_config(sub_dirs[0] / runs.CONFIG_FILE)
    if data_path is None:
        check_data_unchanged(config, sub_dirs[0])
    if data_path is not None:
        config.data.path = str(data_path)
        dataset = load_dataset(data_path, format="auto", dataset=config.data.dataset,
                               nonfinite=config.data.nonfinite, allow_overlap=True)
        trained = runs.read_json(sub_dirs[0] / runs.DATA_FILE)["feature_dims"]
        check_feature_dims(dataset, trained, config.data.modalities)
        splits = {d: dataset.split(split) for d in sub_dirs}
    else:
        dataset, partitions = load_experiment_data(config)
        by_name = {p.name: p for p in partitions}
        splits = {d: by_name[d.name].test for d in sub_dirs}
    device = resolve_device(config.train.device)
    results = []
    for sub in sub_dirs:
        sub_config = load_saved_config(sub / runs.CONFIG_FILE)
        model = create_model(sub_config.model, feature_dims(dataset, sub_config))
        runs.load_best_into(model, sub, device)
        model.to(device)
        text_states = SplitTextStates.for_model(model, sub_config, dataset.word_aligned)
        loader = loader_for(splits[sub], dataset, sub_config, train=False,
                            text_states=text_states)
        evaluation = evaluate_model(model, loader, dataset.name, device, keep_extras=True,
                                    precision=sub_config.train.precision)
        entry = {"run": str(sub.relative_to(run_dir)) if sub != run_dir else ".",
                 "seed": sub_config.train.seed, "partition": sub.name,
                 "test": evaluation.metrics, "test_losses": evaluation.losses}
        evaluation_artifacts = getattr(model, "evaluation_artifacts", None)
        if evaluation_artifacts is not None:
            entry["artifacts"] = evaluation_artifacts(evaluation.extras)
        results.append(entry)
    summary = summarise(results)
    report = {"data": str(data_path or config.data.path), "split": split, "runs": results,
              "summary": summary}
    artifacts = summarise_artifacts([r["artifacts"] for r in results if "artifacts" in r])
    if artifacts:
        report["artifacts_summary"] = artifacts
    runs.write_json(run_dir / evaluation_file_name(data_path, split), report)
    return report


def evaluation_file_name(data_path: str | Path | None, split: str) -> str:
    """``evaluation.json`` for the run's own test parts; one file per other data and split, so
    scoring other data never overwrites an earlier evaluation."""
    if data_path is None:
        return "evaluation.json"
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(data_path).name)
    return f"evaluation-{stem}-{split}.json"
