"""EMT-DLFR against the authors' code (sunlicai/EMT-DLFR), from the fixture of
``tools/parity/emt.py`` (no official code needed here).

The fixture's official run: a tiny random BERT, small layer sizes, float64, six real clips in
three batches of two, the official missing masks (``generate_m`` at missing rate 0.4, official
seeds) fed to both sides, ``update_epochs`` 2, four epochs of the official ``do_train`` with
scripted validation losses. msakit replays it through its own trainer (``Trainer.fit``), its
``missing_masks`` replaced by the fixture's masks, and must match every forward pass (both
predictions, every projector and predictor output), every loss term, the accumulated gradient
of every parameter, every parameter after the last step, and the epoch early stopping ends on;
then the dropout map and an eval-mode forward at the official rates, and an eval-mode forward of
the model without sharing (separate weights per direction, modality and layer).

Name mapping, official -> msakit: see ``RULES``.
"""

from __future__ import annotations

import pytest
import torch
from _mmsa_parity import dropout_map
from _parity import (
    fit_with_scripted_validation,
    load_fixture,
    load_mapped,
    relative_close,
    rename_by_rules,
)

from msakit.config import build_config
from msakit.models import FeatureDims, create_model

COMMIT = "e9f0960237e5d85e65f78007a3f77e3f49ac6ec3"
MODALITY = {"text": "text", "audio": "audio", "video": "vision"}
BLOCK = {  # CrossSelfTransformer.layers.0.<i>.<part> -> CrossSelfBlock attribute
    ("0", "norm"): "cross_norm", ("0", "norm_context"): "source_norm",
    ("0", "fn"): "cross_attention", ("1", "norm"): "self_norm", ("1", "fn"): "self_attention",
    ("2", "norm"): "ff_norm", ("2", "fn.net.0"): "feed_forward.expand",
    ("2", "fn.net.2"): "feed_forward.project",
}
PREDICTOR = {"0": "hidden", "1": "norm", "3": "out"}
HEAD = {"1": "project", "2": "hidden", "3": "out"}
RULES = [
    (r"text_model\.model\.(.*)", lambda g: f"text_encoder.model.{g[0]}"),
    (r"(audio|video)_model\.rnn\.(.*)", lambda g: f"{MODALITY[g[0]]}_lstm.rnn.{g[1]}"),
    (r"(audio|video)_model\.linear_1\.(.*)", lambda g: f"{MODALITY[g[0]]}_out.{g[1]}"),
    (r"proj_(text|audio|video)\.(.*)", lambda g: f"equalise.{MODALITY[g[0]]}.{g[1]}"),
    (r"fusion\.mpus\.(\d+)\.(\d+)\.(\d+)\.layers\.0\.(\d)\.(norm_context|norm|fn\.net\.\d|fn)\.(.*)",
     lambda g: f"fusion.layers.{g[0]}.{g[1]}.{g[2]}.{BLOCK[(g[3], g[4])]}.{g[5]}"),
    (r"fusion\.attn_pools\.(\d+)\.attention\.(.*)", lambda g: f"fusion.pools.{g[0]}.score.{g[1]}"),
    (r"gmc_tokens_projector\.net\.0\.(.*)", lambda g: f"projectors.gmc.linear.{g[0]}"),
    (r"(text|audio|video)_projector\.net\.0\.(.*)",
     lambda g: f"projectors.{MODALITY[g[0]]}.linear.{g[1]}"),
    (r"gmc_tokens_predictor\.net\.(\d)\.(.*)",
     lambda g: f"predictors.gmc.{PREDICTOR[g[0]]}.{g[1]}"),
    (r"(text|audio|video)_predictor\.net\.(\d)\.(.*)",
     lambda g: f"predictors.{MODALITY[g[0]]}.{PREDICTOR[g[1]]}.{g[2]}"),
    (r"recon_(text|audio|video)\.(.*)", lambda g: f"reconstruct.{MODALITY[g[0]]}.{g[1]}"),
    (r"post_fusion_layer_(\d)\.(.*)", lambda g: f"head.{HEAD[g[0]]}.{g[1]}"),
]
#: official outputs -> (msakit view, attraction key, z or p)
ATTRACTION = {"gmc_tokens": "gmc", "text": "text", "audio": "audio", "video": "vision"}
TERMS = ("task", "task_complete", "attraction_gmc", "attraction_text", "attraction_audio",
         "attraction_vision", "reconstruction_text", "reconstruction_audio",
         "reconstruction_vision")


def to_msakit(name: str) -> str:
    return rename_by_rules(name, RULES)


@pytest.fixture(scope="module")
def fixture():
    data = load_fixture("emt")
    assert data["official"]["repo"] == "sunlicai/EMT-DLFR"
    assert data["official"]["commit"] == COMMIT
    return data


def overrides(fixture, small_bert, rates: dict | None = None, shared: dict | None = None):
    sizes, optimiser = fixture["sizes"], fixture["optimiser"]
    rates = rates or {k: 0.0 for k in fixture["rates"]}
    shared = shared or fixture["shared"]
    return [
        f"model.language_model={small_bert}", "model.lm_group_by_length=false",
        f"model.audio_lstm_hidden={sizes['a_lstm_hidden_size']}",
        f"model.vision_lstm_hidden={sizes['v_lstm_hidden_size']}",
        f"model.audio_out={sizes['audio_out']}", f"model.vision_out={sizes['video_out']}",
        f"model.d_model={sizes['d_model']}", f"model.fusion_layers={sizes['fusion_layers']}",
        f"model.heads={sizes['heads']}", f"model.ff_expansion={sizes['ff_expansion']}",
        f"model.gmc_tokens_pred_dim={sizes['gmc_tokens_pred_dim']}",
        f"model.text_pred_dim={sizes['text_pred_dim']}",
        f"model.audio_pred_dim={sizes['audio_pred_dim']}",
        f"model.vision_pred_dim={sizes['video_pred_dim']}",
        f"model.post_fusion_dim={sizes['post_fusion_dim']}",
        f"model.audio_lstm_dropout={rates['a_lstm_dropout']}",
        f"model.vision_lstm_dropout={rates['v_lstm_dropout']}",
        f"model.emb_dropout={rates['emb_dropout']}", f"model.attn_dropout={rates['attn_dropout']}",
        f"model.ff_dropout={rates['ff_dropout']}",
        f"model.post_fusion_dropout={rates['post_fusion_dropout']}",
        *(f"model.{k}={str(v).lower()}" for k, v in shared.items()),
        f"model.missing_rate={fixture['missing_rate']}",
        f"model.eval_missing_rate={fixture['missing_rate']}",
        f"model.unk_token_id={fixture['unk_id']}",
        f"model.audio_lr={optimiser['learning_rate_audio']}",
        f"model.audio_weight_decay={optimiser['weight_decay_audio']}",
        f"model.vision_lr={optimiser['learning_rate_video']}",
        f"model.vision_weight_decay={optimiser['weight_decay_video']}",
        f"train.lr={optimiser['learning_rate_other']}",
        f"train.weight_decay={optimiser['weight_decay_other']}",
        f"train.lm_lr={optimiser['learning_rate_bert']}",
        f"train.lm_weight_decay={optimiser['weight_decay_bert']}",
        f"train.grad_accumulation={fixture['update_epochs']}",
        f"train.patience={fixture['early_stopping']['early_stop']}",
        "train.epochs=10", "train.device=cpu",
    ]


def msakit_batch(batch: dict) -> dict:
    """A fixture batch as msakit's collate lays it out, and the official kept-position masks."""
    out = {"index": batch["index"], "input_ids": batch["text"][:, 0].long(),
           "attention_mask": batch["text"][:, 1].long(),
           "token_type_ids": batch["text"][:, 2].long(), "labels": batch["labels"]["M"].double(),
           "ids": [f"clip{i}" for i in batch["index"].tolist()], "host_lengths": {}}
    for m in ("audio", "vision"):
        out.update({m: batch[m].double(), f"{m}_lengths": batch[f"{m}_lengths"],
                    f"{m}_mask": batch[f"{m}_mask"].bool()})
        out["host_lengths"][m] = batch[f"{m}_lengths"].clone()
    out["fixture_masks"] = {"text": batch["text_missing_mask"].bool(),
                            "audio": batch["audio_missing_mask"].bool(),
                            "vision": batch["vision_missing_mask"].bool()}
    return out


def build(fixture, small_bert, state: dict, **kwargs):
    config = build_config("emt", overrides(fixture, small_bert, **kwargs))
    batches = [msakit_batch(b) for b in fixture["batches"]]
    dims = FeatureDims(batches[0]["audio"].shape[-1], batches[0]["vision"].shape[-1])
    model = create_model(config.model, dims).double()
    load_mapped(model, {k: v.double() for k, v in state.items()}, to_msakit)
    # the official masks, fed to msakit (check the official text mask keeps [CLS] and [SEP])
    model.missing_masks = lambda batch: batch["fixture_masks"]
    return config, model, batches


def test_fixture_masks_follow_the_official_rule(fixture):
    """The official masks keep [CLS] and [SEP], drop only real positions, and drop some."""
    for batch in fixture["batches"]:
        kept, real = batch["text_missing_mask"].bool(), batch["text"][:, 1].bool()
        lengths = real.sum(1)
        assert kept[:, 0].all() and kept[torch.arange(len(kept)), lengths - 1].all()
        assert not (kept & ~real).any() and (real & ~kept).any()
        ids = batch["text_m"][:, 0].long()
        assert (ids[real & ~kept] == fixture["unk_id"]).all()


def test_emt_matches_the_official_training_run(fixture, small_bert, tmp_path, monkeypatch):
    config, model, batches = build(fixture, small_bert, fixture["initial_state"])
    record = {"forwards": [], "views": [], "optimizer_steps": []}
    view = model._view

    def recording_view(*args, **kwargs):
        out = view(*args, **kwargs)
        if model.training:
            record["views"].append(out)
        return out

    model._view = recording_view
    forward = model.forward

    def recording_forward(batch):
        output = forward(batch)
        record["forwards"].append(output)
        return output

    model.forward = recording_forward

    def record_step(m, gradients):
        record["optimizer_steps"].append({
            "after_forward": len(record["forwards"]), "gradients": gradients,
            "parameters": {k: p.detach().clone() for k, p in m.named_parameters()}})

    labels = torch.cat([b["labels"] for b in batches])
    summary, valid_calls = fit_with_scripted_validation(
        config, model, batches, labels, fixture["early_stopping"]["valid_losses"], tmp_path,
        monkeypatch, record_step)

    steps = fixture["steps"]
    assert len(record["forwards"]) == len(steps) == 12  # 4 epochs x 3 batches
    assert len(record["views"]) == 2 * len(steps)  # complete, then incomplete view
    for i, (official, ours) in enumerate(zip(steps, record["forwards"])):
        where = f"forward {i + 1}"
        outputs = official["outputs"]
        complete, incomplete = record["views"][2 * i], record["views"][2 * i + 1]
        relative_close(ours.prediction, outputs["pred_m"], f"{where}: pred_m")
        relative_close(ours.extras["pred_complete"], outputs["pred"], f"{where}: pred")
        for key, k in ATTRACTION.items():
            for part in ("z", "p"):
                relative_close(complete[part][k], outputs[f"{part}_{key}"], f"{where}: {part}_{key}")
                relative_close(incomplete[part][k], outputs[f"{part}_{key}_m"],
                               f"{where}: {part}_{key}_m")
        for term in TERMS:
            relative_close(ours.losses[term], official["losses"][term], f"{where}: {term}")
        total = sum(config.model.loss_weights[t] * ours.losses[t] for t in TERMS)
        relative_close(total, official["losses"]["total"], f"{where}: total")
        assert float(official["losses"]["reconstruction_text"]) > 0  # masks drop some tokens

    official_steps = fixture["optimizer_steps"]
    assert [s["after_forward"] for s in record["optimizer_steps"]] == \
        [s["after_forward"] for s in official_steps] == [2, 5, 8, 11]  # 3rd batch dropped
    compared = 0
    for official, ours in zip(official_steps, record["optimizer_steps"]):
        for kind in ("gradients", "parameters"):
            for name, value in official.get(kind, {}).items():
                relative_close(ours[kind][to_msakit(name)], value, f"{kind} {name}")
                compared += 1
    assert compared == 2 * len(fixture["initial_state"])

    stopping = fixture["early_stopping"]
    assert summary["epochs_run"] == valid_calls == stopping["epochs_run"] == 4
    assert summary["best_epoch"] == 2  # epoch 3's gain of 5e-7 is below the official 1e-6


def test_emt_dropout_map_and_eval_forward_at_the_official_rates(fixture, small_bert):
    _, model, batches = build(fixture, small_bert, fixture["initial_state"], rates=fixture["rates"])
    batch = batches[fixture["dropout_map"]["batch"]]
    expected = [(p, tuple(shape)) for p, shape in fixture["dropout_map"]["calls"]]
    assert any(p > 0 for p, _ in expected)
    assert dropout_map(model, batch) == expected

    model.eval()
    with torch.no_grad():
        output = model(batches[fixture["eval_forward"]["batch"]])
    relative_close(output.prediction, fixture["eval_forward"]["pred_m"], "eval pred_m")
    relative_close(output.extras["pred_complete"], fixture["eval_forward"]["pred"], "eval pred")


def test_emt_without_sharing_matches_the_official_model(fixture, small_bert):
    unshared = fixture["unshared"]
    state = {**{k: v for k, v in fixture["initial_state"].items()
                if k.startswith("text_model.")}, **unshared["initial_state"]}
    _, model, batches = build(fixture, small_bert, state,
                              shared={k: False for k in fixture["shared"]})
    # 2 layers x 3 modalities x 2 directions of their own
    blocks = {id(block) for layer in model.fusion.layers for mpu in layer for block in mpu}
    assert len(blocks) == 2 * 3 * 2
    model.eval()
    with torch.no_grad():
        output = model(batches[unshared["batch"]])
    relative_close(output.prediction, unshared["pred_m"], "unshared pred_m")
    relative_close(output.extras["pred_complete"], unshared["pred"], "unshared pred")


def test_emt_eval_without_missing_is_one_view(fixture, small_bert):
    """At eval_missing_rate 0 (the default) the incomplete view is the complete one: equal
    predictions, zero reconstruction losses."""
    config, model, batches = build(fixture, small_bert, fixture["initial_state"])
    del model.missing_masks
    model.config = config.model.model_copy(update={"eval_missing_rate": 0.0})
    model.eval()
    with torch.no_grad():
        output = model(batches[0])
    assert torch.equal(output.prediction, output.extras["pred_complete"])
    assert all(float(output.losses[f"reconstruction_{m}"]) == 0
               for m in ("text", "audio", "vision"))
