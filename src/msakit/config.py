"""Resolving an experiment config: a model's typed config with its defaults and overrides.

The config classes are in :mod:`msakit.config_schema` (re-exported here). Defaults come from the
pydantic classes (a model's class holds its official hyper-parameters), then from the model's
file ``msakit/configs/<model>.yaml`` (its training settings and search space; its ``model:``
section may only change a class default, never restate one), then a preset
(:mod:`msakit.presets`), then a user file, then ``--set section.key=value`` overrides. Unknown
keys are errors everywhere.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from msakit.config_schema import (
    DEFAULT_LANGUAGE_MODEL,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    RunConfig,
    StrictModel,
    TrainConfig,
)

__all__ = [
    "ConfigError", "DEFAULT_LANGUAGE_MODEL", "StrictModel", "ModelConfig", "DataConfig",
    "TrainConfig", "RunConfig", "ExperimentConfig", "build_config", "load_saved_config",
    "config_from_tree", "default_config_file", "load_yaml_file", "parse_override",
    "apply_overrides", "deep_update", "describe_errors",
]


# --------------------------------------------------------------------------------------------
# Building a config: class defaults < model's YAML file < user file < --set overrides
# --------------------------------------------------------------------------------------------

def default_config_file(model_name: str) -> dict[str, Any]:
    """The model's shipped settings (``msakit/configs/<model>.yaml``: training settings, search
    space, model keys that differ from the class defaults), or ``{}``."""
    resource = resources.files("msakit") / "configs" / f"{model_name}.yaml"
    if not resource.is_file():
        return {}
    return yaml.safe_load(resource.read_text()) or {}


def load_yaml_file(path: str | Path | None) -> dict[str, Any]:
    """A user's YAML config file as a mapping (``{}`` for ``None`` or an empty file).

    Raises:
        ConfigError: unreadable, not valid YAML (with the line), or not a mapping of sections.
    """
    if path is None:
        return {}
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{at}: not valid YAML ({problem})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file") from err
    except IsADirectoryError as err:
        raise ConfigError(f"{path}: is a folder, expected a YAML file") from err
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, train:, ...), "
                          f"found a {type(tree).__name__}")
    return tree


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> ``(["train", "lr"], 0.0001)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if len(parts) < 2:
        raise ConfigError(f"override {text!r}: the key must name a section, e.g. train.lr=1e-4")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
    if isinstance(value, str):
        value = _yaml11_number(value)
    return parts, value


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def _yaml11_number(text: str) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; users mean the number."""
    if not _NUMBER.match(text.strip()):
        return text
    return float(text) if any(c in text for c in ".eE") else int(text)


def deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    tree = dict(tree)
    for text in overrides:
        parts, value = parse_override(text)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        tree = deep_update(tree, nested)
    return tree


def build_config(
    model_name: str,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    preset: str | None = None,
) -> ExperimentConfig:
    """Resolve the config of ``model_name``.

    Precedence: class defaults < ``configs/<model>.yaml`` < ``preset`` < ``base`` < ``overrides``.

    Args:
        model_name: a registered model name.
        overrides: ``section.key=value`` strings, applied last.
        base: a config tree (e.g. a user's YAML file or a saved run's config) applied over the
            model's shipped defaults and the preset.
        preset: a preset name of ``model_name`` (:mod:`msakit.presets`), e.g. ``"mosi"``.
    """
    from msakit.models import get_model_class  # late import: models import this module

    try:
        model_cls = get_model_class(model_name)
    except KeyError as err:  # a name the user gave
        raise ConfigError(err.args[0]) from None
    # the class defaults are in the tree, so that a dotted override of a mapping
    # (model.loss_weights.diff=0.1) changes one entry of the default instead of replacing it
    tree = deep_update({"model": model_cls.config_class().model_dump()},
                       default_config_file(model_name))
    if preset is not None:
        from msakit.presets import PresetError, load_preset

        try:
            tree = deep_update(tree, load_preset(model_name, preset).config)
        except PresetError as err:
            raise ConfigError(str(err)) from err
        tree = deep_update(tree, {"run": {"preset": preset}})
    tree = deep_update(tree, base or {})
    tree = apply_overrides(tree, overrides or [])
    tree.pop("search", None)  # the tuner's search space (msakit.experiments.tune), not a setting
    model_tree = dict(tree.pop("model", {}) or {})
    given_name = model_tree.setdefault("name", model_name)
    if given_name != model_name:
        raise ConfigError(f"config names model {given_name!r} but {model_name!r} was asked for")
    unknown = set(tree) - {"data", "train", "augment", "run"}
    if unknown:
        raise ConfigError(
            f"unknown config section(s) {sorted(unknown)}; sections are model, data, train, "
            "augment, run"
        )
    try:
        model_config = model_cls.config_class(**model_tree)
    except ValidationError as err:
        raise ConfigError(f"invalid config for {model_name}: {describe_errors(err, 'model')}"
                          ) from err
    try:
        return ExperimentConfig(model=model_config, **tree)
    except ValidationError as err:
        raise ConfigError(f"invalid config for {model_name}: {describe_errors(err)}") from err


def describe_errors(err: ValidationError, prefix: str = "") -> str:
    """A pydantic error as one line: ``key: problem (got value); ...``."""
    parts = []
    for item in err.errors():
        key = ".".join(str(part) for part in (prefix, *item["loc"]) if part != "")
        message = item["msg"].removeprefix("Value error, ")
        value = item.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        parts.append(f"{key}: {message}{shown}")
    return "; ".join(parts)


def config_differences(first: Any, second: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """The dotted keys whose values differ between two config trees (``to_dict()``), sorted,
    each with its value in ``first`` and in ``second`` (``None`` where a tree lacks it)."""
    if isinstance(first, dict) and isinstance(second, dict):
        out = []
        for key in sorted(set(first) | set(second)):
            out += config_differences(first.get(key), second.get(key),
                                      f"{prefix}.{key}" if prefix else key)
        return out
    return [] if first == second else [(prefix, first, second)]


def load_saved_config(path: Path) -> ExperimentConfig:
    """Re-validate a run's saved ``config.yaml``."""
    return config_from_tree(yaml.safe_load(Path(path).read_text()) or {}, str(path))


def config_from_tree(tree: dict[str, Any], path: str = "<config>") -> ExperimentConfig:
    """Re-validate a complete config tree (a run's saved config, an exported ``config.json``)
    without applying today's shipped defaults."""
    if not isinstance(tree, dict) or not isinstance(tree.get("model") or {}, dict):
        raise ConfigError(f"{path}: expected a mapping with a model section, found "
                          f"{type(tree).__name__}")
    tree = dict(tree)
    name = (tree.get("model") or {}).get("name")
    if not name:
        raise ConfigError(f"{path}: model.name missing")
    # Saved configs are complete: do not let today's shipped defaults change an old run.
    from msakit.models import get_model_class, list_models

    try:
        model_cls = get_model_class(name)
    except (KeyError, TypeError):
        raise ConfigError(f"{path}: model.name {name!r} is not a model of this msakit; "
                          f"expected one of {', '.join(sorted(list_models()))}") from None
    try:
        return ExperimentConfig(
            model=model_cls.config_class(**model_cls.config_class.upgrade_saved(
                tree.pop("model"))), **tree
        )
    except ValidationError as err:
        raise ConfigError(f"{path}: invalid saved config: {describe_errors(err)}") from err
    except ValueError as err:  # upgrade_saved: contradictory keys of an earlier msakit
        raise ConfigError(f"{path}: invalid saved config: model: {err}") from err
