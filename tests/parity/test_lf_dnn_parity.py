"""LF-DNN against MMSA's code (thuiar/MMSA ``lf_dnn``), from the fixture of
``tools/parity/lf_dnn.py`` (no official code needed here).

The official run: a tiny random BERT's token states as MMSA's fixed text features, audio/vision
summed over the real steps / 50 (MMSA's mean over its 50-step zero-padded arrays), small sizes,
dropout 0, float64, six real clips in three batches of two, MMSA's ``do_train`` (one Adam group
with weight decay on every parameter, a step per batch) for four epochs with scripted validation
losses. msakit runs the same through ``Trainer.fit`` with the official settings
(``text_subnet: lstm``, ``text_lstm_reads_padding: true``, ``time_average_steps: 50``,
``exempt_biases_from_decay: false``, ``min_improvement: 1e-6``, the LM frozen) and must match every
prediction and representation, every loss, every gradient, every parameter and BatchNorm buffer
after each step, and the epoch early stopping ends on. At MMSA's MOSI dropout rates (0.2 each),
from the same initial weights: the same dropout calls (rate and input shape, in call order) in
train mode, and the same eval-mode predictions. MMSA's one-layer ``TextSubNet`` sets its dropout to
0 and still calls it; msakit's ``lstm`` text path has no such call (``text_dropout`` does not apply
to it): the maps are compared without that one rate-0 call.

Name mapping, official -> msakit (``OFFICIAL_TO_MSAKIT``): ``text_subnet.rnn`` -> ``text_lstm``,
``text_subnet.linear_1`` -> ``text_subnet``; ``<audio|video>_subnet.norm`` ->
``<audio|vision>_subnet.norm``, ``.linear_<1|2|3>`` -> ``.layers.<1|3|5>``;
``post_fusion_layer_<1|2|3>`` -> ``post_fusion.<1|3|5>``. MMSA concatenates [audio, video, text],
msakit [text, audio, vision]: ``post_fusion_layer_1.weight``'s columns are permuted.
"""

from __future__ import annotations

import pytest
import torch
from _mmsa_parity import (
    assert_eval_forward_matches,
    build_model,
    check_fixture_origin,
    dropout_map,
    lstm_dropouts,
    msakit_batches,
)
from _parity import fit_with_scripted_validation, load_fixture, rename_by_prefix
from _recording import record_close

from msakit.config import build_config
from msakit.models import FeatureDims, create_model
from msakit.modules.mmsa_subnets import lstm_final_state

TOLERANCE = 1e-5
OFFICIAL_TO_MSAKIT = [
    ("text_subnet.rnn.", "text_lstm."), ("text_subnet.linear_1.", "text_subnet."),
    ("audio_subnet.norm.", "audio_subnet.norm."), ("video_subnet.norm.", "vision_subnet.norm."),
    *[(f"{o}_subnet.linear_{i}.", f"{m}_subnet.layers.{2 * i - 1}.")
      for o, m in (("audio", "audio"), ("video", "vision")) for i in (1, 2, 3)],
    *[(f"post_fusion_layer_{i}.", f"post_fusion.{2 * i - 1}.") for i in (1, 2, 3)],
]
OUTPUTS = {"Feature_t": "text", "Feature_a": "audio", "Feature_v": "vision"}


@pytest.fixture(scope="module")
def fixture():
    loaded = load_fixture("lf_dnn")
    check_fixture_origin(loaded)  # every test here replays MMSA v2.2.1's records
    return loaded


def msakit_name(official: str) -> str:
    return rename_by_prefix(official, OFFICIAL_TO_MSAKIT)


def to_msakit(fixture, name: str, value: torch.Tensor) -> torch.Tensor:
    """The official tensor in msakit's layout: fusion input columns [a, v, t] -> [t, a, v]."""
    value = value.double()
    if name == "post_fusion_layer_1.weight":
        text_hidden, audio_hidden, video_hidden = fixture["sizes"]["hidden_dims"]
        text_out = fixture["sizes"]["text_out"]
        audio, video, text = value.split([audio_hidden, video_hidden, text_out], dim=1)
        value = torch.cat([text, audio, video], dim=1)
    return value


@pytest.fixture(scope="module")
def tiny_bert_dir(fixture, tmp_path_factory):
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny_bert_lf_dnn")
    bert = BertModel(BertConfig(**fixture["tiny_bert"]))
    bert.load_state_dict(fixture["bert_state"])
    bert.save_pretrained(path)
    return path


def overrides(fixture, bert_dir, dropouts=(0, 0, 0, 0)) -> list[str]:
    """The official run's settings; ``dropouts`` in MMSA's order (audio, video, text, post)."""
    sizes, optimiser = fixture["sizes"], fixture["optimiser"]
    text_hidden, audio_hidden, video_hidden = sizes["hidden_dims"]
    audio_p, video_p, text_p, post_p = dropouts
    return [
        f"model.language_model={bert_dir}", "model.freeze_language_model=true",
        "model.text_subnet=lstm", "model.text_lstm_reads_padding=true",
        f"model.time_average_steps={fixture['average_steps']}",
        "model.exempt_biases_from_decay=false",
        f"model.text_hidden={text_hidden}", f"model.text_out={sizes['text_out']}",
        f"model.audio_hidden={audio_hidden}", f"model.vision_hidden={video_hidden}",
        f"model.post_fusion_dim={sizes['post_fusion_dim']}", f"model.text_dropout={text_p}",
        f"model.audio_dropout={audio_p}", f"model.vision_dropout={video_p}",
        f"model.post_fusion_dropout={post_p}",
        f"train.lr={optimiser['learning_rate']}",
        f"train.weight_decay={optimiser['weight_decay']}", "train.optimizer=adam",
        "train.grad_accumulation=1", f"train.patience={fixture['early_stopping']['early_stop']}",
        f"train.min_improvement={fixture['early_stopping']['min_improvement']}",
        "train.epochs=10", "train.device=cpu",
    ]


def replay(fixture, bert_dir, tmp_path, monkeypatch):
    config = build_config("lf_dnn", overrides(fixture, bert_dir))
    batches = []
    for b in fixture["batches"]:
        mask = torch.arange(b["audio_full"].shape[1])[None] < b["lengths"][:, None]
        batches.append({
            "index": b["index"], "input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
            "token_type_ids": torch.zeros_like(b["input_ids"]),
            "audio": b["audio_full"], "audio_mask": mask, "audio_lengths": b["lengths"],
            "vision": b["vision_full"], "vision_mask": mask, "vision_lengths": b["lengths"],
            "labels": b["labels"]["M"],
        })
    dims = FeatureDims(batches[0]["audio"].shape[-1], batches[0]["vision"].shape[-1])
    model = create_model(config.model, dims).double()
    state = {msakit_name(k): to_msakit(fixture, k, v) for k, v in fixture["initial_state"].items()}
    own = {k for k in model.state_dict() if not k.startswith("text_encoder.")}
    assert set(state) == own, set(state) ^ own
    model.load_state_dict(state, strict=False)
    lm = model.text_encoder.model.state_dict()
    assert all(torch.equal(lm[k].double(), v.double()) for k, v in fixture["bert_state"].items())

    record = {"forwards": [], "steps": []}
    unimodal = model.unimodal_features

    def recording_unimodal(batch):
        features = unimodal(batch)
        record["forwards"].append({"features": {k: v.detach().clone() for k, v in features.items()}})
        return features

    model.unimodal_features = recording_unimodal
    forward = model.forward

    def recording_forward(batch):
        output = forward(batch)
        record["forwards"][-1]["output"] = output
        return output

    model.forward = recording_forward

    def record_step(m, gradients):
        record["steps"].append({"after_forward": len(record["forwards"]), "gradients": gradients,
                                "state": {k: v.detach().clone()
                                          for k, v in m.state_dict().items()}})

    labels = torch.cat([b["labels"] for b in batches]).float()
    summary, _ = fit_with_scripted_validation(
        config, model, batches, labels, fixture["early_stopping"]["valid_losses"], tmp_path,
        monkeypatch, record_step)
    return record, summary


def test_lf_dnn_matches_mmsa(fixture, tiny_bert_dir, tmp_path, monkeypatch):
    record, summary = replay(fixture, tiny_bert_dir, tmp_path, monkeypatch)
    official = fixture["forwards"]
    assert len(record["forwards"]) == len(official) == 12
    for i, (theirs, ours) in enumerate(zip(official, record["forwards"])):
        output = ours["output"]
        assert torch.allclose(output.prediction, theirs["M"].double().reshape(-1),
                              atol=TOLERANCE, rtol=0), f"forward {i + 1}"
        for name, modality in OUTPUTS.items():
            assert torch.allclose(ours["features"][modality], theirs[name].double(),
                                  atol=TOLERANCE, rtol=0), f"forward {i + 1}: {name}"
        record_close(output.losses["task"], theirs["loss"], f"forward {i + 1}: loss", TOLERANCE)
        assert abs(float(output.losses["task"].detach()) - float(theirs["loss"])) < TOLERANCE

    steps = fixture["optimizer_steps"]
    assert [s["after_forward"] for s in record["steps"]] == \
        [s["after_forward"] for s in steps] == list(range(1, 13))
    for i, (theirs, ours) in enumerate(zip(steps, record["steps"])):
        for name, grad in theirs["gradients"].items():
            assert torch.allclose(ours["gradients"][msakit_name(name)],
                                  to_msakit(fixture, name, grad), atol=TOLERANCE, rtol=0), \
                f"step {i + 1}: gradient of {name}"
        for name, value in theirs["state"].items():
            assert torch.allclose(ours["state"][msakit_name(name)].double(),
                                  to_msakit(fixture, name, value), atol=TOLERANCE, rtol=0), \
                f"step {i + 1}: {name}"
    assert summary["epochs_run"] == fixture["early_stopping"]["epochs_run"] == 4
    assert summary["best_epoch"] == 2


def test_msakit_default_text_path_differs(fixture, tiny_bert_dir):
    """msakit's defaults read only real steps: the LSTM's state at each clip's last real token
    (MMSA reads the batch's padding), audio/vision are true means (MMSA divides by 50)."""
    config = build_config("lf_dnn", [f"model.language_model={tiny_bert_dir}",
                                     "model.text_subnet=lstm", "model.text_hidden=8",
                                     "model.text_out=7", "model.audio_hidden=6",
                                     "model.vision_hidden=10", "model.post_fusion_dim=12"])
    batch = fixture["batches"][0]
    model = create_model(config.model, FeatureDims(74, 47)).double()
    state = {msakit_name(k): to_msakit(fixture, k, v) for k, v in fixture["initial_state"].items()}
    model.load_state_dict(state, strict=False)
    mask = batch["attention_mask"]
    assert (mask.sum(1) < mask.shape[1]).any()  # a padded transcript in the batch
    states = model.text_encoder(batch["input_ids"], mask)
    packed = lstm_final_state(model.text_lstm, states, mask, reads_padding=False)
    padded = lstm_final_state(model.text_lstm, states, mask, reads_padding=True)
    longest = int(mask.sum(1).argmax())
    assert torch.allclose(packed[longest], padded[longest])
    assert not torch.allclose(packed, padded)
    audio_mask = torch.arange(batch["audio_full"].shape[1])[None] < batch["lengths"][:, None]
    mean = model._time_average(batch["audio_full"], audio_mask)
    model.config = model.config.model_copy(update={"time_average_steps": 50})
    assert torch.allclose(model._time_average(batch["audio_full"], audio_mask) * 50,
                          mean * batch["lengths"][:, None])


def test_lf_dnn_dropout_map_and_eval_forward_match_mmsa(fixture, tiny_bert_dir):
    check_fixture_origin(fixture)
    _, model = build_model("lf_dnn", overrides(fixture, tiny_bert_dir,
                                               fixture["official_dropouts"]),
                           fixture, lambda n, v: (msakit_name(n), to_msakit(fixture, n, v)))
    official = fixture["dropout_map"]
    calls = [(p, tuple(shape)) for p, shape in official["calls"]]
    # MMSA's one-layer TextSubNet: Dropout(0) on its final state (B, text_hidden)
    text_hidden = fixture["sizes"]["hidden_dims"][0]
    assert [c for c in calls if c[0] == 0] == [(0.0, (calls[0][1][0], text_hidden))]
    expected = [c for c in calls if c[0] > 0]
    assert len(expected) == 3
    assert dropout_map(model, msakit_batches(fixture)[official["batch"]]) == expected
    assert lstm_dropouts(model) == [(p, layers) for _, p, layers in official["lstm"]]
    assert_eval_forward_matches(fixture, model)


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    check_fixture_origin(fixture)
