"""Decoding clips with PyAV (FFmpeg): the audio track as 16 kHz mono, video frames as RGB."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
#: File suffixes that hold sound only: such clips have no video stream by design.
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".aac")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv", ".mpg", ".mpeg")
MEDIA_SUFFIXES = VIDEO_SUFFIXES + AUDIO_SUFFIXES


class ExtractionError(RuntimeError):
    """A clip could not be turned into features; the message names the clip and the reason.

    Attributes:
        stage: where it failed (``media``, ``audio``, ``vision``, ``text``, ``label``).
    """

    def __init__(self, message: str, stage: str = "media"):
        super().__init__(message)
        self.stage = stage


@dataclass
class MediaInfo:
    """What a media file holds.

    Attributes:
        duration: seconds (container duration, or the longest stream's).
        has_audio / has_video: whether the container has such a stream.
        video_fps: the video stream's average frame rate (0 when there is none).
    """

    duration: float
    has_audio: bool
    has_video: bool
    video_fps: float


def _open(path: Path):
    import av

    if not path.is_file():
        raise ExtractionError(f"{path}: no such file", "media")
    if path.stat().st_size == 0:
        raise ExtractionError(f"{path}: the file is empty (0 bytes)", "media")
    try:
        return av.open(str(path))
    except av.FFmpegError as err:
        raise ExtractionError(
            f"{path}: cannot open the media file ({err.strerror or err}); it is corrupt, "
            "truncated, or not audio/video", "media"
        ) from err


def probe(path: str | Path) -> MediaInfo:
    """Streams and duration of a media file, without decoding it."""
    path = Path(path)
    with _open(path) as container:
        audio = container.streams.audio
        video = container.streams.video
        fps = float(video[0].average_rate) if video and video[0].average_rate else 0.0
        duration = container.duration / 1_000_000 if container.duration else 0.0
        if not duration:
            for stream in (*audio, *video):
                if stream.duration and stream.time_base:
                    duration = max(duration, float(stream.duration * stream.time_base))
        return MediaInfo(duration=duration, has_audio=bool(audio), has_video=bool(video),
                         video_fps=fps)


def decode_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first audio stream, down-mixed to mono and resampled.

    Returns:
        ``(S,)`` float32 samples in [-1, 1] at ``sample_rate``.

    Raises:
        ExtractionError: no audio stream, undecodable data, or no samples at all.
    """
    import av

    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise ExtractionError(
                f"{path}: the file has no audio track (streams: "
                f"{[s.type for s in container.streams] or 'none'})", "audio"
            )
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as err:
            raise ExtractionError(
                f"{path}: the audio track cannot be decoded ({err.strerror or err}); the file "
                "is corrupt or truncated", "audio"
            ) from err
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if samples.size == 0:
        raise ExtractionError(f"{path}: the audio track holds no samples", "audio")
    return samples


@dataclass
class VideoFrame:
    """One decoded frame: ``image`` ``(H, W, 3)`` uint8 RGB at ``time`` seconds."""

    image: np.ndarray
    time: float


def iter_video_frames(path: str | Path, max_fps: float | None = None) -> Iterator[VideoFrame]:
    """Decode the first video stream frame by frame.

    Args:
        max_fps: keep at most this many frames per second (a frame is kept when at least
            ``1 / max_fps`` seconds passed since the last kept one); ``None`` keeps every frame.

    Raises:
        ExtractionError: no video stream or undecodable data.
    """
    import av

    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise ExtractionError(f"{path}: the file has no video track", "vision")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        min_gap = 1.0 / max_fps if max_fps else 0.0
        last_kept = -np.inf
        index = 0
        fps = float(stream.average_rate) if stream.average_rate else 30.0
        try:
            for frame in container.decode(stream):
                time = float(frame.time) if frame.time is not None else index / fps
                index += 1
                if time - last_kept + 1e-6 < min_gap:
                    continue
                last_kept = time
                yield VideoFrame(image=frame.to_ndarray(format="rgb24"), time=time)
        except av.FFmpegError as err:
            raise ExtractionError(
                f"{path}: the video track cannot be decoded ({err.strerror or err}); the file "
                "is corrupt or truncated", "vision"
            ) from err
