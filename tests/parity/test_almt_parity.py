"""ALMT against the official code (Haoyu-ha/ALMT), from the fixture ``tests/parity/almt.pt``.

The fixture is written by ``tools/parity/almt.py`` (see its docstring): the official model at
small sizes on a small random BERT, in float64, one batch of four clips (real text lengths
12/9/6/3 of 12 tokens; fixed-length audio and vision as in the official pickles). msakit's ALMT
gets the official weights through :func:`official_to_msakit` and must give the same prediction,
MSE loss and every gradient within 1e-5; the trainer with ALMT's schedule must take the official
loop's steps and learning rates. At the official dropout rates (all 0, msakit's default too): the
same dropout calls (rate and input shape, in call order) in train mode, and the same eval-mode
predictions.

Name mapping (official -> msakit), ``<m>`` in l/a/v -> text/audio/vision:
``h_hyper`` -> ``hyper_init``; ``bertmodel.model`` -> ``text_encoder.model``; ``proj_<m>.0`` ->
``project_<m>.project``; ``proj_<m>.1.pos_embedding|extra_token`` -> ``project_<m>.positions|tokens``;
``proj_<m>.1.encoder.layers.<i>`` -> ``project_<m>.layers.<i>``; ``l_encoder.pos_embedding`` ->
``language_positions``; ``l_encoder.encoder.layers.<i>`` -> ``language_layers.<i>``;
``h_hyper_layer.layers.<i>.0`` -> ``hyper_layers.<i>`` (``norm1..4`` -> ``norm_text|audio|vision|
hyper``, ``fn.to_q|to_k_ta|to_k_tv|to_v_ta|to_v_tv|to_out`` -> ``to_query|to_key_audio|
to_key_vision|to_value_audio|to_value_vision|to_out``); ``fusion_layer.pos_embedding_s|_t`` ->
``fusion_source_positions|fusion_target_positions``; ``fusion_layer.extra_token`` ->
``fusion_token``; ``fusion_layer.CrossTransformerEncoder.layers.<i>`` -> ``fusion_layers.<i>``;
``regression_layer.0`` -> ``regression``. Inside a layer: ``<i>.0`` (attention) ``norm_q|k|v`` ->
``attention.norm_query|key|value``, ``fn.to_q|k|v|out`` -> ``attention.to_query|key|value|out``;
``<i>.1`` (feed-forward) ``norm`` -> ``feed_forward.net.0``, ``fn.net.0|3`` ->
``feed_forward.net.1|4``.
"""

from __future__ import annotations

import re

import pytest
import torch
from _mmsa_parity import dropout_map
from _parity import assert_official_gradients, load_fixture, rename_by_rules, train_epochs

from msakit.config import build_config
from msakit.models import FeatureDims, create_model
from msakit.training.trainer import make_scheduler

MODALITY = {"l": "text", "a": "audio", "v": "vision"}
TOLERANCE = 1e-5
OFFICIAL_COMMIT = "da9461071f21e75eb8bf2bedff14ac23f5954605"


def _layer(rest: str) -> str:
    attention = {"norm_q": "norm_query", "norm_k": "norm_key", "norm_v": "norm_value",
                 "fn.to_q": "to_query", "fn.to_k": "to_key", "fn.to_v": "to_value",
                 "fn.to_out": "to_out"}
    match = re.match(r"^(\d+)\.0\.(norm_[qkv]|fn\.to_[qkv]|fn\.to_out)\.(.*)$", rest)
    if match:
        return f"{match[1]}.attention.{attention[match[2]]}.{match[3]}"
    match = re.match(r"^(\d+)\.1\.(norm|fn\.net\.0|fn\.net\.3)\.(.*)$", rest)
    if match:
        index = {"norm": 0, "fn.net.0": 1, "fn.net.3": 4}[match[2]]
        return f"{match[1]}.feed_forward.net.{index}.{match[3]}"
    raise KeyError(rest)


def official_to_msakit(name: str) -> str:
    hyper = {"norm1": "norm_text", "norm2": "norm_audio", "norm3": "norm_vision",
             "norm4": "norm_hyper", "fn.to_q": "to_query", "fn.to_k_ta": "to_key_audio",
             "fn.to_k_tv": "to_key_vision", "fn.to_v_ta": "to_value_audio",
             "fn.to_v_tv": "to_value_vision", "fn.to_out": "to_out"}
    rules = [
        (r"^h_hyper$", lambda g: "hyper_init"),
        (r"^bertmodel\.model\.(.*)", lambda g: f"text_encoder.model.{g[0]}"),
        (r"^proj_([lav])\.0\.(.*)", lambda g: f"project_{MODALITY[g[0]]}.project.{g[1]}"),
        (r"^proj_([lav])\.1\.pos_embedding$", lambda g: f"project_{MODALITY[g[0]]}.positions"),
        (r"^proj_([lav])\.1\.extra_token$", lambda g: f"project_{MODALITY[g[0]]}.tokens"),
        (r"^proj_([lav])\.1\.encoder\.layers\.(.*)",
         lambda g: f"project_{MODALITY[g[0]]}.layers.{_layer(g[1])}"),
        (r"^l_encoder\.pos_embedding$", lambda g: "language_positions"),
        (r"^l_encoder\.encoder\.layers\.(.*)", lambda g: f"language_layers.{_layer(g[0])}"),
        (r"^h_hyper_layer\.layers\.(\d+)\.0\.(norm\d|fn\.to_\w+?)\.(.*)",
         lambda g: f"hyper_layers.{g[0]}.{hyper[g[1]]}.{g[2]}"),
        (r"^fusion_layer\.pos_embedding_s$", lambda g: "fusion_source_positions"),
        (r"^fusion_layer\.pos_embedding_t$", lambda g: "fusion_target_positions"),
        (r"^fusion_layer\.extra_token$", lambda g: "fusion_token"),
        (r"^fusion_layer\.CrossTransformerEncoder\.layers\.(.*)",
         lambda g: f"fusion_layers.{_layer(g[0])}"),
        (r"^regression_layer\.0\.(.*)", lambda g: f"regression.{g[0]}"),
    ]
    return rename_by_rules(name, rules)


@pytest.fixture(scope="module")
def fixture():
    loaded = load_fixture("almt")
    # every test here replays the records of this commit of the authors' code
    assert loaded["official"] == "Haoyu-ha/ALMT"
    assert loaded["commit"] == OFFICIAL_COMMIT
    return loaded


def build(fixture, small_bert, mask_padding=False, extra=()):
    m = fixture["model"]
    config = build_config("almt", [
        f"model.language_model={small_bert}", f"model.hidden_size={m['token_dim']}",
        f"model.token_length={m['token_len']}", f"model.projection_depth={m['proj_depth']}",
        f"model.projection_heads={m['proj_heads']}",
        f"model.projection_mlp_size={m['proj_mlp_dim']}",
        "model.attention_head_size=64",  # the official Transformer's fixed dim_head
        f"model.text_encoder_heads={m['l_enc_heads']}",
        f"model.text_encoder_mlp_size={m['l_enc_mlp_dim']}",
        f"model.hyper_layers={m['AHL_depth']}", f"model.hyper_heads={m['ahl_heads']}",
        f"model.hyper_head_size={m['ahl_dim_head']}",
        f"model.fusion_layers={m['fusion_layer_depth']}",
        f"model.fusion_heads={m['fusion_heads']}", f"model.fusion_mlp_size={m['fusion_mlp_dim']}",
        "model.dropout=0.0", f"model.max_text_length={m['l_input_length']}",
        f"model.max_audio_length={m['a_input_length']}",
        f"model.max_vision_length={m['v_input_length']}",
        f"model.mask_padding={str(mask_padding).lower()}", *extra,
    ])
    model = create_model(config.model, FeatureDims(audio=m["a_input_dim"],
                                                   vision=m["v_input_dim"])).double()
    ours = dict(model.named_parameters())
    mapped = {official_to_msakit(k): v.double() for k, v in fixture["initial"].items()}
    assert set(mapped) == set(ours), sorted(set(ours) ^ set(mapped))[:5]
    model.load_state_dict(mapped, strict=False)
    model.train()  # every dropout is 0
    return config, model


def batch_of(fixture, rows=None):
    inputs = fixture["inputs"]
    rows = list(range(len(inputs["labels"]))) if rows is None else rows
    audio, vision = inputs["audio"][rows].double(), inputs["vision"][rows].double()
    return {
        "input_ids": inputs["input_ids"][rows], "attention_mask": inputs["attention_mask"][rows],
        "token_type_ids": inputs["token_type_ids"][rows], "audio": audio, "vision": vision,
        "audio_mask": torch.ones(audio.shape[:2], dtype=torch.bool),
        "vision_mask": torch.ones(vision.shape[:2], dtype=torch.bool),
        "labels": inputs["labels"][rows],
    }


def test_fixture_is_from_the_official_commit(fixture):
    assert fixture["official"] == "Haoyu-ha/ALMT"
    assert fixture["commit"] == OFFICIAL_COMMIT


def test_prediction_loss_and_gradients_match_the_official_code(fixture, small_bert):
    _, model = build(fixture, small_bert)
    output = model(batch_of(fixture))
    torch.testing.assert_close(output.prediction, fixture["prediction"], rtol=0, atol=TOLERANCE)
    torch.testing.assert_close(output.losses["task"], fixture["losses"]["task"], rtol=0,
                               atol=TOLERANCE)
    output.losses["task"].backward()
    compared = assert_official_gradients(model, fixture["grads"], official_to_msakit)
    assert compared == {n for n, p in model.named_parameters() if p.grad is not None}


def test_masking_padding_changes_the_padded_clips_only(fixture, small_bert):
    """msakit's default masks padded steps out of the projection layers' keys; the official
    code attends to them. Clip 0 has no text padding (its audio/vision are full length) and is
    predicted as officially; the clips with padded text are not."""
    _, model = build(fixture, small_bert, mask_padding=True)
    prediction = model(batch_of(fixture)).prediction.detach()
    difference = (prediction - fixture["prediction"]).abs()
    assert bool(fixture["inputs"]["attention_mask"][0].all())
    assert difference[0] < TOLERANCE
    assert bool((difference[1:] > 1e-5).all()), difference  # vs ~1e-16 for clip 0


@pytest.mark.parametrize("epochs", [200, 30, 6])
def test_warmup_cosine_is_the_official_scheduler(fixture, epochs):
    config = build_config("almt", [f"train.epochs={epochs}", "train.lr=1e-4"])
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1e-4)
    scheduler = make_scheduler(optimizer, config, "min", steps_per_epoch=1)
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx(fixture["scheduler_lrs"][epochs], rel=1e-12, abs=1e-18)


def test_official_training_loop_takes_the_same_steps(fixture, small_bert, tmp_path):
    """Three epochs of two batches with ALMT's AdamW and schedule (a 10-epoch budget: lr 0 in
    epoch 1, then the base lr): every parameter moves as under the official train.py."""
    loop = fixture["loop"]
    config, model = build(fixture, small_bert, extra=[
        f"train.epochs={loop['n_epochs']}", f"train.lr={loop['lr']}", f"train.lm_lr={loop['lr']}",
        f"train.weight_decay={loop['weight_decay']}",
        f"train.lm_weight_decay={loop['weight_decay']}",
    ])
    assert config.train.optimizer == "adamw" and config.train.scheduler == "warmup_cosine"
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    batches = [batch_of(fixture, rows) for rows in loop["batches"]]
    lrs = train_epochs(model, config, batches, tmp_path, epochs=loop["epochs_run"],
                       scheduled=True)
    assert lrs == pytest.approx(loop["epoch_lrs"], rel=1e-12)
    ours = dict(model.named_parameters())
    for name, change in loop["param_changes"].items():
        target = official_to_msakit(name)
        torch.testing.assert_close(ours[target].detach() - before[target], change.double(),
                                   rtol=0, atol=1e-6, msg=lambda m, t=target: f"{t}: {m}")


#: the official model's blocks in msakit's call order (msakit projects text, audio, vision; the
#: official code vision, audio, text)
BLOCK_ORDER = ("bertmodel.", "proj_l.", "proj_a.", "proj_v.", "l_encoder.", "h_hyper_layer.",
               "fusion_layer.")
#: the official ``Transformer``/``CrossTransformer`` embedding dropouts (``emb_dropout``): no
#: configuration sets them (always 0), and msakit has no such layer
EMBEDDING_DROPOUTS = ("proj_l.1.dropout", "proj_a.1.dropout", "proj_v.1.dropout",
                      "l_encoder.dropout", "fusion_layer.dropout")


def test_dropout_map_and_eval_forward_match_the_official_code(fixture, small_bert):
    """The official rates are all 0 (``ahl_droup: 0.``; its transformers never set theirs), as
    msakit's ``dropout`` default: the same calls with the same input shapes in train mode, block
    by block (without the official always-0 embedding dropouts), and the same eval-mode
    predictions for the batch and its halves."""
    assert build_config("almt").model.dropout == fixture["model"]["ahl_droup"] == 0.0
    _, model = build(fixture, small_bert)
    official = fixture["dropout_map"]
    calls = list(zip(official["modules"], [(p, tuple(shape)) for p, shape in official["calls"]]))
    assert all(p == 0 for _, (p, _) in calls if _ in EMBEDDING_DROPOUTS)
    assert sum(name in EMBEDDING_DROPOUTS for name, _ in calls) == 6  # fusion: source, target
    assert all(name.startswith(BLOCK_ORDER) for name, _ in calls)
    expected = [call for block in BLOCK_ORDER for name, call in calls
                if name.startswith(block) and name not in EMBEDDING_DROPOUTS]
    assert len(expected) == len(calls) - 6 > 20
    assert dropout_map(model, batch_of(fixture)) == expected
    model.eval()
    with torch.no_grad():
        for rows, theirs in zip(fixture["eval"]["rows"], fixture["eval"]["predictions"]):
            torch.testing.assert_close(model(batch_of(fixture, rows)).prediction, theirs.double(),
                                       rtol=0, atol=TOLERANCE, msg=lambda m, r=rows: f"{r}: {m}")
