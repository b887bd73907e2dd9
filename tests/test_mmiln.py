"""MMILN: GateTransformer / SAG-Transformer equations, shapes, loss terms, ablations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _real_training import train_one_fold
from test_self_mm import DIMS, make_batch

from msakit.config import ConfigError, build_config
from msakit.models import create_model, list_models
from msakit.modules.encoders import masked_time_mean
from msakit.modules.gated_attention import GateTransformer, SAGTransformer

D, HEADS, FF = 16, 4, 32


def _mask(lengths, total):
    return torch.arange(total)[None] < torch.tensor(lengths)[:, None]


def test_gate_transformer_shapes_and_padding():
    torch.manual_seed(0)
    layer = GateTransformer(D, HEADS, FF, dropout=0.0).eval()
    x, mask = torch.randn(3, 5, D), _mask([5, 3, 1], 5)
    out = layer(x, mask)
    assert out.hidden.shape == (3, 5, D) and out.attention.shape == (3, 5, D)
    assert out.summary.shape == (3, D)
    assert out.retain_gate.shape == (3, D) and out.compound_gate.shape == (3, D)
    assert ((out.retain_gate > 0) & (out.retain_gate < 1)).all()
    garbage = x.clone()
    garbage[~mask] = 50.0
    again = layer(garbage, mask)
    assert torch.allclose(out.hidden[mask], again.hidden[mask], atol=1e-5)
    assert torch.allclose(out.summary, again.summary, atol=1e-5)


def test_gate_transformer_follows_eqs_11_12():
    """With g_r = g_c = ½ (zero gate matrices), LN(½ MH + ½ X) = LN(MH + X): the gated layer
    equals the ungated (-MFM) one holding the same attention/FFN/norm weights."""
    torch.manual_seed(0)
    gated = GateTransformer(D, HEADS, FF, dropout=0.0).eval()
    plain = GateTransformer(D, HEADS, FF, dropout=0.0, gated=False).eval()
    plain.load_state_dict({k: v for k, v in gated.state_dict().items()
                           if not k.startswith("gates.")})
    with torch.no_grad():
        gated.gates.retain.weight.zero_()
        gated.gates.compound.weight.zero_()
    x, mask = torch.randn(2, 4, D), _mask([4, 2], 4)
    out = gated(x, mask)
    assert torch.allclose(out.retain_gate, torch.full((2, D), 0.5))
    assert torch.allclose(out.hidden, plain(x, mask).hidden, atol=1e-4)
    # and a manual eq. 11-12 with arbitrary gates
    with torch.no_grad():
        gated.gates.retain.weight.normal_()
        gated.gates.compound.weight.normal_()
    out = gated(x, mask)
    mixed = gated.norm_attention(out.compound_gate[:, None] * out.attention
                                 + out.retain_gate[:, None] * x)
    expected = gated.norm_ffn(mixed + gated.ffn(mixed))
    assert torch.allclose(out.hidden, expected, atol=1e-5)


def test_sag_transformer_follows_eqs_15_23():
    torch.manual_seed(0)
    layer = SAGTransformer(D, HEADS, FF, dropout=0.0).eval()
    fused, fused_mask = torch.randn(2, 6, D), _mask([6, 4], 6)
    source, source_mask = torch.randn(2, 3, D), _mask([3, 2], 3)  # another length: unaligned
    out = layer(fused, fused_mask, source, source_mask)
    assert out.hidden.shape == (2, 6, D) and out.summary.shape == (2, D)
    with torch.no_grad():
        queries, _ = layer.self_attention(fused, fused, fused, key_padding_mask=~fused_mask)
        gated_source = torch.sigmoid(layer.source_gate(source)) * source
        r, _ = layer.cross_attention(queries, gated_source, gated_source,
                                     key_padding_mask=~source_mask)
        summary = masked_time_mean(layer.gates.summary.gru(fused)[0], fused_mask)
        g_r = torch.sigmoid(layer.gates.retain(summary))[:, None]
        g_c = torch.sigmoid(layer.gates.compound(summary))[:, None]
        mixed = layer.norm_attention(g_c * r + g_r * fused)
        expected = layer.norm_ffn(mixed + layer.ffn(mixed))
    # rows of the longest sequence (no packing effect) match exactly
    assert torch.allclose(out.hidden[0], expected[0], atol=1e-5)
    assert torch.allclose(out.attention[0], r[0], atol=1e-5)
    # the unimodal stream feeds the result; padding of either stream does not
    other = layer(fused, fused_mask, source + 1.0, source_mask)
    assert not torch.allclose(other.hidden, out.hidden)
    padded_source = source.clone()
    padded_source[~source_mask] = 30.0
    padded_fused = fused.clone()
    padded_fused[~fused_mask] = -30.0
    again = layer(padded_fused, fused_mask, padded_source, source_mask)
    assert torch.allclose(again.hidden[fused_mask], out.hidden[fused_mask], atol=1e-5)


@pytest.fixture(scope="module")
def models():
    built = {}
    for ablation in ("none", "-MFM", "-MRM", "-GateFusion"):
        torch.manual_seed(0)
        built[ablation] = create_model(
            build_config("mmiln", [f"model.ablation={ablation}"]).model, DIMS)
    return built


def non_lm_parameters(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("text_encoder."))


def test_registered_with_paper_defaults():
    assert "mmiln" in list_models()
    config = build_config("mmiln")
    assert config.model.fusion_layers == 3 and config.model.ablation == "none"
    assert set(config.model.loss_weights) == {"task", "task_a", "task_v", "sim", "diff"}
    with pytest.raises(ConfigError):
        build_config("mmiln", ["model.ablation=-XYZ"])
    with pytest.raises(ConfigError, match="even"):
        build_config("mmiln", ["model.model_dim=63"])


def test_full_model_forward(models):
    model = models["none"].eval()
    batch = make_batch(batch_size=3, text_len=7, audio_len=11, vision_len=5)
    with torch.no_grad():
        out = model(batch)
    assert out.prediction.shape == (3,)
    assert set(out.losses) == {"task", "task_a", "task_v", "sim", "diff"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    assert float(out.losses["task"]) == pytest.approx(
        float(((out.prediction - batch["labels"]) ** 2).mean()), rel=1e-5)  # MSE, eq. 35
    assert out.extras["feature_m"].shape == (3, 128)
    assert out.extras["feature_a"].shape == (3, 16) and out.extras["feature_v"].shape == (3, 32)
    for stream in ("a", "v", "ta", "tv"):
        assert out.extras[f"gate_retain_{stream}"].shape == (3,)
    summary = model.evaluation_artifacts(out.extras)
    assert set(summary) >= {"pred_a", "pred_v", "gate_retain_ta", "gate_compound_v"}
    assert 0.0 < summary["gate_retain_ta"]["mean"] < 1.0
    assert len(model.layers) == 3


def test_losses_backpropagate_and_batch_of_one_is_finite():
    torch.manual_seed(0)
    model = create_model(
        build_config("mmiln", ["model.freeze_language_model=true"]).model, DIMS).train()
    model.on_fit_start(torch.tensor([2.0, -1.0, 0.4, -2.6]))
    batch = make_batch(batch_size=1)
    out = model(batch)
    loss = out.losses["task"] + out.losses["sim"] + 0.3 * out.losses["diff"]
    assert torch.isfinite(loss)
    model.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.zero_grad()
    out = model(make_batch(batch_size=4))
    (out.losses["sim"] + out.losses["diff"]).backward()
    gru = model.layers[-1].text_audio.gates.summary.gru.weight_ih_l0
    assert gru.grad is not None and gru.grad.abs().sum() > 0  # sim/diff reach the last BiGRUs
    model.zero_grad()


def test_ablations_change_structure_terms_and_parameter_counts(models):
    counts = {name: non_lm_parameters(m) for name, m in models.items()}
    assert counts["-MFM"] < counts["none"]
    assert counts["-GateFusion"] < counts["none"]
    assert counts["-MRM"] < counts["none"]
    d = 64
    # -MRM: the fusion head reads d_s (mean of the two streams) instead of 2 d_s
    assert counts["none"] - counts["-MRM"] == d * 128
    assert not any("gru" in n or "retain" in n for n, _ in models["-MFM"].named_parameters())
    assert all(layer.text_audio is None for layer in models["-GateFusion"].layers)
    batch = make_batch(batch_size=3)
    terms, extras = {}, {}
    for name, model in models.items():
        model.eval()
        with torch.no_grad():
            out = model(batch)
        terms[name], extras[name] = set(out.losses), set(out.extras)
    assert terms["none"] == {"task", "task_a", "task_v", "sim", "diff"}
    for name in ("-MFM", "-MRM", "-GateFusion"):
        assert terms[name] == {"task", "task_a", "task_v"}
    assert not any(k.startswith("gate_") for k in extras["-MFM"])
    assert "gate_retain_a" in extras["-GateFusion"] and "gate_retain_ta" not in extras["-GateFusion"]


def test_ablation_changes_computation_with_shared_weights(models):
    """-MRM keeps every weight but the fusion head's input; copy the shared ones and check the
    prediction changes only through the re-fusion."""
    full, no_mrm = models["none"].eval(), models["-MRM"].eval()
    shared = {k: v for k, v in full.state_dict().items() if not k.startswith("heads.m.project")}
    no_mrm.load_state_dict(shared, strict=False)
    with torch.no_grad():
        no_mrm.heads["m"].project.weight.copy_(
            full.heads["m"].project.weight[:, :64] + full.heads["m"].project.weight[:, 64:])
        no_mrm.heads["m"].project.bias.copy_(full.heads["m"].project.bias)
        batch = make_batch(batch_size=3)
        a, b = full(batch), no_mrm(batch)
    # same unimodal branch, different fused prediction
    assert torch.allclose(a.extras["pred_a"], b.extras["pred_a"], atol=1e-5)
    assert not torch.allclose(a.prediction, b.prediction)


def test_fusion_layers_scale_parameters():
    counts = {}
    for layers in (1, 2, 3):
        torch.manual_seed(0)
        model = create_model(build_config("mmiln", [f"model.fusion_layers={layers}"]).model, DIMS)
        counts[layers] = non_lm_parameters(model)
        assert len(model.layers) == layers
    assert counts[2] - counts[1] == counts[3] - counts[2] > 0


@pytest.mark.slow
def test_short_real_training_beats_the_training_mean(mosi_word_aligned, tmp_path):
    model, rows, mean_mae, fold = train_one_fold("mmiln", mosi_word_aligned, tmp_path,
                                                 "train.epochs=4")
    for term in ("task", "task_a", "task_v", "sim", "diff"):
        assert all(np.isfinite(float(r[f"train_{term}"])) for r in rows), term
    selected = [r for r in rows if r["selected"] == "1"][-1]
    assert float(selected["valid_MAE"]) < mean_mae
    art = model.run_artifacts()["generated_labels"]
    assert set(art["drift"]) == {"a", "v"} and len(art["labels"]) == len(fold.train)


# -- equations without official code: hand-computed on small tensors -----------------------------
def test_pooled_bigru_eq_7_equals_the_packed_run_without_host_lengths():
    """Eqs. 7 / 16: ĥ = avgpool(BiGRU(X)) over the real steps. The sync-free two-run form equals
    the packed BiGRU it replaced (same weights, same batch), whatever the padding holds."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from msakit.modules.gated_attention import PooledBiGRU

    torch.manual_seed(0)
    pooled = PooledBiGRU(D)
    x, mask = torch.randn(3, 6, D), _mask([6, 3, 1], 6)
    x[~mask] = 9.0
    packed = pack_padded_sequence(x, mask.sum(1), batch_first=True, enforce_sorted=False)
    out, _ = pad_packed_sequence(pooled.gru(packed)[0], batch_first=True, total_length=6)
    reference = masked_time_mean(out, mask)
    assert torch.allclose(pooled(x, mask), reference, atol=1e-6)
    # each clip alone gives the same summary
    alone = torch.cat([pooled(x[i:i + 1, :int(mask[i].sum())], mask[i:i + 1, :int(mask[i].sum())])
                       for i in range(3)])
    assert torch.allclose(alone, reference, atol=1e-6)


def test_cmd_eq_24_by_hand():
    """CMD_K = ||E(X)-E(Y)||/|b-a| + sum_k ||C_k(X)-C_k(Y)||/|b-a|^k, K = 3, |b-a| = 2."""
    from msakit.modules.losses import cmd_loss

    x = torch.tensor([[0.0, 1.0], [0.5, -1.0]])  # E = (.25, 0); C2 = (.0625, 1); C3 = (0, 0)
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-0.5, 0.0]])  # E = (.5, 0); C2 = (.5, 0)
    # C3(y) = mean((.5,.5,-1)^3) = (.125+.125-1)/3 = -.25
    first = (0.25 ** 2) ** 0.5 / 2
    second = ((0.0625 - 0.5) ** 2 + 1.0) ** 0.5 / 4
    third = (0.25 ** 2) ** 0.5 / 8
    assert float(cmd_loss(x, y, 3, interval=2.0)) == pytest.approx(first + second + third,
                                                                   abs=1e-6)
    # without the factors (MISA's code) the same three norms are summed
    assert float(cmd_loss(x, y, 3)) == pytest.approx(2 * first + 4 * second + 8 * third,
                                                     abs=1e-6)


def test_difference_eq_26_by_hand():
    """||Ĥ_1ᵀ Ĥ_2||_F² on the raw summaries: for H1 = [[1,0],[0,2]], H2 = [[1,1],[3,0]],
    H1ᵀH2 = [[1,1],[6,0]] -> 1 + 1 + 36 = 38."""
    from msakit.modules.losses import frobenius_orthogonality_loss, soft_orthogonality_loss

    h1, h2 = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[1.0, 1.0], [3.0, 0.0]])
    assert float(frobenius_orthogonality_loss(h1, h2)) == pytest.approx(38.0)
    assert float(frobenius_orthogonality_loss(h1, torch.tensor([[0.0, 0.0], [0.0, 0.0]]))) == 0
    assert float(soft_orthogonality_loss(h1, h2)) != pytest.approx(38.0)  # the 'misa' option


def test_sim_and_diff_terms_follow_the_configured_equations(models):
    """The model's ``sim``/``diff`` (eqs. 25-26) are CMD with |b-a|^k factors and the Frobenius
    form by default; ``cmd_interval: null`` / ``difference_loss: misa`` switch to MISA's."""
    import copy

    model = models["none"].eval()
    batch = make_batch()
    with torch.no_grad():
        paper = model(batch).losses
        misa = copy.deepcopy(model)
        misa.config = model.config.model_copy(update={"cmd_interval": None,
                                                      "difference_loss": "misa"})
        other = misa(batch).losses
    assert torch.allclose(paper["task"], other["task"])
    assert float(other["sim"]) > float(paper["sim"]) * 1.9  # factors 1/2, 1/4, ... dropped
    assert float(other["diff"]) <= 2.0  # two normalised means, each in [0, 1]
    assert float(other["diff"]) != pytest.approx(float(paper["diff"]))
    assert build_config("mmiln").model.cmd_interval == 2.0
    assert build_config("mmiln").model.difference_loss == "frobenius"


def test_text_padding_does_not_leak_through_a_wide_conv():
    """Eq. 4 with kernel 3: appending padding tokens to the text leaves every prediction as is
    (the LM's states at padding are zeroed before the Conv1d)."""
    torch.manual_seed(0)
    model = create_model(build_config("mmiln", ["model.conv_kernel_size=3",
                                                "model.fusion_layers=1"]).model, DIMS).eval()
    batch = make_batch()
    padded = dict(batch)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        padded[key] = torch.cat([batch[key], torch.zeros(4, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert torch.allclose(model(batch).prediction, model(padded).prediction, atol=1e-5)
