"""Graph-MFN: MFN with a Dynamic Fusion Graph (Zadeh et al., ACL 2018), as MMSA ports it
(``Graph_MFN``).

MFN (see ``mfn.py``) with the delta-memory attention replaced by a Dynamic Fusion Graph (DFG,
paper section 4.1) over the three modalities. At every step t:

=====================  ==========================================================  ============
block                  computation                                                 output
=====================  ==========================================================  ============
System of LSTMs        h_m[t], c_m[t] = LSTMCell_m(x_m[t], h_m[t-1], c_m[t-1])    ``(B, d_m)``
singletons             s_m = ReLU(Linear([h_m[t-1]; h_m[t]]))                      ``(B, d_m)``
efficacies             alpha = Linear(Linear(Linear([s_l; s_a; s_v])))             ``(B, 19)``
vertices               for each subset v of {l, a, v} with >= 2 members, in        ``(B, inner)``
                       order: D_v([alpha_i * vertex_i for i in v's proper subsets])
T (DFG output)         D_T([alpha_i * vertex_i for all 7 vertices])                ``(B, inner)``
memory                 u^ = tanh(D_u(T)); g1, g2 = sigmoid(D_g([T; u[t-1]]));      ``(B, mem)``
                       u[t] = g1 (.) u[t-1] + g2 (.) u^
head                   [h_l; h_a; h_v; u] at T -> Linear + ReLU -> Dropout -> Lin  ``(B,)``
=====================  ==========================================================  ============

Each vertex network ``D`` is Linear(-> dfg_hidden) -> Linear(-> inner), the efficacy network
Linear(-> dfg_hidden) -> Linear(-> inner) -> Linear(-> 19), all without non-linearities, as in
MMSA; each is therefore run as the one linear map it is (its weights' product, once per forward
pass: the same values up to float rounding, fewer products per step).
Defaults are MMSA's MOSI settings (``config_regression.json``: hidden (256, 32, 256),
memory 300, inner node 64, NN 32 / 0.0, gamma1 128 / 0.5, gamma2 64 / 0.5, out 256 / 0.0;
Adam 2e-3, weight decay 0.005 on every parameter; batch 32; L1 loss). MMSA reads word-aligned
fixed-length sequences (``need_data_aligned``, no time averaging): the text is the (frozen) LM's
token states and every sequence is zero past its real steps and padded/truncated to ``seq_len``.

MMSA's DFG keeps its vertex networks (the four of >= 2 modalities) in a plain dict, so they are
not registered: MMSA's optimiser never sees them (nor its ``state_dict``) and they keep their
random initial weights. ``train_vertex_networks: false`` (the default) reproduces that by
freezing them (they are saved in msakit's checkpoints); ``true`` trains them, as the paper
describes the DFG.

Layout (MMSA's values up to float rounding, another order of computation): no cell reads the
graph or the memory, and the DFG at step t reads only ``h_m[t-1]`` and ``h_m[t]``. So each cell
(an ``nn.LSTMCell``, MMSA's names) runs over its whole sequence in one LSTM kernel call
(``mfn_core.lstm_cell_sequence``), the singletons and the DFG over all T x B rows at once, and
only the gated memory step by step, with its dropouts in MMSA's order and shapes.
"""

from __future__ import annotations

from itertools import chain, combinations
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from msakit.config_schema import ModelConfig
from msakit.models import register_model
from msakit.models.base import (
    FeatureDims,
    ModelOutput,
    MSAModel,
    check_loss_weights,
    require_modalities,
)
from msakit.modules.linear import linear
from msakit.modules.mfn_core import lstm_cell_sequence
from msakit.modules.mmsa_subnets import (
    GatedMemoryMixin,
    SingleAdamGroupMixin,
    fixed_length,
    frozen_language_model_field,
    task_losses,
)
from msakit.modules.text import PretrainedTextEncoder


class GraphMFNConfig(ModelConfig):
    """Graph-MFN's hyper-parameters; defaults are MMSA's MOSI settings."""

    name: str = "graph_mfn"
    freeze_language_model: bool = frozen_language_model_field()
    seq_len: int = Field(50, ge=1, description="steps T every sequence is padded/truncated to "
                         "(MMSA: the length of its aligned arrays, 50 for MOSI/MOSEI)")
    text_hidden: int = Field(256, ge=1)
    audio_hidden: int = Field(32, ge=1)
    vision_hidden: int = Field(256, ge=1)
    mem_dim: int = Field(300, ge=1, description="multi-view gated memory size (memsize)")
    inner_node_dim: int = Field(64, ge=1, description="size of every DFG vertex and of T")
    dfg_hidden: int = Field(100, ge=1, description="hidden size inside the DFG's networks "
                            "(MMSA hard-codes 100)")
    train_vertex_networks: bool = Field(
        False, description="False: the DFG's vertex networks keep their initial weights (MMSA "
        "keeps them in a plain dict its optimiser never sees); True: they train")
    att2_hidden: int = Field(32, ge=1, description="D_u hidden size (MMSA's NNConfig)")
    att2_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    gamma1_hidden: int = Field(128, ge=1)
    gamma1_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    gamma2_hidden: int = Field(64, ge=1)
    gamma2_dropout: float = Field(0.5, ge=0.0, lt=1.0)
    out_hidden: int = Field(256, ge=1)
    out_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    exempt_biases_from_decay: bool = Field(
        False, description="False: weight decay on every parameter (MMSA's single Adam group); "
        "True: biases and norm weights do not decay")
    loss: Literal["l1", "mse"] = Field("l1", description="task loss (MMSA trains it with L1)")
    loss_weights: dict[str, float] = Field(default_factory=lambda: {"task": 1.0})

    @model_validator(mode="after")
    def _check_weights(self) -> GraphMFNConfig:
        check_loss_weights(self.loss_weights, ("task",), "graph_mfn")
        return self


def _proper_subsets(key: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Non-empty proper subsets of ``key``, smallest first, in ``combinations`` order."""
    return list(chain.from_iterable(combinations(key, r) for r in range(1, len(key))))


class DynamicFusionGraph(nn.Module):
    """The DFG over ``len(dims)`` singleton vertices ``(B, d_m)`` -> ``(T (B, inner),
    efficacies (B, E))``; vertex networks are named by their modalities' indices (``"0_1"``)."""

    def __init__(self, dims: list[int], inner: int, hidden: int):
        super().__init__()
        n = len(dims)
        self.keys = [k for r in range(2, n + 1) for k in combinations(range(n), r)]
        # T reads every vertex: the last key's proper subsets and the last key itself (MMSA)
        self.inputs = [_proper_subsets(key) for key in self.keys] + [
            _proper_subsets(self.keys[-1]) + [self.keys[-1]]]
        # for each network (vertices, then T), the efficacy column of each of its input columns
        efficacy_columns, first = [], 0
        for subsets in self.inputs:
            sizes = [dims[s[0]] if len(s) == 1 else inner for s in subsets]
            efficacy_columns.append([first + j for j, size in enumerate(sizes)
                                     for _ in range(size)])
            first += len(subsets)
        self.vertex_networks = nn.ModuleDict()
        for key, columns in zip(self.keys, efficacy_columns):
            self.vertex_networks["_".join(map(str, key))] = nn.Sequential(
                nn.Linear(len(columns), hidden), nn.Linear(hidden, inner))
        self.t_network = nn.Sequential(nn.Linear(len(efficacy_columns[-1]), hidden),
                                       nn.Linear(hidden, inner))
        efficacies = sum(len(subsets) for subsets in self.inputs)
        self.efficacy_model = nn.Sequential(nn.Linear(sum(dims), hidden),
                                            nn.Linear(hidden, inner), nn.Linear(inner, efficacies))
        for i, columns in enumerate(efficacy_columns):  # not in the state dict
            self.register_buffer(f"efficacy_columns_{i}", torch.tensor(columns), persistent=False)

    def linear_maps(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each network (the vertex networks in ``keys`` order, T's, the efficacy model) as the
        one ``(weight, bias)`` its chain of Linears amounts to (no non-linearity between them):
        ``W = W_k ... W_1``, ``b = W_k (... b_1) + b_k``."""
        networks = [*(self.vertex_networks["_".join(map(str, key))] for key in self.keys),
                    self.t_network, self.efficacy_model]
        maps = []
        for network in networks:
            weight, bias = network[0].weight, network[0].bias
            for layer in network[1:]:
                weight, bias = layer.weight @ weight, F.linear(bias, layer.weight, layer.bias)
            maps.append((weight, bias))
        return maps

    def forward(self, singletons: list[torch.Tensor],
                maps: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``maps``: :meth:`linear_maps` (computed once for a whole sequence); None: here."""
        maps = self.linear_maps() if maps is None else maps
        vertices = {(i,): s for i, s in enumerate(singletons)}
        efficacies = linear(torch.cat(singletons, dim=1), *maps[-1])
        for i, (subsets, (weight, bias)) in enumerate(zip(self.inputs, maps)):
            # each subset's vertex times its efficacy, [alpha_1 * v_1; alpha_2 * v_2; ...], as
            # one product with the efficacies repeated over each vertex's columns
            weighted = torch.cat([vertices[s] for s in subsets], 1) * efficacies.index_select(
                1, getattr(self, f"efficacy_columns_{i}"))
            output = linear(weighted, weight, bias)
            if i < len(self.keys):
                vertices[self.keys[i]] = output
        return output, efficacies


@register_model
class GraphMFN(GatedMemoryMixin, SingleAdamGroupMixin, MSAModel):
    """Graph Memory Fusion Network (see the module docstring for blocks and sizes)."""

    name = "graph_mfn"
    paper = ("Zadeh et al., Multimodal Language Analysis in the Wild: CMU-MOSEI Dataset and "
             "Interpretable Dynamic Fusion Graph, ACL 2018 (MMSA's port)")
    config_class = GraphMFNConfig

    def __init__(self, config: GraphMFNConfig, dims: FeatureDims):
        super().__init__(config, dims)
        require_modalities(dims, "graph_mfn", hint="For text-only or two-modality data use lf_dnn "
                           "with model.modalities")
        self.text_encoder = PretrainedTextEncoder(
            config.language_model, pooling="none", freeze=config.freeze_language_model)
        hiddens = (config.text_hidden, config.audio_hidden, config.vision_hidden)
        # MMSA's names (l, a, v), so that its state dicts map by name
        self.lstm_l = nn.LSTMCell(self.text_encoder.hidden_size, config.text_hidden)
        self.lstm_a = nn.LSTMCell(dims.audio, config.audio_hidden)
        self.lstm_v = nn.LSTMCell(dims.vision, config.vision_hidden)
        self.l_transform = nn.Linear(2 * config.text_hidden, config.text_hidden)
        self.a_transform = nn.Linear(2 * config.audio_hidden, config.audio_hidden)
        self.v_transform = nn.Linear(2 * config.vision_hidden, config.vision_hidden)
        self.graph_mfn = DynamicFusionGraph(list(hiddens), config.inner_node_dim,
                                            config.dfg_hidden)
        if not config.train_vertex_networks:
            self.graph_mfn.vertex_networks.requires_grad_(False)
        self.add_gated_memory(config, config.inner_node_dim, sum(hiddens))

    def input_sequences(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """Text, audio, vision as ``(T, B, D_m)`` step-major sequences of ``seq_len`` steps."""
        steps = self.config.seq_len
        text = fixed_length(self.text_encoder.encode_batch(batch), batch["attention_mask"], steps)
        others = [fixed_length(batch[m], batch[f"{m}_mask"], steps) for m in ("audio", "vision")]
        return tuple(s.transpose(0, 1) for s in (text, *others))

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        sequences = self.input_sequences(batch)
        steps, size = sequences[0].shape[:2]
        # No cell reads the graph or the memory, and the DFG at step t reads h[t-1] and h[t]
        # only: the cells run over their whole sequences, the singletons and the DFG over all
        # T x B rows at once; only the memory is updated step by step.
        singletons, finals = [], []
        for x, cell, transform in zip(sequences, (self.lstm_l, self.lstm_a, self.lstm_v),
                                      (self.l_transform, self.a_transform, self.v_transform)):
            hidden, (h_final, _) = lstm_cell_sequence(cell, x)  # (T, B, H)
            previous = torch.cat([hidden.new_zeros(1, size, hidden.shape[2]), hidden[:-1]])
            singletons.append(F.relu(transform(torch.cat([previous, hidden], dim=2))).flatten(0, 1))
            finals.append(h_final)
        attended, _ = self.graph_mfn(singletons)  # (T * B, inner)
        memory = attended.new_zeros(size, self.config.mem_dim)
        # unbind: one stack in backward (indexing step t would zero-fill (T, B, inner) per step)
        for attended_step in attended.view(steps, size, -1).unbind(0):
            memory = self.update_memory(attended_step, memory)
        prediction = self.memory_head(finals, memory)
        return ModelOutput(prediction=prediction,
                           losses=task_losses(prediction, batch, self.config.loss))
