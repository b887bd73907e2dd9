"""Shared by the parity tests: the small random BERT their fixtures were generated with."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def small_bert(fixture, tmp_path_factory):
    """A folder holding a BERT of the module fixture's ``bert_config`` (``tiny_bert`` in the
    newer fixtures; its weights are then replaced by the fixture's, or are the generator's when
    it seeded them alike), so that msakit builds the model through its usual loader."""
    from transformers import BertConfig, BertModel

    config = fixture["bert_config"] if "bert_config" in fixture else fixture["tiny_bert"]
    folder = tmp_path_factory.mktemp("small_bert")
    BertModel(BertConfig(**config)).save_pretrained(folder)
    return str(folder)
