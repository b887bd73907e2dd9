"""Every registered model's eval prediction for a clip must not depend on the rest of its batch.

Real MOSI clips of unequal lengths, in two layouts: word-aligned (audio/vision expanded to the
sub-word tokens, the default for this file) and unaligned (text from the transcript, audio/vision
at one step per word, so each modality has its own length per clip, as in MMSA's unaligned files).
Each model is built at its shipped config; the prediction of each clip in the batch must equal its
prediction alone (the alone batch has no padding at all).
"""

from __future__ import annotations

import pytest
import torch

from msakit.config import build_config
from msakit.data import load_dataset, make_loader
from msakit.models import FeatureDims, create_model, list_models

DIMS = FeatureDims(audio=74, vision=47)  # COVAREP, Facet of the CMU-SDK word-aligned pickle
#: clips of the 229 with very different word counts (2 .. 30+ words)
ROWS = [0, 3, 7, 12, 40, 41, 100, 150]
ATOL = 1e-5


@pytest.fixture(scope="module")
def mosi_split(mosi_word_aligned):
    split = load_dataset(mosi_word_aligned).split("all")
    return split.subset(ROWS)


def _batches(split, word_aligned: bool) -> tuple[dict, list[dict]]:
    def loader(rows, size):
        return make_loader(split.subset(rows), "all-MiniLM-L6-v2", batch_size=size,
                           word_aligned=word_aligned)

    together = next(iter(loader(range(len(ROWS)), len(ROWS))))
    alone = [next(iter(loader([i], 1))) for i in range(len(ROWS))]
    return together, alone


@pytest.mark.parametrize("name", list_models())
def test_eval_prediction_does_not_depend_on_the_batch(name, mosi_split):
    torch.manual_seed(0)
    model = create_model(build_config(name).model, DIMS).eval()
    for word_aligned in (True, False):
        together, alone = _batches(mosi_split, word_aligned)
        lengths = together["audio_lengths"]
        assert lengths.min() < lengths.max(), "the batch must have unequal lengths"
        if not word_aligned:
            assert (together["attention_mask"].sum(1) != lengths).any()
        with torch.no_grad():
            batched = model(together).prediction
            single = torch.cat([model(batch).prediction for batch in alone])
        difference = (batched - single).abs().max().item()
        layout = "word-aligned" if word_aligned else "unaligned"
        assert difference <= ATOL, (
            f"{name} ({layout}): a clip's prediction changes with its batch by up to "
            f"{difference:.2e}"
        )
