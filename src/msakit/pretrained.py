"""Portable trained models: ``msakit export``, :func:`from_pretrained`, the shipped model.

An exported model is a folder (also a Hugging Face Hub repository layout)::

    model.safetensors   the weights of every member (no pickle anywhere on the load path)
    config.json         the resolved experiment config the model was trained with
    feature_spec.json   what the model reads: modalities, feature dims, word alignment, label
                        range, what it can serve (``serves``: transcripts, clips or
                        precomputed features, see :data:`msakit.predict.SERVES`), and the
                        msakit extractor config (+ normalisation) that makes its audio/vision
                        features from raw clips (null: text-only, or features msakit cannot
                        compute)
    metrics.json        the run's test metrics (mean ± std over members, per member) and where
                        they come from; optionally ``evaluations``: the exported model's
                        figures under named protocols (e.g. with and without text context)
    README.md           the model card

A run with several checkpoints (seeds x folds) exports them all as an ensemble: member ``i``'s
tensors are stored under ``members.<i>.<name>`` and predictions are their mean, exactly as
``msakit predict --run`` does. ``--checkpoint seed1/fold0`` exports one.

``from_pretrained()`` with no argument (or ``"default"``) loads the pretrained text model shipped
in the package (``msakit/weights/default``, made by ``tools/train_pretrained.py``); a Hugging Face
Hub id (``owner/name``) is downloaded with ``huggingface_hub.snapshot_download`` (or read from
its local cache), failing at once with the reason when no hub is reachable (:mod:`msakit.hub`).

This module owns the export folder format: its file names and all writing and reading of it.
The run folder it exports from is read through :mod:`msakit.runfolder`.
"""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

from msakit import __version__, runfolder
from msakit.hub import looks_like_repo_id, offline_reason
from msakit.predict import SERVES, RunIncompatibleError, TrainedRun

WEIGHTS_FILE = "model.safetensors"
CONFIG_JSON = "config.json"
FEATURE_SPEC_FILE = "feature_spec.json"
METRICS_JSON = "metrics.json"  # the run's test metrics (its metrics.json summary)
CARD_FILE = "README.md"
#: every file of an export (what a hub download fetches)
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_JSON, FEATURE_SPEC_FILE, METRICS_JSON, CARD_FILE)
FORMAT_VERSION = 1
#: the shipped pretrained model, addressable by this name
DEFAULT_MODEL = "default"

CARD_METRICS = ("Non0_acc_2", "Non0_F1_score", "Has0_acc_2", "Mult_acc_7", "MAE", "Corr",
                "Mult_acc_2", "Mult_acc_3", "Mult_acc_5")


class ExportError(ValueError):
    """The model cannot be exported or loaded; the message says why."""


def default_model_path() -> Path:
    return Path(str(resources.files("msakit") / "weights" / DEFAULT_MODEL))


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------

def export_run(run_dir: str | Path, out_dir: str | Path, checkpoint: str | None = None,
               card_notes: str | None = None,
               evaluations: list[dict[str, Any]] | None = None,
               more_runs: list[str | Path] | None = None) -> Path:
    """Write the model of ``run_dir`` to the new folder ``out_dir`` (see the module docstring).

    Args:
        checkpoint: one training folder of the run (e.g. ``seed1/fold0``); default all of them.
        card_notes: extra Markdown for the model card (e.g. how the model was selected).
        evaluations: the model's figures under named protocols, each ``{"protocol": name,
            "description": how it was measured, "n": clips, "metrics": {name: value},
            "reference": False}`` (``reference: True`` for figures that are not the model's,
            e.g. human annotators'); stored in ``metrics.json`` and tabled in the card.
        more_runs: other runs of the same experiment (seeds trained separately) whose every
            checkpoint joins the ensemble (:func:`msakit.predict.merge_runs`).

    Raises:
        ExportError: ``out_dir`` exists and is not empty, or the run is unreadable.
    """
    from safetensors.torch import save_file

    from msakit.predict import load_trained_run, merge_runs
    from msakit.runfolder import writing

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ExportError(f"{out_dir}: exists and is not empty; msakit never overwrites")
    run_dirs = [run_dir, *(Path(r) for r in more_runs or ())]
    try:
        run = merge_runs([load_trained_run(r, checkpoint if r == run_dir else None,
                                           require_clip_features=False) for r in run_dirs])
    except RunIncompatibleError as err:
        raise ExportError(str(err)) from err
    tensors: dict[str, Any] = {}
    members = []
    for index, (folder, state) in enumerate(zip(run.checkpoints, run.member_states("cpu"))):
        for name, value in state.items():
            tensors[f"members.{index}.{name}"] = value.detach().cpu().contiguous().clone()
        home = next(r for r in run_dirs if folder == r or r in folder.parents)
        inside = str(folder.relative_to(home)) if folder != home else "."
        entry = {"member": index,
                 "trained_in": inside if len(run_dirs) == 1 else f"{home.resolve().name}/{inside}"}
        if runfolder.has_metrics(folder):
            saved = runfolder.read_metrics(folder)
            entry.update({k: saved.get(k) for k in ("seed", "partition", "best_epoch")
                          if k in saved})
            entry["test"] = saved.get("test")
        members.append(entry)

    spec = feature_spec(run)
    metrics = {
        "summary": _member_summary(members),
        "members": members,
        **({"evaluations": _checked_evaluations(evaluations)} if evaluations else {}),
        "provenance": {
            "run": str(run_dir.resolve()),
            "run_name": run_dir.resolve().name,
            **({"more_runs": [str(r.resolve()) for r in run_dirs[1:]]} if more_runs else {}),
            "data_source": run.data_info.get("source"),
            "partitions": run.data_info.get("partitions"),
            "msakit_version": __version__,
            "git_commit": _git_commit(),
            "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    texts = {CONFIG_JSON: json.dumps(run.config.to_dict(), indent=2),
             FEATURE_SPEC_FILE: json.dumps(spec, indent=2),
             METRICS_JSON: json.dumps(metrics, indent=2),
             CARD_FILE: model_card(run.config, spec, metrics, card_notes)}
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with writing(out_dir / WEIGHTS_FILE):
            save_file(tensors, str(out_dir / WEIGHTS_FILE),
                      metadata={"format": "msakit", "format_version": str(FORMAT_VERSION),
                                "members": str(len(members))})
        (out_dir / WEIGHTS_FILE).chmod(0o644)  # safetensors writes 0600; a model is for sharing
        for name, text in texts.items():
            with writing(out_dir / name):
                (out_dir / name).write_text(text)
    except BaseException:  # a failed export leaves no half model folder behind
        for name in (WEIGHTS_FILE, *texts):
            (out_dir / name).unlink(missing_ok=True)
        if created:
            out_dir.rmdir()
        raise
    return out_dir


def feature_spec(run: TrainedRun) -> dict[str, Any]:
    """What the model reads and how new clips' features must be made."""
    record = run.data_info.get("extractor")
    return {
        "format_version": FORMAT_VERSION,
        "modalities": run.modalities,
        "feature_dims": run.feature_dims,
        "serves": run.serves,
        "serves_description": SERVES[run.serves],
        "word_aligned": bool(run.data_info.get("word_aligned", False)),
        "dataset": run.data_info.get("dataset", "custom"),
        "label_range": list(run.label_range),
        "max_text_tokens": run.config.data.max_text_tokens,
        "language_model": run.config.model.language_model,
        "extractor": None if run.text_only else record,
    }


def describe_serving(spec: dict) -> str:
    """One sentence on what an exported model can score (model card, ``msakit export``)."""
    serves = spec.get("serves")
    return f"it serves {SERVES[serves]}" if serves in SERVES else "what it serves is not recorded"


def _member_summary(members: list[dict]) -> dict[str, dict[str, float]]:
    from msakit.summary import summarise

    scored = [m for m in members if isinstance(m.get("test"), dict)]
    return summarise(scored) if scored else {}


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def model_card(config, spec: dict, metrics: dict, notes: str | None = None) -> str:
    """The model card (Markdown with Hub front matter) of an exported model."""
    from msakit.models import get_model_class

    name = config.model.name
    model_doc = (get_model_class(name).__doc__ or name).strip().splitlines()[0]
    prov = metrics["provenance"]
    summary = metrics["summary"]
    n_members = len(metrics["members"])
    partitions = prov.get("partitions") or {}
    if config.data.folds:
        protocol = (f"{config.data.folds}-fold cross-validation grouped by video "
                    f"(fold seed {config.data.fold_seed}); in each fold "
                    f"{config.data.valid_fraction:.0%} of the training videos are held out "
                    "to select the checkpoint, the fold's test videos are scored once")
    else:
        sizes = ", ".join(f"{k} {v}" for k, v in next(iter(partitions.values()), {}).items())
        protocol = (f"the data's own train/valid/test split ({sizes}): trained on train, "
                    "checkpoint selected on valid, test scored once")
    rows = []
    for metric in CARD_METRICS:
        if metric in summary:
            entry = summary[metric]
            std = f" ± {entry['std']:.4f}" if entry.get("n", 1) > 1 else ""
            rows.append(f"| {metric} | {entry['mean']:.4f}{std} | {entry.get('n', 1)} |")
    table = "\n".join(["| metric | test | n |", "| --- | --- | --- |", *rows]) if rows else \
        "No test metrics were recorded for this run."
    modalities = spec["modalities"]
    reads = "the transcript only" if modalities == ["text"] else ", ".join(modalities)
    features = {
        "transcripts": ("no audio or visual features: give it a transcript (or a clip, whose "
                        "speech is then transcribed offline by pocketsphinx, with much lower "
                        "quality)"),
        "clips": ("audio/vision features computed from raw clips by `msakit extract` with the "
                  "extractor config in `feature_spec.json`"),
        "features": (f"audio/vision features ({spec['feature_dims']}) that msakit cannot "
                     "compute from raw clips (e.g. MMSA's COVAREP/FACET): it scores only "
                     "precomputed features, one `.npz` per clip (`msakit predict --model PATH "
                     "--features CLIP.npz --text ...`, docs/extract_predict.md)"),
    }.get(spec.get("serves"), "")
    selected = config.train.selection_metric
    lines = [
        "---",
        "library_name: msakit",
        "tags: [multimodal-sentiment-analysis, msakit, " + name + "]",
        "---",
        "",
        f"# {name} — msakit model",
        "",
        f"{model_doc}",
        "",
        "## What it reads",
        "",
        f"Modalities: **{reads}** — {features}. Serves: **{spec.get('serves')}**. "
        "Language model: "
        f"`{spec['language_model']}` (at most {spec['max_text_tokens']} tokens). Output: one "
        f"sentiment intensity on the [{spec['label_range'][0]:g}, {spec['label_range'][1]:g}] "
        "scale (dataset family " + spec["dataset"] + ")." + _context_sentence(config),
        "",
        "## Data and protocol",
        "",
        f"Trained on `{prov.get('data_source')}` with {protocol}. "
        f"Selection on validation by `{selected}`, at most {config.train.epochs} epochs "
        f"(patience {config.train.patience}), lr {config.train.lr:g}, batch "
        f"{config.train.batch_size}, seed(s) as listed in `metrics.json`. "
        f"This export holds {n_members} member(s); a prediction is their mean.",
        "",
        "## Test metrics",
        "",
        table,
        "",
        f"Provenance: run `{prov.get('run_name')}`"
        + "".join(f" + `{Path(r).name}`" for r in prov.get("more_runs", []))
        + f", msakit {prov.get('msakit_version')}"
        + (f" (commit {prov['git_commit'][:12]})" if prov.get("git_commit") else "")
        + f", exported {prov.get('exported')}. Mean ± sample std over the members' test "
        "scores (each member's own test part); per-member numbers in `metrics.json`. "
        "Metrics follow MMSA's definitions (msakit docs/metrics.md).",
        "",
        "## Intended use",
        "",
        "Research and demonstration: the sentiment intensity of short English opinion "
        "monologues (a sentence or two, as in CMU-MOSI's YouTube movie reviews). Load it with "
        "`msakit.from_pretrained(path)` or `msakit predict --model PATH`.",
        "",
        "## Limitations",
        "",
        "- Trained on a few hundred to a few thousand clips of English YouTube reviews; other "
        "domains, languages, speaking styles and recording conditions are out of distribution.",
        "- Scores are not calibrated probabilities; the 7-class label is the rounded score.",
        "- Machine transcripts (pocketsphinx) are often wrong and make the prediction unreliable.",
        "- Not for decisions about people (hiring, health, surveillance).",
        "- The training data (CMU-MOSI) has no published licence; see the msakit README.",
    ]
    if metrics.get("evaluations"):
        index = lines.index("## Intended use")
        lines[index:index] = [*_evaluations_section(metrics["evaluations"]), ""]
    if notes:
        lines += ["", "## Notes", "", notes.strip()]
    return "\n".join(lines) + "\n"


#: the columns of the card's protocol table
EVALUATION_METRICS = ("Non0_acc_2", "Non0_F1_score", "Has0_acc_2", "Mult_acc_7", "MAE", "Corr")


def _checked_evaluations(evaluations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    checked = []
    for entry in evaluations:
        missing = {"protocol", "description", "n", "metrics"} - set(entry)
        if missing:
            raise ExportError(f"evaluation {entry.get('protocol')!r} lacks {sorted(missing)}")
        checked.append({"protocol": str(entry["protocol"]),
                        "description": str(entry["description"]), "n": int(entry["n"]),
                        "reference": bool(entry.get("reference", False)),
                        "metrics": {k: float(v) for k, v in entry["metrics"].items()}})
    return checked


def _evaluations_section(evaluations: list[dict[str, Any]]) -> list[str]:
    """The card's table of the model's figures by protocol (references in italics)."""
    def cell(metrics: dict[str, float], name: str) -> str:
        if name not in metrics:
            return "—"
        value = metrics[name]
        return f"{value:.3f}" if name in ("MAE", "Corr") else f"{100 * value:.2f}"

    header = "| protocol | n | " + " | ".join(
        m.replace("Mult_acc_7", "Acc-7").replace("_acc_2", " Acc-2").replace(
            "_F1_score", " F1") for m in EVALUATION_METRICS) + " |"
    rows = []
    for entry in evaluations:
        name = f"*{entry['protocol']}*" if entry["reference"] else f"**{entry['protocol']}**"
        rows.append(f"| {name} | {entry['n']} | "
                    + " | ".join(cell(entry["metrics"], m) for m in EVALUATION_METRICS) + " |")
    notes = [f"- **{e['protocol']}**: {e['description']}" if not e["reference"]
             else f"- *{e['protocol']}*: {e['description']}" for e in evaluations]
    return ["## Test figures by protocol", "", header,
            "|" + " --- |" * (2 + len(EVALUATION_METRICS)), *rows, "",
            "Accuracies and F1 in %, MAE and Corr as fractions.", "", *notes]


def _context_sentence(config) -> str:
    """The model card's line on text context (empty when the model reads each clip alone)."""
    context = getattr(config.model, "text_context", None)
    if context is None or context.mode == "none":
        return ""
    return (f" It reads each transcript with its video's neighbouring utterances "
            f"(`text_context` {context}: their text only, never their labels); give a video's "
            "transcripts together (`msakit predict --texts FILE.csv`, or `{\"utterances\": "
            "[...]}` to `msakit serve`); a transcript alone is scored without context.")


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------

def resolve_model_folder(path: str | Path | None) -> Path:
    """The local folder of a model: the shipped one (``None`` / ``"default"``), an existing
    folder, or a Hugging Face Hub id's snapshot (cached, else downloaded).

    Raises:
        ExportError: no such folder; a hub id with no hub reachable and no cached copy (at
            once, naming the reason), huggingface_hub missing, or the hub refusing.
    """
    if path is None or (str(path) == DEFAULT_MODEL and not Path(DEFAULT_MODEL).exists()):
        return default_model_path()
    folder = Path(path).expanduser()
    if folder.is_dir() or not looks_like_repo_id(str(path)) or "/" not in str(path):
        if not folder.is_dir():
            raise ExportError(f"{folder}: no such model folder (nor a Hugging Face Hub id "
                              "owner/name)")
        return folder
    return _hub_snapshot(str(path))


def _hub_snapshot(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise ExportError(f"{repo_id!r} is not a local folder; loading it from the Hugging Face "
                          "Hub needs huggingface_hub: pip install 'msakit[hub]'") from err
    try:  # a copy downloaded before works offline, and costs no network wait
        return Path(snapshot_download(repo_id, allow_patterns=list(EXPORT_FILES),
                                      local_files_only=True))
    except Exception:  # not cached (huggingface_hub raises several types for that)
        pass
    reason = offline_reason()
    if reason is not None:
        raise ExportError(f"{repo_id!r} is not a local folder nor in the local Hugging Face "
                          f"cache, and {reason}: download it where a hub is reachable (`hf "
                          f"download {repo_id} --local-dir DIR`) and load DIR")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(EXPORT_FILES)))
    except Exception as err:  # network, auth, and hub errors have many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ExportError(f"could not download {repo_id!r} from the Hugging Face Hub: "
                          f"{type(err).__name__}: {first}") from err


def from_pretrained(path: str | Path | None = None) -> TrainedRun:
    """Load an exported model: a folder, a Hugging Face Hub id (``owner/name``, extra
    ``msakit[hub]``), or ``None`` / ``"default"`` for the model shipped in the package.

    The result is callable: ``model("text")`` gives a score, ``model(["a", "b"])`` a list;
    ``model.predict(...)`` gives full predictions (:meth:`msakit.predict.TrainedRun.predict`).

    Raises:
        ExportError: not an exported model folder, files that do not fit together, or a hub id
            that cannot be fetched (see :func:`resolve_model_folder`).
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from msakit.config import ConfigError, config_from_tree
    from msakit.predict import check_feature_source

    folder = resolve_model_folder(path)
    for file_name in (WEIGHTS_FILE, CONFIG_JSON, FEATURE_SPEC_FILE):
        if not (folder / file_name).is_file():
            hint = " (a run folder? use --run, or `msakit export` it first)" \
                if runfolder.has_config(folder) else ""
            raise ExportError(f"{folder}: missing {file_name}; not an exported msakit "
                              f"model{hint}")
    try:
        tree = json.loads((folder / CONFIG_JSON).read_text())
        spec = json.loads((folder / FEATURE_SPEC_FILE).read_text())
    except ValueError as err:
        raise ExportError(f"{folder}: unreadable JSON ({err})") from err
    try:
        config = config_from_tree(tree, str(folder / CONFIG_JSON))
    except ConfigError as err:
        raise ExportError(str(err)) from err
    if spec.get("format_version") != FORMAT_VERSION:
        raise ExportError(f"{folder / FEATURE_SPEC_FILE}: format_version "
                          f"{spec.get('format_version')!r}; this msakit reads {FORMAT_VERSION}")
    try:
        tensors = load_file(str(folder / WEIGHTS_FILE), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ExportError(f"{folder / WEIGHTS_FILE}: unreadable ({err})") from err
    states: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        index, _, name = rest.partition(".")
        if prefix != "members" or not index.isdigit() or not name:
            raise ExportError(f"{folder / WEIGHTS_FILE}: tensor {key!r} is not "
                              "'members.<i>.<name>'; not an msakit export")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ExportError(f"{folder / WEIGHTS_FILE}: tensor {key!r} holds NaN or infinite "
                              "values; expected finite weights (re-export the run)")
        states.setdefault(int(index), {})[name] = value
    if sorted(states) != list(range(len(states))) or not states:
        raise ExportError(f"{folder / WEIGHTS_FILE}: members {sorted(states)}; expected 0..n-1")
    data_info = {
        "source": str(folder), "dataset": spec.get("dataset", "custom"),
        "word_aligned": spec.get("word_aligned", False),
        "feature_dims": spec.get("feature_dims") or {}, "extractor": spec.get("extractor"),
    }
    model = TrainedRun(
        run_dir=folder, config=config, data_info=data_info, extractor=None,
        normalization=None, checkpoints=[],
        label_range=tuple(spec.get("label_range") or (-3.0, 3.0)),
        states=[states[i] for i in range(len(states))],
    )
    try:
        model.extractor, model.normalization, model.notes = check_feature_source(
            folder, data_info, reads=model.modalities)
    except RunIncompatibleError as err:
        raise ExportError(str(err)) from err
    return model


# --------------------------------------------------------------------------------------------
# Hub
# --------------------------------------------------------------------------------------------

def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to the Hugging Face Hub (extra ``msakit[hub]``).

    Raises:
        ExportError: huggingface_hub missing, or the Hub unreachable / refusing (the message
            says which, and that the local export is complete).
    """
    try:
        from huggingface_hub import HfApi
    except ImportError as err:
        raise ExportError("--push-to-hub needs huggingface_hub: pip install 'msakit[hub]' "
                          f"(the export in {folder} is complete)") from err
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    except Exception as err:  # network, auth, and hub errors have many types
        raise ExportError(
            f"could not push {folder} to the Hugging Face Hub as {repo_id!r}: "
            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''} "
            "(offline, or not logged in: `huggingface-cli login`); the local export is "
            "complete") from err
    return str(getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}")
