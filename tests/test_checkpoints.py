"""Checkpoints leave frozen pretrained weights out and verify them by checksum on load."""

from __future__ import annotations

import pytest
import torch

from msakit.models import FeatureDims
from msakit.models.base import (
    BASE_CHECKSUM_SUFFIX,
    CHANGED_ROWS_SUFFIX,
    CHANGED_VALUES_SUFFIX,
    FROZEN_CHECKSUM_KEY,
)
from msakit.models.lf_dnn import LFDNN, LFDNNConfig
from msakit.models.misa import MISA, MISAConfig

DIMS = FeatureDims(audio=74, vision=47)


def _batch(seed: int = 0, size: int = 3, length: int = 7) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.ones(size, length, dtype=torch.long)
    mask[0, 4:] = 0
    lengths = mask.sum(1)
    return {
        "input_ids": torch.randint(1000, 2000, (size, length), generator=generator),
        "attention_mask": mask, "token_type_ids": torch.zeros(size, length, dtype=torch.long),
        "audio": torch.randn(size, length, 74, generator=generator) * mask[..., None],
        "vision": torch.randn(size, length, 47, generator=generator) * mask[..., None],
        "audio_lengths": lengths, "vision_lengths": lengths,
        "audio_mask": mask.bool(), "vision_mask": mask.bool(),
        "labels": torch.tensor([1.5, -2.0, 0.4]), "index": torch.arange(size),
    }


def _lf_dnn(seed: int, **fields) -> LFDNN:
    torch.manual_seed(seed)
    return LFDNN(LFDNNConfig(**fields), DIMS).eval()


def test_a_frozen_language_model_is_left_out_and_restored_exactly():
    model = _lf_dnn(0, freeze_language_model=True)
    state = model.checkpoint_state_dict()
    lm_keys = [k for k in model.state_dict() if k.startswith(model.language_model_prefixes())]
    assert lm_keys and not set(lm_keys) & set(state)
    assert state[FROZEN_CHECKSUM_KEY].shape == (2,)
    stored = sum(v.numel() for k, v in state.items() if k != FROZEN_CHECKSUM_KEY)
    assert stored < 0.1 * sum(v.numel() for v in model.state_dict().values())

    other = _lf_dnn(1, freeze_language_model=True)  # same pretrained LM, other head weights
    batch = _batch()
    with torch.no_grad():
        assert not torch.allclose(model(batch).prediction, other(batch).prediction)
        other.load_checkpoint_state_dict(state)
        assert torch.equal(model(batch).prediction, other(batch).prediction)


def test_a_fine_tuned_language_model_is_stored_as_its_changed_rows():
    model = _lf_dnn(0, freeze_language_model=False)
    prefix = model.language_model_prefixes()[0]
    embedding = f"{prefix}model.embeddings.word_embeddings.weight"
    dense = f"{prefix}model.encoder.layer.0.attention.self.query.weight"
    with torch.no_grad():  # as fine-tuning does: the rows of seen tokens, every dense row
        model.state_dict()[embedding][[5, 17]] += 0.5
        model.state_dict()[dense].add_(0.01)
    state = model.checkpoint_state_dict()
    assert FROZEN_CHECKSUM_KEY not in state
    assert embedding not in state and state[embedding + CHANGED_ROWS_SUFFIX].tolist() == [5, 17]
    assert state[embedding + CHANGED_VALUES_SUFFIX].shape == (2, 384)
    assert dense in state  # most rows changed: stored whole
    stored = sum(v.numel() for v in state.values())
    assert stored < 0.6 * sum(v.numel() for v in model.state_dict().values())

    other = _lf_dnn(1, freeze_language_model=False)
    other.load_checkpoint_state_dict(state)
    restored = other.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, restored[key]), key

    state[embedding + BASE_CHECKSUM_SUFFIX] = state[embedding + BASE_CHECKSUM_SUFFIX] + 1.0
    with pytest.raises(ValueError, match="other language-model weights"):
        _lf_dnn(2, freeze_language_model=False).load_checkpoint_state_dict(state)


def test_partly_frozen_lm_stores_only_the_trained_layers():
    torch.manual_seed(0)
    model = MISA(MISAConfig(freeze_lm_layers=4), DIMS)
    state = model.checkpoint_state_dict()
    assert FROZEN_CHECKSUM_KEY in state
    assert any(".layer.5." in k for k in state) and not any(".layer.0." in k for k in state)


def test_other_frozen_weights_or_a_missing_checksum_are_refused():
    model = _lf_dnn(0, freeze_language_model=True)
    state = model.checkpoint_state_dict()
    other = _lf_dnn(1, freeze_language_model=True)
    with torch.no_grad():
        next(p for n, p in other.named_parameters() if n.startswith(
            other.language_model_prefixes())).add_(0.01)
    with pytest.raises(ValueError, match="other frozen language-model weights"):
        other.load_checkpoint_state_dict(state)
    del state[FROZEN_CHECKSUM_KEY]
    with pytest.raises(ValueError, match=FROZEN_CHECKSUM_KEY):
        _lf_dnn(1, freeze_language_model=True).load_checkpoint_state_dict(state)


def test_a_full_state_dict_loads_when_its_frozen_part_is_the_same_lm():
    model = _lf_dnn(0, freeze_language_model=True)
    other = _lf_dnn(1, freeze_language_model=True)
    other.load_checkpoint_state_dict(model.state_dict())
    batch = _batch()
    with torch.no_grad():
        assert torch.equal(model(batch).prediction, other(batch).prediction)
    full = model.state_dict()
    full[next(iter(model.frozen_state_keys() & {n for n, _ in model.named_parameters()}))] += 1
    with pytest.raises(ValueError, match="other frozen language-model weights"):
        _lf_dnn(1, freeze_language_model=True).load_checkpoint_state_dict(full)


def test_wrong_weight_names_are_named():
    model = _lf_dnn(0, freeze_language_model=True)
    state = model.checkpoint_state_dict()
    state["head.not_a_weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 unexpected keys \['head.not_a_weight'\]"):
        _lf_dnn(1, freeze_language_model=True).load_checkpoint_state_dict(state)


def test_the_remembered_checksum_follows_in_place_changes_of_the_frozen_weights():
    model = _lf_dnn(0, freeze_language_model=True)
    first = model.frozen_checksum()
    assert torch.equal(model.frozen_checksum(), first)  # remembered, same value
    weight = next(p for n, p in model.named_parameters()
                  if n.startswith(model.language_model_prefixes()))
    with torch.no_grad():
        weight.add_(0.5)
    changed = model.frozen_checksum()
    assert not torch.equal(changed, first)
    model._frozen_checksum_memo = None  # what a computation from scratch gives
    assert torch.equal(model.frozen_checksum(), changed)
    model.load_state_dict(_lf_dnn(0, freeze_language_model=True).state_dict())
    assert torch.equal(model.frozen_checksum(), first)


def test_each_model_gets_its_own_copy_of_the_pretrained_language_model():
    a, b = _lf_dnn(0, freeze_language_model=True), _lf_dnn(0, freeze_language_model=True)
    pa = dict(a.named_parameters())
    pb = dict(b.named_parameters())
    name = next(n for n in pa if n.startswith(a.language_model_prefixes()))
    assert pa[name].data_ptr() != pb[name].data_ptr() and torch.equal(pa[name], pb[name])
    with torch.no_grad():
        pa[name].add_(1.0)
    assert not torch.equal(pa[name], pb[name])
