"""Experiments: every (seed, partition) pair trained, tested once, and summarised as mean ± std.

A *partition* is one (train, valid, test) triple: the data file's own splits, or one fold of
grouped cross-validation (``data.folds``). The test part of a partition is scored exactly once,
with the checkpoint selected on its validation part.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from msakit import runfolder
from msakit.config import (
    ConfigError,
    ExperimentConfig,
    build_config,
    config_differences,
    deep_update,
)
from msakit.data import Fold, load_dataset
from msakit.data.dataset import MSADataset
from msakit.data.readers import data_fingerprint
from msakit.lm import load_tokenizer
from msakit.lm_cache import SplitTextStates
from msakit.models import create_model
from msakit.modules.linear import cpu_linear, get_cpu_linear
from msakit.provenance import environment_record
from msakit.runfolder import RunError
from msakit.training import distributed, loading
from msakit.training.host_memory import release_freed_memory
from msakit.training.loggers import open_loggers
from msakit.training.results import (
    artifacts_table,
    summarise,
    summarise_artifacts,
    write_results,
)
from msakit.training.trainer import Trainer, apply_cpu_linear, evaluate_model, resolve_device

log = logging.getLogger(__name__)

__all__ = ["JobsFailed", "check_data_unchanged", "check_resume_request", "evaluate_run",
           "restored_torch_threads", "run_experiment", "train_one"]


def check_data_unchanged(config: ExperimentConfig, run_dir: Path) -> None:
    """Refuse to resume or re-evaluate ``run_dir`` on data other than it was trained on.

    The run records the data's absolute path and SHA-256 (``data.json``); a file at that path
    with another hash is refused, naming both.
    """
    recorded = runfolder.read_data_record(run_dir, missing_ok=True).get("sha256")
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
    saved = runfolder.load_config(run_dir)
    if model_name != saved.model.name:
        raise RunError(f"{run_dir} is a {saved.model.name} run; --resume cannot continue it as "
                       f"{model_name}")
    if overrides or base:
        try:
            requested = build_config(model_name, overrides, base=deep_update(saved.to_dict(),
                                                                             base or {}))
        except ConfigError as err:
            raise RunError(f"--resume {run_dir}: {err}") from err
        differences = [f"{key} {old!r} -> {new!r}" for key, old, new
                       in config_differences(saved.to_dict(), requested.to_dict())]
        if differences:
            raise RunError(
                f"--resume continues {run_dir} exactly as it was started, but these settings "
                f"differ: {'; '.join(differences[:6])}. Start a new run for other settings.")
    if seeds is not None:
        saved_seeds = runfolder.read_experiment_record(run_dir)["seeds"]
        if list(seeds) != list(saved_seeds):
            raise RunError(f"--resume {run_dir}: the run has seeds {saved_seeds}, not {seeds}")


def train_one(config: ExperimentConfig, dataset: MSADataset, partition: Fold, seed: int,
               run_dir: Path, resume: bool, progress: bool, transform=None,
               evaluate_test: bool = True, epoch_callback=None) -> dict[str, Any]:
    """Train, select on valid, test once; write everything into ``run_dir``.

    With ``evaluate_test=False`` (hyper-parameter tuning) the test part is never loaded: the
    run folder holds the training and validation record only, no test metrics or predictions.
    ``epoch_callback`` goes to :class:`Trainer`. Under torchrun, process 0 alone writes.
    """
    is_main = distributed.current().is_main
    if resume and runfolder.has_metrics(run_dir):
        return runfolder.read_metrics(run_dir)
    if is_main:  # nothing resumable: whatever an interrupted first epoch left is started over
        runfolder.discard_unfinished_training(run_dir)
    config = config.model_copy(deep=True)
    config.train.seed = seed
    if is_main:
        runfolder.save_config(run_dir, config)  # the sub-run's own seed, so it stands alone
    torch.manual_seed(seed)  # model initialisation depends on the seed alone
    model = create_model(config.model, loading.feature_dims(dataset, config))
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

    train_loader = loading.EpochLoader(partition.train, dataset, config, seed, transform, text_states)
    valid_loader = loading.loader_for(partition.valid, dataset, config, train=False,
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
            runfolder.write_metrics(run_dir, result)
            _drop_resume_state(run_dir, config)
        return result
    trainer.load_best(model)
    test = evaluate_model(model, loading.loader_for(partition.test, dataset, config, train=False,
                                            text_states=text_states),
                          dataset.name, trainer.device, keep_extras=True,
                          precision=config.train.precision)
    artifacts = model.run_artifacts()
    if test_artifacts := model.evaluation_artifacts(test.extras):
        artifacts = {**artifacts, "test": test_artifacts}
    if is_main:
        video_of = dict(zip(partition.test.ids, partition.test.video_ids))
        runfolder.write_predictions(run_dir, test.ids, [video_of[i] for i in test.ids],
                                    test.labels.tolist(), test.predictions.tolist())
        if artifacts:
            runfolder.write_artifacts(run_dir, artifacts)
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
        runfolder.write_metrics(run_dir, result)
        _drop_resume_state(run_dir, config)
    return result


def _drop_resume_state(run_dir: Path, config: ExperimentConfig) -> None:
    """A finished training run needs no ``last.pt`` (weights + optimiser state) unless
    ``train.keep_last``; ``best.safetensors`` stays."""
    if not config.train.keep_last:
        runfolder.drop_last_checkpoint(run_dir)


def _result_line(result: dict[str, Any]) -> str:
    from msakit.summary import format_metric

    return (f"  seed {result['seed']} {result['partition']}: best epoch {result['best_epoch']}, "
            "test " + ", ".join(f"{k} {format_metric(k, v)}" for k, v in result["test"].items()
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
    apply_cpu_linear(config)
    dataset, partitions = loading.load_experiment_data(config)
    if transform_factory is None:
        from msakit.augment import transform_from_config as transform_factory
    _worker.update(config=config, dataset=dataset, partitions=partitions,
                   transform=transform_factory(config))


def _worker_job(seed: int, index: int, sub: str, resume: bool) -> dict[str, Any]:
    import traceback

    try:
        return train_one(_worker["config"], _worker["dataset"], _worker["partitions"][index],
                          seed, Path(sub), resume=resume, progress=False,
                          transform=_worker["transform"])
    except BaseException as err:  # noqa: BLE001 - reported by the parent with the log's path
        runfolder.write_error_log(Path(sub), traceback.format_exc())
        raise JobsFailed(f"{type(err).__name__}: {err}") from None


def _prefill_lm_cache(config: ExperimentConfig, dataset: MSADataset,
                      partitions: list[Fold]) -> None:
    """Compute a frozen LM's missing states once, before parallel jobs would each do it."""
    if config.train.lm_cache == "off":
        return
    model = create_model(config.model, loading.feature_dims(dataset, config))
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
                log_file = runfolder.error_log_path(sub)
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
    # train.num_threads and train.cpu_linear apply to this experiment only
    with restored_torch_threads(), cpu_linear(get_cpu_linear()):
        try:
            return _run_experiment(config, seeds, resume_dir, progress, console,
                                   transform_factory, jobs)
        finally:
            release_freed_memory()  # train.host_allocator=keep held the training's peak


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
        raise ConfigError(f"jobs must be at least 1, got {jobs}")
    process = distributed.setup(config.train.device if config is not None else "auto")
    if jobs > 1 and process.world_size > 1:
        raise ConfigError("--jobs runs independent runs in parallel processes; under torchrun "
                         "every process already trains the same run: use one or the other")
    console = console or Console()
    if not process.is_main:
        console = Console(quiet=True)  # process 0 reports
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        config = runfolder.load_config(run_dir)
        seeds = runfolder.read_experiment_record(run_dir)["seeds"]
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
    apply_cpu_linear(config)
    dataset, partitions = loading.load_experiment_data(config)
    # an unavailable LM or device fails before any run folder is made
    load_tokenizer(config.model.language_model)
    resolve_device(config.train.device)
    if resume_dir is None:
        run_dir = None
        if process.is_main:
            run_dir = runfolder.new_run_dir(config.run.output_dir, config.model.name,
                                            dataset.name, config.run.name)
            runfolder.save_config(run_dir, config)
            runfolder.write_data_record(run_dir, loading.data_record(dataset, partitions, config))
            runfolder.write_environment(run_dir, environment_record(config.data.path))
        run_dir = Path(process.broadcast_object(str(run_dir) if run_dir else None))
    if process.is_main:
        runfolder.update_experiment_record(run_dir, seeds=seeds, status="running", error=None)
    try:
        summary = _run_all(config, dataset, partitions, seeds, run_dir, resume_dir, progress,
                           console, transform_factory, process, jobs)
    except BaseException as err:
        if process.is_main:
            runfolder.update_experiment_record(run_dir, status="failed",
                                               error=f"{type(err).__name__}: {err}")
        if isinstance(err, FloatingPointError):
            raise RunError(f"training diverged: {err}. The run folder {run_dir} is kept and "
                           "marked failed") from err
        raise
    if process.is_main:
        runfolder.update_experiment_record(run_dir, status="finished")
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
            sub = runfolder.sub_run_dir(run_dir, seed, partition.name)
            if process.is_main:
                sub.mkdir(parents=True, exist_ok=True)
                runfolder.copy_data_record(run_dir, sub)
            jobs_list.append((seed, index, sub))
    process.barrier()
    if jobs > 1 and len(jobs_list) > 1:
        results = _run_parallel(config, dataset, partitions, jobs_list, jobs,
                                resume=resume_dir is not None, console=console,
                                transform_factory=transform_factory)
    else:
        results = []
        for seed, index, sub in jobs_list:
            result = train_one(config, dataset, partitions[index], seed, sub,
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
        sub = runfolder.sub_run_dir(run_dir, result["seed"], result["partition"])
        if "test" in (saved := runfolder.read_artifacts(sub)):
            test_artifacts.append(saved["test"])
    if artifacts := summarise_artifacts(test_artifacts):
        runfolder.write_artifacts(run_dir, {"test_summary": artifacts})
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
    sub_dirs = runfolder.checkpoint_dirs(run_dir)
    config = runfolder.load_config(sub_dirs[0])
    if data_path is None:
        check_data_unchanged(config, sub_dirs[0])
    if data_path is not None:
        config.data.path = str(data_path)
        dataset = load_dataset(data_path, format="auto", dataset=config.data.dataset,
                               nonfinite=config.data.nonfinite, allow_overlap=True)
        trained = runfolder.read_data_record(sub_dirs[0])["feature_dims"]
        check_feature_dims(dataset, trained, config.data.modalities)
        splits = {d: dataset.split(split) for d in sub_dirs}
    else:
        dataset, partitions = loading.load_experiment_data(config)
        by_name = {p.name: p for p in partitions}
        splits = {d: by_name[d.name].test for d in sub_dirs}
    device = resolve_device(config.train.device)
    results = []
    for sub in sub_dirs:
        sub_config = runfolder.load_config(sub)
        model = create_model(sub_config.model, loading.feature_dims(dataset, sub_config))
        runfolder.load_best_into(model, sub, device)
        model.to(device)
        text_states = SplitTextStates.for_model(model, sub_config, dataset.word_aligned)
        loader = loading.loader_for(splits[sub], dataset, sub_config, train=False,
                            text_states=text_states)
        evaluation = evaluate_model(model, loader, dataset.name, device, keep_extras=True,
                                    precision=sub_config.train.precision)
        entry = {"run": str(sub.relative_to(run_dir)) if sub != run_dir else ".",
                 "seed": sub_config.train.seed, "partition": sub.name,
                 "test": evaluation.metrics, "test_losses": evaluation.losses}
        if unit_artifacts := model.evaluation_artifacts(evaluation.extras):
            entry["artifacts"] = unit_artifacts
        results.append(entry)
    summary = summarise(results)
    report = {"data": str(data_path or config.data.path), "split": split, "runs": results,
              "summary": summary}
    artifacts = summarise_artifacts([r["artifacts"] for r in results if "artifacts" in r])
    if artifacts:
        report["artifacts_summary"] = artifacts
    runfolder.write_evaluation(run_dir, data_path, split, report)
    return report

