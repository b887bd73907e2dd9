"""MAG-BERT against MMSA's code (thuiar/MMSA ``bert_mag``), from the fixture of
``tools/parity/bert_mag.py`` (no official code needed here).

The official run: MMSA's ``MAG_BertForSequenceClassification`` on a tiny random BERT (hidden 16,
2 layers; transformers 4.46 on the official side), six real MOSI clips in three batches of two,
audio/vision repeated per sub-word token with zero rows for [CLS]/[SEP], float64. With every
dropout 0, MMSA's ``do_train`` (one Adam over every parameter, BERT included, no weight decay,
L1 loss, a step per batch) for three epochs with scripted validation losses; msakit runs the same
through ``Trainer.fit`` and must match every prediction and loss, every gradient (BERT's too),
every parameter after the recorded steps, and the epoch early stopping ends on. At MMSA's MOSI
gate dropout (0.3) and bert-base's dropout (0.1): the same dropout calls (rate and input shape, in
call order) in train mode, and the same eval-mode predictions.

Names: ``model.bert.MAG.*`` -> ``gate.*`` (``LayerNorm`` -> ``layer_norm``),
``model.bert.*`` -> ``text_encoder.model.*`` (BERT and its pooler), ``model.classifier`` ->
``classifier``.
"""

from __future__ import annotations

import torch
from _mmsa_parity import (
    assert_dropout_map_matches,
    assert_eval_forward_matches,
    assert_training_matches,
    check_fixture_origin,
    mapped_state,
    module_fixtures,
    replay_training,
)

from msakit.config import build_config
from msakit.models import FeatureDims, create_model

fixture, bert_dir = module_fixtures("bert_mag")

PREFIXES = (("model.bert.MAG.LayerNorm.", "gate.layer_norm."), ("model.bert.MAG.", "gate."),
            ("model.classifier.", "classifier."), ("model.bert.", "text_encoder.model."))


def to_msakit(name: str, value: torch.Tensor):
    for old, new in PREFIXES:
        if name.startswith(old):
            return new + name[len(old):], value
    raise KeyError(f"no msakit name for the official parameter {name!r}")


def rated_bert_dir(fixture, folder) -> str:
    """The fixture's tiny BERT with bert-base's dropout rates."""
    from transformers import BertConfig, BertModel

    rate = fixture["bert_dropout"]
    bert = BertModel(BertConfig(**{**fixture["tiny_bert"], "hidden_dropout_prob": rate,
                                   "attention_probs_dropout_prob": rate}))
    bert.load_state_dict(fixture["bert_state"])
    bert.save_pretrained(folder)
    return str(folder)


def build(fixture, bert_dir, gate_dropout: float):
    optimiser, stopping = fixture["optimiser"], fixture["early_stopping"]
    config = build_config("bert_mag", [
        f"model.language_model={bert_dir}", f"model.gate_dropout={gate_dropout}",
        f"model.beta_shift={fixture['mosi_settings']['beta_shift']}",
        f"train.lr={optimiser['learning_rate']}", f"train.lm_lr={optimiser['learning_rate']}",
        f"train.weight_decay={optimiser['weight_decay']}",
        f"train.lm_weight_decay={optimiser['weight_decay']}", "train.optimizer=adam",
        "train.grad_accumulation=1", f"train.patience={stopping['early_stop']}",
        f"train.min_improvement={stopping['min_improvement']}", "train.epochs=10",
        "train.device=cpu",
    ])
    batch = fixture["batches"][0]
    dims = FeatureDims(batch["audio_full"].shape[-1], batch["vision_full"].shape[-1])
    model = create_model(config.model, dims).double()
    state = mapped_state(fixture["initial_state"], to_msakit)
    parameters = {name for name, _ in model.named_parameters()}
    assert parameters <= set(state), parameters - set(state)
    model.load_state_dict(state, strict=False)
    return config, model


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    check_fixture_origin(fixture)
    assert fixture["mosi_settings"] == {"beta_shift": 1.0, "dropout_prob": 0.3,
                                        "learning_rate": 2e-5}
    # MMSA's defaults are msakit's
    model = build_config("bert_mag").model
    assert model.beta_shift == 1.0 and model.gate_dropout == 0.3 and model.loss == "l1"
    assert model.injection_layer == 0


def test_bert_mag_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    config, model = build(fixture, bert_dir, gate_dropout=0.0)
    record, summary = replay_training(config, model, fixture, tmp_path, monkeypatch)
    assert_training_matches(fixture, record, summary, to_msakit)
    # BERT trains in both (its gradients were compared): its weights moved
    first = fixture["optimizer_steps"][0]["gradients"]
    assert first["model.bert.encoder.layer.0.attention.self.query.weight"].abs().max() > 0


def test_bert_mag_dropout_map_and_eval_forward_match_mmsa(fixture, tmp_path):
    rates = fixture["official_rates"]
    _, model = build(fixture, rated_bert_dir(fixture, tmp_path / "bert"), rates["gate_dropout"])
    assert_dropout_map_matches(fixture, model)
    assert_eval_forward_matches(fixture, model)
