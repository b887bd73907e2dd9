"""Transcripts: from ``label.csv``, a ``.txt`` beside the clip, or (optionally) pocketsphinx ASR.

pocketsphinx ships a small English model and runs offline, but its word error rate on
conversational speech is high (on MOSI clip 03bSnISJMiM_1, "anyhow it was really good" comes out
as "anyhow or her you can read the good news"), so it is off by default and every transcript it
produces is reported as machine-made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from msakit.extract.media import SAMPLE_RATE, ExtractionError

ASR_NOTE = "transcript by pocketsphinx ASR (English; often wrong)"


def sidecar_transcript(media_path: Path) -> str | None:
    """The text of ``<clip>.txt`` beside the media file, or ``None`` when there is none."""
    path = media_path.with_suffix(".txt")
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8", errors="replace").strip() or None


def transcribe(samples: np.ndarray, where: str = "<clip>") -> str:
    """English transcript of ``(S,)`` float32 16 kHz mono samples with pocketsphinx.

    Raises:
        ExtractionError: pocketsphinx is not installed or recognised nothing.
    """
    try:
        from pocketsphinx import Decoder
    except ImportError as err:
        raise ExtractionError(
            f"{where}: speech recognition needs pocketsphinx (pip install pocketsphinx)", "text"
        ) from err
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hypothesis = decoder.hyp()
    text = hypothesis.hypstr.strip() if hypothesis is not None else ""
    if not text:
        raise ExtractionError(f"{where}: speech recognition found no words", "text")
    return text
