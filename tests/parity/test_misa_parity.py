"""MISA equals the authors' code (declare-lab/MISA) on real clips: prediction, each loss term,
every gradient, three steps of the official training loop, and at the official dropout rates
(0.5; the fusion transformer layer's fixed 0.1) the dropout map and the eval-mode predictions.

The fixture ``misa.pt`` comes from ``tools/parity/misa.py`` (see its docstring: official model at
small sizes with a small random BERT, real MOSI clips of unequal word counts, float64, dropout 0).
Name mapping official -> msakit (``OFFICIAL_TO_MSAKIT``): ``bertmodel`` -> ``text_encoder.model``,
``{v,a}rnn{1,2}``/``{v,a}layer_norm`` -> ``{vision,audio}_encoder.rnn{1,2}``/``.layer_norm``,
``project_m.project_m`` / ``project_m.project_m_layer_norm`` -> ``project.<m>.0`` / ``.2``,
``private_m.*`` -> ``private.<m>``, ``shared.shared_1`` -> ``shared``, ``recon_m.*`` ->
``reconstruct.<m>``, ``transformer_encoder.layers.0`` -> ``fusion_layer``, ``fusion.fusion_layer_1``
/ ``_3`` -> ``head.0`` / ``head.3``. Official modules without a counterpart, which get no gradient
in the official loop either: ``sp_discriminator`` (its loss weight is 0 and the solver never adds
it), ``tlayer_norm`` (for the GloVe text LSTM, unused with BERT).
"""

from __future__ import annotations

import pytest
import torch
from _mmsa_parity import dropout_map, lstm_dropouts
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

MODALITY = {"t": "text", "v": "vision", "a": "audio"}
UNUSED_OFFICIAL = ("sp_discriminator.", "tlayer_norm.")
OFFICIAL_COMMIT = "ec42faddde0d210cf7368aebf2118fe9570e7102"


def official_to_msakit(name: str) -> str:
    head, _, rest = name.partition(".")
    if head == "bertmodel":
        return f"text_encoder.model.{rest}"
    if head in ("vrnn1", "vrnn2", "arnn1", "arnn2"):
        return f"{MODALITY[head[0]]}_encoder.rnn{head[-1]}.{rest}"
    if head in ("vlayer_norm", "alayer_norm"):
        return f"{MODALITY[head[0]]}_encoder.layer_norm.{rest}"
    if head.startswith("project_"):
        layer, _, param = rest.partition(".")
        index = 2 if layer.endswith("layer_norm") else 0
        return f"project.{MODALITY[head[-1]]}.{index}.{param}"
    if head.startswith("private_"):
        return f"private.{MODALITY[head[-1]]}.{rest.partition('.')[2]}"
    if head == "shared":
        return f"shared.{rest.partition('.')[2]}"
    if head.startswith("recon_"):
        return f"reconstruct.{MODALITY[head[-1]]}.{rest.partition('.')[2]}"
    if head == "transformer_encoder":
        return "fusion_layer." + rest.removeprefix("layers.0.")
    if head == "fusion":
        layer, _, param = rest.partition(".")
        return f"head.{ {'fusion_layer_1': 0, 'fusion_layer_3': 3}[layer] }.{param}"
    raise KeyError(name)


@pytest.fixture(scope="module")
def fixture():
    loaded = load_fixture("misa")
    # every test here replays the records of this commit of the authors' code
    assert loaded["official_repo"] == "declare-lab/MISA"
    assert loaded["official_commit"] == OFFICIAL_COMMIT
    return loaded


def build(fixture, tmp_path, overrides=()):
    sizes = fixture["sizes"]
    settings = [
        f"model.language_model={small_bert_dir(fixture, tmp_path / 'bert')}",
        f"model.hidden_size={sizes['hidden_size']}", "model.dropout=0.0",
        "model.transformer_dropout=0.0", *overrides,
    ]
    config = build_config("misa", settings)
    model = create_model(config.model, FeatureDims(audio=sizes["audio"], vision=sizes["vision"]))
    load_mapped(model, fixture["initial"], official_to_msakit, ignore=UNUSED_OFFICIAL)
    return config, model.double()


def test_prediction_losses_and_every_gradient_equal_the_official(fixture, tmp_path):
    config, model = build(fixture, tmp_path)
    model.train()  # dropout is 0: train mode as the official loop
    output = model(msakit_batch(fixture["batches"][0]))
    assert_close(output.prediction, fixture["prediction"], "prediction")
    for term in ("task", "cmd", "diff", "recon"):
        assert_close(output.losses[term], fixture["losses"][term], f"loss {term}")
    weights = config.model.loss_weights
    total = sum(weights[k] * v for k, v in output.losses.items())
    assert_close(total, fixture["losses"]["total"], "weighted total")
    total.backward()
    assert set(fixture["no_gradient"]) >= {"sp_discriminator.sp_discriminator_layer_1.weight"}
    with_gradient = assert_official_gradients(model, fixture["gradients"], official_to_msakit)
    for name, parameter in model.named_parameters():
        if name not in with_gradient:  # e.g. the BERT pooler, unused by both
            assert parameter.grad is None or not parameter.grad.any(), name


def test_three_training_steps_follow_the_official_loop(fixture, tmp_path):
    """Adam 1e-4 on every trainable weight, gradients clipped by value to 1.0 after each
    backward (the official ``clip_grad_value_`` on ``requires_grad`` parameters)."""
    config, model = build(fixture, tmp_path)
    official = fixture["official_settings"]
    assert config.train.lr == config.train.lm_lr == official["lr"]
    assert config.train.grad_clip_value == official["clip_value"]
    assert config.train.grad_clip_norm is None and config.train.weight_decay == 0.0
    assert config.train.grad_accumulation == 1
    batches = [msakit_batch(b) for b in fixture["batches"]]
    totals = train_steps(model, config, batches, tmp_path)
    trajectory = fixture["trajectory"]
    for step, (ours, theirs) in enumerate(zip(totals, trajectory["losses"].tolist()), start=1):
        record_close(ours, theirs, f"step {step} total loss", 1e-5)
        assert abs(ours - theirs) <= 1e-5, f"step {step} loss {ours} vs official {theirs}"
    for name, value in trajectory["after"].items():
        if name.startswith(UNUSED_OFFICIAL) or not value.is_floating_point():
            continue
        target = model.state_dict()[official_to_msakit(name)]
        assert_close(target, value, f"{name} after {trajectory['steps']} steps")


def test_early_stopping_matches_the_official_count():
    """The official solver starts ``curr_patience`` at 6 and stops when it falls below 0: after
    7 epochs without improvement; msakit stops after ``train.patience`` bad epochs."""
    assert build_config("misa").train.patience == 6 + 1


def test_msakit_cmd_differs_only_where_the_official_gradient_is_nan():
    """msakit's CMD (``cmd_loss``) has the official value; for a batch of one every central
    moment difference is exactly 0 and the official ``sum ** 0.5`` back-propagates NaN, where
    msakit's gradient is 0 (a deliberate difference: one-sample batches occur at split ends)."""
    from msakit.modules.losses import cmd_loss

    torch.manual_seed(0)
    x, y = torch.rand(1, 8, requires_grad=True), torch.rand(1, 8, requires_grad=True)
    ours = cmd_loss(x, y, 5)
    norm = ((x.mean(0) - y.mean(0)) ** 2).sum() ** 0.5
    plain = norm + sum((((x - x.mean(0)) ** k).mean(0) - ((y - y.mean(0)) ** k).mean(0))
                       .pow(2).sum() ** 0.5 for k in range(2, 6))
    torch.testing.assert_close(ours, plain)
    assert torch.isnan(torch.autograd.grad(plain, x, retain_graph=True)[0]).any()
    assert torch.isfinite(torch.autograd.grad(ours, x)[0]).all()


def test_dropout_map_and_eval_forward_equal_the_official(fixture, tmp_path):
    """msakit's defaults are the official rates: ``dropout`` 0.5 (the fusion head) and
    ``transformer_dropout`` 0.1 (PyTorch's default, which the official layer keeps)."""
    defaults = build_config("misa").model
    official = fixture["dropout_map"]
    assert defaults.dropout == fixture["official_dropout"]
    assert [p for _, p in official["attention"]] == [defaults.transformer_dropout]
    _, model = build(fixture, tmp_path, [f"model.dropout={defaults.dropout}",
                                         f"model.transformer_dropout={defaults.transformer_dropout}"])
    expected = [(p, tuple(shape)) for p, shape in official["calls"]]
    assert any(p > 0 for p, _ in expected)
    # the official fusion transformer runs sequence-first (6 vectors, B, d), msakit's batch-first
    assert fixture["batches"][official["batch"]]["labels"].shape[0] != 6
    expected = [(p, (shape[1], shape[0], *shape[2:])) if shape[0] == 6 else (p, shape)
                for p, shape in expected]
    batches = [msakit_batch(b) for b in fixture["batches"]]
    assert dropout_map(model, batches[official["batch"]]) == expected
    assert lstm_dropouts(model) == [(p, layers) for _, p, layers in official["lstm"]]
    assert [float(m.dropout) for m in model.modules()
            if isinstance(m, torch.nn.MultiheadAttention)] == [p for _, p in official["attention"]]
    model.eval()
    with torch.no_grad():
        for i, (batch, theirs) in enumerate(zip(batches, fixture["eval_predictions"])):
            assert_close(model(batch).prediction, theirs, f"eval batch {i}")
