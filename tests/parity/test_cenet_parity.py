"""CENET against MMSA's code (thuiar/MMSA ``cenet``), from the fixture of
``tools/parity/cenet.py`` (no official code needed here).

The official run: MMSA's CENET (its own BERT copy with the CE block before layer 1) on a tiny
random BERT, float64, its trainer's ``do_train`` (Adam in three groups, gradient norm clipped to
2, L1) on six real clips in three batches of two, audio/vision as 50-step zero-padded arrays that
CE attends to whole. msakit runs the same through ``Trainer.fit`` with
``model.audio_attended_steps=vision_attended_steps=50`` and must match every prediction and
loss, every gradient (BERT's layers, CE, the head; BERT's embeddings never train in either), the
state after the first and last step, and the epoch early stopping ends on. At bert-base's
dropout rates: the dropout map (BERT's and the head's dropouts in call order) and the eval-mode
predictions; and msakit's default, padding-masked CE must give each clip, in its padded batch,
MMSA's prediction for the clip alone without padding.

Names: MMSA's ``Model.bert.`` -> ``text_encoder.model.``; ``Model.bert.encoder.CE.`` ->
``enhancement.`` (``visual``/``acoustic_transform`` -> ``vision``/``audio_transform``,
``hv``/``ha`` -> ``vision``/``audio_attention`` with ``Wq``/``Wk``/``Wv`` -> ``query``/``key``/
``value``, ``cat_connect`` -> ``fuse``); ``Model.classifier.dense``/``out_proj`` ->
``head_dense``/``head_out``. MMSA's unused POS/sentiment/polarity embeddings have no
counterpart.
"""

from __future__ import annotations

import pytest
import torch
from _mmsa_parity import (
    TOLERANCE,
    assert_dropout_map_matches,
    assert_eval_forward_matches,
    assert_training_matches,
    check_fixture_origin,
    msakit_batches,
    replay_training,
)
from _parity import load_fixture, rename_by_rules

from msakit.config import build_config
from msakit.models import FeatureDims, create_model

ATTENTION = {"hv": "vision_attention", "ha": "audio_attention"}
PROJECTION = {"Wq": "query", "Wk": "key", "Wv": "value"}
RULES = [
    (r"Model\.bert\.embeddings\.(senti|pos_tag|polarity)_embeddings\.", lambda g: None),
    (r"Model\.bert\.encoder\.CE\.visual_transform\.(.*)",
     lambda g: f"enhancement.vision_transform.{g[0]}"),
    (r"Model\.bert\.encoder\.CE\.acoustic_transform\.(.*)",
     lambda g: f"enhancement.audio_transform.{g[0]}"),
    (r"Model\.bert\.encoder\.CE\.(hv|ha)\.(W[qkv])\.(.*)",
     lambda g: f"enhancement.{ATTENTION[g[0]]}.{PROJECTION[g[1]]}.{g[2]}"),
    (r"Model\.bert\.encoder\.CE\.cat_connect\.(.*)", lambda g: f"enhancement.fuse.{g[0]}"),
    (r"Model\.bert\.(.*)", lambda g: f"text_encoder.model.{g[0]}"),
    (r"Model\.classifier\.dense\.(.*)", lambda g: f"head_dense.{g[0]}"),
    (r"Model\.classifier\.out_proj\.(.*)", lambda g: f"head_out.{g[0]}"),
]


def to_msakit(name: str, value: torch.Tensor):
    target = rename_by_rules(name, RULES)
    return None if target is None else (target, value)


@pytest.fixture(scope="module")
def fixture():
    """The fixture, checked to come from MMSA v2.2.1 (so every test asserts the commit)."""
    loaded = load_fixture("cenet")
    check_fixture_origin(loaded)
    return loaded


def bert_folder(fixture: dict, key: str, folder) -> str:
    """The fixture's tiny BERT (its weights; config ``fixture[key]``) saved to ``folder``."""
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(**fixture[key]))
    bert.load_state_dict(fixture["bert_state"])
    bert.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def bert_dirs(fixture, tmp_path_factory):
    """``(training, rated)``: the tiny BERT without dropout, and at bert-base's rates."""
    return (bert_folder(fixture, "tiny_bert", tmp_path_factory.mktemp("cenet_bert")),
            bert_folder(fixture, "rated_bert", tmp_path_factory.mktemp("cenet_bert_rated")))


def overrides(fixture: dict, bert_dir: str, mmsa_padding: bool = True) -> list[str]:
    optimiser, stopping = fixture["optimiser"], fixture["early_stopping"]
    steps = fixture["average_steps"]
    return [
        f"model.language_model={bert_dir}",
        f"model.adam_epsilon={optimiser['adam_epsilon']}",
        f"train.lr={optimiser['learning_rate']}", f"train.lm_lr={optimiser['learning_rate']}",
        f"train.weight_decay={optimiser['weight_decay']}",
        f"train.lm_weight_decay={optimiser['weight_decay']}",
        "train.grad_clip_norm=2", "train.optimizer=adam", "train.grad_accumulation=1",
        f"train.patience={stopping['early_stop']}",
        f"train.min_improvement={stopping['min_improvement']}",
        "train.epochs=10", "train.device=cpu",
    ] + ([f"model.audio_attended_steps={steps}", f"model.vision_attended_steps={steps}"]
         if mmsa_padding else [])


def build(fixture: dict, overrides: list[str]):
    """msakit's CENET at ``overrides``, float64, every weight from the official initial state."""
    config = build_config("cenet", overrides)
    batch = fixture["batches"][0]
    model = create_model(config.model, FeatureDims(batch["audio_full"].shape[-1],
                                                   batch["vision_full"].shape[-1])).double()
    state = model.state_dict()
    mapped = {}
    for name, value in fixture["initial_state"].items():
        target = to_msakit(name, value)
        if target is not None:
            assert state[target[0]].shape == value.shape, name
            mapped[target[0]] = value.double()
    assert set(mapped) == set(state), set(mapped) ^ set(state)
    model.load_state_dict(mapped)
    return config, model


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    check_fixture_origin(fixture)
    assert fixture["official"]["files"] == ["src/MMSA/models/singleTask/CENET.py",
                                            "src/MMSA/trains/singleTask/CENET.py"]
    assert fixture["official_optimiser"] == {"learning_rate": 1e-5, "weight_decay": 1e-4,
                                             "adam_epsilon": 3e-8}


def test_cenet_training_matches_mmsa(fixture, bert_dirs, tmp_path, monkeypatch):
    config, model = build(fixture, overrides(fixture, bert_dirs[0]))
    record, summary = replay_training(config, model, fixture, tmp_path, monkeypatch)
    assert_training_matches(fixture, record, summary, to_msakit)
    steps = fixture["optimizer_steps"]
    # BERT's embeddings never train (MMSA runs them under no_grad), its layers do; both sides
    embedding = "Model.bert.embeddings.word_embeddings.weight"
    assert embedding not in steps[0]["gradients"]
    assert torch.equal(steps[-1]["state"][embedding], fixture["initial_state"][embedding])
    assert not model.text_encoder.model.embeddings.word_embeddings.weight.requires_grad
    layer = "Model.bert.encoder.layer.0.attention.self.query.weight"
    assert float(steps[0]["gradients"][layer].abs().max()) > 1e-3
    # MMSA clips the gradient norm to 2: some recorded steps were clipped
    norms = [float(torch.sqrt(sum(g.double().square().sum() for g in s["gradients"].values())))
             for s in steps]
    assert any(abs(n - 2.0) < 1e-4 for n in norms) and all(n <= 2.0 + 1e-4 for n in norms)


def test_cenet_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dirs):
    _, model = build(fixture, overrides(fixture, bert_dirs[1]))
    # PyTorch's fused attention drops attention weights inside its kernel; the eager attention
    # (the same computation) calls F.dropout on them as MMSA's BERT does, so the map sees them
    model.text_encoder.model.set_attn_implementation("eager")
    assert_dropout_map_matches(fixture, model)
    _, model = build(fixture, overrides(fixture, bert_dirs[1]))
    assert_eval_forward_matches(fixture, model)


def test_cenet_default_masks_padding_as_mmsa_without_padding(fixture, bert_dirs):
    """msakit's default CE attends to the real steps only: each clip of a padded batch gets
    MMSA's prediction for that clip alone, unpadded; MMSA's padded arrays give other values."""
    _, model = build(fixture, overrides(fixture, bert_dirs[1], mmsa_padding=False))
    model.eval()
    with torch.no_grad():
        ours = torch.cat([model(b).prediction for b in msakit_batches(fixture)])
    expected = fixture["eval_unpadded"].double()
    torch.testing.assert_close(ours, expected, atol=TOLERANCE, rtol=0)
    padded = torch.cat([f["M"].double().reshape(-1) for f in fixture["eval_forwards"]])
    assert float((padded - expected).abs().max()) > 100 * TOLERANCE


def test_cenet_optimiser_groups_are_mmsas(fixture, bert_dirs):
    """The CE block's biases decay (MMSA's CE group), BERT's and the head's do not; one eps."""
    config, model = build(fixture, overrides(fixture, bert_dirs[0]))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: g for g in model.parameter_groups(config.train)}
    assert set(groups) == {"language_model", "language_model/no_decay", "enhancement", "other",
                           "other/no_decay"}
    decay = fixture["optimiser"]["weight_decay"]
    assert "enhancement.fuse.bias" in {names[id(p)] for p in groups["enhancement"]["params"]}
    assert groups["enhancement"]["weight_decay"] == decay
    assert {names[id(p)] for p in groups["other/no_decay"]["params"]} == {"head_dense.bias",
                                                                          "head_out.bias"}
    assert groups["language_model/no_decay"]["weight_decay"] == 0.0
    assert {g["eps"] for g in groups.values()} == {fixture["optimiser"]["adam_epsilon"]}
