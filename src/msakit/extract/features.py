"""One clip in, its features out: the per-clip work shared by ``extract`` and ``predict``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msakit.extract.audio import FRAME_RATE as AUDIO_FRAME_RATE
from msakit.extract.audio import AudioFeatureExtractor
from msakit.extract.config import ExtractorConfig
from msakit.extract.media import (
    AUDIO_SUFFIXES,
    SAMPLE_RATE,
    ExtractionError,
    decode_audio,
    probe,
)
from msakit.extract.text import ASR_NOTE, sidecar_transcript, transcribe
from msakit.extract.vision import FACE_PRESENT, VisionFeatureExtractor


@dataclass
class ClipFeatures:
    """Features of one clip at their true lengths (before alignment/normalisation).

    Attributes:
        audio: ``(L_a, D_a)`` float32 (10 ms frames, or one row at clip level).
        vision: ``(L_v, D_v)`` float32, one row per kept video frame.
        text: the transcript.
        text_source: ``label.csv``, ``txt``, ``asr`` or ``given``.
        info: numbers worth reporting (duration, frame counts and rates, face frames).
        warnings: things the user should know although the clip was kept.
    """

    audio: np.ndarray
    vision: np.ndarray
    text: str
    text_source: str
    info: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class ClipFeatureExtractor:
    """Holds the audio and vision extractors of one :class:`ExtractorConfig`.

    Build once per process (openSMILE and numba set-up are not free) and call :meth:`extract`.

    Args:
        config: the feature recipe.
        strict: refuse (raise) clips that would otherwise be kept with a warning: a file with no
            video track, a video where no face is found in any frame.
    """

    def __init__(self, config: ExtractorConfig, strict: bool = False):
        self.config = config
        self.strict = strict
        self.audio = AudioFeatureExtractor(config.audio)
        self.vision = VisionFeatureExtractor(config.vision)

    @property
    def feature_names(self) -> dict[str, list[str]]:
        return {"audio": self.audio.feature_names, "vision": self.vision.feature_names}

    def extract(self, path: str | Path, text: str | None = None, text_source: str = "given",
                where: str | None = None, require_text: bool = True) -> ClipFeatures:
        """Features of the clip at ``path``.

        Args:
            text: its transcript; ``None`` looks for ``<clip>.txt``, then runs ASR when the
                config enables it.
            where: the clip's name in messages (default: the path).
            require_text: refuse a clip without a transcript (``False``: its text is empty,
                for models that do not read text).

        Raises:
            ExtractionError: the message names the clip and says what is wrong.
        """
        path = Path(path)
        where = where or str(path)
        warnings: list[str] = []
        if (text is None or not text.strip()) and not self.config.text.asr \
                and sidecar_transcript(path) is None and require_text:
            raise ExtractionError(
                f"{where}: no transcript: none given (label.csv's text column, or predict's "
                f"--text), no {path.stem}.txt beside the clip, and speech recognition is off "
                "(enable it with --asr or text.asr=true; English only, often wrong)", "text"
            )
        info = probe(path)
        samples = decode_audio(path)
        seconds = samples.size / SAMPLE_RATE
        if info.duration and seconds < 0.8 * info.duration - 0.5:
            raise ExtractionError(
                f"{where}: the audio track ends after {seconds:.2f} s although the file "
                f"announces {info.duration:.2f} s: the file is truncated", "audio"
            )
        audio = self.audio.extract(samples, where)
        if text is None or not text.strip():
            text = sidecar_transcript(path)
            text_source = "txt"
        if text is None and not self.config.text.asr:  # allowed: require_text=False
            text, text_source = "", "none"
        elif text is None:
            text = transcribe(samples, where)
            text_source = "asr"
            warnings.append(ASR_NOTE)

        if info.has_video:
            result = self.vision.extract(path, where)
            vision, face_frames, vision_fps = result.features, result.face_frames, result.fps
            if face_frames == 0:
                message = f"no face found in any of the {len(vision)} video frames"
                if self.strict:
                    raise ExtractionError(f"{where}: {message}", "vision")
                warnings.append(message + "; vision rows are zeros with face_present=0")
            elif face_frames < len(vision):
                missing = len(vision) - face_frames
                warnings.append(f"no face in {missing} of {len(vision)} video frames "
                                "(marked face_present=0)")
        else:
            if self.strict:
                raise ExtractionError(f"{where}: the file has no video track", "vision")
            kind = "an audio-only file" if path.suffix.lower() in AUDIO_SUFFIXES else "no video"
            warnings.append(f"{kind}: vision is one zero row with face_present=0")
            vision, face_frames, vision_fps = self.vision.empty(), 0, 0.0

        return ClipFeatures(
            audio=audio, vision=vision, text=text.strip(), text_source=text_source,
            info={
                "duration_s": round(seconds, 3),
                "audio_frames": int(audio.shape[0]),
                "audio_fps": AUDIO_FRAME_RATE if self.config.audio.level == "frames" else 0.0,
                "vision_frames": int(vision.shape[0]) if info.has_video else 0,
                "vision_fps": round(vision_fps, 3),
                "face_frames": int(face_frames),
            },
            warnings=warnings,
        )


def resample_to_bins(features: np.ndarray, length: int) -> np.ndarray:
    """Average ``(T, D)`` frames into ``length`` equal time bins (repeat frames when ``T <
    length``), giving ``(length, D)``. The face flag becomes the share of frames with a face."""
    t = features.shape[0]
    edges = np.linspace(0, t, length + 1)
    out = np.empty((length, features.shape[1]), dtype=np.float32)
    for i in range(length):
        start = int(np.floor(edges[i]))
        stop = max(int(np.ceil(edges[i + 1])), start + 1)
        out[i] = features[start:min(stop, t)].mean(0) if start < t else features[-1]
    return out


def finalize_clip(audio: np.ndarray, vision: np.ndarray, config: ExtractorConfig,
                  normalization: dict | None) -> tuple[np.ndarray, np.ndarray]:
    """Apply the recorded normalisation, then the alignment, to one clip's features.

    Args:
        normalization: ``{"audio_mean", "audio_std", "vision_mean", "vision_std"}`` lists, as
            recorded in ``extractor["normalization"]`` (``None``: leave values as they are).

    Frames without a face stay all-zero (``face_present = 0``); the flag is never rescaled.
    """
    audio = audio.astype(np.float32)
    vision = vision.astype(np.float32)
    if normalization is not None:
        audio = (audio - np.asarray(normalization["audio_mean"], np.float32)) / np.asarray(
            normalization["audio_std"], np.float32)
        face = vision[:, FACE_PRESENT] > 0
        scaled = (vision - np.asarray(normalization["vision_mean"], np.float32)) / np.asarray(
            normalization["vision_std"], np.float32)
        scaled[:, FACE_PRESENT] = vision[:, FACE_PRESENT]
        scaled[~face] = 0.0
        vision = scaled
    if config.alignment == "fixed":
        audio = resample_to_bins(audio, config.aligned_length)
        vision = resample_to_bins(vision, config.aligned_length)
    return audio.astype(np.float32), vision.astype(np.float32)


def normalization_statistics(audio: list[np.ndarray], vision: list[np.ndarray]) -> dict:
    """Per-feature mean/std over all frames of the given clips (vision: face frames only).

    The face flag column gets mean 0 / std 1 (it is left as is). Stds below 1e-6 become 1.
    """
    def stats(frames: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        if frames.shape[0] == 0:
            return np.zeros(dim), np.ones(dim)
        mean = frames.astype(np.float64).mean(0)
        std = frames.astype(np.float64).std(0)
        return mean, np.where(std < 1e-6, 1.0, std)

    audio_frames = np.concatenate(audio)
    vision_frames = np.concatenate(vision)
    vision_frames = vision_frames[vision_frames[:, FACE_PRESENT] > 0]
    audio_mean, audio_std = stats(audio_frames, audio[0].shape[1])
    vision_mean, vision_std = stats(vision_frames, vision[0].shape[1])
    vision_mean[FACE_PRESENT], vision_std[FACE_PRESENT] = 0.0, 1.0
    return {
        "audio_mean": audio_mean.tolist(), "audio_std": audio_std.tolist(),
        "vision_mean": vision_mean.tolist(), "vision_std": vision_std.tolist(),
    }
