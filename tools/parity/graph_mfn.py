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

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_DATA, compact, official_commit, save_fixture  # noqa: E402
from _mmsa import load_official, run_official  # noqa: E402

SEQ_LEN = 8
SIZES = {"hidden_dims": (8, 4, 6), "memsize": 7, "inner_node_dim": 5}
SHAPES = {"NNConfig": 6, "gamma1Config": 5, "gamma2Config": 4, "outConfig": 6}
MOSI_RATES = {"NNConfig": 0.0, "gamma1Config": 0.5, "gamma2Config": 0.5,
              "outConfig": 0.0}  # config_regression.json, graph_mfn, mosi
OPTIMISER = {"learning_rate": 2e-3, "weight_decay": 0.005}  # MMSA's MOSI values


def fixed_length(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = (x * mask.unsqueeze(-1).to(x.dtype))[:, :SEQ_LEN]
    return F.pad(x, (0, 0, 0, SEQ_LEN - x.shape[1]))


def configs(rates: dict) -> dict:
    return {k: {"shapes": SHAPES[k], "drop": rates[k]} for k in SHAPES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="thuiar/MMSA checkout")
    parser.add_argument("--out", type=Path, default=Path("tests/parity/graph_mfn.pt"))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    commit = official_commit(args.official)
    model_module, train_module = load_official(args.official, "models/singleTask/Graph_MFN.py",
                                               "trains/singleTask/Graph_MFN.py")
    # its forward creates initial states with torch.zeros (the default dtype): float64 here
    forward = model_module.Graph_MFN.forward

    def float64_forward(self, *inputs):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            return forward(self, *inputs)
        finally:
            torch.set_default_dtype(previous)

    model_module.Graph_MFN.forward = float64_forward
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

    recorded = run_official(
        args.data, build, train_module, "Graph_MFN",
        {"model_name": "graph_mfn", **SIZES, **configs(dict.fromkeys(SHAPES, 0.0)), **OPTIMISER},
        fixed_length, forward_outputs=("M",), rated_args=configs(MOSI_RATES),
        text_steps=fixed_length)
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
    fixture = {
        "official": {"repo": "thuiar/MMSA", "commit": commit,
                     "files": ["src/MMSA/models/singleTask/Graph_MFN.py",
                               "src/MMSA/trains/singleTask/Graph_MFN.py"]},
        "sizes": dict(SIZES), "shapes": dict(SHAPES), "official_rates": dict(MOSI_RATES),
        "optimiser": dict(OPTIMISER), "seq_len": SEQ_LEN,
        "vertex_networks": {"_".join(map(str, k)): compact(v) for k, v in vertex_networks.items()},
        **recorded,
    }
    save_fixture(fixture, args.out)


if __name__ == "__main__":
    main()
