"""MCTN against MMSA's code (thuiar/MMSA ``mctn``), from the fixture of ``tools/parity/mctn.py``
(no official code needed here).

MMSA's MCTN is reproduced by ``model.recurrence=mmsa_batch_axis`` (its LSTMs and attentions run
over the clips of the batch, and each translation leaves clip 0 at zero) with
``model.teacher_forcing_ratio=1.0`` (its decoders always read the target's previous frame, in
evaluation too). The official run: the tiny random BERT's token states (80 wide, wider than
COVAREP, as MMSA needs) zero past each transcript and padded/truncated to ``seq_len`` steps, the
word-level audio/vision the same way; float64, six real clips in two batches of three (so that
MMSA's loops over the clips decode two steps after the unwritten first). MMSA's
``do_train`` (one Adam group, gradient norm clipped at 1.0, loss computed inside the model) for
three epochs with scripted validation losses; msakit runs the same through ``Trainer.fit`` and must
match every prediction and every loss term, MMSA's total loss, every gradient, the parameters after
the first and the last step, and the epoch early stopping ends on. MMSA hard-codes every dropout
rate to 0: the dropout map (rate and input shape of each call, in call order) is compared at 0,
and the eval-mode forward (predictions and every loss term) from the same initial weights.

Names: msakit keeps MMSA's (``encoder1``, ``decoder1``, ``regression`` ...); MMSA's ``attn1`` and
``attn2`` are ``decoder1.attention`` and ``decoder2.attention`` (MMSA registers them twice).
"""

from __future__ import annotations

import torch
from _mmsa_parity import (
    TOLERANCE,
    build_model,
    check_training,
    dropout_map,
    lstm_dropouts,
    module_fixtures,
    msakit_batches,
    training_overrides,
)

fixture, bert_dir = module_fixtures("mctn")
WEIGHTS = {"task": 1.0, "text_to_vision": 0.1, "vision_to_text": 0.1, "joint_to_audio": 0.1}


def to_msakit(name: str, value: torch.Tensor):
    for official, ours in (("attn1.", "decoder1.attention."), ("attn2.", "decoder2.attention.")):
        if name.startswith(official):
            return ours + name[len(official):], value
    return name, value


def overrides(fixture, bert_dir, recurrence: str = "mmsa_batch_axis") -> list[str]:
    return training_overrides(fixture, bert_dir) + [
        f"model.seq_len={fixture['seq_len']}", f"model.hidden={fixture['sizes']['hid_dim']}",
        f"model.recurrence={recurrence}", "model.teacher_forcing_ratio=1.0",
        f"train.grad_clip_norm={fixture['optimiser']['grad_clip_norm']}",
    ]


def test_fixture_is_mmsa_v2_2_1_with_its_loss_weights(fixture):
    assert fixture["official"]["files"][0] == "src/MMSA/models/singleTask/MCTN.py"
    for forward in fixture["forwards"]:  # MMSA's total is 0.1 (v + t + a) + 1.0 task
        terms = dict(zip(fixture["loss_terms"], forward["criterion_calls"].double()))
        total = sum(WEIGHTS[k] * v for k, v in terms.items())
        assert abs(float(total) - float(forward["loss"])) < TOLERANCE


def test_mctn_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    record = check_training("mctn", overrides(fixture, bert_dir), fixture, to_msakit, tmp_path,
                            monkeypatch, terms=tuple(fixture["loss_terms"]))
    for i, (ours, theirs) in enumerate(zip(record["forwards"], fixture["forwards"])):
        total = sum(WEIGHTS[k] * v for k, v in ours["output"].losses.items())
        assert abs(float(total.detach()) - float(theirs["loss"])) < TOLERANCE, f"forward {i + 1}"


def test_mctn_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    _, model = build_model("mctn", overrides(fixture, bert_dir), fixture, to_msakit)
    official = fixture["dropout_map"]
    batches = msakit_batches(fixture)
    # MMSA's only dropout is the encoders' output dropout, hard-coded to 0: three calls
    assert dropout_map(model, batches[official["batch"]]) == \
        [(p, tuple(shape)) for p, shape in official["calls"]]
    assert len(official["calls"]) == 3
    assert lstm_dropouts(model) == [(p, layers) for _, p, layers in official["lstm"]]
    model.eval()
    with torch.no_grad():
        for i, (batch, theirs) in enumerate(zip(batches, fixture["eval_forwards"])):
            output = model(batch)
            torch.testing.assert_close(output.prediction, theirs["M"].double().reshape(-1),
                                       atol=TOLERANCE, rtol=0, msg=f"eval batch {i}")
            for term, value in zip(fixture["loss_terms"], theirs["criterion_calls"]):
                assert abs(float(output.losses[term]) - float(value)) < TOLERANCE, (i, term)


def test_the_default_time_recurrence_is_not_mmsas_batch_axis(fixture, bert_dir):
    """The same weights under the default ``recurrence: time`` give other predictions than MMSA's
    (its batch-axis recurrence mixes the clips of a batch): parity needs the named mode."""
    _, model = build_model("mctn", overrides(fixture, bert_dir, "time"), fixture, to_msakit)
    model.eval()
    with torch.no_grad():
        batch, theirs = msakit_batches(fixture)[0], fixture["eval_forwards"][0]
        difference = (model(batch).prediction - theirs["M"].double().reshape(-1)).abs().max()
    assert difference > 100 * TOLERANCE
