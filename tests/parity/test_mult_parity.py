"""MulT equals the authors' code (yaohungt/Multimodal-Transformer) on real clips: prediction,
L1 loss, every gradient (BERT's included), three steps of the official training loop, its
scheduler settings, and at the official default dropout rates (``main.py``) the dropout map and
the eval-mode predictions.

The fixture ``mult.pt`` comes from ``tools/parity/mult.py``: the official ``MULTModel`` at width 8
fed the states of the same small random BERT msakit uses (the official model reads precomputed
text features; msakit's reads an LM, so the fixture composes BERT -> official MulT), real MOSI
clips right-padded to the batch's longest (text W + 2 tokens, audio/vision W words: unaligned
lengths), float64, dropout 0. Parity runs with the official settings ``model.padding=official``
(padded steps attended to, positional embedding skipped where the first feature is 0, future-mask
offset from padded lengths) and ``model.readout=last_position``.

Name mapping official -> msakit: ``bert.`` -> ``text_encoder.model.``; ``proj_{l,a,v}`` ->
``projections.{text,audio,vision}.conv``; ``trans_<t>_with_<s>`` -> ``fusion.streams.<s>_to_<t>``;
``trans_<t>_mem`` -> ``fusion.memories.<t>``; inside each encoder ``self_attn`` -> ``attention``,
``layer_norms.0``/``.1`` -> ``attention_norm``/``ffn_norm``, the final ``layer_norm`` ->
``final_norm``; ``proj1``, ``proj2``, ``out_layer`` keep their names. Official buffers without a
counterpart: ``embed_positions._float_tensor`` and ``version``.
"""

from __future__ import annotations

import pytest
import torch
from _mmsa_parity import batch_first_official_calls, dropout_map_with_attention
from _parity import (
    assert_close,
    assert_official_gradients,
    load_fixture,
    load_mapped,
    msakit_batch,
    small_bert_dir,
    train_steps,
)
from _recording import record_close

from msakit.config import build_config
from msakit.models import FeatureDims, create_model

MODALITY = {"l": "text", "a": "audio", "v": "vision"}
ENCODER_PARTS = {"self_attn": "attention", "layer_norms.0": "attention_norm",
                 "layer_norms.1": "ffn_norm"}
OFFICIAL_SETTINGS = ["model.padding=official", "model.readout=last_position"]
OFFICIAL_COMMIT = "a670936824ee722c8494fd98d204977a1d663c7a"


def official_to_msakit(name: str) -> str:
    if name.startswith("bert."):
        return "text_encoder.model." + name.removeprefix("bert.")
    head, _, rest = name.partition(".")
    if head.startswith("proj_"):
        return f"projections.{MODALITY[head[-1]]}.conv.{rest}"
    if head.startswith("trans_"):
        _, target, kind = head.split("_", 2)  # trans_l_with_a / trans_l_mem
        prefix = (f"fusion.memories.{MODALITY[target]}" if kind == "mem"
                  else f"fusion.streams.{MODALITY[kind[-1]]}_to_{MODALITY[target]}")
        if rest.startswith("layer_norm."):
            return f"{prefix}.final_norm.{rest.removeprefix('layer_norm.')}"
        for official, ours in ENCODER_PARTS.items():
            rest = rest.replace(f".{official}.", f".{ours}.")
        return f"{prefix}.{rest}"
    return name  # proj1, proj2, out_layer


def _parameters_and_used_buffers(state: dict) -> dict:
    return {k: v for k, v in state.items()
            if not k.endswith(("embed_positions._float_tensor", ".version"))}


@pytest.fixture(scope="module")
def fixture():
    loaded = load_fixture("mult")
    # every test here replays the records of this commit of the authors' code
    assert loaded["official_repo"] == "yaohungt/Multimodal-Transformer"
    assert loaded["official_commit"] == OFFICIAL_COMMIT
    return loaded


def build(fixture, tmp_path, overrides=()):
    sizes = fixture["sizes"]
    dropouts = ["text_dropout", "attn_dropout", "attn_dropout_audio", "attn_dropout_vision",
                "relu_dropout", "res_dropout", "embed_dropout", "out_dropout"]
    settings = [
        f"model.language_model={small_bert_dir(fixture, tmp_path / 'bert')}",
        f"model.embed_dim={sizes['embed_dim']}", f"model.num_heads={sizes['num_heads']}",
        f"model.num_layers={sizes['num_layers']}", f"model.memory_layers={sizes['memory_layers']}",
        *[f"model.{d}=0.0" for d in dropouts], *overrides,
    ]
    config = build_config("mult", settings)
    model = create_model(config.model, FeatureDims(audio=sizes["audio"], vision=sizes["vision"]))
    load_mapped(model, _parameters_and_used_buffers(fixture["initial"]), official_to_msakit)
    return config, model.double()


def test_prediction_loss_and_every_gradient_equal_the_official(fixture, tmp_path):
    _, model = build(fixture, tmp_path, OFFICIAL_SETTINGS)
    model.train()
    batch = msakit_batch(fixture["batches"][0])
    assert (batch["attention_mask"].sum(1) != batch["audio_lengths"]).all()  # unaligned
    assert batch["audio_lengths"].min() < batch["audio_lengths"].max()
    output = model(batch)
    assert_close(output.prediction, fixture["prediction"], "prediction")
    assert_close(output.losses["task"], fixture["losses"]["task"], "L1 loss")
    output.losses["task"].backward()
    assert_official_gradients(model, fixture["gradients"], official_to_msakit)
    assert len(fixture["gradients"]) > 100


def test_three_training_steps_follow_the_official_loop(fixture, tmp_path):
    """Adam 1e-3 on every MulT weight, clip_grad_norm_ 0.8 on all parameters, text features
    fixed (the official model reads fixed GloVe vectors; msakit: a frozen LM). Tolerance 1e-5
    on every weight after the steps, except the attention key biases (see below)."""
    config, model = build(fixture, tmp_path,
                          OFFICIAL_SETTINGS + ["model.freeze_language_model=true"])
    official = fixture["official_settings"]
    assert config.train.lr == official["lr"]
    assert config.train.grad_clip_norm == official["clip_norm"]
    assert config.train.grad_clip_value is None and config.train.weight_decay == 0.0
    batches = [msakit_batch(b) for b in fixture["batches"]]
    totals = train_steps(model, config, batches, tmp_path)
    trajectory = fixture["trajectory"]
    for step, (ours, theirs) in enumerate(zip(totals, trajectory["losses"].tolist()), start=1):
        record_close(ours, theirs, f"step {step} total loss", 1e-5)
        assert abs(ours - theirs) <= 1e-5, f"step {step} loss {ours} vs official {theirs}"
    state = model.state_dict()
    for name, value in _parameters_and_used_buffers(trajectory["after"]).items():
        ours = state[official_to_msakit(name)]
        if name.endswith("in_proj_bias"):
            # the key bias shifts every score of a query equally: its true gradient is 0 and
            # both codes hold rounding noise (~1e-17), which Adam scales to a full lr step;
            # compare the query and value biases only
            width = value.shape[0] // 3
            keep = torch.ones_like(value, dtype=torch.bool)
            keep[width : 2 * width] = False
            ours, value = ours[keep], value[keep]
        assert_close(ours, value, f"{name} after {trajectory['steps']} steps")


def test_scheduler_and_selection_are_the_official_ones(fixture):
    """ReduceLROnPlateau(min, factor 0.1, patience 20 = ``--when``) on the validation loss, all
    epochs trained (no early stop), the checkpoint with the lowest validation loss kept."""
    train = build_config("mult").train
    plateau = fixture["official_settings"]["plateau"]
    assert train.scheduler == "plateau" and train.selection_metric == "loss"  # mode min
    assert plateau["mode"] == "min"
    assert (train.plateau_factor, train.plateau_patience) == (plateau["factor"],
                                                              plateau["patience"])
    assert (plateau["threshold"], plateau["threshold_mode"]) == (1e-4, "rel")  # torch defaults
    assert train.patience is None and train.epochs == 40


def test_msakit_default_padding_makes_a_clip_independent_of_its_batch(fixture, tmp_path):
    """What ``padding=masked`` and ``readout=last_valid`` (the msakit defaults) change: the
    official setting reads padded steps, so a clip's prediction depends on its batch."""
    batch = msakit_batch(fixture["batches"][0])
    alone = [msakit_batch({k: (v[i : i + 1] if torch.is_tensor(v) else v[i : i + 1])
                           for k, v in fixture["batches"][0].items()}) for i in range(4)]
    for clip in alone:  # cut each clip to its own lengths: no padding at all
        words = int(clip["audio_lengths"][0])
        tokens = int(clip["attention_mask"].sum())
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            clip[key] = clip[key][:, :tokens]
        for key in ("audio", "vision", "audio_mask", "vision_mask", "word_audio", "word_vision",
                    "word_mask"):
            clip[key] = clip[key][:, :words]
    predictions = {}
    for name, overrides in (("official", OFFICIAL_SETTINGS), ("default", [])):
        _, model = build(fixture, tmp_path / name, overrides)
        model.eval()
        with torch.no_grad():
            together = model(batch).prediction
            single = torch.cat([model(clip).prediction for clip in alone])
        predictions[name] = (together - single).abs().max().item()
    assert predictions["default"] <= 1e-6
    assert predictions["official"] > 1e-3


def official_rates(fixture) -> list[str]:
    """The official ``main.py`` dropout defaults as msakit overrides (``--embed_dropout`` is
    also the official dropout on the text input: msakit's ``text_dropout``)."""
    rates = fixture["official_dropouts"]
    return [f"model.text_dropout={rates['embed_dropout']}",
            f"model.embed_dropout={rates['embed_dropout']}",
            f"model.attn_dropout={rates['attn_dropout']}",
            f"model.attn_dropout_audio={rates['attn_dropout_a']}",
            f"model.attn_dropout_vision={rates['attn_dropout_v']}",
            f"model.relu_dropout={rates['relu_dropout']}",
            f"model.res_dropout={rates['res_dropout']}",
            f"model.out_dropout={rates['out_dropout']}"]


def test_defaults_are_the_official_rates(fixture):
    assert build_config("mult", official_rates(fixture)).model == build_config("mult").model


def test_dropout_map_and_eval_forward_equal_the_official(fixture, tmp_path):
    """Every dropout call in official order with its rate and input shape (the official code
    is sequence-first and transposes the text for its Conv1d: compared in msakit's batch-first
    layout); the cross-modal keys and values each get their own embedding dropout."""
    _, model = build(fixture, tmp_path, OFFICIAL_SETTINGS + official_rates(fixture))
    batch = msakit_batch(fixture["batches"][fixture["dropout_map"]["batch"]])
    size, text_length = batch["input_ids"].shape
    heads = fixture["sizes"]["num_heads"]
    expected = batch_first_official_calls(fixture["dropout_map"]["calls"], size, heads,
                                          (text_length, fixture["bert_config"]["hidden_size"]))
    assert any(p > 0 for p, _ in expected)
    sizes = fixture["sizes"]  # attentions: 6 cross-modal streams, 3 memories
    assert sum(shape[0] == size * heads for _, shape in expected) == \
        6 * sizes["num_layers"] + 3 * sizes["memory_layers"]
    assert dropout_map_with_attention(model, batch) == expected
    model.eval()
    with torch.no_grad():
        for i, (b, theirs) in enumerate(zip(fixture["batches"], fixture["eval_predictions"])):
            assert_close(model(msakit_batch(b)).prediction, theirs, f"eval batch {i}")
