"""Graph-MFN against MMSA's code (thuiar/MMSA ``graph_mfn``), from the fixture of
``tools/parity/graph_mfn.py`` (no official code needed here).

The official run: the tiny random BERT's token states and the word-level audio/vision of six
real clips, each zero past its real steps and padded/truncated to ``seq_len`` steps (MMSA's
aligned arrays), small sizes, float64, three batches of two. With dropout 0, MMSA's ``do_train``
(one Adam group, weight decay on every registered parameter, L1 loss) for three epochs with
scripted validation losses; msakit runs the same through ``Trainer.fit`` and must match every
prediction and loss, every gradient, the parameters after the first and the last epoch, and the
epoch early stopping ends on. MMSA's DFG vertex networks (a plain dict, never trained) are
msakit's frozen ``graph_mfn.vertex_networks`` and must keep their weights. At MMSA's MOSI rates:
the same dropout calls (rate and input shape, in call order) and the same eval-mode predictions.

Names: msakit keeps MMSA's, with the nested ``Sequential``s of the DFG flattened
(``t_network.1.0`` -> ``t_network.1``; ``networks[(0, 1)]`` -> ``vertex_networks.0_1``).
"""

from __future__ import annotations

import re

import pytest
import torch
from _mmsa_parity import (
    MMSA_COMMIT,
    assert_dropout_map_matches,
    assert_eval_forward_matches,
    assert_training_matches,
    build_model,
    replay_training,
    small_bert_dir,
)
from _parity import load_fixture

BLOCKS = {"NNConfig": "att2", "gamma1Config": "gamma1", "gamma2Config": "gamma2",
          "outConfig": "out"}


@pytest.fixture(scope="module")
def fixture():
    loaded = load_fixture("graph_mfn")
    # the vertex networks live outside MMSA's state dict: merged in under their msakit prefix
    loaded["initial_state"] = {**loaded["initial_state"], **{
        f"graph_mfn.vertex_networks.{key}.{name}": value
        for key, state in loaded["vertex_networks"].items() for name, value in state.items()}}
    return loaded


@pytest.fixture(scope="module")
def bert_dir(fixture, tmp_path_factory):
    return small_bert_dir(fixture, tmp_path_factory.mktemp("tiny_bert_graph_mfn"))


def to_msakit(name: str, value: torch.Tensor):
    # MMSA's Sequential(Linear, Sequential(Linear)[, Linear]) -> one flat Sequential
    return re.sub(r"^(graph_mfn\.(?:t_network|efficacy_model|vertex_networks\.\w+))\.1\.0\.",
                  r"\1.1.", name), value


def overrides(fixture, bert_dir, rates) -> list[str]:
    sizes, optimiser = fixture["sizes"], fixture["optimiser"]
    text_hidden, audio_hidden, video_hidden = sizes["hidden_dims"]
    out = [
        f"model.language_model={bert_dir}", "model.freeze_language_model=true",
        f"model.seq_len={fixture['seq_len']}",
        f"model.text_hidden={text_hidden}", f"model.audio_hidden={audio_hidden}",
        f"model.vision_hidden={video_hidden}", f"model.mem_dim={sizes['memsize']}",
        f"model.inner_node_dim={sizes['inner_node_dim']}",
        f"train.lr={optimiser['learning_rate']}",
        f"train.weight_decay={optimiser['weight_decay']}",
        "train.optimizer=adam", "train.grad_accumulation=1",
        f"train.patience={fixture['early_stopping']['early_stop']}",
        f"train.min_improvement={fixture['early_stopping']['min_improvement']}",
        "train.epochs=10", "train.device=cpu",
    ]
    for key, block in BLOCKS.items():
        out += [f"model.{block}_hidden={fixture['shapes'][key]}",
                f"model.{block}_dropout={rates[key]}"]
    return out


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    assert fixture["official"]["repo"] == "thuiar/MMSA"
    assert fixture["official"]["commit"] == MMSA_COMMIT
    assert sorted(fixture["vertex_networks"]) == ["0_1", "0_1_2", "0_2", "1_2"]


def test_graph_mfn_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    config, model = build_model("graph_mfn", overrides(fixture, bert_dir,
                                                       dict.fromkeys(BLOCKS, 0)),
                                fixture, to_msakit)
    record, summary = replay_training(config, model, fixture, tmp_path, monkeypatch)
    assert_training_matches(fixture, record, summary, to_msakit)
    last = record["steps"][-1]["state"]
    for name, value in fixture["initial_state"].items():
        if name.startswith("graph_mfn.vertex_networks."):
            assert torch.equal(last[to_msakit(name, value)[0]], value.double()), name


def test_graph_mfn_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    _, model = build_model("graph_mfn", overrides(fixture, bert_dir, fixture["official_rates"]),
                           fixture, to_msakit)
    assert_dropout_map_matches(fixture, model)
    assert_eval_forward_matches(fixture, model)
