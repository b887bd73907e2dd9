"""TETFN's own rules (MMSA parity is in tests/parity/test_tetfn_parity.py): how its reading of
padded sequences is configured, and the real-steps reading's independence of the batch."""

from __future__ import annotations

import pytest
import torch

from msakit.config import build_config
from msakit.data import load_dataset, make_loader
from msakit.errors import ConfigError
from msakit.models import FeatureDims, create_model

REAL_STEPS = [f"model.{m}_attended_steps=null" for m in ("text", "audio", "vision")]


def test_attended_steps_are_all_set_or_all_null():
    with pytest.raises(ConfigError, match="must all be set"):
        build_config("tetfn", ["model.audio_attended_steps=null"])
    assert build_config("tetfn", REAL_STEPS).model.reads_padding is False
    assert build_config("tetfn").model.reads_padding is True


def test_text_context_needs_the_real_steps_reading():
    with pytest.raises(ConfigError, match="text_context=both:1 needs the real-steps reading"):
        build_config("tetfn", ["model.text_context=both:1"])
    build_config("tetfn", ["model.text_context=both:1", *REAL_STEPS])


def test_real_steps_reading_does_not_depend_on_the_batch(mosi_word_aligned):
    """Unaligned clips of unequal lengths, conv kernels 3 and 2 (windows that reach past a
    clip's end): each clip's eval prediction in a padded batch equals its prediction alone."""
    split = load_dataset(mosi_word_aligned).split("all").subset([0, 3, 7, 40])

    def loader(rows, size):
        return make_loader(split.subset(rows), "all-MiniLM-L6-v2", batch_size=size,
                           word_aligned=False)

    torch.manual_seed(0)
    config = build_config("tetfn", [*REAL_STEPS, "model.conv_kernel_text=3",
                                    "model.conv_kernel_audio=2"])
    model = create_model(config.model, FeatureDims(audio=74, vision=47)).eval()
    together = next(iter(loader(range(4), 4)))
    assert together["audio_lengths"].min() < together["audio_lengths"].max()
    with torch.no_grad():
        batched = model(together).prediction
        alone = torch.cat([model(next(iter(loader([i], 1)))).prediction for i in range(4)])
    assert (batched - alone).abs().max() <= 1e-5 * max(1.0, float(alone.abs().max()))
