"""Extraction time per second of media, per extractor, on the two real MOSI clips.

    python benchmarks/extraction_speed.py [--repeats 3] [--data ../shared/data/mosi/raw]

For each stage it prints the median over repeats of wall-clock seconds and CPU seconds (all
threads of this process) per second of media. Run it on an otherwise idle machine for wall
times that mean something; CPU seconds are less sensitive to other load. Everything runs in one
process (MediaPipe and openSMILE may use a few threads of their own).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("MSAKIT_SHARED_DATA", REPO.parent / "shared" / "data")) / \
    "mosi" / "raw"


def timed(function, repeats: int) -> tuple[float, float, object]:
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--asr", action="store_true", help="also time pocketsphinx")
    args = parser.parse_args()

    from msakit.extract.audio import AudioFeatureExtractor
    from msakit.extract.config import AudioConfig, ExtractorConfig, VisionConfig
    from msakit.extract.features import ClipFeatureExtractor
    from msakit.extract.media import SAMPLE_RATE, decode_audio
    from msakit.extract.vision import VisionFeatureExtractor

    wav, mp4 = args.data / "03bSnISJMiM_1.wav", args.data / "Oz06ZWiO20M_6.mp4"
    for path in (wav, mp4):
        if not path.is_file():
            raise SystemExit(f"{path}: not found (pass --data)")
    samples = {p.name: decode_audio(p) for p in (wav, mp4)}
    seconds = {name: s.size / SAMPLE_RATE for name, s in samples.items()}
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible, "
          f"median of {args.repeats} runs")
    print(f"# clips: {wav.name} ({seconds[wav.name]:.2f} s audio), {mp4.name} "
          f"({seconds[mp4.name]:.2f} s audio, 225 frames at 30 fps)")

    opensmile_only = AudioFeatureExtractor(AudioConfig(extractors=["opensmile"]))
    librosa_all = AudioFeatureExtractor(AudioConfig(extractors=["librosa"]))
    librosa_no_pitch = AudioFeatureExtractor(AudioConfig(extractors=["librosa"], pitch=False))
    for extractor in (opensmile_only, librosa_all):  # warm-up (numba compiles pyin once)
        extractor.extract(samples[wav.name])

    rows = []

    def audio_rows(label, function):
        total_wall = total_cpu = total_seconds = 0.0
        for name in samples:
            wall, cpu, _ = timed(lambda n=name: function(n), args.repeats)
            total_wall, total_cpu = total_wall + wall, total_cpu + cpu
            total_seconds += seconds[name]
        rows.append((label, total_wall / total_seconds, total_cpu / total_seconds))

    audio_rows("decode audio (PyAV, resample to 16 kHz mono)",
               lambda n: decode_audio(args.data / n))
    audio_rows("openSMILE eGeMAPSv02 LLD", lambda n: opensmile_only.extract(samples[n]))
    audio_rows("librosa MFCC + RMS", lambda n: librosa_no_pitch.extract(samples[n]))
    audio_rows("librosa MFCC + pyin pitch + RMS", lambda n: librosa_all.extract(samples[n]))

    video_seconds = 7.5
    for fps in (None, 10.0):
        vision = VisionFeatureExtractor(VisionConfig(fps=fps))
        vision.extract(mp4)  # warm-up: model load
        wall, cpu, result = timed(lambda v=vision: v.extract(mp4), args.repeats)
        label = "MediaPipe FaceMesh expression features, every frame (30 fps)" if fps is None \
            else f"MediaPipe FaceMesh expression features, {fps:g} fps"
        rows.append((label + f" [{result.face_frames}/{len(result.features)} faces]",
                     wall / video_seconds, cpu / video_seconds))

    if args.asr:
        from msakit.extract.text import transcribe

        audio_rows("pocketsphinx ASR", lambda n: transcribe(samples[n]))

    clip = ClipFeatureExtractor(ExtractorConfig())
    clip.extract(mp4, "warm up")
    wall, cpu, _ = timed(lambda: clip.extract(mp4, "timed"), args.repeats)
    rows.append(("whole clip, default config (mp4: all of the above but ASR)",
                 wall / seconds[mp4.name], cpu / seconds[mp4.name]))

    width = max(len(r[0]) for r in rows)
    print(f"{'stage':<{width}}  wall s / media s   CPU s / media s")
    for label, wall, cpu in rows:
        print(f"{label:<{width}}  {wall:>16.3f}   {cpu:>15.3f}")


if __name__ == "__main__":
    main()
