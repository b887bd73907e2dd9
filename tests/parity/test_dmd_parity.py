"""DMD against the official code (mdswyz/DMD), from the fixture ``tests/parity/dmd.pt``.

The fixture is written by ``tools/parity/dmd.py`` (see its docstring): the official model at small
sizes on a small random BERT, in float64, one batch of four clips with real lengths 50/37/23/12.
Here msakit's DMD gets the official weights through :func:`official_to_msakit` and must give
the same prediction, every loss term, the combined loss and every gradient within 1e-5; the
trainer, set to DMD's official loop, must take the same two optimiser steps; and at the official
MOSI dropout rates (``config/config.json``) the dropout calls of a train-mode pass and the eval-mode
predictions must be the official ones.

Name mapping (official -> msakit), ``<m>`` in l/a/v -> text/audio/vision:
``text_model.model`` -> ``text_encoder.model``; ``proj_<m>`` -> ``projections.<m>.conv``;
``encoder_s_<m>`` / ``encoder_c`` / ``decoder_<m>`` (kernel-1 convs) -> ``exclusive_encoders.<m>``
/ ``common_encoder`` / ``decoders.<m>`` (linear, kernel axis dropped); ``align_c_<m>`` ->
``margin_projections.<m>`` (the official layer reads ``c_m`` flattened channel-major, msakit
time-major: :func:`convert` reorders its weight's columns);
``proj1|proj2|out_layer_<m>_low`` -> ``homo_heads.<m>.proj1|proj2|out``;
``..._high`` -> ``hetero_heads.<m>...``; ``proj1_c|proj2_c|out_layer_c`` -> ``common_head``;
``self_attentions_c_<m>`` -> ``common_encoders.<m>``; ``trans_<t>_with_<s>`` ->
``fusion.streams.<s>_to_<t>``; ``trans_<t>_mem`` -> ``fusion.memories.<t>``; ``weight_<m>`` ->
``gates.<m>``; ``weight_c`` -> ``gate_common``; ``proj1|proj2|out_layer`` -> ``output_head``;
kernels ``W_logit|W_repr|W_edge`` -> ``<unit>.logit_embedding|repr_embedding|edge_score``.
Inside a transformer: ``layers.<i>.self_attn`` -> ``layers.<i>.attention``, ``layer_norms.0|1`` ->
``attention_norm|ffn_norm``, ``layer_norm`` -> ``final_norm``. The official ``proj_cosine_<m>``
layers feed no loss and have no msakit counterpart.
"""

from __future__ import annotations

import re

import pytest
import torch
from _mmsa_parity import batch_first_official_calls, dropout_map_with_attention
from _parity import assert_official_gradients, load_fixture, rename_by_rules, train_epochs

from msakit.config import build_config
from msakit.models import FeatureDims, create_model
from msakit.training.trainer import weighted_loss

MODALITY = {"l": "text", "a": "audio", "v": "vision"}
TOLERANCE = 1e-5
OFFICIAL_COMMIT = "516d4e116c22220e08873fa38df828d1a0d6f7e8"
UNMAPPED = re.compile(r"^dmd\.proj_cosine_[lav]\.")


def _encoder(rest: str) -> str:
    rest = re.sub(r"^layers\.(\d+)\.self_attn\.", r"layers.\1.attention.", rest)
    rest = re.sub(r"^layers\.(\d+)\.layer_norms\.0\.", r"layers.\1.attention_norm.", rest)
    rest = re.sub(r"^layers\.(\d+)\.layer_norms\.1\.", r"layers.\1.ffn_norm.", rest)
    return re.sub(r"^layer_norm\.", "final_norm.", rest)


def official_to_msakit(name: str) -> str | None:
    """msakit's parameter name for an official one (``None``: no counterpart)."""
    if UNMAPPED.match(name):
        return None
    unit, _, rest = name.partition(".")
    if unit in ("homo_gd", "hetero_gd"):
        layer = {"W_logit": "logit_embedding", "W_repr": "repr_embedding", "W_edge": "edge_score"}
        head, _, tail = rest.partition(".")
        return f"{unit}.{layer[head]}.{tail}"
    rules = [
        (r"^text_model\.model\.(.*)", lambda g: f"text_encoder.model.{g[0]}"),
        (r"^proj_([lav])\.(.*)", lambda g: f"projections.{MODALITY[g[0]]}.conv.{g[1]}"),
        (r"^encoder_s_([lav])\.(.*)", lambda g: f"exclusive_encoders.{MODALITY[g[0]]}.{g[1]}"),
        (r"^encoder_c\.(.*)", lambda g: f"common_encoder.{g[0]}"),
        (r"^decoder_([lav])\.(.*)", lambda g: f"decoders.{MODALITY[g[0]]}.{g[1]}"),
        (r"^align_c_([lav])\.(.*)", lambda g: f"margin_projections.{MODALITY[g[0]]}.{g[1]}"),
        (r"^(proj1|proj2)_([lav])_low\.(.*)",
         lambda g: f"homo_heads.{MODALITY[g[1]]}.{g[0]}.{g[2]}"),
        (r"^out_layer_([lav])_low\.(.*)", lambda g: f"homo_heads.{MODALITY[g[0]]}.out.{g[1]}"),
        (r"^(proj1|proj2)_([lav])_high\.(.*)",
         lambda g: f"hetero_heads.{MODALITY[g[1]]}.{g[0]}.{g[2]}"),
        (r"^out_layer_([lav])_high\.(.*)",
         lambda g: f"hetero_heads.{MODALITY[g[0]]}.out.{g[1]}"),
        (r"^(proj1|proj2)_c\.(.*)", lambda g: f"common_head.{g[0]}.{g[1]}"),
        (r"^out_layer_c\.(.*)", lambda g: f"common_head.out.{g[0]}"),
        (r"^self_attentions_c_([lav])\.(.*)",
         lambda g: f"common_encoders.{MODALITY[g[0]]}.{_encoder(g[1])}"),
        (r"^trans_([lav])_with_([lav])\.(.*)",
         lambda g: f"fusion.streams.{MODALITY[g[1]]}_to_{MODALITY[g[0]]}.{_encoder(g[2])}"),
        (r"^trans_([lav])_mem\.(.*)",
         lambda g: f"fusion.memories.{MODALITY[g[0]]}.{_encoder(g[1])}"),
        (r"^weight_([lav])\.(.*)", lambda g: f"gates.{MODALITY[g[0]]}.{g[1]}"),
        (r"^weight_c\.(.*)", lambda g: f"gate_common.{g[0]}"),
        (r"^(proj1|proj2)\.(.*)", lambda g: f"output_head.{g[0]}.{g[1]}"),
        (r"^out_layer\.(.*)", lambda g: f"output_head.out.{g[0]}"),
    ]
    try:
        return rename_by_rules(rest, rules)
    except KeyError:
        raise KeyError(f"no msakit name for official parameter {name!r}") from None


def convert(name: str, value: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """An official weight (or gradient) in the layout of msakit's parameter of ``shape``."""
    value = value.double()
    if re.match(r"^dmd\.align_c_[lav]\.weight$", name):  # (d, d T') over (channel, step)
        out, features = value.shape
        channels = shape[0]
        value = value.reshape(out, channels, features // channels).transpose(1, 2)
    return value.reshape(shape)


@pytest.fixture(scope="module")
def fixture():
    loaded = load_fixture("dmd")
    # every test here replays the records of this commit of the authors' code
    assert loaded["official"] == "mdswyz/DMD"
    assert loaded["commit"] == OFFICIAL_COMMIT
    return loaded


OFFICIAL_SETTINGS = ["model.padding=official", "model.readout=last_position",
                     "model.zero_padded_text=false", "model.hetero_repr_weighting=batch_mean"]


def build(fixture, small_bert, settings=OFFICIAL_SETTINGS, extra=()):
    sizes = fixture["sizes"]
    overrides = [
        f"model.language_model={small_bert}", f"model.embed_dim={sizes['embed_dim']}",
        f"model.num_heads={sizes['num_heads']}", f"model.num_layers={sizes['num_layers']}",
        "model.memory_layers=3",  # official: max(nlevels, 3)
        *[f"model.conv_kernel_{m}={k}" for m, k in sizes["kernels"].items()],
        *[f"model.{m}_length={sizes['length']}" for m in ("text", "audio", "vision")],
        *[f"model.{k}=0.0" for k in ("text_dropout", "attn_dropout", "attn_dropout_audio",
                                     "attn_dropout_vision", "relu_dropout", "res_dropout",
                                     "embed_dropout", "output_dropout")],
        *settings, *extra,
    ]
    config = build_config("dmd", overrides)
    model = create_model(config.model, FeatureDims(audio=sizes["audio_dim"],
                                                   vision=sizes["vision_dim"])).double()
    ours = dict(model.named_parameters())
    mapped = {}
    for name, value in fixture["initial"].items():
        target = official_to_msakit(name)
        if target is None:
            continue
        assert target not in mapped, f"{target} mapped twice"
        mapped[target] = convert(name, value, ours[target].shape)
    assert set(mapped) == set(ours), sorted(set(ours) ^ set(mapped))[:5]
    model.load_state_dict(mapped, strict=False)
    model.train()  # every dropout is 0
    return config, model


def batch_of(fixture, rows=None):
    inputs = fixture["inputs"]
    rows = list(range(len(inputs["labels"]))) if rows is None else rows
    return {
        "input_ids": inputs["input_ids"][rows], "attention_mask": inputs["attention_mask"][rows],
        "token_type_ids": inputs["token_type_ids"][rows],
        "audio": inputs["audio"][rows].double(), "vision": inputs["vision"][rows].double(),
        # aligned data: audio and vision have the text's real length
        "audio_lengths": inputs["lengths"][rows], "vision_lengths": inputs["lengths"][rows],
        "labels": inputs["labels"][rows],
    }


def test_fixture_is_from_the_official_commit(fixture):
    assert fixture["official"] == "mdswyz/DMD"
    assert fixture["commit"] == OFFICIAL_COMMIT


def test_prediction_losses_and_gradients_match_the_official_code(fixture, small_bert):
    config, model = build(fixture, small_bert)
    output = model(batch_of(fixture))
    torch.testing.assert_close(output.prediction, fixture["prediction"], rtol=0, atol=TOLERANCE)
    for term, value in output.losses.items():
        torch.testing.assert_close(value, fixture["losses"][term], rtol=0, atol=TOLERANCE,
                                   msg=lambda m, t=term: f"loss {t}: {m}")
    total = weighted_loss(output, config.model.loss_weights, "dmd")
    # the trainer sums the weighted terms in float32 (for mixed precision)
    torch.testing.assert_close(total.double(), fixture["losses"]["combined"], rtol=0,
                               atol=TOLERANCE)
    total.backward()
    compared = assert_official_gradients(model, fixture["grads"], official_to_msakit, convert)
    # the same parameters get a gradient on both sides (not the LM's unused pooler)
    ours = dict(model.named_parameters())
    with_grad = {n for n, p in ours.items() if p.grad is not None}
    assert compared == with_grad and len(with_grad) >= len(ours) - 2


def test_msakit_defaults_change_only_the_padded_clips(fixture, small_bert):
    """msakit's defaults (padding masked, read-out at the last real step, padded text zeroed):
    the clip without padding (real length 50) is predicted exactly as the official code does,
    the padded clips are not."""
    _, model = build(fixture, small_bert, settings=[])
    prediction = model(batch_of(fixture)).prediction.detach()
    difference = (prediction - fixture["prediction"]).abs()
    assert fixture["inputs"]["lengths"][0] == fixture["sizes"]["length"]
    assert difference[0] < TOLERANCE
    assert bool((difference[1:] > 1e-3).all()), difference


def _loop_changes(fixture, small_bert, tmp_path, semantics):
    loop = fixture["loop"]
    config, model = build(fixture, small_bert, extra=[
        f"train.grad_accumulation={loop['update_epochs']}", *semantics,
        f"train.grad_clip_value={loop['grad_clip']}", f"train.lr={loop['lr']}",
        f"train.lm_lr={loop['lr']}", "train.optimizer=adam", "train.weight_decay=0",
        "train.lm_weight_decay=0",
    ])
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    train_epochs(model, config, [batch_of(fixture, rows) for rows in loop["batches"]], tmp_path)
    return {k: v.detach() - before[k] for k, v in model.named_parameters()}


def test_official_training_loop_takes_the_same_steps(fixture, small_bert, tmp_path):
    """Two optimiser steps over four batches: the trainer with DMD's official loop (losses
    summed over the accumulated batches, the running sum clipped by value after every backward)
    moves every parameter as the official ``do_train`` did; the default loop does not."""
    official = ["train.accumulation=sum", "train.clip_every_backward=true"]
    changes = _loop_changes(fixture, small_bert, tmp_path, official)
    worst_default = 0.0
    default = _loop_changes(fixture, small_bert, tmp_path,
                            ["train.accumulation=mean", "train.clip_every_backward=false"])
    for name, change in fixture["loop"]["param_changes"].items():
        target = official_to_msakit(name)
        if target is None:
            continue
        if re.search(r"_gd\.(logit_embedding|repr_embedding|edge_score)\.bias$", target):
            continue  # shift every edge score equally: softmax-invariant, true gradient 0
        expected, ours = convert(name, change, changes[target].shape), changes[target]
        ours_default = default[target]
        if target.endswith("attention.in_proj_bias"):
            # The key bias adds the same amount to every score of a query, so its true
            # gradient is 0 (as the GD units' biases above); both sides hold rounding noise,
            # which Adam scales up to a visible step. Compare the query and value biases.
            width = len(expected) // 3
            keep = torch.ones(len(expected), dtype=torch.bool)
            keep[width:2 * width] = False
            expected, ours, ours_default = expected[keep], ours[keep], ours_default[keep]
        # Adam's step is ~lr wherever |g| >> eps: a 1e-7 tolerance is 0.1 % of a step
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-7,
                                   msg=lambda m, t=target: f"{t}: {m}")
        worst_default = max(worst_default, (ours_default - expected).abs().max().item())
    assert worst_default > 1e-5


def official_rates(fixture) -> list[str]:
    """The official MOSI dropout rates as msakit overrides."""
    rates = fixture["official_dropouts"]
    names = {"text_dropout": "text_dropout", "attn_dropout": "attn_dropout",
             "attn_dropout_a": "attn_dropout_audio", "attn_dropout_v": "attn_dropout_vision",
             "relu_dropout": "relu_dropout", "res_dropout": "res_dropout",
             "embed_dropout": "embed_dropout", "output_dropout": "output_dropout"}
    assert set(rates) == set(names)
    return [f"model.{ours}={rates[theirs]}" for theirs, ours in names.items()]


def test_defaults_are_the_official_mosi_rates(fixture):
    assert build_config("dmd", official_rates(fixture)).model == build_config("dmd").model


def test_dropout_map_and_eval_forward_match_the_official_code(fixture, small_bert):
    """Every dropout call of a train-mode pass with its rate and input shape (the official
    transformers are sequence-first and its text is transposed for the Conv1d: compared in
    msakit's batch-first layout; the attention-weight dropouts included). One stretch differs in
    order only: the official code runs the three homogeneous heads and then the three common
    self-attention encoders (text, vision, audio), msakit each modality's head and encoder in
    turn (text, audio, vision) -- independent computations, compared as a multiset. Then the
    eval-mode predictions of the batch and its halves."""
    _, model = build(fixture, small_bert, extra=official_rates(fixture))
    official = fixture["dropout_map"]
    batch = batch_of(fixture)
    size, text_length = batch["input_ids"].shape
    sizes = fixture["sizes"]
    expected = batch_first_official_calls(official["calls"], size, sizes["num_heads"],
                                          (text_length, fixture["bert_config"]["hidden_size"]))
    ours = dropout_map_with_attention(model, batch)
    assert len(ours) == len(expected) > 100
    # the LM's calls, then the text input's dropout
    start = sum(str(name).startswith("text_model.") for name in official["modules"]) + 1
    # 3 heads (one output dropout each) + 3 encoders (embedding dropout + 4 per layer)
    stretch = slice(start, start + 3 + 3 * (1 + 4 * sizes["num_layers"]))
    assert any(p > 0 for p, _ in expected[stretch])
    assert ours[:start] == expected[:start]
    assert sorted(ours[stretch]) == sorted(expected[stretch])
    assert ours[stretch.stop:] == expected[stretch.stop:]
    model.eval()
    with torch.no_grad():
        for rows, theirs in zip(fixture["eval"]["rows"], fixture["eval"]["predictions"]):
            torch.testing.assert_close(model(batch_of(fixture, rows)).prediction,
                                       theirs.double(), rtol=0, atol=TOLERANCE,
                                       msg=lambda m, r=rows: f"{r}: {m}")
