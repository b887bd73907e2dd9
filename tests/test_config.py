import pytest
import yaml

from msakit.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    build_config,
    load_saved_config,
    parse_override,
)


def test_parse_override_parses_yaml_values():
    assert parse_override("train.lr=1e-4") == (["train", "lr"], 1e-4)
    assert parse_override("data.modalities=[text]") == (["data", "modalities"], ["text"])
    assert parse_override("model.loss_weights.cmd=0.5") == (["model", "loss_weights", "cmd"], 0.5)


@pytest.mark.parametrize("bad", ["train.lr", "lr=1", "train.lr=[unclosed"])
def test_parse_override_rejects_malformed(bad):
    with pytest.raises(ConfigError):
        parse_override(bad)


def test_apply_overrides_merges_nested_keys():
    tree = {"model": {"loss_weights": {"task": 1.0, "cmd": 1.0}}}
    out = apply_overrides(tree, ["model.loss_weights.cmd=0.3"])
    assert out == {"model": {"loss_weights": {"task": 1.0, "cmd": 0.3}}}
    assert tree["model"]["loss_weights"]["cmd"] == 1.0  # input untouched


def test_shipped_defaults_are_applied_and_overridable():
    config = build_config("misa")
    assert config.model.loss_weights["diff"] == pytest.approx(0.3)
    assert config.train.lr == pytest.approx(1e-4)
    config = build_config("misa", ["train.lr=5e-5", "model.loss_weights.diff=0.1"])
    assert config.train.lr == pytest.approx(5e-5)
    assert config.model.loss_weights["diff"] == pytest.approx(0.1)


@pytest.mark.parametrize("override, fragment", [
    ("train.lr_typo=1", "lr_typo"),
    ("model.hidden_sizee=3", "hidden_sizee"),
    ("train.lr=-1", "lr"),
    ("data.format=hdf5", "format"),
    ("optim.lr=1", "optim"),
])
def test_unknown_or_invalid_keys_are_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_config("misa", [override])


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(ConfigError, match="unknown model 'no_such_model'; available: .*misa"):
        build_config("no_such_model")


def test_saved_config_round_trips(tmp_path):
    config = build_config("misa", ["train.epochs=3", "data.folds=5"])
    config.save(tmp_path / "config.yaml")
    loaded = load_saved_config(tmp_path / "config.yaml")
    assert isinstance(loaded, ExperimentConfig)
    assert loaded.to_dict() == config.to_dict()
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["name"] == "misa"


def test_shipped_model_yaml_holds_only_what_differs_from_the_class_defaults():
    """One source of truth: a model's config class holds its defaults (the official values);
    ``configs/<model>.yaml`` may only change one, never restate it."""
    from msakit.config import default_config_file
    from msakit.models import get_model_class, list_models

    checked = 0
    for name in list_models():
        defaults = get_model_class(name).config_class().model_dump()
        model_section = default_config_file(name).get("model") or {}
        restated = sorted(k for k, v in model_section.items() if defaults.get(k, object()) == v)
        assert not restated, f"configs/{name}.yaml restates the class defaults of {restated}"
        checked += 1
    assert checked >= 9
