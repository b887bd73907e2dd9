"""The frozen language model's on-disk cache (:mod:`msakit.lm_cache`), on the real MOSI clips."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from msakit.config import build_config
from msakit.data import DataError, load_dataset, make_loader
from msakit.lm import load_tokenizer
from msakit.lm_cache import LanguageModelCache, SplitTextStates, frozen_text_encoder
from msakit.models import FeatureDims, create_model
from msakit.training.trainer import Trainer, evaluate_model

FROZEN_LM_MODELS = ["misa", "lf_dnn", "self_mm", "mmiln", "mult", "dmd", "sagenet", "almt"]


@pytest.fixture(scope="module")
def mosi(mosi_word_aligned):
    return load_dataset(mosi_word_aligned)


@pytest.fixture(scope="module")
def clips(mosi):
    """24 real clips (a fresh Split: nothing memoised from other tests)."""
    return mosi.split("all").subset(list(range(0, 229, 9))[:24])


def _model(name: str, mosi, cache_dir, *overrides: str):
    config = build_config(name, ["model.freeze_language_model=true",
                                 f"train.lm_cache_dir={cache_dir}", *overrides])
    torch.manual_seed(0)
    dims = FeatureDims(mosi.feature_dims["audio"], mosi.feature_dims["vision"])
    return config, create_model(config.model, dims)


def _loader(split, mosi, config, text_states=None, batch_size=8, shuffle=False, seed=0):
    return make_loader(split, load_tokenizer(config.model.language_model), batch_size=batch_size,
                       shuffle=shuffle, seed=seed, max_text_tokens=config.data.max_text_tokens,
                       word_aligned=mosi.word_aligned, text_states=text_states)


@pytest.mark.parametrize("name", FROZEN_LM_MODELS)
def test_cached_states_give_the_same_predictions_and_skip_the_lm(name, mosi, clips, tmp_path):
    config, model = _model(name, mosi, tmp_path)
    text_states = SplitTextStates.for_model(model, config, mosi.word_aligned)
    assert text_states is not None, f"{name} with a frozen LM should use the cache"
    states = text_states(clips)
    uncached = evaluate_model(model, _loader(clips, mosi, config), "mosi")

    def no_lm(*args, **kwargs):
        raise AssertionError("the language model ran although cached states were given")

    encoder = frozen_text_encoder(model)
    encoder.model.forward = no_lm
    cached = evaluate_model(model, _loader(clips, mosi, config, states), "mosi")
    np.testing.assert_allclose(cached.predictions, uncached.predictions, rtol=0, atol=1e-6)
    for term, value in uncached.losses.items():
        assert cached.losses[term] == pytest.approx(value, rel=1e-5, abs=1e-6), term


@pytest.mark.slow
def test_training_with_the_cache_matches_training_without(mosi, clips, tmp_path):
    """Same seed, same batches: the loss of every epoch and the final predictions agree."""
    results = {}
    for mode in ("off", "auto"):
        config, model = _model("sagenet", mosi, tmp_path / "cache", "train.epochs=2",
                               f"train.lm_cache={mode}", "train.device=cpu", "train.patience=5")
        text_states = SplitTextStates.for_model(model, config, mosi.word_aligned)
        assert (text_states is None) == (mode == "off")
        states = text_states(clips) if text_states else None
        run_dir = tmp_path / mode
        run_dir.mkdir()
        trainer = Trainer(config, run_dir, "mosi", progress=False)
        # fit() runs within this iteration, so the lambda sees this iteration's values
        trainer.fit(model, lambda epoch: _loader(
                        clips, mosi, config, states, shuffle=True, seed=epoch),  # noqa: B023
                    _loader(clips, mosi, config, states),
                    torch.as_tensor(clips.labels, dtype=torch.float32))
        evaluation = evaluate_model(model, _loader(clips, mosi, config, states), "mosi")
        results[mode] = ((run_dir / "epochs.csv").read_text(), evaluation.predictions)
    epochs = {mode: np.genfromtxt(text.splitlines(), delimiter=",", names=True)
              for mode, (text, _) in results.items()}
    for column in ("train_total", "valid_task"):
        np.testing.assert_allclose(epochs["auto"][column], epochs["off"][column], atol=1e-6)
    np.testing.assert_allclose(results["auto"][1], results["off"][1], atol=1e-6)


def test_second_run_reads_the_cache_from_disk(mosi, clips, tmp_path):
    config, model = _model("sagenet", mosi, tmp_path)
    first = SplitTextStates.for_model(model, config, mosi.word_aligned)
    states = first(clips)
    assert (first.statistics.hits, first.statistics.computed) == (0, len(clips))
    assert len(list(first.cache.directory.glob("shard-*.safetensors"))) == 1
    assert not list(first.cache.directory.glob(".*tmp"))

    # a later run: a new model (same pretrained weights) and a fresh Split of the same clips
    config, model = _model("mult", mosi, tmp_path)
    fresh = mosi.split("all").subset(list(range(0, 229, 9))[:24])
    second = SplitTextStates.for_model(model, config, mosi.word_aligned)
    frozen_text_encoder(model).model.forward = None  # computing anything would fail
    again = second(fresh)
    assert second.cache.directory == first.cache.directory
    assert (second.statistics.hits, second.statistics.computed) == (len(clips), 0)
    assert torch.equal(again.hidden, states.hidden)


def test_changed_text_budget_or_weights_are_recomputed(mosi, clips, tmp_path):
    config, model = _model("sagenet", mosi, tmp_path)
    encoder = frozen_text_encoder(model)
    tokenizer = load_tokenizer(config.model.language_model)
    tokens = [(np.asarray(t["input_ids"]), np.asarray(t["token_type_ids"]))
              for t in (tokenizer(text, truncation=True, max_length=16, return_tensors="np")
                        for text in clips.texts)]
    tokens = [(ids[0], types[0]) for ids, types in tokens]
    cache = LanguageModelCache(encoder, tokenizer, 16, root=tmp_path)
    original, statistics = cache.states(tokens)
    assert statistics.computed == len(tokens)

    # one transcript changed: only that clip is computed
    edited = list(tokens)
    ids = edited[3][0].copy()
    ids[1] = tokenizer.convert_tokens_to_ids("terrible")
    edited[3] = (ids, edited[3][1])
    states, statistics = LanguageModelCache(encoder, tokenizer, 16, root=tmp_path).states(edited)
    assert (statistics.hits, statistics.computed) == (len(tokens) - 1, 1)
    assert not torch.allclose(states[3], original[3])
    assert torch.equal(states[4], original[4])

    # another token budget: another store
    other_budget = LanguageModelCache(encoder, tokenizer, 20, root=tmp_path)
    assert other_budget.directory != cache.directory
    assert other_budget.states(tokens)[1].computed == len(tokens)

    # other LM weights: another store, and different states
    changed = copy.deepcopy(encoder)
    with torch.no_grad():
        changed.model.embeddings.word_embeddings.weight.mul_(1.01)
    other_weights = LanguageModelCache(changed, tokenizer, 16, root=tmp_path)
    assert other_weights.directory != cache.directory
    states, statistics = other_weights.states(tokens)
    assert statistics.computed == len(tokens)
    assert not torch.allclose(states, original)


@pytest.mark.parametrize("name, overrides", [
    ("lrcmt", []),                                  # LoRA adapters train inside the LM
    ("lrcmt", ["model.lm_mode=full_finetune"]),
    ("sagenet", ["model.freeze_language_model=false"]),
    ("sagenet", ["train.lm_cache=off"]),
])
def test_never_used_when_the_lm_trains_or_when_off(name, overrides, mosi, tmp_path):
    config = build_config(name, [f"train.lm_cache_dir={tmp_path}", *overrides])
    model = create_model(config.model, FeatureDims(mosi.feature_dims["audio"],
                                                   mosi.feature_dims["vision"]))
    assert SplitTextStates.for_model(model, config, mosi.word_aligned) is None
    assert not list(tmp_path.iterdir())


def test_a_training_lm_refuses_cached_states(mosi, tmp_path):
    config = build_config("sagenet", [f"train.lm_cache_dir={tmp_path}"])
    model = create_model(config.model, FeatureDims(74, 47))
    encoder = frozen_text_encoder(model) or model.text_encoder
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(RuntimeError, match="trains"):
        encoder(ids, ids, hidden_states=torch.zeros(2, 5, encoder.hidden_size))


def test_frozen_lm_stays_in_eval_mode(mosi, tmp_path):
    _, model = _model("sagenet", mosi, tmp_path)
    model.train()
    encoder = frozen_text_encoder(model)
    assert encoder.training and not encoder.model.training
    assert not any(module.training for module in encoder.model.modules())


def test_tokens_that_differ_from_the_cached_ones_are_an_error(mosi, clips, tmp_path):
    config, model = _model("sagenet", mosi, tmp_path)
    states = SplitTextStates.for_model(model, config, mosi.word_aligned)(clips)
    wrong = type(states)(hidden=states.hidden, input_ids=states.input_ids.roll(1, dims=0))
    with pytest.raises(DataError, match="lm_cache=off"):
        next(iter(_loader(clips, mosi, config, wrong)))


def test_lm_cache_config_reads_yaml_off():
    assert build_config("sagenet", ["train.lm_cache=off"]).train.lm_cache == "off"
    assert build_config("sagenet").train.lm_cache == "auto"
