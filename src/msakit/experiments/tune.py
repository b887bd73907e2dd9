"""Hyper-parameter search on validation with Optuna: ``msakit tune``.

A trial samples values from the model's search space, trains every partition (the file's own
split, or each grouped fold with ``data.folds``) with one seed, and scores the validation
selection metric of each partition's selected epoch; the objective is their mean. The test part
of a partition is never loaded: trial folders hold configs and per-epoch logs, no test metrics
or predictions (``msakit.training.experiment.train_one(evaluate_test=False)``).

Sampler: TPE. Pruner: median, fed after every epoch with that epoch's validation selection
value at step ``fold_index * epochs + epoch`` (folds are the same for every trial, so steps are
comparable). Storage: an SQLite file in the study folder by default, or any SQLAlchemy URL
(e.g. PostgreSQL) so workers on several machines share the study; ``jobs`` local worker
processes share it too. Rerunning the same command continues the study until ``trials``
trials are finished (complete or pruned); trials whose worker died are failed by Optuna's
heartbeat and retried once.

Search spaces live in the ``search:`` section of ``msakit/configs/<model>.yaml``; a user YAML's
``search:`` section replaces or adds entries. Each entry maps a config key to a distribution::

    search:
      train.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      model.dropout: {type: float, low: 0.0, high: 0.5}
      model.hidden_size: {type: categorical, choices: [64, 128, 256]}
      train.batch_size: {type: int, low: 16, high: 64, step: 16}
      model.loss_weights.diff: {type: float, low: 0.05, high: 1.0, log: true}
"""

from __future__ import annotations

import csv
import logging
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from msakit import runfolder
from msakit.config import ConfigError, ExperimentConfig, build_config, default_config_file
from msakit.config_schema import RUN_NAME_PATTERN

log = logging.getLogger(__name__)

DISTRIBUTION_TYPES = ("float", "int", "categorical")
ALLOWED_FIELDS = {"float": {"type", "low", "high", "log", "step"},
                  "int": {"type", "low", "high", "log", "step"},
                  "categorical": {"type", "choices"}}


# ----------------------------------------------------------------------------------------------
# Search space
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dimension:
    """One searched config key and its distribution."""

    key: str                      # e.g. "train.lr", "model.loss_weights.diff"
    type: str                     # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log,
                                       step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_categorical(self.key, list(self.choices))

    def example(self) -> Any:
        """A value inside the range, to check the key against the config schema."""
        if self.type == "categorical":
            return self.choices[0]
        return int(self.low) if self.type == "int" else float(self.low)


def parse_search_space(model: str, search: dict[str, Any], where: str,
                       base: dict[str, Any] | None = None) -> list[Dimension]:
    """Validate a ``search:`` section; errors name the key and what is wrong."""
    if not isinstance(search, dict) or not search:
        raise ConfigError(f"{where}: the search section of {model} is empty; give at least one "
                          "key, e.g. train.lr: {type: float, low: 1.0e-4, high: 1.0e-3, log: true}")
    dimensions = []
    for key, spec in search.items():
        here = f"{where}: search.{key}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{here}: expected a mapping like {{type: float, low: .., high: ..}}"
                              f", got {spec!r}")
        kind = spec.get("type")
        if kind not in DISTRIBUTION_TYPES:
            raise ConfigError(f"{here}: type must be one of {DISTRIBUTION_TYPES}, got {kind!r}")
        unknown = set(spec) - ALLOWED_FIELDS[kind]
        if unknown:
            raise ConfigError(f"{here}: unknown field(s) {sorted(unknown)} for a {kind} range; "
                              f"allowed: {sorted(ALLOWED_FIELDS[kind])}")
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{here}: empty or missing choices (a non-empty list)")
            dimension = Dimension(key, kind, choices=tuple(choices))
        else:
            try:
                low, high = float(spec["low"]), float(spec["high"])
            except (KeyError, TypeError, ValueError):
                raise ConfigError(f"{here}: needs numeric low and high") from None
            if not low < high:
                raise ConfigError(f"{here}: empty range: low {low} must be below high {high}")
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{here}: a log range needs low > 0, got {low}")
            if kind == "int" and (low != int(low) or high != int(high)):
                raise ConfigError(f"{here}: int range needs whole low/high, got {low}, {high}")
            step = spec.get("step")
            if step is not None and (spec.get("log") or float(step) <= 0):
                raise ConfigError(f"{here}: step must be > 0 and cannot be combined with log")
            dimension = Dimension(key, kind, low, high, bool(spec.get("log", False)),
                                  None if step is None else float(step))
        _check_key(model, dimension, here, base)
        dimensions.append(dimension)
    return dimensions


def _check_key(model: str, dimension: Dimension, where: str, base: dict | None) -> None:
    parts = dimension.key.split(".")
    if len(parts) < 2 or parts[0] not in ("model", "train", "data", "augment"):
        raise ConfigError(f"{where}: the key must be section.field in model, train, data or "
                          f"augment, e.g. train.lr")
    if parts[:2] == ["model", "loss_weights"]:
        terms = build_config(model, base=base).model.loss_weights
        if len(parts) != 3 or parts[2] not in terms:
            raise ConfigError(f"{where}: unknown loss term; {model}'s terms are {sorted(terms)}")
    try:
        build_config(model, [f"{dimension.key}={_yaml(dimension.example())}"], base=base)
    except ConfigError as err:
        raise ConfigError(f"{where}: not a valid setting of {model}: {err}") from None


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def search_space(model: str, user_config: dict[str, Any] | None = None,
                 user_file: str | None = None) -> list[Dimension]:
    """The model's shipped ``search:`` section, entries replaced/added by the user's."""
    shipped = default_config_file(model).get("search") or {}
    user = dict((user_config or {}).get("search") or {})
    merged = {**shipped, **user}
    where = (user_file or "the --config file") if user else f"msakit/configs/{model}.yaml"
    base = {k: v for k, v in (user_config or {}).items() if k != "search"}
    return parse_search_space(model, merged, where, base)


# ----------------------------------------------------------------------------------------------
# The study
# ----------------------------------------------------------------------------------------------

@dataclass
class TuneSettings:
    """Everything a worker process needs (picklable)."""

    model: str
    base: dict[str, Any]          # the user's YAML (without search) + fixed overrides applied
    overrides: list[str]
    study_dir: str
    study_name: str
    storage: str
    trials: int
    timeout: float | None
    seed: int
    progress: bool = False


def default_study_name(model: str, data_path: str, folds: int | None) -> str:
    return f"{model}-{Path(data_path).stem}" + (f"-{folds}folds" if folds else "")


def check_study_name(name: str) -> None:
    """Refuse a study name that is not one plain folder name (the study folder is
    ``<output-dir>/tune-<name>``; a path would put it elsewhere)."""
    if not RUN_NAME_PATTERN.match(name) or len(name) > 200:
        raise ConfigError(f"--study {name!r} must be one folder name (letters, digits, "
                          "_ . + = @ -, not starting with '.' or '-'), not a path")


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def _storage(url: str):
    import warnings

    import sqlalchemy.exc
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    # heartbeats (what lets a rerun retry the trials of a killed worker) are marked experimental
    warnings.filterwarnings("ignore", category=ExperimentalWarning, module="optuna")
    warnings.filterwarnings("ignore", category=ExperimentalWarning, module=__name__)
    engine = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite")
              else {"pool_pre_ping": True})
    try:
        return RDBStorage(url, heartbeat_interval=30, grace_period=120, engine_kwargs=engine,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                              max_retry=1))
    except ImportError as err:
        raise ConfigError(f"storage {_redact(url)}: its database driver is not installed "
                          "(PostgreSQL: pip install 'msakit[postgres]')") from err
    except sqlalchemy.exc.ArgumentError as err:  # unparsable URL or unknown dialect/driver
        raise ConfigError(f"--storage {_redact(url)}: not a usable SQLAlchemy URL "
                          f"({str(err).splitlines()[0]}); expected e.g. sqlite:///PATH/study.db "
                          "or postgresql://user:password@host/db") from err
    except sqlalchemy.exc.DBAPIError as err:  # server unreachable, file cannot be opened/written
        reason = str(err.orig).strip().splitlines()[0] if err.orig else type(err).__name__
        where = ""
        if url.startswith("sqlite:///") and len(url) > len("sqlite:///"):
            folder = Path(url.removeprefix("sqlite:///")).parent
            where = (f" (folder {folder} does not exist)" if not folder.is_dir()
                     else f" (is folder {folder} writable?)")
        raise ConfigError(f"--storage {_redact(url)}: cannot open the study database: "
                          f"{reason}{where}") from err


def _direction(config: ExperimentConfig) -> str:
    from msakit.metrics import metric_direction

    metric = config.train.selection_metric
    return "minimize" if metric == "loss" or metric_direction(metric) == "min" else "maximize"


def open_study(settings: TuneSettings, direction: str, worker: int = 0, create: bool = True):
    """The study, created when ``create`` and it does not exist yet; a worker (``create=False``)
    loads the study :func:`tune` created, so the log says once what happened to the study."""
    import optuna

    sampler = optuna.samplers.TPESampler(seed=settings.seed + 1000 * worker)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if not create:
        return optuna.load_study(study_name=settings.study_name,
                                 storage=_storage(settings.storage), sampler=sampler,
                                 pruner=pruner)
    return optuna.create_study(
        study_name=settings.study_name, storage=_storage(settings.storage),
        direction=direction, load_if_exists=True, sampler=sampler, pruner=pruner,
    )


def trial_config(settings: TuneSettings, params: dict[str, Any]) -> ExperimentConfig:
    return build_config(settings.model, settings.overrides
                        + [f"{k}={_yaml(v)}" for k, v in params.items()], base=settings.base)


def _objective(settings: TuneSettings, dimensions: list[Dimension]):
    import optuna

    from msakit.training.experiment import train_one
    from msakit.training.loading import load_experiment_data

    cache: dict[str, Any] = {}

    def objective(trial: optuna.Trial) -> float:
        params = {d.key: d.suggest(trial) for d in dimensions}
        config = trial_config(settings, params)
        if "data" not in cache:
            cache["data"] = load_experiment_data(config)
        dataset, partitions = cache["data"]
        if config.train.num_threads:
            import torch

            torch.set_num_threads(config.train.num_threads)
        trial_dir = Path(settings.study_dir) / "trials" / f"trial{trial.number:04d}"
        if trial_dir.exists():  # a retried trial gets a fresh number; never reuse a folder
            trial_dir = runfolder.new_run_dir(trial_dir.parent, f"trial{trial.number:04d}", "retry")
        trial_dir.mkdir(parents=True, exist_ok=True)
        runfolder.save_config(trial_dir, config)
        trial.set_user_attr("run_dir", str(trial_dir))
        trial.set_user_attr("worker_pid", os.getpid())
        seed = config.train.seed
        epochs = config.train.epochs
        values = []
        for index, partition in enumerate(partitions):
            sub = runfolder.sub_run_dir(trial_dir, seed, partition.name)
            sub.mkdir(parents=True, exist_ok=True)

            def report(epoch: int, value: float, row: dict, index=index,
                       partition=partition) -> None:
                trial.report(value, step=index * epochs + epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at {partition.name} epoch {epoch}")

            try:
                result = train_one(config, dataset, partition, seed, sub, resume=False,
                                    progress=settings.progress, evaluate_test=False,
                                    epoch_callback=report)
            finally:  # once its validation values are recorded, a trial keeps no weights (a
                # study of 20 trials x 5 folds would keep hundreds of model copies)
                runfolder.drop_weights(sub)
            values.append(float(result["best_valid"]))
            trial.set_user_attr(f"valid_{partition.name}", values[-1])
        return sum(values) / len(values)

    return objective


def run_worker(settings: TuneSettings, worker: int = 0) -> None:
    """One worker: runs trials of the shared study until ``settings.trials`` are finished."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    logging.getLogger("transformers").setLevel(logging.ERROR)
    dimensions = search_space(settings.model, settings.base)
    direction = _direction(trial_config(settings, {}))
    study = open_study(settings, direction, worker, create=False)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    if len(study.get_trials(deepcopy=False, states=finished)) >= settings.trials:
        return
    from msakit.training.experiment import restored_torch_threads

    with restored_torch_threads():  # train.num_threads applies to the trials only
        study.optimize(_objective(settings, dimensions), timeout=settings.timeout,
                       callbacks=[MaxTrialsCallback(settings.trials, states=finished)],
                       catch=(), gc_after_trial=True)


def _worker_main(settings: TuneSettings, worker: int) -> None:  # pragma: no cover - subprocess
    import torch

    torch.set_num_threads(1)
    run_worker(settings, worker)


def tune(
    model: str,
    data_path: str,
    trials: int,
    folds: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    jobs: int = 1,
    timeout: float | None = None,
    user_config: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    output_dir: str | Path = "runs",
    seed: int = 0,
    progress: bool = False,
    config_file: str | None = None,
) -> dict[str, Any]:
    """Run (or continue) a study; write the best config, the trials table and importances.

    ``config_file`` is where ``user_config`` came from (named in errors about its search space).

    Returns:
        The summary written to ``<study folder>/study.json``.
    """
    from msakit.errors import require_extra

    require_extra("optuna", "tune", "msakit tune")
    if trials < 1:
        raise ConfigError("--trials must be at least 1")
    if jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    user_config = dict(user_config or {})
    fixed = list(overrides or []) + [f"data.path={_yaml(str(data_path))}"]
    if folds:
        fixed.append(f"data.folds={folds}")
    config = build_config(model, fixed, base=user_config)  # validates the fixed settings
    search_space(model, user_config, config_file)          # and the search space
    if study_name is not None:
        check_study_name(study_name)
    name = study_name or default_study_name(model, data_path, folds)
    study_dir = Path(output_dir) / f"tune-{name}"
    study_dir.mkdir(parents=True, exist_ok=True)
    settings = TuneSettings(
        model=model, base=user_config, overrides=fixed, study_dir=str(study_dir),
        study_name=name, storage=storage or sqlite_url(study_dir / "study.db"),
        trials=trials, timeout=timeout, seed=seed, progress=progress and jobs == 1)
    _check_same_study(study_dir, settings)
    open_study(settings, _direction(config))  # create it once before workers race to
    started = time.perf_counter()
    if jobs == 1:
        run_worker(settings)
    else:
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_worker_main, args=(settings, w)) for w in range(jobs)]
        for process in workers:
            process.start()
        for process in workers:
            process.join()
        failed = [p.exitcode for p in workers if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"{len(failed)} of {jobs} tuning worker(s) failed (exit codes "
                               f"{failed}); the study in {settings.storage} keeps their trials")
    return write_study_results(settings, time.perf_counter() - started)


def _check_same_study(study_dir: Path, settings: TuneSettings) -> None:
    """A rerun continues the study only with the same search and fixed settings."""
    record = {"model": settings.model, "base": settings.base, "overrides": settings.overrides}
    path = study_dir / "tune.json"
    if path.exists():
        saved = runfolder.read_json(path)
        if {k: saved.get(k) for k in record} != runfolder.json_ready(record):
            raise ConfigError(
                f"{study_dir}: holds study {settings.study_name!r} run with other settings "
                f"({path}); rerun with the same model, data, --folds, --config and --set to "
                "continue it, or pass --study NEW_NAME")
    else:
        runfolder.write_json(path, {**record, "study": settings.study_name,
                               "storage": _redact(settings.storage)})


def _redact(url: str) -> str:
    """A storage URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL SQLAlchemy cannot parse is reported as given
        return url


def write_study_results(settings: TuneSettings, seconds: float) -> dict[str, Any]:
    """``best_config.yaml``, ``trials.csv``/``trials.md``, ``importance.json``, ``study.json``."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=settings.study_name, storage=_storage(settings.storage))
    study_dir = Path(settings.study_dir)
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    rows = [{"number": t.number, "state": t.state.name,
             "value": t.value if t.value is not None else "",
             "seconds": round(t.duration.total_seconds(), 1) if t.duration else "",
             **{k: t.params.get(k, "") for k in keys}} for t in trials]
    columns = ["number", "state", "value", "seconds", *keys]
    with (study_dir / "trials.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    summary: dict[str, Any] = {
        "study": settings.study_name, "storage": _redact(settings.storage),
        "direction": study.direction.name.lower(),
        "trials": {state.name.lower(): sum(t.state == state for t in trials)
                   for state in TrialState},
        "seconds_this_run": round(seconds, 1),
    }
    if complete:
        best = study.best_trial
        config = trial_config(settings, best.params)
        config.save(study_dir / "best_config.yaml")
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params,
                           "per_partition": {k: v for k, v in best.user_attrs.items()
                                             if k.startswith("valid_")},
                           "config": str(study_dir / "best_config.yaml")}
        from msakit.summary import format_metric

        metric = config.train.selection_metric
        lines += ["", f"Best: trial {best.number}, validation {metric} "
                      f"{format_metric(metric, best.value)} (mean over partitions)."]
    try:
        importance = optuna.importance.get_param_importances(study)
        summary["importance"] = dict(importance)
        heading = "| parameter | importance (Optuna default evaluator, PED-ANOVA in Optuna 5) |"
        lines += ["", heading, "|---|---|"] + [
            f"| {k} | {v:.3f} |" for k, v in importance.items()]
    except (RuntimeError, ValueError) as err:
        summary["importance"] = None
        summary["importance_unavailable"] = str(err)
    if len(complete) < MIN_TRUSTED_TRIALS:
        summary["caveat"] = (
            f"only {len(complete)} trial(s) completed (fewer than {MIN_TRUSTED_TRIALS}): the "
            "best configuration is one draw among few and the importances rest on "
            f"{len(complete)} points; treat both as a hint, run more trials, and compare the "
            "best configuration with the defaults on fresh seeds (msakit compare)")
        lines += ["", f"Caveat: {summary['caveat']}."]
    summary["figures"] = study_figures(study, study_dir)
    (study_dir / "trials.md").write_text("\n".join(lines) + "\n")
    runfolder.write_json(study_dir / "study.json", summary)
    return {**summary, "study_dir": str(study_dir)}


#: Fewer completed trials than this get a caveat: TPE's first 10 trials are random, and
#: importances fitted to a handful of points are mostly noise.
MIN_TRUSTED_TRIALS = 20
#: The figures of a study folder.
HISTORY_FIGURE = "history.png"
IMPORTANCE_FIGURE = "importance.png"


def study_figures(study, study_dir: Path) -> list[str]:
    """Optuna's optimisation history and parameter importances (its matplotlib
    visualisation), as PNGs in ``study_dir``; returns the names written (none without a
    completed trial; no importances with fewer than two completed trials)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots = []
    if complete:
        plots.append((HISTORY_FIGURE, optuna.visualization.matplotlib.plot_optimization_history))
    if len(complete) >= 2 and complete[0].params:
        plots.append((IMPORTANCE_FIGURE, optuna.visualization.matplotlib.plot_param_importances))
    written = []
    for name, plot in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                ax = plot(study)
            except (RuntimeError, ValueError) as err:  # e.g. importances of constant values
                log.warning("%s not drawn: %s", name, err)
                continue
        figure = ax.get_figure()
        figure.set_size_inches(8, 4.5)
        figure.tight_layout()
        figure.savefig(study_dir / name, dpi=100)
        plt.close(figure)
        written.append(name)
    return written


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
