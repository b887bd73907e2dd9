"""LRCMT: LoRA on a frozen LM, audio-visual-first cross-modal fusion, adapter-only checkpoints."""

from __future__ import annotations

import io
from unittest import mock

import pytest
import torch

from msakit.config import ConfigError, build_config
from msakit.lm import load_tokenizer
from msakit.models import create_model, list_models
from msakit.models.base import (
    BASE_CHECKSUM_SUFFIX,
    CHANGED_ROWS_SUFFIX,
    CHANGED_VALUES_SUFFIX,
    FROZEN_CHECKSUM_KEY,
    FeatureDims,
)
from msakit.models.lrcmt import LRCMT, LRCMTConfig
from msakit.modules.lora import LoRAConfigError, LoRATextEncoder, count_parameters

TEXTS = ["it was really good", "i did not like the ending at all", "okay"]
AUDIO_DIM, VISION_DIM = 74, 47


def make_batch(audio_dim: int = AUDIO_DIM, vision_dim: int = VISION_DIM, seed: int = 0) -> dict:
    """A hand-built batch of three clips: real token ids, padded audio/vision of other lengths."""
    generator = torch.Generator().manual_seed(seed)
    tokens = load_tokenizer("all-MiniLM-L6-v2")(TEXTS, padding=True, return_tensors="pt")
    batch = {
        "input_ids": tokens["input_ids"],
        "attention_mask": tokens["attention_mask"],
        "token_type_ids": tokens["token_type_ids"],
        "labels": torch.tensor([2.4, -1.8, 0.2]),
        "index": torch.arange(3),
        "ids": ["a$_$1", "b$_$2", "c$_$3"],
    }
    for modality, dim, lengths in (("audio", audio_dim, [5, 3, 1]),
                                   ("vision", vision_dim, [2, 6, 4])):
        if dim == 0:
            continue
        steps = max(lengths)
        lengths_t = torch.tensor(lengths)
        mask = torch.arange(steps).unsqueeze(0) < lengths_t.unsqueeze(1)
        batch[modality] = torch.randn(3, steps, dim, generator=generator) * mask.unsqueeze(-1)
        batch[f"{modality}_lengths"] = lengths_t
        batch[f"{modality}_mask"] = mask
    return batch


def build(seed: int = 0, dims: FeatureDims = FeatureDims(AUDIO_DIM, VISION_DIM), **fields) -> LRCMT:
    torch.manual_seed(seed)
    return LRCMT(LRCMTConfig(**fields), dims)


def lm_base_weights(model: LRCMT) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.text_encoder.named_parameters()
            if not p.requires_grad}


def lora_weights(model: LRCMT) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.text_encoder.named_parameters()
            if "lora_" in name}


def train_steps(model: LRCMT, batch: dict, steps: int, lr: float = 1e-2) -> None:
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        model(batch).losses["task"].backward()
        optimizer.step()


# -- config ------------------------------------------------------------------------------------
def test_registered_and_shipped_defaults_resolve():
    assert "lrcmt" in list_models()
    config = build_config("lrcmt")
    assert isinstance(config.model, LRCMTConfig)
    assert config.model.lora_target_modules == ["query", "value"]
    assert config.model.fusion == "av_first" and config.model.lm_mode == "lora"
    assert config.model.loss_weights == {"task": 1.0}
    assert build_config("lrcmt", ["model.lm_mode=full_finetune"]).model.lm_mode == "full_finetune"


@pytest.mark.parametrize("override, needle", [
    (["model.embed_dim=30", "model.num_heads=4"], "divisible"),
    (["model.lora_rank=0"], "lora_rank"),
    (["model.fusion=late"], "fusion"),
    (["model.lora_targets=[query]"], "lora_targets"),
])
def test_bad_config_is_a_clear_error(override, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config("lrcmt", override)


def test_unknown_lora_target_names_the_available_layers():
    with pytest.raises(LoRAConfigError, match=r"\['qkv'\].*'query'"):
        build(lora_target_modules=["qkv", "value"])


# -- shapes ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dims, fusion, blocks, width", [
    (FeatureDims(AUDIO_DIM, VISION_DIM), "av_first",
     {"audio_from_vision", "vision_from_audio", "text_from_av", "av_from_text"}, 2),
    (FeatureDims(AUDIO_DIM, VISION_DIM), "separate",
     {"text_from_audio", "audio_from_text", "text_from_vision", "vision_from_text"}, 4),
    (FeatureDims(AUDIO_DIM, 0), "av_first", {"text_from_audio", "audio_from_text"}, 2),
    (FeatureDims(0, 0), "av_first", {"text_self"}, 1),
])
def test_forward_shapes_per_fusion_and_modalities(dims, fusion, blocks, width):
    model = build(dims=dims, fusion=fusion).eval()
    assert set(model.crossmodal) == blocks
    output = model(make_batch(dims.audio, dims.vision))
    assert output.prediction.shape == (3,)
    assert output.extras["fused"].shape == (3, width * model.config.embed_dim)
    assert set(output.losses) == {"task"} and output.losses["task"].dim() == 0
    assert torch.isfinite(output.prediction).all()


def test_padding_does_not_change_predictions():
    """Extra padded steps of audio/vision (masked) leave the prediction unchanged."""
    model = build().eval()
    batch = make_batch()
    padded = dict(batch)
    for modality in ("audio", "vision"):
        noise = torch.randn(3, 4, batch[modality].shape[-1])
        padded[modality] = torch.cat([batch[modality], noise], 1)
        padded[f"{modality}_mask"] = torch.cat([batch[f"{modality}_mask"],
                                                torch.zeros(3, 4, dtype=torch.bool)], 1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded).prediction, model(batch).prediction,
                                   rtol=1e-5, atol=1e-5)


def test_missing_modality_in_batch_is_a_clear_error():
    model = build()
    batch = make_batch()
    del batch["vision"]
    with pytest.raises(ValueError, match="vision"):
        model(batch)


def test_no_labels_no_losses():
    batch = make_batch()
    del batch["labels"]
    assert build().eval()(batch).losses == {}


# -- LoRA: what trains and what does not ---------------------------------------------------------
def test_only_adapters_fusion_and_head_are_trainable():
    model = build()
    lm_trainable = [n for n, p in model.text_encoder.named_parameters() if p.requires_grad]
    assert lm_trainable and all(".lora_A." in n or ".lora_B." in n for n in lm_trainable)
    # 6 MiniLM layers x (query, value) x (A, B)
    assert len(lm_trainable) == 6 * 2 * 2
    assert all(p.requires_grad for n, p in model.named_parameters()
               if not n.startswith("text_encoder."))
    # LoRA weights are new weights: main learning rate, not the LM's (see modules/lora.py).
    assert model.language_model_prefixes() == ()
    assert not any(getattr(m, "is_pretrained_language_model", False) for m in model.modules())


def test_training_step_changes_lora_but_not_the_language_model():
    model = build()
    batch = make_batch()
    base_before, lora_before = lm_base_weights(model), lora_weights(model)
    assert all(torch.count_nonzero(v) == 0 for n, v in lora_before.items() if "lora_B" in n)
    train_steps(model, batch, steps=1)
    base_after, lora_after = lm_base_weights(model), lora_weights(model)
    assert base_before.keys() == base_after.keys() and len(base_before) > 50
    for name, before in base_before.items():
        assert torch.equal(before, base_after[name]), name
    # B starts at zero, so the first step moves B only (the gradient of A is B^T(...) = 0) ...
    for name, before in lora_before.items():
        changed = not torch.equal(before, lora_after[name])
        assert changed == ("lora_B" in name), name
    # ... and the second step moves A too.
    train_steps(model, batch, steps=1)
    lora_after, base_after = lora_weights(model), lm_base_weights(model)
    assert all(not torch.equal(before, lora_after[name]) for name, before in lora_before.items())
    assert all(torch.equal(before, base_after[name]) for name, before in base_before.items())


def test_lora_starts_at_the_pretrained_model():
    """B = 0 at initialisation: the adapted LM's hidden states equal the plain LM's."""
    from msakit.modules.text import PretrainedTextEncoder

    batch = make_batch()
    adapted = LoRATextEncoder("all-MiniLM-L6-v2", pooling="mean").eval()
    plain = PretrainedTextEncoder("all-MiniLM-L6-v2", pooling="mean").eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(batch["input_ids"], batch["attention_mask"]),
                                   plain(batch["input_ids"], batch["attention_mask"]))


def test_full_finetune_unfreezes_the_lm_and_drops_lora():
    model = build(lm_mode="full_finetune")
    names = [n for n, _ in model.named_parameters()]
    assert not any("lora_" in n for n in names)
    assert all(p.requires_grad for p in model.parameters())
    assert model.language_model_prefixes() == ("text_encoder.",)
    counts = model.parameter_counts()
    assert counts["lora_adapter"] == 0 and counts["trainable"] == counts["total"]
    assert model.trainable_fraction == 1.0


# -- trainable fraction ---------------------------------------------------------------------------
def _bert_base_lrcmt(dims: FeatureDims, **fields) -> LRCMT:
    """LRCMT on a randomly initialised bert-base (the real one cannot be downloaded here)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    with mock.patch("msakit.modules.text.load_language_model",
                    side_effect=lambda name: BertModel(BertConfig())):
        return LRCMT(LRCMTConfig(language_model="bert-base-uncased", **fields), dims)


def test_trainable_fraction_on_bert_base_matches_the_docstring_arithmetic():
    model = _bert_base_lrcmt(FeatureDims(audio=5, vision=20))  # MOSI's MMSA features
    counts = model.parameter_counts()
    assert counts["language_model"] == 109_482_240
    assert counts["lora_adapter"] == 12 * 2 * (8 * 768 + 768 * 8) == 294_912
    assert counts["fusion_and_head"] == 543_185
    assert counts["trainable"] == 294_912 + 543_185
    assert counts["total"] == 110_320_337
    assert model.trainable_fraction == pytest.approx(0.0076, abs=5e-6)


def test_trainable_fraction_is_computed_from_the_model():
    default = build()
    counts = default.parameter_counts()
    assert counts["lora_adapter"] == 6 * 2 * (8 * 384 + 384 * 8)  # MiniLM: 6 layers, hidden 384
    assert default.trainable_fraction == pytest.approx(counts["trainable"] / counts["total"])
    assert counts["trainable"] == count_parameters(default)["trainable"]
    for changed in (build(lora_rank=4), build(lora_target_modules=["query", "key", "value"]),
                    build(embed_dim=32)):
        assert changed.trainable_fraction != default.trainable_fraction
    assert build(lora_rank=4).parameter_counts()["lora_adapter"] == counts["lora_adapter"] // 2
    artifacts = default.run_artifacts()
    assert artifacts["trainable_fraction"] == default.trainable_fraction
    assert artifacts["modalities"] == ["text", "audio", "vision"]


# -- checkpoints --------------------------------------------------------------------------------
def _roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_adapter_only_checkpoint_round_trip_reproduces_predictions():
    batch = make_batch()
    trained = build(seed=0)
    train_steps(trained, batch, steps=2)
    state = trained.checkpoint_state_dict()
    # No frozen LM weight is stored; every adapter, the fusion module and the head are.
    assert not any("base_layer" in k or "embeddings" in k for k in state)
    assert sum("lora_" in k for k in state) == 24
    assert any(k.startswith("crossmodal.") for k in state)
    assert any(k.startswith("head.") for k in state)
    stored = sum(v.numel() for k, v in state.items() if k != FROZEN_CHECKSUM_KEY)
    assert stored == trained.parameter_counts()["trainable"]
    assert state[FROZEN_CHECKSUM_KEY].shape == (2,)

    fresh = build(seed=123)  # other random adapters/fusion, same pretrained LM
    fresh.load_checkpoint_state_dict(_roundtrip(state))
    trained.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(batch).prediction, trained(batch).prediction)


def test_checkpoint_mismatch_is_refused():
    lora_state = build().checkpoint_state_dict()
    full = build(lm_mode="full_finetune")
    full_state = full.checkpoint_state_dict()
    # the fine-tuned LM is stored (whole, or as the rows that differ from the pretrained LM)
    stored = {k.removesuffix(CHANGED_ROWS_SUFFIX) for k in full_state
              if not k.endswith((CHANGED_VALUES_SUFFIX, BASE_CHECKSUM_SUFFIX))}
    assert stored == set(full.state_dict())
    with pytest.raises(ValueError, match="missing keys"):
        full.load_checkpoint_state_dict(lora_state)
    with pytest.raises(ValueError, match="unexpected keys"):
        build().load_checkpoint_state_dict(full_state)
    with pytest.raises(ValueError, match="LoRA"):
        build(fusion="separate").load_checkpoint_state_dict(lora_state)


def test_lora_checkpoint_refuses_another_frozen_language_model():
    state = build().checkpoint_state_dict()
    other = build()
    with torch.no_grad():  # stands for a different pretrained LM of the same architecture
        other.text_encoder.language_model.embeddings.word_embeddings.weight[0] += 1.0
    with pytest.raises(ValueError, match="other frozen language-model weights"):
        other.load_checkpoint_state_dict(state)
    del state[FROZEN_CHECKSUM_KEY]
    with pytest.raises(ValueError, match=FROZEN_CHECKSUM_KEY):
        build().load_checkpoint_state_dict(state)


def test_full_finetune_checkpoint_round_trip():
    batch = make_batch()
    trained = build(seed=0, lm_mode="full_finetune")
    train_steps(trained, batch, steps=1, lr=1e-3)
    fresh = build(seed=5, lm_mode="full_finetune")
    fresh.load_checkpoint_state_dict(_roundtrip(trained.checkpoint_state_dict()))
    trained.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(batch).prediction, trained(batch).prediction)


def test_create_model_through_the_registry():
    config = build_config("lrcmt", ["model.embed_dim=32"]).model
    model = create_model(config, FeatureDims(AUDIO_DIM, VISION_DIM))
    assert isinstance(model, LRCMT) and model.config.embed_dim == 32


# -- with the trainer ---------------------------------------------------------------------------
def test_optimiser_groups_adapters_with_the_main_learning_rate():
    from msakit.training.trainer import build_parameter_groups

    config = build_config("lrcmt")
    model = create_model(config.model, FeatureDims(AUDIO_DIM, VISION_DIM))
    groups = build_parameter_groups(model, config)
    assert {g["name"].split("/")[0] for g in groups} == {"other"}
    assert {g["lr"] for g in groups} == {config.train.lr}
    grouped = {id(p) for g in groups for p in g["params"]}
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(id(p) in grouped for p in lora)
    assert len(grouped) == sum(1 for p in model.parameters() if p.requires_grad)

    full = build_config("lrcmt", ["model.lm_mode=full_finetune"])
    model = create_model(full.model, FeatureDims(AUDIO_DIM, VISION_DIM))
    groups = {g["name"]: g for g in build_parameter_groups(model, full)}
    lm_params = {id(p) for p in model.text_encoder.parameters()}
    lm_groups = [g for name, g in groups.items() if name.startswith("language_model")]
    assert {id(p) for g in lm_groups for p in g["params"]} == lm_params
    assert {g["lr"] for g in lm_groups} == {full.train.lm_lr}


@pytest.mark.slow
def test_short_real_run_beats_the_training_mean(mosi_word_aligned, tmp_path):
    """A few epochs on one grouped fold of the 229 clips; the frozen LM stays as loaded."""
    import numpy as np

    from msakit.metrics import compute_metrics
    from msakit.training.loading import feature_dims, load_experiment_data, loader_for
    from msakit.training.trainer import Trainer, evaluate_model

    config = build_config("lrcmt", [
        f"data.path={mosi_word_aligned}", "data.folds=5", "train.epochs=4", "train.lr=1e-3",
        "train.batch_size=16", "train.patience=null", "train.num_threads=1",
        "model.embed_dim=32", "model.num_layers=1",
    ])
    dataset, partitions = load_experiment_data(config)
    fold = partitions[0]
    torch.manual_seed(1)
    model = create_model(config.model, feature_dims(dataset, config))
    base_before = lm_base_weights(model)
    trainer = Trainer(config, tmp_path, dataset.name, progress=False)
    trainer.fit(model, lambda epoch: loader_for(fold.train, dataset, config, train=True,
                                                seed=epoch),
                loader_for(fold.valid, dataset, config, train=False),
                torch.as_tensor(fold.train.labels))
    trainer.load_best(model)
    assert all(torch.equal(v, lm_base_weights(model)[k]) for k, v in base_before.items())
    # best.safetensors holds the adapter, fusion and head only
    from msakit.runfolder import load_best_state

    stored = load_best_state(tmp_path)
    assert (sum(v.numel() for k, v in stored.items() if k != FROZEN_CHECKSUM_KEY)
            == model.parameter_counts()["trainable"])

    train_mean = float(fold.train.labels.mean())
    for split in (fold.valid, fold.test):
        result = evaluate_model(model, loader_for(split, dataset, config, train=False), "mosi")
        floor = compute_metrics(np.full(len(split), train_mean), split.labels)["MAE"]
        assert result.metrics["MAE"] < floor, (result.metrics["MAE"], floor)


# -- the paper's equations, by hand ---------------------------------------------------------------
def test_lora_layer_is_w0_x_plus_alpha_over_r_b_a_x():
    """LoRA (Hu et al. 2021, eq. 3, which LRCMT injects): ``h = W0 x + (alpha / r) B A x``, with
    ``B`` zero at the start so that the adapted model starts as the pretrained one."""
    model = build(lora_rank=4, lora_alpha=6.0, lora_dropout=0.0)
    adapted = [m for m in model.text_encoder.language_model.modules() if hasattr(m, "lora_A")]
    assert adapted and all(
        torch.count_nonzero(m.lora_B["default"].weight) == 0 for m in adapted)
    layer = adapted[0]
    base = layer.base_layer
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(4, base.in_features, generator=generator)
    b = torch.randn(base.out_features, 4, generator=generator)
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(a)
        layer.lora_B["default"].weight.copy_(b)
    x = torch.randn(2, 5, base.in_features, generator=generator)
    model.eval()
    expected = x @ base.weight.T + base.bias + (6.0 / 4) * (x @ a.T @ b.T)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_audio_and_vision_interact_before_the_text():
    """The paper's fusion order: a' = CM(a <- v), v' = CM(v <- a) first; then the text attends
    to the joint [a'; v'] sequence and the joint sequence to the text."""
    model = build()
    model.eval()
    calls = []

    def recorder(name, module):
        original = module.forward

        def forward(query, key=None, key_padding_mask=None, *args, **kwargs):
            out = original(query, key, key_padding_mask, *args, **kwargs)
            calls.append((name, query.detach(), None if key is None else key.detach(),
                          out.detach()))
            return out
        return forward

    for name, module in model.crossmodal.items():
        module.forward = recorder(name, module)
    batch = make_batch()
    with torch.no_grad():
        model(batch)
    order = [c[0] for c in calls]
    assert order[:2] == ["audio_from_vision", "vision_from_audio"]
    assert set(order[2:]) == {"text_from_av", "av_from_text"}
    outputs = {c[0]: c for c in calls}
    audio_v, vision_a = outputs["audio_from_vision"][3], outputs["vision_from_audio"][3]
    # the key of text_from_av is the joint sequence: each clip's real a' steps (+ e_a), then its
    # real v' steps (+ e_v), then zeros
    joint = outputs["text_from_av"][2]
    for i in range(3):
        n_a, n_v = int(batch["audio_lengths"][i]), int(batch["vision_lengths"][i])
        torch.testing.assert_close(joint[i, :n_a], audio_v[i, :n_a] + model.modality_type[0])
        torch.testing.assert_close(joint[i, n_a:n_a + n_v],
                                   vision_a[i, :n_v] + model.modality_type[1])
    torch.testing.assert_close(outputs["av_from_text"][1], joint)


def test_frozen_lm_without_lora_ablation():
    model = build(lm_mode="frozen")
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert model.language_model_prefixes() == ()
    counts = model.parameter_counts()
    assert counts["lora_adapter"] == 0 and counts["trainable"] == counts["fusion_and_head"]
    assert model.run_artifacts()["language_model_tuning"] == "frozen"
    batch = make_batch()
    before = {n: p.detach().clone() for n, p in model.text_encoder.named_parameters()}
    train_steps(model, batch, steps=1)
    assert all(torch.equal(p, before[n]) for n, p in model.text_encoder.named_parameters())
    fresh = build(seed=5, lm_mode="frozen")
    fresh.load_checkpoint_state_dict(_roundtrip(model.checkpoint_state_dict()))
    model.eval(), fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(batch).prediction, model(batch).prediction)
    # the two switches this mode replaced are refused with the field that replaces them
    for old in ("full_finetune", "frozen_without_lora"):
        with pytest.raises(ConfigError, match=rf"{old} is replaced by model\.lm_mode"):
            build_config("lrcmt", [f"model.{old}=true"])


@pytest.mark.parametrize("old, mode", [({"full_finetune": False, "frozen_without_lora": False},
                                        "lora"),
                                       ({"full_finetune": True}, "full_finetune"),
                                       ({"frozen_without_lora": True}, "frozen")])
def test_a_run_saved_before_lm_mode_still_loads(tmp_path, old, mode):
    """A run folder's config.yaml written before ``model.lm_mode`` (its two booleans) loads
    with the mode they meant; contradictory booleans are refused naming the file."""
    import yaml

    from msakit.config import load_saved_config

    tree = build_config("lrcmt", []).to_dict()
    del tree["model"]["lm_mode"]
    tree["model"].update(old)
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(tree))
    assert load_saved_config(saved).model.lm_mode == mode
    tree["model"].update(full_finetune=True, frozen_without_lora=True)
    saved.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=r"config\.yaml: invalid saved config: model: "
                                          r"full_finetune and frozen_without_lora"):
        load_saved_config(saved)
