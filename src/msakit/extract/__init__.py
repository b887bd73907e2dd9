"""Offline feature extraction from raw clips (``msakit extract``) and its per-clip machinery.

Heavy libraries (openSMILE, librosa, PyAV, MediaPipe) are imported only when features are
computed, so importing this package is cheap.
"""

from msakit.extract.config import (
    TOOL_NAME,
    AudioConfig,
    ExtractorConfig,
    TextConfig,
    VisionConfig,
    build_extractor_config,
)
from msakit.extract.media import ExtractionError

__all__ = [
    "TOOL_NAME",
    "AudioConfig",
    "ExtractionError",
    "ExtractorConfig",
    "TextConfig",
    "VisionConfig",
    "build_extractor_config",
    "extract_folder",
]


def extract_folder(*args, **kwargs):
    """See :func:`msakit.extract.pipeline.extract_folder`."""
    from msakit.extract.pipeline import extract_folder as run

    return run(*args, **kwargs)
