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

import torch
from _mmsa_parity import (
    block_overrides,
    check_dropout_map_and_eval_forward,
    check_fixture_origin,
    check_frozen,
    check_training,
    hidden_overrides,
    module_fixtures,
    training_overrides,
)

BLOCKS = {"NNConfig": "att2", "gamma1Config": "gamma1", "gamma2Config": "gamma2",
          "outConfig": "out"}


def with_vertex_networks(loaded: dict) -> dict:
    """The vertex networks live outside MMSA's state dict: merged in under their msakit prefix."""
    loaded["initial_state"] = {**loaded["initial_state"], **{
        f"graph_mfn.vertex_networks.{key}.{name}": value
        for key, state in loaded["vertex_networks"].items() for name, value in state.items()}}
    return loaded


fixture, bert_dir = module_fixtures("graph_mfn", with_vertex_networks)


def to_msakit(name: str, value: torch.Tensor):
    # MMSA's Sequential(Linear, Sequential(Linear)[, Linear]) -> one flat Sequential
    return re.sub(r"^(graph_mfn\.(?:t_network|efficacy_model|vertex_networks\.\w+))\.1\.0\.",
                  r"\1.1.", name), value


def overrides(fixture, bert_dir, rates) -> list[str]:
    sizes = fixture["sizes"]
    return training_overrides(fixture, bert_dir) + [
        f"model.seq_len={fixture['seq_len']}", f"model.mem_dim={sizes['memsize']}",
        f"model.inner_node_dim={sizes['inner_node_dim']}",
    ] + hidden_overrides(fixture) + block_overrides(fixture, BLOCKS, rates)


def test_fixture_is_from_mmsa_v2_2_1(fixture):
    check_fixture_origin(fixture)
    assert sorted(fixture["vertex_networks"]) == ["0_1", "0_1_2", "0_2", "1_2"]


def test_graph_mfn_training_matches_mmsa(fixture, bert_dir, tmp_path, monkeypatch):
    record = check_training("graph_mfn", overrides(fixture, bert_dir, dict.fromkeys(BLOCKS, 0)),
                            fixture, to_msakit, tmp_path, monkeypatch)
    check_frozen(record, fixture, {to_msakit(name, value)[0]: name
                                   for name, value in fixture["initial_state"].items()
                                   if name.startswith("graph_mfn.vertex_networks.")})

def test_graph_mfn_dropout_map_and_eval_forward_match_mmsa(fixture, bert_dir):
    check_dropout_map_and_eval_forward(
        "graph_mfn", overrides(fixture, bert_dir, fixture["official_rates"]), fixture, to_msakit)
