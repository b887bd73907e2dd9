"""Parity fixture for Graph-MFN from MMSA's code (thuiar/MMSA ``graph_mfn``).

    python tools/parity/graph_mfn.py --official /path/to/MMSA --out tests/parity/graph_mfn.pt

MMSA's Graph-MFN reads word-aligned fixed-length sequences (``need_data_aligned``, no time
averaging): here the tiny BERT's token states and the word-level audio/vision, each zero past its
real steps and padded/truncated to ``SEQ_LEN``. What is recorded, and how, is described in
``_mmsa.py`` (MMSA's ``do_train`` at small sizes with dropout 0, the dropout map and an
eval-mode forward at MMSA's MOSI rates). MMSA's DFG keeps its vertex networks in a plain dict
(not registered: no ``state_dict``, no optimiser, no ``.double()``): the generator converts them
to float64 itself, gives the dropout-map model the training model's vertex networks, and stores
their weights as ``vertex_networks``.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import compact  # noqa: E402
from _mmsa import (  # noqa: E402
    block_configs,
    fixed_length,
    generate,
    run_forward_in_float64,
    run_official,
)

SEQ_LEN = 8
SIZES = {"hidden_dims": (8, 4, 6), "memsize": 7, "inner_node_dim": 5}
SHAPES = {"NNConfig": 6, "gamma1Config": 5, "gamma2Config": 4, "outConfig": 6}
MOSI_RATES = {"NNConfig": 0.0, "gamma1Config": 0.5, "gamma2Config": 0.5,
              "outConfig": 0.0}  # config_regression.json, graph_mfn, mosi
OPTIMISER = {"learning_rate": 2e-3, "weight_decay": 0.005}  # MMSA's MOSI values


def record(model_module, train_module, data: Path) -> dict:
    run_forward_in_float64(model_module.Graph_MFN)
    vertex_networks: dict = {}

    def build(official_args):
        model = model_module.Graph_MFN(official_args)
        networks = model.graph_mfn.networks  # a plain dict: not converted by .double()
        for key, network in networks.items():
            if vertex_networks:
                network.load_state_dict(vertex_networks[key])  # the training model's
            network.double()
        if not vertex_networks:
            vertex_networks.update({k: {n: v.clone() for n, v in net.state_dict().items()}
                                    for k, net in networks.items()})
        return model

    to_seq_len = functools.partial(fixed_length, steps=SEQ_LEN)
    recorded = run_official(
        data, build, train_module, "Graph_MFN",
        {"model_name": "graph_mfn", **SIZES, **block_configs(SHAPES, dict.fromkeys(SHAPES, 0.0)),
         **OPTIMISER},
        to_seq_len, forward_outputs=("M",), rated_args=block_configs(SHAPES, MOSI_RATES),
        text_steps=to_seq_len)
    # MMSA hard-codes the DFG's hidden size (100): to keep the fixture under 1 MB, the state after
    # a step is kept for the last step of the first and of the last epoch (every gradient is kept)
    steps = recorded["optimizer_steps"]
    keep = {len(steps) // recorded["early_stopping"]["epochs_run"], len(steps)}
    for number, step in enumerate(steps, start=1):
        if number not in keep:
            step["state"] = {}
    for batch in recorded["batches"]:  # features read from float32 files: float32 is exact
        for key in ("audio_full", "vision_full"):
            assert torch.equal(batch[key].float().double(), batch[key])
            batch[key] = batch[key].float()
    return {"sizes": dict(SIZES), "shapes": dict(SHAPES), "official_rates": dict(MOSI_RATES),
            "optimiser": dict(OPTIMISER), "seq_len": SEQ_LEN,
            "vertex_networks": {"_".join(map(str, k)): compact(v)
                                for k, v in vertex_networks.items()},
            **recorded}


if __name__ == "__main__":
    generate(__doc__, "graph_mfn", ["models/singleTask/Graph_MFN.py",
                                    "trains/singleTask/Graph_MFN.py"], record)
