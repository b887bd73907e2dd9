"""Suites: a paper's comparison table as data, run as one command (``msakit suite run NAME``).

A suite is a YAML file ``msakit/configs/suites/<name>.yaml`` (or any path to such a file). Each
row is one row of the paper's table: the label as printed, the msakit model that runs it (or
none), where its public code is, the preset to use per dataset, and the paper's figures per
dataset (accuracies and F1 in percent, as papers print them):

.. code-block:: yaml

    suite:
      title: DMD (Li et al., CVPR 2023), comparison on CMU-MOSI
      source: Li et al., CVPR 2023, Table 1, as transcribed in ../shared/papers/002...
      note: optional caveat shown under the table
      datasets: {mosi-aligned: CMU-MOSI, word-aligned features}
      baseline: lf_dnn          # optional: the row (id) the leaderboard compares against
    rows:
      - label: MulT              # as printed
        model: mult              # msakit model name, or null
        code: yaohungt/Multimodal-Transformer   # public code; null = none; unknown = not checked
        presets: {mosi-aligned: mosi-aligned}
        paper:
          mosi-aligned: {Mult_acc_7: 40.0, Non0_acc_2: 83.0, Non0_F1_score: 82.8}
      - label: MAG-BERT*         # a second row of a model (e.g. the authors' reproduction):
        measured_in: bert_mag    # shows the measured figures of row ``bert_mag``
        paper: {...}

A row's status is decided at run time, so a suite picks up models as they are registered:
``available`` (its model is registered), ``not in msakit yet`` (public code exists, ``code``
names it), ``no public code`` (``code: null``), ``not in msakit yet (public code not checked)``
(``code: unknown``), or ``measured in row X``.

:func:`run_suite` trains every available row with the same machinery as ``msakit train`` (one
run folder per row inside the suite folder, named by the row id), writes ``suite.json`` after each
row and ``suite.md`` at the end, and resumes: a finished row is kept, an unfinished or failed one
continues from its run folder.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from msakit import runfolder
from msakit.errors import ConfigError
from msakit.presets import PAPER_METRICS, paper_metric_scale

SUITE_JSON = "suite.json"
SUITE_MD = "suite.md"

AVAILABLE = "available"
NOT_YET = "not in msakit yet"
NO_CODE = "no public code"
NOT_CHECKED = "not in msakit yet (public code not checked)"

_SUITE_KEYS = {"title", "source", "note", "datasets", "baseline"}
_ROW_KEYS = {"label", "id", "model", "code", "presets", "paper", "note", "measured_in"}
_ID = re.compile(r"^[a-z0-9][a-z0-9_.+-]*$")
_MODEL_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class SuiteError(ConfigError):
    """An unknown suite, a malformed suite file, or a suite folder that cannot be resumed; the
    message names the file and the key."""


@dataclass(frozen=True)
class SuiteRow:
    """One row of a paper's table."""

    id: str
    label: str
    model: str | None = None
    code: str | None = None
    presets: dict[str, str] = field(default_factory=dict)
    paper: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""
    measured_in: str | None = None

    def status(self, registered: Sequence[str]) -> str:
        """``available`` when its model is registered, else why it cannot run."""
        if self.measured_in is not None:
            return f"measured in row {self.measured_in}"
        if self.model is not None and self.model in registered:
            return AVAILABLE
        if self.code == "unknown":
            return NOT_CHECKED
        return NOT_YET if self.code else NO_CODE


@dataclass(frozen=True)
class Suite:
    """A paper's comparison table: rows, datasets, and where the figures come from."""

    name: str
    title: str
    source: str
    datasets: dict[str, str]
    rows: tuple[SuiteRow, ...]
    note: str = ""
    baseline: str | None = None

    def row(self, row_id: str) -> SuiteRow:
        for row in self.rows:
            if row.id == row_id:
                return row
        raise SuiteError(f"suite {self.name!r} has no row {row_id!r}; rows: "
                         f"{', '.join(r.id for r in self.rows)}")

    def metrics(self, dataset: str) -> list[str]:
        """The metrics the paper reports for ``dataset``, in msakit's order."""
        present = {m for row in self.rows for m in row.paper.get(dataset, {})}
        return [m for m in PAPER_METRICS if m in present]


# ----------------------------------------------------------------------------------------------
# Reading suite files
# ----------------------------------------------------------------------------------------------

def _suites_root():
    return resources.files("msakit") / "configs" / "suites"


def suite_names() -> list[str]:
    """Names of the packaged suites."""
    return sorted(p.name[:-5] for p in _suites_root().iterdir() if p.name.endswith(".yaml"))


def load_suite(name_or_path: str | Path) -> Suite:
    """A packaged suite by name, or a suite file by path.

    Raises:
        SuiteError: an unknown name or a malformed file (naming the file, row and key).
    """
    path = Path(name_or_path)
    if str(name_or_path).endswith((".yaml", ".yml")) and path.is_file():
        return parse_suite(path.stem, path.read_text(encoding="utf-8"), str(path))
    resource = _suites_root() / f"{name_or_path}.yaml"
    if not resource.is_file():
        raise SuiteError(f"no suite {str(name_or_path)!r}; packaged suites: "
                         f"{', '.join(suite_names())} (or give a path to a suite .yaml file)")
    return parse_suite(str(name_or_path), resource.read_text(encoding="utf-8"),
                       f"suite {name_or_path}")


def _check_keys(found: dict, allowed: set[str], where: str) -> None:
    unknown = set(found) - allowed
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: "
                         f"{', '.join(sorted(allowed))}")


def _text(value: Any, where: str, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise SuiteError(f"{where}: expected a non-empty string, got {value!r}")
    return value.strip()


def _figure(value: Any, metric: str, where: str) -> float:
    """One reported number, checked against its metric's range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SuiteError(f"{where}: {metric} must be a number, got {value!r}")
    value = float(value)
    if paper_metric_scale(metric) == 100.0 and not 0.0 <= value <= 100.0:
        raise SuiteError(f"{where}: {metric} is {value}; accuracies and F1 are in percent "
                         "(0 to 100)")
    if metric == "MAE" and value < 0:
        raise SuiteError(f"{where}: MAE is {value}; it must be >= 0")
    if metric == "Corr" and not -1.0 <= value <= 1.0:
        raise SuiteError(f"{where}: Corr is {value}; it must be in [-1, 1]")
    return value


def _parse_row(entry: Any, index: int, datasets: dict[str, str], origin: str) -> SuiteRow:
    where = f"{origin}: rows[{index}]"
    if not isinstance(entry, dict):
        raise SuiteError(f"{where}: expected a mapping, got {type(entry).__name__}")
    _check_keys(entry, _ROW_KEYS, where)
    label = _text(entry.get("label"), f"{where}.label")
    where = f"{origin}: row {label!r}"
    model = entry.get("model")
    if model is not None and not (isinstance(model, str) and _MODEL_NAME.match(model)):
        raise SuiteError(f"{where}: model must be an msakit model name (lower case) or null, "
                         f"got {model!r}")
    measured_in = entry.get("measured_in")
    if measured_in is None and "code" not in entry:
        raise SuiteError(f"{where}: say where its public code is: code: OWNER/REPO, code: null "
                         "(no public code) or code: unknown (not checked)")
    if measured_in is not None and ("model" in entry or "presets" in entry):
        raise SuiteError(f"{where}: a row measured_in another row has no model or presets")
    code = entry.get("code")
    if code is not None:
        code = _text(code, f"{where}.code")
    row_id = entry.get("id") or model or re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    if not isinstance(row_id, str) or not _ID.match(row_id):
        raise SuiteError(f"{where}: id {row_id!r} must be one folder name (lower-case letters, "
                         "digits, _ . + -)")
    presets = entry.get("presets") or {}
    if not isinstance(presets, dict):
        raise SuiteError(f"{where}.presets: expected a mapping dataset -> preset name")
    for dataset, preset in presets.items():
        if dataset not in datasets:
            raise SuiteError(f"{where}.presets: unknown dataset {dataset!r}; the suite's "
                             f"datasets: {', '.join(datasets)}")
        _text(preset, f"{where}.presets.{dataset}")
    if presets and model is None:
        raise SuiteError(f"{where}: presets need a model")
    paper = entry.get("paper") or {}
    if not isinstance(paper, dict):
        raise SuiteError(f"{where}.paper: expected a mapping dataset -> {{metric: value}}")
    figures: dict[str, dict[str, float]] = {}
    for dataset, values in paper.items():
        if dataset not in datasets:
            raise SuiteError(f"{where}.paper: unknown dataset {dataset!r}; the suite's "
                             f"datasets: {', '.join(datasets)}")
        if not isinstance(values, dict) or not values:
            raise SuiteError(f"{where}.paper.{dataset}: expected a mapping metric -> value")
        unknown = [m for m in values if m not in PAPER_METRICS]
        if unknown:
            raise SuiteError(f"{where}.paper.{dataset}: unknown metric(s) {unknown}; known: "
                             f"{', '.join(PAPER_METRICS)}")
        figures[dataset] = {m: _figure(v, m, f"{where}.paper.{dataset}")
                            for m, v in values.items()}
    return SuiteRow(id=row_id, label=label, model=model, code=code,
                    presets={str(k): str(v) for k, v in presets.items()}, paper=figures,
                    note=_text(entry.get("note"), f"{where}.note", required=False),
                    measured_in=measured_in)


def parse_suite(name: str, text: str, origin: str) -> Suite:
    """A suite from its YAML text; ``origin`` names it in errors."""
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SuiteError(f"{origin}: not valid YAML ({err})") from err
    if not isinstance(tree, dict):
        raise SuiteError(f"{origin}: expected a mapping with 'suite' and 'rows'")
    _check_keys(tree, {"suite", "rows"}, origin)
    meta = tree.get("suite")
    if not isinstance(meta, dict):
        raise SuiteError(f"{origin}: missing the 'suite' block (title, source, datasets)")
    _check_keys(meta, _SUITE_KEYS, f"{origin}: suite")
    datasets = meta.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        raise SuiteError(f"{origin}: suite.datasets must map each dataset key to a description")
    datasets = {str(k): _text(v, f"{origin}: suite.datasets.{k}") for k, v in datasets.items()}
    entries = tree.get("rows")
    if not isinstance(entries, list) or not entries:
        raise SuiteError(f"{origin}: 'rows' must be a non-empty list")
    rows = tuple(_parse_row(e, i, datasets, origin) for i, e in enumerate(entries))
    ids = [r.id for r in rows]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise SuiteError(f"{origin}: row id(s) {repeated} repeated; give the rows distinct ids "
                         "(id: ...)")
    for row in rows:
        if row.measured_in is not None and row.measured_in not in ids:
            raise SuiteError(f"{origin}: row {row.label!r}: measured_in {row.measured_in!r} is "
                             f"not a row id ({', '.join(ids)})")
    baseline = meta.get("baseline")
    if baseline is not None and baseline not in ids:
        raise SuiteError(f"{origin}: suite.baseline {baseline!r} is not a row id "
                         f"({', '.join(ids)})")
    return Suite(name=name, title=_text(meta.get("title"), f"{origin}: suite.title"),
                 source=_text(meta.get("source"), f"{origin}: suite.source"),
                 datasets=datasets, rows=rows,
                 note=_text(meta.get("note"), f"{origin}: suite.note", required=False),
                 baseline=baseline)


def choose_dataset(suite: Suite, family: str, requested: str | None = None) -> str:
    """The suite dataset key to compare with: ``requested``, or the first of the suite's
    datasets whose name starts with the data's family (``mosi`` -> ``mosi``, ``mosi-aligned``).

    Raises:
        SuiteError: ``requested`` is not one of the suite's datasets, or none matches.
    """
    if requested is not None:
        if requested not in suite.datasets:
            raise SuiteError(f"suite {suite.name!r} has no dataset {requested!r}; its datasets: "
                             f"{', '.join(suite.datasets)}")
        return requested
    for key in suite.datasets:
        if key == family or key.startswith(f"{family}-"):
            return key
    raise SuiteError(f"suite {suite.name!r} has no dataset for {family!r} data (its datasets: "
                     f"{', '.join(suite.datasets)}); pass --dataset KEY to compare anyway")


# ----------------------------------------------------------------------------------------------
# The language model: presets name hub models; offline, the packaged MiniLM stands in
# ----------------------------------------------------------------------------------------------

def language_model_reachable(name: str) -> tuple[bool, str]:
    """Whether language model ``name`` can be loaded here, and why not, without waiting on the
    network (:func:`msakit.lm.unavailable_reason`)."""
    from msakit.lm import unavailable_reason

    reason = unavailable_reason(name)
    return reason is None, reason or ""


# ----------------------------------------------------------------------------------------------
# Running a suite
# ----------------------------------------------------------------------------------------------

def _request_record(suite: Suite, data: str, dataset: str, folds: int | None,
                    epochs: int | None, seeds: list[int] | None,
                    overrides: list[str]) -> dict[str, Any]:
    return {"suite": suite.name, "data": data, "dataset": dataset, "folds": folds,
            "epochs": epochs, "seeds": list(seeds) if seeds else None,
            "overrides": list(overrides)}


def check_suite_resume(suite_dir: str | Path, requested: dict[str, Any]) -> dict[str, Any]:
    """The suite folder's record, after refusing a resume whose options differ from it.

    ``requested`` holds the options given with ``--resume``; ``None`` entries (not given) match.
    """
    suite_dir = Path(suite_dir)
    path = suite_dir / SUITE_JSON
    if not path.is_file():
        raise SuiteError(f"{suite_dir}: no {SUITE_JSON} (not a suite folder)")
    record = runfolder.read_json(path)
    saved = record["request"]
    differences = [f"{key}: {saved.get(key)!r} then, {value!r} now"
                   for key, value in requested.items()
                   if value not in (None, [], ()) and value != saved.get(key)]
    if differences:
        raise SuiteError(f"--resume continues {suite_dir} exactly as it was started, but these "
                         f"differ: {'; '.join(differences)}. Start a new suite for other "
                         "settings.")
    return record


def _row_state(run_dir: Path) -> str:
    """``finished``, ``resumable`` (a run folder to continue) or ``new``."""
    record = run_dir / runfolder.EXPERIMENT_FILE
    if not record.is_file() or not (run_dir / runfolder.CONFIG_FILE).is_file():
        return "new"
    status = runfolder.read_json(record).get("status")
    if status == "finished" and (run_dir / runfolder.METRICS_FILE).is_file():
        return "finished"
    return "resumable" if runfolder.read_json(record).get("seeds") else "new"


def _is_user_error(err: BaseException) -> bool:
    from msakit.data.dataset import DataError
    from msakit.training.experiment import JobsFailed

    # as msakit train: config, data, run and LM errors (ConfigError is a ValueError), OS errors
    return isinstance(err, (ValueError, KeyError, OSError, DataError, runfolder.RunError,
                            runfolder.CheckpointError, JobsFailed))


def _user_sets(overrides: Sequence[str], key: str) -> bool:
    return any(o.split("=", 1)[0].strip() == key for o in overrides)


def accumulation_adaptation(config, overrides: Sequence[str] = ()) -> dict[str, Any] | None:
    """The suite's one adaptation of a row's preset: ``train.partial_accumulation=step`` where
    the preset's ``drop`` would leave a partition without any optimiser step, else ``None``.

    Self-MM's and MMILN's official loops (``grad_accumulation: 4``, ``partial_accumulation:
    drop``) step once per 4 batches and discard an epoch's last, incomplete group; on a
    partition with fewer training batches than ``grad_accumulation`` (3 batches of 32 on a fold
    of the 229 packaged clips) they would never step, and the trainer refuses such a run. A
    suite runs every row under one protocol, so it runs that row with the last group stepped
    and records why (``suite.json``'s ``adaptations``, a note under the table and in the
    leaderboard). ``--set train.partial_accumulation=...`` is the user's choice: never adapted.
    """
    train = config.train
    if (train.partial_accumulation != "drop" or train.grad_accumulation == 1
            or _user_sets(overrides, "train.partial_accumulation")):
        return None
    from msakit.training.loading import load_experiment_data

    _, partitions = load_experiment_data(config)
    short = {p.name: math.ceil(len(p.train) / train.batch_size) for p in partitions}
    short = {name: n for name, n in short.items() if n < train.grad_accumulation}
    if not short:
        return None
    parts = ", ".join(f"{name} has {n}" for name, n in short.items())
    return {"key": "train.partial_accumulation", "preset": "drop", "used": "step",
            "reason": (f"train.grad_accumulation={train.grad_accumulation} with "
                       f"train.partial_accumulation=drop never takes an optimiser step on a "
                       f"partition with fewer training batches of {train.batch_size} ({parts}); "
                       "the last, incomplete group of each epoch is stepped instead")}


def _train_row(row: SuiteRow, dataset: str, suite_dir: Path, data: str, folds: int | None,
               epochs: int | None, seeds: list[int] | None, overrides: list[str],
               lm_checks: dict[str, tuple[bool, str]], run_kwargs: dict[str, Any],
               console, previous: dict[str, Any]) -> dict[str, Any]:
    """Train (or resume, or keep) one available row; returns its entry of ``suite.json``
    (``previous``: the row's entry in the record being resumed, or ``{}``)."""
    from msakit.config import build_config, load_saved_config
    from msakit.lm import DEFAULT_LANGUAGE_MODEL
    from msakit.presets import preset_names
    from msakit.training import run_experiment

    run_dir = suite_dir / row.id
    state = _row_state(run_dir) if run_dir.is_dir() else "new"
    entry: dict[str, Any] = {"run_dir": row.id}
    for carried in ("language_model_substituted", "adaptations"):
        if state != "new" and previous.get(carried):
            entry[carried] = previous[carried]
    if state == "finished":
        console.print(f"[bold]{row.label}[/]: finished in {run_dir}, kept")
        entry.update(state="finished", kept=True)
    elif state == "resumable":
        console.print(f"[bold]{row.label}[/]: resuming {run_dir}")
        run_experiment(None, resume_dir=run_dir, **run_kwargs)
        entry.update(state="finished", resumed=True)
    else:
        preset = row.presets.get(dataset)
        if preset is not None and preset not in preset_names(row.model):
            raise SuiteError(f"suite row {row.label!r}: model {row.model!r} has no preset "
                             f"{preset!r} (its presets: {', '.join(preset_names(row.model))})")
        extra = [f"data.path={json.dumps(data)}", f"run.output_dir={json.dumps(str(suite_dir))}",
                 f"run.name={row.id}"]
        if folds is not None:
            extra.append(f"data.folds={folds}")
        if epochs is not None:
            extra.append(f"train.epochs={epochs}")
        config = build_config(row.model, [*extra, *overrides], preset=preset)
        requested_lm = config.model.language_model
        user_lm = _user_sets(overrides, "model.language_model")
        if not user_lm and requested_lm != DEFAULT_LANGUAGE_MODEL:
            if requested_lm not in lm_checks:
                lm_checks[requested_lm] = language_model_reachable(requested_lm)
            reachable, reason = lm_checks[requested_lm]
            if not reachable:
                extra.append(f"model.language_model={DEFAULT_LANGUAGE_MODEL}")
                config = build_config(row.model, [*extra, *overrides], preset=preset)
                entry["language_model_substituted"] = {
                    "requested": requested_lm, "used": DEFAULT_LANGUAGE_MODEL, "reason": reason}
                console.print(f"[yellow]{row.label}: {requested_lm!r} is not available here "
                              f"({reason}); the packaged {DEFAULT_LANGUAGE_MODEL!r} stands in")
        adaptation = accumulation_adaptation(config, overrides)
        if adaptation is not None:
            config = build_config(row.model, [
                *extra, *overrides, f"{adaptation['key']}={adaptation['used']}"], preset=preset)
            entry["adaptations"] = [adaptation]
            console.print(f"[yellow]{row.label}: runs with {adaptation['key']}="
                          f"{adaptation['used']} instead of {adaptation['preset']}: "
                          f"{adaptation['reason']}", highlight=False)
        console.print(f"[bold]{row.label}[/]: msakit train {row.model}"
                      + (f" --preset {preset}" if preset else " (no preset for this dataset: "
                         "the model's shipped defaults)")
                      + "".join(f" --set {a['key']}={a['used']}"
                                for a in entry.get("adaptations", [])))
        if run_dir.is_dir() and not runfolder.is_failed_run(run_dir):
            raise SuiteError(f"{run_dir} exists and is not a run this suite can continue; move "
                             "it away to rerun the row")
        run_experiment(config, seeds=seeds, **run_kwargs)
        entry.update(state="finished", preset=preset)
    saved = load_saved_config(run_dir / runfolder.CONFIG_FILE)
    entry["language_model"] = saved.model.language_model
    entry["preset"] = saved.run.preset
    metrics = runfolder.read_json(run_dir / runfolder.METRICS_FILE)
    entry["summary"] = metrics.get("summary") or {}
    return entry


NOT_SELECTED = "not selected (--rows)"


def _selected_rows(suite: Suite, rows: Sequence[str] | None,
                   registered: Sequence[str]) -> set[str] | None:
    """The row ids ``--rows`` asks for (``None``: every available row), after refusing ids the
    suite lacks and rows that cannot run."""
    if not rows:
        return None
    ids = [r.id for r in suite.rows]
    unknown = [r for r in rows if r not in ids]
    if unknown:
        raise SuiteError(f"--rows: suite {suite.name!r} has no row(s) {', '.join(unknown)}; its "
                         f"rows: {', '.join(ids)}")
    cannot = [f"{r} ({suite.row(r).status(registered)})" for r in rows
              if suite.row(r).status(registered) != AVAILABLE]
    if cannot:
        raise SuiteError(f"--rows: these rows cannot run here: {', '.join(cannot)}")
    return set(rows)


def _unselected_row(row: SuiteRow, suite_dir: Path, previous: dict[str, Any]) -> dict[str, Any]:
    """A row left out by ``--rows``: what the suite folder has for it (a finished row's
    figures, a failed row's error), else ``not run``."""
    finished = (previous.get("state") == "finished" and previous.get("run_dir")
                and _row_state(suite_dir / previous["run_dir"]) == "finished")
    if finished or previous.get("state") == "failed":
        return {k: v for k, v in previous.items() if k not in ("kept", "resumed")}
    return {"state": "not run", "reason": NOT_SELECTED}


def run_suite(suite: Suite, data: str | None = None, *, dataset: str | None = None,
              folds: int | None = None, epochs: int | None = None,
              seeds: list[int] | None = None, overrides: Sequence[str] = (),
              output_dir: str | Path = "runs", resume_dir: str | Path | None = None,
              progress: bool = True, jobs: int = 1, console=None,
              registered: Callable[[], list[str]] | None = None,
              rows: Sequence[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """Run every available row of ``suite`` on ``data``; return the suite folder and its record.

    Args:
        data: data file/folder or packaged name, as ``msakit train --data``.
        dataset: the suite's dataset key to compare with (default: from the data's family).
        folds, epochs, seeds, overrides: as ``msakit train``'s ``--folds/--epochs/--seeds/--set``,
            for every row (after the row's preset).
        resume_dir: a suite folder to continue: its finished rows are kept, unfinished or failed
            ones continue in their run folders, the rest are trained. The options must be the
            recorded ones (those not given are taken from the record).
        rows: train only these rows (ids); the others keep what the suite folder has for them
            (a finished row its figures) or are reported as not selected. With ``resume_dir``
            this adds rows, e.g. a model registered since, to a suite folder.

    A row that fails is recorded (``state: failed``, the error) and the next row runs; the
    record is written after every row, ``suite.md`` at the end.
    """
    from rich.console import Console

    from msakit.data import load_dataset
    from msakit.models import list_models
    console = console or Console()
    overrides = list(overrides)
    if data and Path(data).exists():  # the record holds where the data is, from any folder
        data = str(Path(data).resolve())
    if resume_dir is not None:
        suite_dir = Path(resume_dir)
        saved = check_suite_resume(suite_dir, {
            "suite": suite.name, "data": data, "dataset": dataset, "folds": folds,
            "epochs": epochs, "seeds": list(seeds) if seeds else None, "overrides": overrides})
        request = saved["request"]
        previous = {e["id"]: e for e in saved.get("rows", [])}
        data, dataset, folds, epochs = (request["data"], request["dataset"], request["folds"],
                                        request["epochs"])
        seeds, overrides = request["seeds"], request["overrides"]
    else:
        if not data:
            raise SuiteError("no data given: pass --data PATH (or mosi-demo)")
        family = load_dataset(data).name
        dataset = choose_dataset(suite, family, dataset)
        request = _request_record(suite, data, dataset, folds, epochs, seeds, overrides)
        previous = {}
        suite_dir = runfolder.new_run_dir(output_dir, f"suite-{suite.name}", dataset)
    names = (registered or list_models)()
    selected = _selected_rows(suite, rows, names)
    record: dict[str, Any] = {
        "suite": suite.name, "title": suite.title, "source": suite.source, "note": suite.note,
        "dataset": dataset, "dataset_description": suite.datasets[dataset], "request": request,
        "baseline": suite.baseline, "metrics": suite.metrics(dataset), "status": "running",
        "rows": []}
    console.print(f"[bold]suite {suite.name}[/] ({suite.title}) on {data}, compared with the "
                  f"paper's {dataset} figures -> {suite_dir}")
    run_kwargs = {"progress": progress, "console": console, "jobs": jobs}
    lm_checks: dict[str, tuple[bool, str]] = {}
    entries: dict[str, dict[str, Any]] = {}
    for row in suite.rows:
        status = row.status(names)
        entry = {"id": row.id, "label": row.label, "model": row.model, "code": row.code,
                 "status": status, "note": row.note, "paper": row.paper.get(dataset, {})}
        if status != AVAILABLE:
            entry["state"] = "not run"
            entry["reason"] = (status if row.measured_in or row.model is None else
                               f"{status}: model {row.model!r} is not registered in this msakit")
            if row.measured_in is None:
                console.print(f"[dim]{row.label}: skipped ({entry['reason']})")
        elif selected is not None and row.id not in selected:
            entry.update(_unselected_row(row, suite_dir, previous.get(row.id, {})))
        else:
            try:
                entry.update(_train_row(row, dataset, suite_dir, data, folds, epochs, seeds,
                                        overrides, lm_checks, run_kwargs, console,
                                        previous.get(row.id, {})))
            except KeyboardInterrupt:
                entry.update(state="failed", error="interrupted")
                entries[row.id] = entry
                _write_record(suite_dir, record, suite, entries, status="interrupted")
                raise
            except Exception as err:  # recorded, and the suite goes on with the next row
                kind = "error" if _is_user_error(err) else "internal error (a bug in msakit)"
                entry.update(state="failed", error=f"{type(err).__name__}: {err}", kind=kind)
                console.print(f"[red]{row.label}: failed: {type(err).__name__}: {err}")
        entries[row.id] = entry
        _write_record(suite_dir, record, suite, entries, status="running")
    failed = [e for e in entries.values() if e.get("state") == "failed"]
    record = _write_record(suite_dir, record, suite, entries,
                           status="failed" if failed else "finished")
    (suite_dir / SUITE_MD).write_text(suite_markdown(record))
    return suite_dir, record


def _write_record(suite_dir: Path, record: dict[str, Any], suite: Suite,
                  entries: dict[str, dict[str, Any]], status: str) -> dict[str, Any]:
    rows = []
    for row in suite.rows:
        if row.id not in entries:
            continue
        entry = dict(entries[row.id])
        if row.measured_in is not None and row.measured_in in entries:
            source = entries[row.measured_in]
            entry["summary"] = source.get("summary")
            entry["run_dir"] = source.get("run_dir")
        rows.append(entry)
    substituted = sorted({e["language_model_substituted"]["requested"] for e in rows
                          if e.get("language_model_substituted")})
    record = {**record, "status": status, "rows": rows,
              "language_model_substituted": substituted}
    runfolder.write_json(suite_dir / SUITE_JSON, record)
    return record


# ----------------------------------------------------------------------------------------------
# The paper's table beside the measured one
# ----------------------------------------------------------------------------------------------

def _paper_cell(entry: dict[str, Any], metric: str) -> str:
    value = (entry.get("paper") or {}).get(metric)
    return "–" if value is None else f"{value:g}"


def _measured_cell(entry: dict[str, Any], metric: str) -> str:
    summary = (entry.get("summary") or {}).get(metric)
    if not summary:
        return "–"
    scale = paper_metric_scale(metric)
    digits = 1 if scale == 100.0 else 3
    mean, std = summary["mean"] * scale, summary.get("std")
    std_text = "–" if std is None or not math.isfinite(std) else f"{std * scale:.{digits}f}"
    return f"{mean:.{digits}f} ± {std_text} ({summary['n']})"


def _state_cell(entry: dict[str, Any]) -> str:
    if entry.get("state") == "failed":
        return f"failed: {entry.get('error', '')}"
    if entry.get("state") == "not run":
        return NOT_SELECTED if entry.get("reason") == NOT_SELECTED else entry["status"]
    changes = []
    if entry.get("language_model_substituted"):
        changes.append(f"LM {entry['language_model']} for "
                       f"{entry['language_model_substituted']['requested']}")
    changes += [f"{a['key']}={a['used']}" for a in entry.get("adaptations", [])]
    return "measured" + (f" ({'; '.join(changes)})" if changes else "")


def adaptation_note(entry: dict[str, Any]) -> str:
    """One sentence per row the suite adapted (empty when it ran its preset as written)."""
    return " ".join(f"{a['key']}={a['used']} instead of the preset's {a['preset']}: "
                    f"{a['reason']}." for a in entry.get("adaptations", []))


def suite_rows(record: dict[str, Any], stacked: bool = False) -> tuple[list[str], list[list[str]]]:
    """Columns and cells of the side-by-side table: per metric a paper and a measured column,
    or with ``stacked`` one column holding the paper's figure over the measured one."""
    metrics = record["metrics"]
    columns = ["row", "status"]
    for m in metrics:
        unit = " (%)" if paper_metric_scale(m) == 100.0 else ""
        columns += ([f"{m}{unit}\npaper\nmeasured"] if stacked else
                    [f"{m}{unit} paper", f"{m}{unit} measured"])
    cells = []
    for entry in record["rows"]:
        line = [entry["label"], _state_cell(entry)]
        for m in metrics:
            pair = [_paper_cell(entry, m), _measured_cell(entry, m)]
            line += ["\n".join(pair)] if stacked else pair
        cells.append(line)
    return columns, cells


def suite_notes(record: dict[str, Any]) -> list[str]:
    """The sentences under the table: sources, protocol, language model, what was not run."""
    request = record["request"]
    folds = f"{request['folds']} folds grouped by video" if request["folds"] else "its own splits"
    seeds = (" ".join(map(str, request["seeds"])) if request["seeds"]
             else "each config's train.seed")
    notes = [f"Paper: {record['source']}."]
    if record.get("note"):
        notes.append(f"Note: {record['note']}.")
    notes.append(
        f"Measured: mean ± sample std (n = training runs: seeds x partitions) on {request['data']}"
        f" ({folds}; seeds {seeds}"
        + (f"; {request['epochs']} epochs at most" if request["epochs"] else "")
        + "), the checkpoint selected on validation and the test part scored once. The paper's "
        f"figures are on the full {record['dataset_description']} test split: a run on other "
        "data, folds or budgets is not comparable to them number for number.")
    if record.get("language_model_substituted"):
        notes.append(
            f"No model hub was reachable for {', '.join(record['language_model_substituted'])} "
            "(named by the presets): the packaged all-MiniLM-L6-v2 stands in, so these rows do "
            "not use the paper's language model.")
    adapted = [e for e in record["rows"] if e.get("adaptations")]
    if adapted:
        notes.append("Adapted by the suite (the row's preset as written cannot train on these "
                      "partitions): " + "; ".join(f"{e['label']}: {adaptation_note(e)}"
                                                  for e in adapted))
    skipped = [e for e in record["rows"] if e.get("state") == "not run"
               and not e["status"].startswith("measured in")]
    unselected = [e["label"] for e in skipped if e.get("reason") == NOT_SELECTED]
    skipped = [e for e in skipped if e.get("reason") != NOT_SELECTED]
    if unselected:
        notes.append(f"Not selected by --rows (runnable, not run): {', '.join(unselected)}.")
    if skipped:
        notes.append("Not run: " + "; ".join(
            f"{e['label']} ({e['status']}" + (f", code: {e['code']}" if e.get("code")
                                              and e["code"] != "unknown" else "") + ")"
            for e in skipped) + ".")
    failed = [e for e in record["rows"] if e.get("state") == "failed"]
    if failed:
        notes.append("Failed: " + "; ".join(
            f"{e['label']}: {e['error']}" for e in failed) + ".")
    return notes


def suite_table(record: dict[str, Any]):
    """A rich table of the paper's figures beside the measured ones."""
    from rich.markup import escape
    from rich.table import Table

    columns, cells = suite_rows(record, stacked=True)
    table = Table(title=escape(f"suite {record['suite']}: {record['title']} — paper "
                               f"({record['dataset']}) vs measured"))
    for column in columns:
        table.add_column(escape(column), justify="left" if column in ("row", "status")
                         else "right")
    for line in cells:
        table.add_row(*(escape(cell) for cell in line))
    return table


def suite_markdown(record: dict[str, Any]) -> str:
    columns, cells = suite_rows(record)
    lines = [f"# Suite {record['suite']}: {record['title']}", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
    lines += [""] + [f"- {note}" for note in suite_notes(record)] + [""]
    runs_list = [f"- {e['label']}: `{e['run_dir']}`" for e in record["rows"]
                 if e.get("run_dir") and e.get("state") == "finished"]
    if runs_list:
        lines += ["Run folders (inside this suite folder):", "", *runs_list, ""]
    return "\n".join(lines)


def leaderboard_runs(suite_dir: str | Path, baseline: str | None = None) -> tuple[Path, list[Path]]:
    """The run folders of a suite's finished rows for ``msakit leaderboard SUITE_DIR``: the
    baseline (the row ``baseline``, else the suite's named one, else the first finished row)
    and the others.

    Raises:
        SuiteError: not a suite folder, an unknown or unfinished baseline row, or fewer than two
            finished rows.
    """
    suite_dir = Path(suite_dir)
    path = suite_dir / SUITE_JSON
    if not path.is_file():
        raise SuiteError(f"{suite_dir}: no {SUITE_JSON} (not a suite folder)")
    record = runfolder.read_json(path)
    finished = [e for e in record["rows"] if e.get("state") == "finished"
                and e.get("run_dir") and e.get("measured_in") is None]
    by_id = {e["id"]: e for e in finished}
    wanted = baseline or record.get("baseline")
    if wanted is not None and wanted not in by_id:
        ids = [e["id"] for e in record["rows"]]
        raise SuiteError(f"{suite_dir}: baseline row {wanted!r} is "
                         + ("not finished" if wanted in ids else
                            f"not a row of the suite ({', '.join(ids)})"))
    if len(finished) < 2:
        raise SuiteError(f"{suite_dir}: a leaderboard needs two finished rows; this suite has "
                         f"{len(finished)}")
    first = by_id[wanted] if wanted is not None else finished[0]
    others = [e for e in finished if e is not first]
    return suite_dir / first["run_dir"], [suite_dir / e["run_dir"] for e in others]


def suite_run_notes(suite_dir: str | Path) -> dict[Path, list[str]]:
    """What the suite changed in each finished row's run (the language model that stood in, the
    adaptations), sentences by run folder: the leaderboard prints them under its table."""
    suite_dir = Path(suite_dir)
    record = runfolder.read_json(suite_dir / SUITE_JSON)
    notes = {}
    for entry in record["rows"]:
        if entry.get("state") != "finished" or not entry.get("run_dir"):
            continue
        parts = []
        if entry.get("language_model_substituted"):
            parts.append(f"language model {entry['language_model']} for "
                         f"{entry['language_model_substituted']['requested']}.")
        if entry.get("adaptations"):
            parts.append(adaptation_note(entry))
        if parts:
            notes[(suite_dir / entry["run_dir"]).resolve()] = parts
    return notes
