"""TETFN against MMSA's port (thuiar/MMSA v2.2.1; the authors published no other code), from the
fixture of ``tools/parity/tetfn.py`` (no official code needed here).

The fixture's official run: a tiny random BERT, width 6, conv kernels 3 (text) and 2 (audio, and
vision: MMSA builds it with the audio kernel), float64, six real clips in three batches of two
read as MMSA's aligned arrays of 24 steps (``*_attended_steps=24``: two clips cut, the others
padded), ``update_epochs`` 2, ``excludeZero`` with one clip labelled 0, four epochs of MMSA's
``do_train`` with scripted validation losses. msakit replays it through its own trainer
(``Trainer.fit``) and must match every forward pass (the four predictions and ``F*``
representations), every loss term, ULGM's generated labels and centres after every batch, the
accumulated gradient of every parameter at the second optimiser step, every parameter after the
last, and the epoch early stopping ends on. From the same initial weights: the dropout maps
(rate and input shape of every call in order, MMSA's attention-weight dropouts included) at
MMSA's MOSI rates and at distinct rates, and the eval-mode predictions at the MOSI rates, also
with audio/vision arrays of 40/30 steps that both sides average-pool to the text's 24.

Name mapping, official -> msakit (``to_msakit``): ``text_model.model`` ->
``text_encoder.model``; ``audio_model``/``video_model`` -> ``audio_subnet``/``vision_subnet``;
``proj_l`` -> ``text_projection``; ``trans_<t>_with_<s>`` -> ``cross.<s>_to_<t>`` (``a_with_v``
and ``v_with_a``: ``text_enhanced.<s>_to_<t>`` with ``lower_mha``/``upper_mha`` -> ``lower``/
``upper``); ``trans_<m>_mem`` -> ``memories.<m>``; inside an encoder ``self_attn`` ->
``attention``, ``layer_norms.0``/``.1`` -> ``attention_norm``/``ffn_norm``, ``layer_norm`` ->
``final_norm``; ``post_<fusion|text|audio|video>_layer_<1|2|3>`` ->
``heads.<m|t|a|v>.<project|hidden|out>``. Official buffers without a counterpart: ``version``
and ``embed_positions._float_tensor``.
"""

from __future__ import annotations

import re

import pytest
import torch
from _mmsa_parity import (
    batch_first_official_calls,
    check_fixture_origin,
    dropout_map_with_attention,
)
from _parity import fit_with_scripted_validation, load_fixture, load_mapped, relative_close

from msakit.config import build_config
from msakit.models import FeatureDims, create_model

MODALITY = {"l": "text", "a": "audio", "v": "vision"}
HEADS = {"fusion": "m", "text": "t", "audio": "a", "video": "v"}
LAYERS = {"1": "project", "2": "hidden", "3": "out"}
ENCODER_PARTS = {".self_attn.": ".attention.", ".layer_norms.0.": ".attention_norm.",
                 ".layer_norms.1.": ".ffn_norm."}
#: official loss modes / ULGM tasks -> msakit
LOSS_TERMS = {"fusion": "task", "text": "task_t", "audio": "task_a", "vision": "task_v"}
ULGM_TASKS = {"fusion": "m", "text": "t", "audio": "a", "vision": "v"}
OUTPUTS = {"T": "pred_t", "A": "pred_a", "V": "pred_v", "Feature_f": "feature_m",
           "Feature_t": "feature_t", "Feature_a": "feature_a", "Feature_v": "feature_v"}
#: MMSA's dropout names -> msakit's
RATES = {"attn_dropout": "attn_dropout", "attn_dropout_a": "attn_dropout_audio",
         "attn_dropout_v": "attn_dropout_vision", "relu_dropout": "relu_dropout",
         "embed_dropout": "embed_dropout", "res_dropout": "res_dropout",
         "a_lstm_dropout": "audio_lstm_dropout", "v_lstm_dropout": "vision_lstm_dropout",
         **{f"post_{k}_dropout": f"post_{v}_dropout"
            for k, v in (("fusion", "fusion"), ("text", "text"), ("audio", "audio"),
                         ("video", "vision"))}}


def to_msakit(name: str) -> str:
    if name.startswith("text_model.model."):
        return "text_encoder.model." + name.removeprefix("text_model.model.")
    if name.startswith(("audio_model.", "video_model.")):
        owner, _, rest = name.partition(".")
        return {"audio_model": "audio_subnet", "video_model": "vision_subnet"}[owner] + "." + rest
    if name.startswith("proj_l."):
        return "text_projection." + name.removeprefix("proj_l.")
    match = re.match(r"post_(fusion|text|audio|video)_layer_(\d)\.(.*)", name)
    if match:
        head, layer, rest = match.groups()
        return f"heads.{HEADS[head]}.{LAYERS[layer]}.{rest}"
    match = re.match(r"trans_([lav])_(mem|with_[lav])\.((?:lower_mha|upper_mha)\.)?(.*)", name)
    if not match:
        raise KeyError(f"no msakit name for official parameter {name!r}")
    target, kind, part, rest = match.groups()
    if kind == "mem":
        prefix = f"memories.{MODALITY[target]}"
    else:
        source = MODALITY[kind[-1]]
        if part:
            part = {"lower_mha.": "lower", "upper_mha.": "upper"}[part]
            prefix = f"text_enhanced.{source}_to_{MODALITY[target]}.{part}"
        else:
            prefix = f"cross.{source}_to_{MODALITY[target]}"
    if rest.startswith("layer_norm."):
        return f"{prefix}.final_norm.{rest.removeprefix('layer_norm.')}"
    rest = "." + rest
    for official, ours in ENCODER_PARTS.items():
        rest = rest.replace(official, ours)
    return prefix + rest


@pytest.fixture(scope="module")
def fixture():
    loaded = load_fixture("tetfn")
    check_fixture_origin(loaded)  # every test here replays MMSA v2.2.1's records
    return loaded


def overrides(fixture, small_bert, rates: dict | None = None, steps=None) -> list[str]:
    sizes, optimiser = fixture["sizes"], fixture["optimiser"]
    rates = rates or {k: 0.0 for k in fixture["mosi_rates"]}
    text, audio, vision = steps or (fixture["steps_per_array"],) * 3
    return [
        f"model.language_model={small_bert}", f"model.embed_dim={sizes['dst_feature_dims']}",
        f"model.num_heads={sizes['nheads']}",
        f"model.audio_lstm_hidden={sizes['a_lstm_hidden_size']}",
        f"model.vision_lstm_hidden={sizes['v_lstm_hidden_size']}",
        f"model.conv_kernel_text={sizes['conv1d_kernel_size_l']}",
        f"model.conv_kernel_audio={sizes['conv1d_kernel_size_a']}",
        *(f"model.post_{ours}_dim={sizes[f'post_{theirs}_dim']}"
          for theirs, ours in (("fusion", "fusion"), ("text", "text"), ("audio", "audio"),
                               ("video", "vision"))),
        *(f"model.{RATES[k]}={v}" for k, v in rates.items()),
        f"model.label_limit={fixture['label_limit']}",
        f"model.exclude_zero={str(fixture['exclude_zero']).lower()}",
        *(f"model.{m}_attended_steps={'null' if n is None else n}"
          for m, n in (("text", text), ("audio", audio), ("vision", vision))),
        f"model.audio_lr={optimiser['learning_rate_audio']}",
        f"model.audio_weight_decay={optimiser['weight_decay_audio']}",
        f"model.vision_lr={optimiser['learning_rate_video']}",
        f"model.vision_weight_decay={optimiser['weight_decay_video']}",
        f"train.lr={optimiser['learning_rate_other']}",
        f"train.weight_decay={optimiser['weight_decay_other']}",
        f"train.lm_lr={optimiser['learning_rate_bert']}",
        f"train.lm_weight_decay={optimiser['weight_decay_bert']}",
        f"train.grad_accumulation={fixture['update_epochs']}",
        "train.accumulation=sum", "train.partial_accumulation=drop",
        f"train.min_improvement={fixture['early_stopping']['min_improvement']}",
        f"train.patience={fixture['early_stopping']['early_stop']}",
        "train.epochs=10", "train.device=cpu", "train.optimizer=adam",
    ]


def msakit_batches(fixture) -> list[dict]:
    out = []
    for b in fixture["batches"]:
        lengths = b["lengths"]
        mask = torch.arange(b["audio"].shape[1])[None] < lengths[:, None]
        out.append({
            "index": b["index"], "input_ids": b["input_ids"],
            "attention_mask": b["attention_mask"],
            "token_type_ids": torch.zeros_like(b["input_ids"]),
            "audio": b["audio"].double(), "audio_lengths": lengths, "audio_mask": mask,
            "vision": b["vision"].double(), "vision_lengths": lengths, "vision_mask": mask,
            "labels": b["labels"].double(), "ids": [f"clip{i}" for i in b["index"].tolist()],
        })
    return out


def build(fixture, small_bert, **kwargs):
    config = build_config("tetfn", overrides(fixture, small_bert, **kwargs))
    batches = msakit_batches(fixture)
    dims = FeatureDims(batches[0]["audio"].shape[-1], batches[0]["vision"].shape[-1])
    model = create_model(config.model, dims).double()
    state = {k: v for k, v in fixture["initial_state"].items()
             if not k.endswith((".version", "embed_positions._float_tensor"))}
    load_mapped(model, {k: v.double() for k, v in state.items()}, to_msakit)
    return config, model, batches


def test_tetfn_matches_mmsa_training_run(fixture, small_bert, tmp_path, monkeypatch):
    config, model, batches = build(fixture, small_bert)
    record = {"forwards": [], "ulgm": [], "optimizer_steps": []}
    forward = model.forward

    def recording_forward(batch):
        output = forward(batch)
        record["forwards"].append(output)
        return output

    model.forward = recording_forward
    ulgm_step = model.ulgm.step

    def recording_step(*args, **kwargs):
        ulgm_step(*args, **kwargs)
        record["ulgm"].append(({k: v.clone() for k, v in model.ulgm.labels.items()},
                               {k: {c: v.clone() for c, v in cs.items()}
                                for k, cs in model.ulgm.centres.items()}))

    model.ulgm.step = recording_step

    def record_step(m, gradients):
        record["optimizer_steps"].append({
            "after_forward": len(record["forwards"]), "gradients": gradients,
            "parameters": {k: p.detach().clone() for k, p in m.named_parameters()}})

    labels = torch.cat([b["labels"] for b in batches])  # float64: ULGM keeps that precision
    summary, valid_calls = fit_with_scripted_validation(
        config, model, batches, labels, fixture["early_stopping"]["valid_losses"], tmp_path,
        monkeypatch, record_step)

    steps = fixture["steps"]
    assert len(record["forwards"]) == len(steps) == 12  # 4 epochs x 3 batches
    for i, (official, ours) in enumerate(zip(steps, record["forwards"])):
        where = f"forward {i + 1}"
        relative_close(ours.prediction, official["outputs"]["M"], f"{where}: prediction M")
        for name, extra in OUTPUTS.items():
            kind = "prediction" if extra.startswith("pred_") else "feature"
            relative_close(ours.extras[extra], official["outputs"][name], f"{where}: {kind} {name}")
        for mode, term in LOSS_TERMS.items():
            relative_close(ours.losses[term], official["losses"][mode], f"{where}: {term}")
        labels_after, centres = record["ulgm"][i]
        for mode, key in ULGM_TASKS.items():
            relative_close(labels_after[key], official["labels"][mode], f"{where}: labels {mode}")
            for c in ("pos", "neg"):
                relative_close(centres[key][c], official["centres"][mode][c],
                               f"{where}: centre {mode}/{c}")
    # the run exercises ULGM: labels move from epoch 2, weighted unimodal terms from epoch 3
    assert float((steps[-1]["labels"]["audio"] - steps[-1]["labels"]["fusion"]).abs().max()) > 0.01
    assert float(steps[5]["losses"]["text"]) == 0 < float(steps[6]["losses"]["text"])

    official_steps = fixture["optimizer_steps"]
    assert [s["after_forward"] for s in record["optimizer_steps"]] == \
        [s["after_forward"] for s in official_steps] == [2, 5, 8, 11]  # 3rd batch dropped
    compared = 0
    for official, ours in zip(official_steps, record["optimizer_steps"]):
        for kind in ("gradients", "parameters"):
            for name, value in official.get(kind, {}).items():
                mine = ours[kind][to_msakit(name)]
                if kind == "parameters" and name.endswith("self_attn.in_proj_bias"):
                    mine, value = _without_key_bias(mine, value, config, fixture)
                relative_close(mine, value, f"{kind} of {name}")
                compared += 1
    assert compared == 2 * len(dict(model.named_parameters()))

    stopping = fixture["early_stopping"]
    assert summary["epochs_run"] == valid_calls == stopping["epochs_run"] == 4
    assert summary["best_epoch"] == 2  # epoch 3's gain of 5e-7 is below MMSA's 1e-6


def _without_key_bias(ours: torch.Tensor, theirs: torch.Tensor, config, fixture):
    """An attention's in-projection bias without its key part, which is checked apart.

    The key bias adds the same ``q . b_k`` to every score of a query, which the softmax
    cancels: its gradient is 0 in exact arithmetic (msakit's is, to ~1e-16). MMSA computes the
    softmax in float32 (``attn_weights.float()``), whose rounding leaves the key bias a gradient
    of ~1e-9 even in this float64 run, and Adam turns any gradient above its eps into steps of
    up to ``lr``: the official key biases drift by up to ``lr`` per step, msakit's stay at 0.
    """
    width = theirs.shape[0] // 3
    steps = len(fixture["optimizer_steps"])
    drift = float(theirs[width:2 * width].abs().max())
    assert drift <= steps * config.train.lr * 1.01, f"key bias drift {drift:.2e}"
    assert float(ours[width:2 * width].abs().max()) <= 1e-6
    keep = torch.cat([torch.arange(width), torch.arange(2 * width, 3 * width)])
    return ours.reshape(-1)[keep], theirs[keep]


def test_exclude_zero_matters_in_this_run(fixture):
    """A clip labelled 0 is in the batches: the official centres leave it out."""
    assert (torch.cat([b["labels"] for b in fixture["batches"]]) == 0).sum() == 1
    assert fixture["exclude_zero"] is True


@pytest.mark.parametrize("rates", ["mosi_rates", "distinct_rates"])
def test_tetfn_dropout_map_matches_mmsa(fixture, small_bert, rates):
    """Every dropout call in MMSA's order with its rate and input shape, compared in msakit's
    batch-first layout (MMSA's transformers are sequence-first)."""
    _, model, batches = build(fixture, small_bert, rates=fixture[rates])
    official = fixture["dropout_map" if rates == "mosi_rates" else "distinct_dropout_map"]
    batch = batches[official["batch"]]
    size = batch["input_ids"].shape[0]
    heads = fixture["sizes"]["nheads"]
    expected = batch_first_official_calls(official["calls"], size, heads,
                                          (fixture["steps_per_array"],
                                           fixture["tiny_bert"]["hidden_size"]))
    assert any(p > 0 for p, _ in expected)
    # attentions: 4 cross-modal encoders and 3 memories of 2 layers, 2 text-enhanced of 1 + 2
    assert sum(shape[0] == size * heads for _, shape in expected) == 4 * 2 + 3 * 2 + 2 * 3
    assert dropout_map_with_attention(model, batch) == expected


def test_tetfn_eval_forward_matches_mmsa(fixture, small_bert):
    _, model, batches = build(fixture, small_bert, rates=fixture["mosi_rates"])
    model.eval()
    with torch.no_grad():
        for i, (batch, theirs) in enumerate(zip(batches, fixture["eval_forwards"])):
            output = model(batch)
            ours = {"M": output.prediction, **{k.upper(): output.extras[f"pred_{k}"]
                                                for k in "tav"}}
            for key, value in theirs.items():
                relative_close(ours[key], value, f"eval batch {i}: {key}")


def test_tetfn_pools_longer_audio_vision_to_the_text_length_as_mmsa(fixture, small_bert):
    """Arrays of 40 audio / 30 vision steps are average-pooled to the text's 24 (MMSA's
    ``need_model_aligned`` ``AlignSubNet``, ``avg_pool``: its SIMS path)."""
    steps = (fixture["steps_per_array"], *fixture["align_steps"])
    _, model, batches = build(fixture, small_bert, rates=fixture["mosi_rates"], steps=steps)
    model.eval()
    with torch.no_grad():
        for i, (batch, theirs) in enumerate(zip(batches, fixture["aligned_eval_forwards"])):
            relative_close(model(batch).prediction, theirs, f"aligned eval batch {i}")


def test_defaults_are_mmsa_mosi_rates(fixture):
    model = build_config("tetfn").model
    for theirs, ours in RATES.items():
        assert getattr(model, ours) == fixture["mosi_rates"][theirs], ours
    assert (model.text_attended_steps, model.audio_attended_steps,
            model.vision_attended_steps) == (50, 50, 50)  # MMSA's aligned_50 arrays
    assert model.exclude_zero and model.conv_kernel_vision is None


def test_real_steps_reading_equals_mmsa_reading_on_a_clip_without_padding(fixture, small_bert):
    """``*_attended_steps=None`` (padding masked) and MMSA's reading agree on a clip whose
    sequences fill every one of the N steps: the readings differ only in what they do with
    padding."""
    batch = msakit_batches(fixture)[0]
    length = int(batch["attention_mask"][0].sum())
    generator = torch.Generator().manual_seed(0)
    clip = {"input_ids": batch["input_ids"][:1, :length],
            "attention_mask": batch["attention_mask"][:1, :length],
            "token_type_ids": batch["token_type_ids"][:1, :length]}
    for m in ("audio", "vision"):
        clip[m] = torch.randn(1, length, batch[m].shape[-1], generator=generator,
                              dtype=torch.float64)
        clip[f"{m}_mask"] = torch.ones(1, length, dtype=torch.bool)
        clip[f"{m}_lengths"] = torch.tensor([length])
    predictions = {}
    for steps in (length, None):
        _, model, _ = build(fixture, small_bert, rates=fixture["mosi_rates"], steps=(steps,) * 3)
        model.eval()
        with torch.no_grad():
            predictions[steps] = model(clip).prediction
    relative_close(predictions[None], predictions[length], "real steps vs MMSA's reading")
