"""Presets: the papers' settings in one flag (``msakit train MODEL --preset NAME``).

A preset is a YAML file ``msakit/configs/presets/<model>/<name>.yaml``. Its ``preset`` block says
what it is and where its values come from; its other sections (``model``, ``data``, ``train``,
``augment``, ``run``) are a config tree applied over the model's shipped defaults:

.. code-block:: yaml

    preset:
      description: MISA on CMU-MOSI with the official code's settings
      source: declare-lab/MISA@<commit> src/config.py
      paper:
        citation: Hazarika et al., ACM MM 2020, Table 2
        metrics: {Non0_acc_2: 83.4, MAE: 0.783}     # accuracies and F1 in percent
        note: optional caveat, e.g. selected on the test set
    model:
      language_model: bert-base-uncased
    train:
      lr: 1.0e-4

Precedence when building a config: class defaults < ``configs/<model>.yaml`` < preset <
``--config FILE`` < ``--set``. The preset's name is recorded in ``run.preset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from msakit.metrics import MOSI_METRICS, SIMS_METRICS

CONFIG_SECTIONS = ("model", "data", "train", "augment", "run")
_PRESET_KEYS = {"description", "source", "paper"}
_PAPER_KEYS = {"citation", "metrics", "note"}
PAPER_METRICS = tuple(dict.fromkeys(MOSI_METRICS + SIMS_METRICS))


class PresetError(ValueError):
    """An unknown preset or a malformed preset file; the message names the file and key."""


@dataclass(frozen=True)
class PaperResult:
    """A paper's reported test numbers for one dataset (accuracies and F1 in percent)."""

    citation: str
    metrics: dict[str, float]
    note: str = ""


@dataclass(frozen=True)
class Preset:
    """One model's setting for one dataset, as the official code configures it."""

    model: str
    name: str
    description: str
    source: str
    config: dict[str, Any] = field(default_factory=dict)
    paper: PaperResult | None = None

    @property
    def language_model(self) -> str | None:
        return (self.config.get("model") or {}).get("language_model")


def _presets_root():
    return resources.files("msakit") / "configs" / "presets"


def _parse(model: str, name: str, text: str, origin: str) -> Preset:
    try:
        tree = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise PresetError(f"{origin}: not valid YAML ({err})") from err
    if not isinstance(tree, dict):
        raise PresetError(f"{origin}: expected a mapping at the top level")
    unknown = set(tree) - {"preset", *CONFIG_SECTIONS}
    if unknown:
        raise PresetError(f"{origin}: unknown top-level key(s) {sorted(unknown)}; allowed: "
                          f"preset, {', '.join(CONFIG_SECTIONS)}")
    meta = tree.get("preset")
    if not isinstance(meta, dict):
        raise PresetError(f"{origin}: missing the 'preset' block (description, source, paper)")
    unknown = set(meta) - _PRESET_KEYS
    if unknown:
        raise PresetError(f"{origin}: unknown key(s) in 'preset': {sorted(unknown)}")
    for key in ("description", "source"):
        if not isinstance(meta.get(key), str) or not meta[key].strip():
            raise PresetError(f"{origin}: preset.{key} must be a non-empty string")
    paper = None
    if meta.get("paper") is not None:
        paper = _parse_paper(meta["paper"], origin)
    for section in CONFIG_SECTIONS:
        if section in tree and not isinstance(tree[section], dict):
            raise PresetError(f"{origin}: section {section!r} must be a mapping")
    if (tree.get("model") or {}).get("name", model) != model:
        raise PresetError(f"{origin}: model.name says {tree['model']['name']!r}, the folder "
                          f"says {model!r}")
    config = {k: tree[k] for k in CONFIG_SECTIONS if tree.get(k)}
    return Preset(model=model, name=name, description=meta["description"].strip(),
                  source=meta["source"].strip(), config=config, paper=paper)


def _parse_paper(raw: Any, origin: str) -> PaperResult:
    if not isinstance(raw, dict):
        raise PresetError(f"{origin}: preset.paper must be a mapping")
    unknown = set(raw) - _PAPER_KEYS
    if unknown:
        raise PresetError(f"{origin}: unknown key(s) in preset.paper: {sorted(unknown)}")
    metrics = raw.get("metrics") or {}
    if not isinstance(metrics, dict) or not metrics:
        raise PresetError(f"{origin}: preset.paper.metrics must map metric names to numbers")
    for metric, value in metrics.items():
        if metric not in PAPER_METRICS:
            raise PresetError(f"{origin}: preset.paper.metrics: unknown metric {metric!r}; "
                              f"known: {', '.join(PAPER_METRICS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PresetError(f"{origin}: preset.paper.metrics.{metric} must be a number")
    if not isinstance(raw.get("citation"), str) or not raw["citation"].strip():
        raise PresetError(f"{origin}: preset.paper.citation must be a non-empty string")
    return PaperResult(citation=raw["citation"].strip(),
                       metrics={k: float(v) for k, v in metrics.items()},
                       note=str(raw.get("note") or "").strip())


def preset_names(model: str) -> list[str]:
    """The preset names shipped for ``model`` (sorted; empty when it has none)."""
    folder = _presets_root() / model
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_preset(model: str, name: str) -> Preset:
    """The preset ``name`` of ``model``; an unknown name lists the available ones."""
    resource = _presets_root() / model / f"{name}.yaml"
    if not resource.is_file():
        available = preset_names(model)
        listing = ", ".join(available) if available else "none"
        raise PresetError(f"model {model!r} has no preset {name!r}; available: {listing} "
                          "(msakit models --presets lists all)")
    return _parse(model, name, resource.read_text(), f"preset {model}/{name}")


def list_presets(model: str | None = None) -> list[Preset]:
    """Every shipped preset (of one model, or of all registered models)."""
    from msakit.models import list_models

    models = [model] if model else list_models()
    return [load_preset(m, n) for m in models for n in preset_names(m)]


def paper_metric_scale(metric: str) -> float:
    """Papers report accuracies and F1 in percent; msakit's metrics are fractions."""
    return 100.0 if ("acc" in metric or "F1" in metric) else 1.0


def presets_markdown(presets: list[Preset]) -> str:
    """A markdown table: preset, language model, official source, the paper's numbers."""
    lines = [
        "| model | preset | language model | official source | paper | paper's numbers |",
        "|---|---|---|---|---|---|",
    ]
    for p in presets:
        numbers = ", ".join(f"{k} {v:g}" for k, v in p.paper.metrics.items()) if p.paper else "–"
        citation = p.paper.citation if p.paper else "–"
        if p.paper and p.paper.note:
            citation += f" ({p.paper.note})"
        lines.append(f"| {p.model} | `{p.name}` | {p.language_model or 'default'} | {p.source} | "
                     f"{citation} | {numbers} |")
    return "\n".join(lines) + "\n"
