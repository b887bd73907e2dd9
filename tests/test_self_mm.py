"""Self-MM: shapes, loss terms, ULGM driven through the hooks, checkpoints, real-data training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _real_training import train_one_fold

from msakit.config import build_config
from msakit.models import FeatureDims, create_model, list_models

DIMS = FeatureDims(audio=5, vision=7)


def make_batch(batch_size: int = 4, text_len: int = 6, audio_len: int = 9, vision_len: int = 8,
               index_offset: int = 0, seed: int = 0) -> dict:
    """A batch of the documented dict with random features and distinct lengths."""
    g = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(batch_size, text_len, dtype=torch.long)
    attention_mask[0, text_len - 2:] = 0
    audio_lengths = torch.randint(1, audio_len + 1, (batch_size,), generator=g)
    audio_lengths[0] = audio_len
    vision_lengths = torch.randint(1, vision_len + 1, (batch_size,), generator=g)
    vision_lengths[0] = vision_len
    return {
        "index": torch.arange(batch_size) + index_offset,
        "input_ids": torch.randint(1000, 5000, (batch_size, text_len), generator=g),
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros(batch_size, text_len, dtype=torch.long),
        "audio": torch.randn(batch_size, audio_len, DIMS.audio, generator=g),
        "audio_lengths": audio_lengths,
        "audio_mask": torch.arange(audio_len)[None] < audio_lengths[:, None],
        "vision": torch.randn(batch_size, vision_len, DIMS.vision, generator=g),
        "vision_lengths": vision_lengths,
        "vision_mask": torch.arange(vision_len)[None] < vision_lengths[:, None],
        "labels": torch.tensor([2.0, -1.0, 0.4, -2.6, 1.2, -0.2, 3.0, -3.0])[:batch_size],
        "ids": [f"v$_${i}" for i in range(batch_size)],
    }


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(build_config("self_mm").model, DIMS)


def test_registered_and_config_lists_every_loss_weight():
    assert "self_mm" in list_models()
    config = build_config("self_mm")
    assert config.model.loss_weights == {"task": 1.0, "task_t": 1.0, "task_a": 1.0, "task_v": 1.0}
    assert config.train.grad_accumulation == 4 and config.train.lm_lr == 5e-5


def test_needs_audio_and_vision():
    with pytest.raises(ValueError, match="audio and vision"):
        create_model(build_config("self_mm").model, FeatureDims(audio=0, vision=7))


def test_forward_shapes_and_terms(model):
    model.eval()
    batch = make_batch()
    with torch.no_grad():
        out = model(batch)
    assert out.prediction.shape == (4,)
    assert set(out.losses) == {"task", "task_t", "task_a", "task_v"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    sizes = {"m": 128, "t": 64, "a": 16, "v": 32}
    for key, size in sizes.items():
        assert out.extras[f"feature_{key}"].shape == (4, size)
    for key in "tav":
        assert out.extras[f"pred_{key}"].shape == (4,)
    # fusion loss is plain L1 on the human label
    assert float(out.losses["task"]) == pytest.approx(
        float((out.prediction - batch["labels"]).abs().mean()), rel=1e-5)
    # no labels -> no losses
    batch.pop("labels")
    assert model(batch).losses == {}


def test_lstm_respects_true_lengths(model):
    model.eval()
    batch = make_batch()
    changed = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    for key in ("audio", "vision"):
        mask = changed[f"{key}_mask"]
        changed[key][~mask] = 99.0  # garbage in the padding
    with torch.no_grad():
        assert torch.allclose(model(batch).prediction, model(changed).prediction, atol=1e-5)


def test_ulgm_through_the_hooks(model):
    torch.manual_seed(0)
    model.train()
    train_labels = torch.tensor([2.0, -1.0, 0.4, -2.6, 1.2, -0.2, 3.0, -3.0])
    model.on_fit_start(train_labels)
    batches = [make_batch(index_offset=0, seed=1), make_batch(index_offset=4, seed=2)]
    batches[1]["labels"] = train_labels[4:]
    for epoch in (1, 2, 3):
        model.on_epoch_start(epoch)
        for batch in batches:
            out = model(batch)
            if epoch == 1:  # generated labels = human labels -> unimodal weights are 0
                assert all(float(out.losses[f"task_{k}"]) == 0.0 for k in "tav")
            model.on_train_batch_end(batch, out, epoch)
        model.on_epoch_end(epoch)
    generated = model.ulgm.labels
    assert torch.equal(generated["m"], train_labels)
    assert not torch.equal(generated["a"], train_labels)  # epochs 2-3 moved them
    out = model(batches[0])
    assert float(out.losses["task_a"]) > 0.0  # now the unimodal heads get a signal
    out.losses["task_a"].backward()
    assert model.heads["a"].out.weight.grad.abs().sum() > 0
    art = model.run_artifacts()["generated_labels"]
    json.dumps(art)
    assert art["labels_epoch"] == 3 and len(art["labels"]) == 8
    assert [h["epoch"] for h in art["drift_by_epoch"]] == [1, 2, 3]
    assert set(art["drift"]) == {"t", "a", "v"} and art["labels"][5]["id"] == "v$_$1"
    # a training batch whose index is outside the training split is refused ...
    with pytest.raises(IndexError, match="training split"):
        model(make_batch(index_offset=6))
    # ... while evaluation never reads the banks: its index belongs to another split
    model.eval()
    out = model(make_batch(index_offset=100))
    assert all(float(out.losses[f"task_{k}"]) == 0.0 for k in "tav")


def test_checkpoint_carries_ulgm_state(model):
    model.on_fit_start(torch.tensor([1.0, -1.0, 0.5, 2.0]))
    model.train()
    batch = make_batch()
    for epoch in (1, 2):
        model.on_train_batch_end(batch, model(batch), epoch)
    state = model.checkpoint_state_dict()
    assert any(k.startswith("__ulgm__.") for k in state)
    torch.manual_seed(1)
    fresh = create_model(build_config("self_mm").model, DIMS)
    fresh.load_checkpoint_state_dict(state)
    assert torch.equal(fresh.ulgm.labels["v"], model.ulgm.labels["v"])
    assert torch.equal(fresh.heads["m"].out.weight, model.heads["m"].out.weight)


@pytest.mark.slow
def test_short_real_training_beats_the_training_mean(mosi_word_aligned, tmp_path):
    model, rows, mean_mae, fold = train_one_fold("self_mm", mosi_word_aligned, tmp_path,
                                                 "train.epochs=4")
    assert len(rows) == 4
    for term in ("task", "task_t", "task_a", "task_v"):
        assert all(np.isfinite(float(r[f"train_{term}"])) for r in rows)
    assert float(rows[0]["train_task_a"]) == 0.0 < float(rows[-1]["train_task_a"])  # ULGM from epoch 2
    selected = [r for r in rows if r["selected"] == "1"][-1]
    assert float(selected["valid_MAE"]) < mean_mae
    art = model.run_artifacts()["generated_labels"]
    assert len(art["labels"]) == len(fold.train)
    assert {row["id"] for row in art["labels"]} == set(fold.train.ids)
    assert art["drift"]["a"]["mean_abs_drift"] > 0


def _groups_by_name(model_name: str, overrides: list[str] = ()) -> tuple[dict, object]:
    from msakit.training.trainer import build_parameter_groups

    config = build_config(model_name, list(overrides))
    built = create_model(config.model, DIMS)
    return {g["name"]: g for g in build_parameter_groups(built, config)}, built


@pytest.mark.parametrize("model_name,audio_modules,vision_modules", [
    ("self_mm", ("audio_lstm", "audio_out"), ("vision_lstm", "vision_out")),
    ("mmiln", ("audio_lstm", "audio_conv"), ("vision_lstm", "vision_conv")),
])
def test_five_official_optimiser_groups(model_name, audio_modules, vision_modules):
    """thuiar/Self-MM's optimiser: LM with/without decay, audio, video, rest (MOSI values);
    outside the LM every parameter decays, biases included."""
    groups, built = _groups_by_name(model_name)
    assert list(groups) == ["language_model", "language_model/no_decay", "audio", "vision",
                            "other"]
    settings = {name: (g["lr"], g["weight_decay"]) for name, g in groups.items()}
    assert settings == {"language_model": (5e-5, 1e-3), "language_model/no_decay": (5e-5, 0.0),
                        "audio": (1e-3, 0.01), "vision": (1e-4, 1e-3), "other": (1e-3, 1e-3)}

    def ids(*modules):
        return {id(p) for m in modules for p in getattr(built, m).parameters()}

    assert {id(p) for p in groups["audio"]["params"]} == ids(*audio_modules)
    assert {id(p) for p in groups["vision"]["params"]} == ids(*vision_modules)
    lm = {id(p) for g in ("language_model", "language_model/no_decay") for p in groups[g]["params"]}
    assert lm == ids("text_encoder")
    other_names = {n for n, p in built.named_parameters() if id(p) in
                   {id(q) for q in groups["other"]["params"]}}
    assert any(n.endswith("bias") for n in other_names)  # biases decay outside the LM


def test_optimiser_groups_follow_the_config():
    groups, _ = _groups_by_name("self_mm", ["model.audio_lr=0.005", "model.vision_lr=null",
                                            "model.exempt_biases_from_decay=true",
                                            "train.weight_decay=0.02"])
    assert groups["audio"]["lr"] == 0.005 and groups["vision"]["lr"] == 1e-3  # None -> train.lr
    assert groups["audio/no_decay"]["weight_decay"] == 0.0
    assert groups["other"]["weight_decay"] == 0.02
    assert {"audio/no_decay", "vision/no_decay", "other/no_decay"} <= set(groups)
