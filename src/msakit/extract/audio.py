"""Acoustic features: openSMILE eGeMAPSv02 and librosa (MFCC, pyin pitch, RMS).

Both run on 16 kHz mono samples with a 10 ms hop, so their frames line up (openSMILE's
eGeMAPS low-level descriptors use a 10 ms step; librosa is given ``hop_length=160``). Frame
``t`` covers about ``[t * 10 ms, t * 10 ms + 25 ms)``; the two sets differ by at most a couple of
frames at the clip's end, where the longer one is cut.
"""

from __future__ import annotations

import numpy as np

from msakit.extract.config import AudioConfig
from msakit.extract.media import SAMPLE_RATE, ExtractionError

HOP_SECONDS = 0.01
FRAME_RATE = 1.0 / HOP_SECONDS
_HOP = int(SAMPLE_RATE * HOP_SECONDS)  # 160 samples
_WINDOW = int(SAMPLE_RATE * 0.025)  # 400 samples, 25 ms
_PYIN_FRAME = 1024  # 64 ms: pyin needs at least two periods of pitch_fmin
#: Shortest clip we extract from: openSMILE's eGeMAPS LLDs need a 60 ms window.
MIN_SECONDS = 0.1


class AudioFeatureExtractor:
    """Computes the configured acoustic features of one clip.

    Construct once per process (openSMILE builds its pipeline here) and call
    :meth:`extract` per clip.
    """

    def __init__(self, config: AudioConfig):
        self.config = config
        self._smile_frames = None
        self._smile_clip = None
        if "opensmile" in config.extractors:
            import opensmile

            if config.level == "frames":
                self._smile_frames = opensmile.Smile(
                    feature_set=opensmile.FeatureSet.eGeMAPSv02,
                    feature_level=opensmile.FeatureLevel.LowLevelDescriptors,
                )
            else:
                self._smile_clip = opensmile.Smile(
                    feature_set=opensmile.FeatureSet.eGeMAPSv02,
                    feature_level=opensmile.FeatureLevel.Functionals,
                )
        self.feature_names = self._names()

    # -- names ------------------------------------------------------------------------------
    def _librosa_frame_names(self) -> list[str]:
        c = self.config
        names = [f"mfcc{i}" for i in range(c.n_mfcc)]
        if c.pitch:
            names += ["f0_semitone", "voiced", "voiced_probability"]
        if c.rms:
            names += ["log_rms"]
        return names

    def _names(self) -> list[str]:
        names: list[str] = []
        for name in self.config.extractors:
            if name == "opensmile":
                smile = self._smile_frames or self._smile_clip
                names += [f"opensmile.{n}" for n in smile.feature_names]
            else:
                frame_names = self._librosa_frame_names()
                if self.config.level == "frames":
                    names += [f"librosa.{n}" for n in frame_names]
                else:
                    names += [f"librosa.{n}.{stat}" for stat in ("mean", "std")
                              for n in frame_names]
        return names

    @property
    def dim(self) -> int:
        return len(self.feature_names)

    # -- features ---------------------------------------------------------------------------
    def extract(self, samples: np.ndarray, where: str = "<clip>") -> np.ndarray:
        """Features of one clip.

        Args:
            samples: ``(S,)`` float32 mono samples at 16 kHz.
            where: the clip's name for error messages.

        Returns:
            ``(T, D)`` float32: ``T`` 10 ms frames (level ``frames``) or ``T = 1`` (``clip``).
        """
        if samples.ndim != 1:
            raise ExtractionError(f"{where}: expected mono samples (S,), got {samples.shape}",
                                  "audio")
        if samples.size < MIN_SECONDS * SAMPLE_RATE:
            raise ExtractionError(
                f"{where}: the audio lasts {samples.size / SAMPLE_RATE:.3f} s; at least "
                f"{MIN_SECONDS} s is needed", "audio"
            )
        if not np.isfinite(samples).all():
            raise ExtractionError(f"{where}: the decoded audio has NaN/inf samples", "audio")
        blocks = []
        for name in self.config.extractors:
            if name == "opensmile":
                blocks.append(self._opensmile(samples))
            else:
                frames = self._librosa_frames(samples)
                if self.config.level == "clip":
                    frames = np.concatenate([frames.mean(0), frames.std(0)])[None]
                blocks.append(frames)
        length = min(b.shape[0] for b in blocks)
        out = np.concatenate([b[:length] for b in blocks], axis=1).astype(np.float32)
        if length == 0:
            raise ExtractionError(f"{where}: no audio frames could be computed", "audio")
        return out

    def _opensmile(self, samples: np.ndarray) -> np.ndarray:
        smile = self._smile_frames or self._smile_clip
        table = smile.process_signal(samples, SAMPLE_RATE)
        return table.to_numpy(dtype=np.float32)

    def _librosa_frames(self, samples: np.ndarray) -> np.ndarray:
        import librosa

        c = self.config
        columns = [
            librosa.feature.mfcc(y=samples, sr=SAMPLE_RATE, n_mfcc=c.n_mfcc, n_fft=_WINDOW,
                                 hop_length=_HOP, win_length=_WINDOW).T
        ]
        if c.pitch:
            f0, voiced, probability = librosa.pyin(
                samples, fmin=c.pitch_fmin, fmax=c.pitch_fmax, sr=SAMPLE_RATE,
                frame_length=_PYIN_FRAME, hop_length=_HOP,
            )
            # semitones re 27.5 Hz like eGeMAPS' F0; unvoiced frames are 0 (their flag says so)
            semitones = np.where(voiced, 12.0 * np.log2(np.nan_to_num(f0, nan=27.5) / 27.5), 0.0)
            columns.append(np.stack([semitones, voiced.astype(np.float32),
                                     np.nan_to_num(probability)], axis=1))
        if c.rms:
            rms = librosa.feature.rms(y=samples, frame_length=_WINDOW, hop_length=_HOP)[0]
            columns.append(np.log(rms + 1e-6)[:, None])
        length = min(col.shape[0] for col in columns)
        return np.concatenate([col[:length] for col in columns], axis=1).astype(np.float32)
