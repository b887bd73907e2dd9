"""TFR-Net's missing-step masking (``msakit.modules.missing``) and the options around it, on real
MOSI clips (parity with MMSA's code: ``tests/parity/test_tfr_net_parity.py``)."""

from __future__ import annotations

import pytest
import torch

from msakit.config import build_config
from msakit.data import load_dataset, make_loader
from msakit.errors import ConfigError
from msakit.models import FeatureDims, create_model
from msakit.modules.missing import clip_keys, clip_uniforms, draw_kept_steps, keep_text_ends

DIMS = FeatureDims(audio=74, vision=47)
SMALL = ["model.seq_lens=[20,20,20]", "model.num_temporal_head=5", "model.embed_dim=6",
         "model.num_heads=2", "model.nlevels=1", "model.fusion_gru_layers=1"]
ROWS = [0, 3, 7, 12, 40, 41]


@pytest.fixture(scope="module")
def batches(mosi_word_aligned):
    split = load_dataset(mosi_word_aligned).split("all").subset(ROWS)
    together = next(iter(make_loader(split, "all-MiniLM-L6-v2", batch_size=len(ROWS),
                                     word_aligned=False)))
    halves = [next(iter(make_loader(split.subset(rows), "all-MiniLM-L6-v2", batch_size=3,
                                    word_aligned=False))) for rows in ([0, 1, 2], [3, 4, 5])]
    return together, halves


def model_at(*overrides: str):
    torch.manual_seed(0)
    return create_model(build_config("tfr_net", [*SMALL, *overrides]).model, DIMS)


def test_clip_uniforms_are_a_fixed_function_of_clip_step_and_seed():
    keys = clip_keys([f"video_{i}" for i in range(200)], "cpu")
    u = clip_uniforms(keys, 50, seed=1111)
    assert u.shape == (200, 50) and u.dtype == torch.float64
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01  # 10,000 draws: sd of the mean ~0.003
    assert torch.equal(u[17:18], clip_uniforms(keys[17:18], 50, seed=1111))  # batch-free
    assert torch.equal(u[:, :20], clip_uniforms(keys, 20, seed=1111))  # step-wise
    assert not torch.equal(u, clip_uniforms(keys, 50, seed=1112))
    real = torch.ones(200, 50, dtype=torch.bool)
    dropped = 1 - draw_kept_steps(real, 0.2, u).double().mean()
    assert abs(float(dropped) - 0.2) < 0.02


def test_keep_text_ends_keeps_cls_and_the_last_real_token():
    kept = torch.zeros(3, 6, dtype=torch.bool)
    out = keep_text_ends(kept, torch.tensor([6, 3, 1]))
    assert out.tolist() == [[True, False, False, False, False, True],
                            [True, False, True, False, False, False],
                            [True, False, False, False, False, False]]


def test_per_clip_masks_do_not_depend_on_the_batch(batches):
    together, halves = batches
    model = model_at().eval()  # missing_splits=all: evaluation drops steps too (MMSA)
    with torch.no_grad():
        full = model(together).extras
        parts = [model(b).extras for b in halves]
    for m in ("text", "audio", "vision"):
        assert torch.equal(full[f"kept_{m}"], torch.cat([p[f"kept_{m}"] for p in parts]))
        real = torch.ones_like(full[f"kept_{m}"])
        assert float(full[f"kept_{m}"].sum()) < float(real.sum())  # some steps were dropped


def test_text_masks_keep_special_tokens_and_audio_masks_stay_inside_the_clip(batches):
    together, _ = batches
    model = model_at("model.missing_rate=[0.9,0.9,0.9]").eval()
    with torch.no_grad():
        kept = model(together).extras
    lengths = together["attention_mask"].sum(1).clamp(max=20)
    rows = torch.arange(len(lengths))
    assert kept["kept_text"][:, 0].all() and kept["kept_text"][rows, lengths - 1].all()
    audio_lengths = together["audio_lengths"].clamp(max=20)
    beyond = torch.arange(20)[None] >= audio_lengths[:, None]
    assert not kept["kept_audio"][beyond].any()


def test_missing_splits_train_evaluates_complete_inputs_and_per_batch_masks_change(batches):
    together, _ = batches
    model = model_at("model.missing_splits=train", "model.missing_masks=per_batch")
    model.eval()
    with torch.no_grad():
        kept = model(together).extras["kept_vision"]
    real = torch.arange(20)[None] < together["vision_lengths"].clamp(max=20)[:, None]
    assert torch.equal(kept.bool(), real)
    model.train()
    first, second = (model(together).extras["kept_vision"] for _ in range(2))
    assert not torch.equal(first, second)


def test_given_masks_are_used_and_reconstruction_trains_from_epoch_2(batches):
    together, _ = batches
    model = model_at().train()
    given = torch.zeros(len(ROWS), 20)
    given[:, :2] = 1  # keep the first two steps of each modality
    batch = {**together, **{f"{m}_missing_mask": given for m in ("text", "audio", "vision")}}
    model.on_epoch_start(1)
    output = model(batch)
    assert torch.equal(output.extras["kept_audio"][:, 2:], torch.zeros(len(ROWS), 18))
    assert not output.losses["reconstruction_audio"].requires_grad
    model.on_epoch_start(2)
    output = model(batch)
    assert output.losses["reconstruction_audio"].requires_grad
    assert float(output.losses["reconstruction_audio"].detach()) > 0


def test_temporal_heads_must_divide_every_sequence_length():
    with pytest.raises(ConfigError, match="num_temporal_head 25 must divide"):
        build_config("tfr_net", ["model.seq_lens=[39,400,55]"])
