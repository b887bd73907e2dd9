"""TFR-Net against MMSA's code (``tests/parity/tfr_net.pt`` from ``tools/parity/tfr_net.py``).

msakit's ``tfr_net`` gets the official initial weights (a tiny random BERT fine-tuned on both
sides) and MMSA's own missing masks (``<m>_missing_mask`` in the batch), and must reproduce, in
float64: MMSA's ``do_train`` (predictions, task and reconstruction losses of every forward pass,
the optimiser-step schedule of ``update_epochs`` 2 — ``train.accumulation=running_sum`` —, the
gradients of a step with the reconstruction terms, every weight and BatchNorm statistic after the
last step, the early stopping), the dropout map at MMSA's MOSI rates and an eval-mode forward at
those rates.
"""

from __future__ import annotations

import contextlib
import re

import pytest
import torch
from _mmsa_parity import on_every_dropout
from _parity import fit_with_scripted_validation, load_fixture
from _recording import record_close

from msakit.config import build_config
from msakit.models import FeatureDims, create_model
from msakit.modules.crossmodal import CrossModalTransformerEncoder, CrossModalTransformerLayer

MMSA_COMMIT = "a94e65d07fa1ae0d44e552390074b29b0898edfd"
ATOL = 1e-5  # predictions, losses and weights: O(1), float64 on both sides
#: MMSA's attention softmax runs in float32 even in a float64 run, so the two runs differ by
#: ~1e-7 per forward pass; after 4 Adam steps the LM embeddings' gradients (sums over every
#: token of the batch) differ by up to 2e-5 of their scale
GRADIENT_RTOL = 5e-5
MODALITY = {"l": "text", "a": "audio", "v": "vision", "t": "text"}
ENCODER_PARTS = [
    (r"layers\.(\d+)\.self_attn\.(.*)", lambda g: f"layers.{g[0]}.attention.{g[1]}"),
    (r"layers\.(\d+)\.layer_norms\.0\.(.*)", lambda g: f"layers.{g[0]}.attention_norm.{g[1]}"),
    (r"layers\.(\d+)\.layer_norms\.1\.(.*)", lambda g: f"layers.{g[0]}.ffn_norm.{g[1]}"),
    (r"layers\.(\d+)\.(fc[12]\..*)", lambda g: f"layers.{g[0]}.{g[1]}"),
    (r"layer_norm\.(.*)", lambda g: f"final_norm.{g[0]}"),
]
CLASSIFIER = {"linear_trans_norm": "0", "linear_trans_hidden": "1", "linear_trans_final": "4"}
FUSION_PARTS = {"gru.gru": "gru", "cnn": "gate", "fc": "projection"}


def to_msakit(name: str) -> str | None:
    """msakit's name of an official parameter or buffer (None: no counterpart)."""
    if name.startswith("text_model.model."):
        return "text_encoder." + name[len("text_model."):]
    if name.endswith((".version", "._float_tensor")):
        return None  # the official encoders' format marker and position-table placeholder
    match = re.match(r"align_subnet\.Model\.proj_([lav])\.weight", name)
    if match:
        return f"projections.{MODALITY[match[1]]}.weight"
    match = re.match(r"align_subnet\.Model\.trans_([lav])_(mem|final|with_[lav])\.(.*)", name)
    if match:
        target, kind, rest = MODALITY[match[1]], match[2], match[3]
        module = (f"self_attention.{target}" if kind == "mem" else
                  f"temporal.{target}" if kind == "final" else
                  f"cross_attention.{MODALITY[kind[-1]]}_to_{target}")
        for pattern, rename in ENCODER_PARTS:
            part = re.fullmatch(pattern, rest)
            if part:
                return f"{module}.{rename(part.groups())}"
    match = re.match(r"generator_([tav])\.Model\.linear\.(.*)", name)
    if match:
        return f"generators.{MODALITY[match[1]]}.{match[2]}"
    match = re.match(r"fusion_subnet\.Model\.(text|audio|vision)_encoder\.(gru\.gru|cnn|fc)\.(.*)",
                     name)
    if match:
        return f"fusion.{match[1]}.{FUSION_PARTS[match[2]]}.{match[3]}"
    match = re.match(r"fusion_subnet\.Model\.classifier\.(\w+)\.(.*)", name)
    if match:
        return f"classifier.{CLASSIFIER[match[1]]}.{match[2]}"
    raise KeyError(f"no msakit name for the official {name!r}")


def without_key_bias(ours: torch.Tensor, theirs: torch.Tensor, kind: str, name: str):
    """An attention's ``in_proj_bias`` without its key third, after checking that third's
    gradient is zero but for rounding on both sides.

    Softmax is shift-invariant, so the key bias has a zero gradient in exact arithmetic and no
    effect on any output. MMSA's attention runs its softmax in float32 (``.float()``), which
    leaves a gradient of ~1e-9 there; Adam normalises that noise into steps of up to the
    learning rate, so the official key biases wander (by ~1e-4 after 12 steps) while msakit's,
    whose gradient is ~1e-17, stay at 0. Their values are not compared.
    """
    query, key, value = ours.chunk(3)
    their_query, their_key, their_value = theirs.chunk(3)
    if kind == "gradients":
        assert float(key.abs().max()) < 1e-12, f"{name}: msakit's key-bias gradient"
        assert float(their_key.abs().max()) < 1e-7, f"{name}: MMSA's key-bias gradient"
    return torch.cat([query, value]), torch.cat([their_query, their_value])


def unpacked(packed: dict) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for name, shape in zip(packed["names"], packed["shapes"]):
        size = int(torch.tensor(shape).prod()) if shape else 1
        out[name] = packed["values"][offset:offset + size].reshape(shape).double()
        offset += size
    assert offset == packed["values"].numel()
    return out


@pytest.fixture(scope="module")
def fixture():
    return load_fixture("tfr_net")


@pytest.fixture(scope="module")
def bert_dir(fixture, tmp_path_factory):
    from transformers import BertConfig, BertModel

    state = unpacked(fixture["initial_state"])
    bert = BertModel(BertConfig(**fixture["tiny_bert"]))
    bert.load_state_dict({k[len("text_model.model."):]: v.float() for k, v in state.items()
                          if k.startswith("text_model.model.")})
    folder = tmp_path_factory.mktemp("tiny_bert_tfr_net")
    bert.save_pretrained(folder)
    return str(folder)


def overrides(fixture: dict, bert_dir: str, rated: bool) -> list[str]:
    sizes, settings = fixture["sizes"], fixture["settings"]
    rates = fixture["mosi_rates"] if rated else {k: 0.0 for k in fixture["mosi_rates"]}
    weights = settings["weight_gen_loss"]
    return [
        f"model.language_model={bert_dir}", f"model.unk_token_id={fixture['unk_token_id']}",
        f"model.seq_lens={list(fixture['seq_lens'])}",
        f"model.embed_dim={sizes['dst_feature_dim_nheads'][0]}",
        f"model.num_heads={sizes['dst_feature_dim_nheads'][1]}",
        f"model.nlevels={sizes['nlevels']}",
        f"model.num_temporal_head={sizes['num_temporal_head']}",
        f"model.conv_kernel_text={sizes['conv1d_kernel_size_l']}",
        f"model.conv_kernel_audio={sizes['conv1d_kernel_size_a']}",
        f"model.conv_kernel_vision={sizes['conv1d_kernel_size_v']}",
        f"model.fusion_text_hidden={sizes['fusion_t_hid']}",
        f"model.fusion_audio_hidden={sizes['fusion_a_hid']}",
        f"model.fusion_vision_hidden={sizes['fusion_v_hid']}",
        f"model.fusion_gru_layers={sizes['fusion_gru_layers']}",
        f"model.cls_hidden={sizes['cls_hidden_dim']}",
        f"model.text_dropout={rates['text_dropout']}",
        f"model.attn_dropout={rates['attn_dropout']}",
        f"model.attn_dropout_audio={rates['attn_dropout_a']}",
        f"model.attn_dropout_vision={rates['attn_dropout_v']}",
        f"model.relu_dropout={rates['relu_dropout']}",
        f"model.embed_dropout={rates['embed_dropout']}",
        f"model.res_dropout={rates['res_dropout']}",
        f"model.fusion_dropout={rates['fusion_drop']}",
        f"model.cls_dropout={rates['cls_dropout']}",
        f"model.weight_sim_loss={settings['weight_sim_loss']}",
        f"model.loss_weights={{task: 1.0, reconstruction_text: {weights[0]}, "
        f"reconstruction_audio: {weights[1]}, reconstruction_vision: {weights[2]}}}",
        # MMSA's optimiser and loop (trains/missingTask/TFR_NET.py)
        f"train.lr={settings['learning_rate_other']}",
        f"train.lm_lr={settings['learning_rate_bert']}",
        f"train.weight_decay={settings['weight_decay_other']}",
        f"train.lm_weight_decay={settings['weight_decay_bert']}",
        f"train.grad_clip_value={settings['grad_clip']}",
        f"train.grad_accumulation={settings['update_epochs']}",
        "train.accumulation=running_sum", "train.optimizer=adam", "train.scheduler=plateau",
        "train.plateau_factor=0.1", f"train.plateau_patience={settings['patience']}",
        f"train.patience={fixture['early_stopping']['early_stop']}",
        f"train.min_improvement={fixture['early_stopping']['min_improvement']}",
        "train.epochs=10", "train.device=cpu",
    ]


def build(fixture, bert_dir, rated: bool = False):
    config = build_config("tfr_net", overrides(fixture, bert_dir, rated))
    batch = fixture["batches"][0]
    dims = FeatureDims(batch["audio_full"].shape[-1], batch["vision_full"].shape[-1])
    model = create_model(config.model, dims).double()
    state = {}
    for name, value in unpacked(fixture["initial_state"]).items():
        target = to_msakit(name)
        if target is not None:
            state[target] = value
    ours = model.state_dict()
    assert set(state) == set(ours), set(state) ^ set(ours)
    model.load_state_dict({k: v.to(ours[k].dtype) for k, v in state.items()})
    return config, model


def msakit_batches(fixture: dict) -> list[dict]:
    batches = []
    for b in fixture["batches"]:
        lengths = b["lengths"]
        mask = torch.arange(b["audio_full"].shape[1])[None] < lengths[:, None]
        batches.append({
            "input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
            "token_type_ids": torch.zeros_like(b["input_ids"]),
            "audio": b["audio_full"].double(), "audio_lengths": lengths, "audio_mask": mask,
            "vision": b["vision_full"].double(), "vision_lengths": lengths, "vision_mask": mask,
            "host_lengths": {"audio": lengths.clone(), "vision": lengths.clone()},
            "labels": b["labels"]["M"].double(),
            **{f"{m}_missing_mask": b[f"{m}_missing_mask"] for m in ("text", "audio", "vision")},
        })
    return batches


def test_fixture_is_mmsa_v2_2_1(fixture):
    assert fixture["official"]["repo"] == "thuiar/MMSA"
    assert fixture["official"]["commit"] == MMSA_COMMIT
    # the masks drop real steps of every modality, in every batch
    for b in fixture["batches"]:
        for m in ("text", "audio", "vision"):
            kept = b[f"{m}_missing_mask"]
            assert 0 < kept.sum() < kept.numel()


def test_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    config, model = build(fixture, bert_dir)
    batches = msakit_batches(fixture)
    forwards, steps = [], []
    forward = model.forward

    def recording_forward(batch):
        output = forward(batch)
        forwards.append(output)
        return output

    model.forward = recording_forward

    def record_step(m, gradients):
        steps.append({"after_forward": len(forwards), "gradients": gradients,
                      "state": {k: v.detach().clone() for k, v in m.state_dict().items()}})

    labels = torch.cat([b["labels"] for b in batches]).float()
    summary, _ = fit_with_scripted_validation(
        config, model, batches, labels, fixture["early_stopping"]["valid_losses"], tmp_path,
        monkeypatch, record_step)
    del model.forward

    official = fixture["forwards"]
    assert len(forwards) == len(official) == 9
    for i, (theirs, ours) in enumerate(zip(official, forwards)):
        torch.testing.assert_close(ours.prediction.detach(), theirs["M"].double(), atol=ATOL,
                                   rtol=0, msg=f"forward {i + 1}: prediction")
        record_close(ours.losses["task"], theirs["loss"], f"forward {i + 1}: loss task", ATOL)
        assert abs(float(ours.losses["task"].detach()) - float(theirs["loss"])) < ATOL
        terms = torch.stack([ours.losses[f"reconstruction_{m}"].detach()
                             for m in ("text", "audio", "vision")])
        torch.testing.assert_close(terms, theirs["reconstruction"].double(), atol=ATOL,
                                   rtol=1e-6, msg=f"forward {i + 1}: reconstruction terms")
        epoch = i // 3 + 1  # official: the reconstruction enters the loss from epoch 2
        assert ours.losses["reconstruction_text"].requires_grad == (epoch > 1)

    theirs_steps = fixture["optimizer_steps"]
    assert [s["after_forward"] for s in steps] == [s["after_forward"] for s in theirs_steps]
    assert [s["after_forward"] for s in theirs_steps] == [1, 2, 2, 3, 4, 5, 5, 6, 7, 8, 8, 9]
    compared = 0
    for i, (theirs, ours) in enumerate(zip(theirs_steps, steps)):
        for kind in ("gradients", "state"):
            if kind not in theirs:
                continue
            for name, value in unpacked(theirs[kind]).items():
                target = to_msakit(name)
                if target is None:
                    continue
                mine = ours[kind][target].double()
                if name.endswith("self_attn.in_proj_bias"):
                    mine, value = without_key_bias(mine, value, kind, name)
                scale = max(1.0, float(value.abs().max()))
                tolerance = (GRADIENT_RTOL if kind == "gradients" else ATOL) * scale
                torch.testing.assert_close(mine, value, atol=tolerance, rtol=0,
                                           msg=f"step {i + 1}: {kind} of {name}")
                compared += 1
    assert compared > 400
    stopping = fixture["early_stopping"]
    assert summary["epochs_run"] == stopping["epochs_run"] == 3
    assert summary["best_epoch"] == 2


@contextlib.contextmanager
def scoped_dropout_calls(model):
    """msakit's counterpart of the generator's recording: ``(p, shape, encoder, scope)`` and
    the encoder module of each encoder call."""
    calls, encoders = [], []
    state = {"encoder": -1, "scope": "outside"}
    handles = []

    def enter(scope):
        def hook(module, inputs):
            if scope == "embed":
                state["encoder"] = len(encoders)
                encoders.append(module)
            state["scope"] = scope
        return hook

    def leave(scope):
        def hook(module, inputs, output):
            state["scope"] = {"embed": "outside", "layer": "embed", "attention": "layer",
                              "language_model": "outside"}[scope]
            if scope == "embed":
                state["encoder"] = -1
        return hook

    for module, scope in [(model.text_encoder, "language_model"),
                          *[(m, "embed") for m in model.modules()
                            if isinstance(m, CrossModalTransformerEncoder)],
                          *[(m, "layer") for m in model.modules()
                            if isinstance(m, CrossModalTransformerLayer)],
                          *[(m.attention, "attention") for m in model.modules()
                            if isinstance(m, CrossModalTransformerLayer)]]:
        handles += [module.register_forward_pre_hook(enter(scope)),
                    module.register_forward_hook(leave(scope))]

    def record(p, input):
        calls.append((p, tuple(input.shape), state["encoder"], state["scope"]))

    try:
        with on_every_dropout(record):
            yield calls, encoders
    finally:
        for handle in handles:
            handle.remove()


def seq_first_to_batch_first(shape):
    return (shape[1], shape[0], *shape[2:])


def test_dropout_map_matches_mmsa(fixture, bert_dir):
    """Every dropout at MMSA's MOSI rates, in call order, with its rate and input shape.

    Inside the transformer encoders msakit is batch-first (shapes compared transposed) and,
    like MMSA, draws one embedding-dropout mask each for the query, the keys and the values.
    The attention-weight dropout's rates are compared per layer; where the rate is above 0
    msakit's attention draws the mask itself, on ``(B, heads, L_q, L_k)`` weights (MMSA's
    ``(B * heads, L_q, L_k)``), in the same order; at rate 0 it calls nothing (MMSA calls
    ``F.dropout`` with 0).
    """
    _, model = build(fixture, bert_dir, rated=True)
    batch = msakit_batches(fixture)[fixture["dropout_map"]["batch"]]
    model.train()
    with scoped_dropout_calls(model) as (calls, encoders):
        model(batch)
    official = [tuple(c[:2]) + tuple(c[2:]) for c in fixture["dropout_map"]["calls"]]
    official = [(p, tuple(shape), e, s) for p, shape, e, s in official]
    assert any(p > 0 for p, *_ in official)

    def outside(recorded):
        return [(p, shape) for p, shape, _, scope in recorded if scope == "outside"]

    assert outside(calls) == outside(official)
    assert len(encoders) == 1 + max(e for _, _, e, _ in official) == 12
    for k, encoder in enumerate(encoders):
        theirs = [c for c in official if c[2] == k]
        ours = [c for c in calls if c[2] == k]
        their_embed = [(p, seq_first_to_batch_first(s)) for p, s, _, sc in theirs
                       if sc == "embed"]
        our_embed = [(p, s) for p, s, _, sc in ours if sc == "embed"]
        assert our_embed == their_embed, f"encoder {k}: embedding dropout"  # query, key, value
        their_layers = [(p, seq_first_to_batch_first(s)) for p, s, _, sc in theirs
                        if sc == "layer"]
        assert [(p, s) for p, s, _, sc in ours if sc == "layer"] == their_layers, \
            f"encoder {k}: residual and ReLU dropouts"
        their_attention = [(p, s) for p, s, _, sc in theirs if sc == "attention"]
        assert [layer.attention.dropout for layer in encoder.layers] == \
            [p for p, _ in their_attention]
        heads = encoder.layers[0].attention.num_heads
        assert [(p, s) for p, s, _, sc in ours if sc == "attention"] == [
            (p, (s[0] // heads, heads, *s[1:])) for p, s in their_attention if p > 0], \
            f"encoder {k}: attention-weight dropouts"
    assert any(scope == "attention" for *_, scope in calls)


def test_eval_forward_matches_mmsa(fixture, bert_dir):
    _, model = build(fixture, bert_dir, rated=True)
    model.eval()
    with torch.no_grad():
        for i, (batch, theirs) in enumerate(zip(msakit_batches(fixture),
                                                fixture["eval_forwards"])):
            output = model(batch)
            torch.testing.assert_close(output.prediction, theirs["M"].double(), atol=ATOL,
                                       rtol=0, msg=f"eval batch {i}: prediction")
            terms = torch.stack([output.losses[f"reconstruction_{m}"]
                                 for m in ("text", "audio", "vision")])
            torch.testing.assert_close(terms, theirs["reconstruction"].double(), atol=ATOL,
                                       rtol=1e-6, msg=f"eval batch {i}: reconstruction")
