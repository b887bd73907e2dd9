"""Typed configuration of ``msakit extract``: which features are computed and how.

Everything that changes the *values* of the features lives in :class:`ExtractorConfig`; it is
recorded inside every pickle ``msakit extract`` writes and, through the trained run's
``data.json``, tells ``msakit predict`` how to compute the same features for new clips.
Run-time choices that do not change the features (worker count, cache folder, strictness) are
arguments of :func:`msakit.extract.pipeline.extract_folder` instead.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, model_validator

from msakit.config import DEFAULT_LANGUAGE_MODEL, ConfigError, StrictModel

#: Version of the feature layout; bump when a change makes old features incomparable.
FEATURE_LAYOUT_VERSION = 1
#: The value of ``extractor["tool"]`` in pickles written by msakit.
TOOL_NAME = "msakit.extract"


class AudioConfig(StrictModel):
    """Acoustic features, computed at 100 frames per second (10 ms hop) from 16 kHz mono."""

    extractors: list[Literal["opensmile", "librosa"]] = Field(
        default_factory=lambda: ["opensmile", "librosa"],
        min_length=1,
        description="Feature sets concatenated per frame: 'opensmile' (eGeMAPSv02 low-level "
        "descriptors, 25 per frame) and/or 'librosa' (MFCC, pyin pitch and voicing, RMS).",
    )
    level: Literal["frames", "clip"] = Field(
        "frames", description="'frames': one row per 10 ms; 'clip': one row per clip "
        "(openSMILE functionals, 88 for eGeMAPSv02, and mean/std of the librosa frames)."
    )
    n_mfcc: int = Field(13, ge=1, le=40, description="MFCC coefficients (librosa)")
    pitch: bool = Field(True, description="pyin F0 in semitones re 27.5 Hz, voiced flag and "
                        "voicing probability (librosa)")
    pitch_fmin: float = Field(65.0, gt=0)
    pitch_fmax: float = Field(500.0, gt=0)
    rms: bool = Field(True, description="log RMS energy (librosa)")

    @model_validator(mode="after")
    def _check(self) -> AudioConfig:
        if self.pitch_fmax <= self.pitch_fmin:
            raise ValueError("audio.pitch_fmax must exceed audio.pitch_fmin")
        if len(set(self.extractors)) != len(self.extractors):
            raise ValueError(f"audio.extractors lists a set twice: {self.extractors}")
        return self


class VisionConfig(StrictModel):
    """Facial-expression features from MediaPipe FaceMesh landmarks, one row per video frame."""

    fps: float | None = Field(
        None, gt=0, description="Keep at most this many frames per second (None: every frame)"
    )
    refine_landmarks: bool = Field(True, description="FaceMesh's refined eye/lip landmarks")
    min_detection_confidence: float = Field(0.5, ge=0.0, le=1.0)
    min_tracking_confidence: float = Field(0.5, ge=0.0, le=1.0)
    landmarks: bool = Field(
        False, description="Append the 468 landmarks (x, y, z), centred on the nose tip and "
        "scaled by the inter-ocular distance (+1404 features per frame)"
    )


class TextConfig(StrictModel):
    """Where transcripts come from and how the pickle's ``text_bert`` field is tokenised."""

    asr: bool = Field(
        False, description="Transcribe clips that have no transcript with pocketsphinx "
        "(English only; its word error rate is high, so it is off by default)"
    )
    language_model: str = Field(
        DEFAULT_LANGUAGE_MODEL, description="Tokenizer for the MMSA 'text_bert' field "
        "(msakit models re-tokenise raw_text for their own language model)"
    )
    max_tokens: int = Field(50, ge=4, description="Length of the 'text_bert' field")


class ExtractorConfig(StrictModel):
    """The full feature-extraction recipe (recorded in the output pickle)."""

    layout_version: int = FEATURE_LAYOUT_VERSION
    audio: AudioConfig = AudioConfig()
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    alignment: Literal["unaligned", "fixed"] = Field(
        "unaligned", description="'unaligned': each modality at its own frame rate and true "
        "length; 'fixed': audio and vision both averaged into `aligned_length` equal time bins "
        "(time-aligned with each other, not word-aligned)"
    )
    aligned_length: int = Field(50, ge=1)
    normalize: bool = Field(
        True, description="Standardise each feature with the mean/std of the train split "
        "(recorded in the pickle so prediction applies the same statistics)"
    )

    @model_validator(mode="after")
    def _check_version(self) -> ExtractorConfig:
        if self.layout_version != FEATURE_LAYOUT_VERSION:
            raise ValueError(
                f"layout_version {self.layout_version} is not the one this msakit computes "
                f"({FEATURE_LAYOUT_VERSION}); re-extract with this version"
            )
        return self


def build_extractor_config(
    base: dict | None = None, overrides: list[str] | None = None
) -> ExtractorConfig:
    """An :class:`ExtractorConfig` from a YAML-like tree and ``key=value`` overrides.

    Overrides use the same syntax as training's ``--set`` but without a section prefix for the
    top level, e.g. ``audio.extractors=[opensmile]``, ``vision.fps=15``, ``alignment=fixed``.
    """
    import yaml

    from msakit.config import deep_update

    tree = dict(base or {})
    for text in overrides or []:
        if "=" not in text:
            raise ConfigError(f"extractor option {text!r}: expected key=value, e.g. vision.fps=15")
        key, raw = text.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"extractor option {text!r}: empty key")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise ConfigError(
                f"extractor option {text!r}: value is not valid YAML ({err})") from err
        nested = value
        for part in reversed(parts):
            nested = {part: nested}
        tree = deep_update(tree, nested)
    try:
        return ExtractorConfig(**tree)
    except ValidationError as err:
        raise ConfigError(f"invalid extractor config:\n{err}") from err
