"""Graph distillation unit (GD-Unit) of DMD (Li et al., CVPR 2023).

A GD-Unit is a dynamic graph whose vertices are modalities and whose directed edges carry
knowledge from a *teacher* modality to a *student* modality. For every sample it learns one
weight per ordered pair; the weights scale an L1 imitation loss between the student's prediction
and the teacher's (detached) prediction.

Edge weights (official ``DistillationKernel``): each modality ``m`` is embedded as
``z_m = [W_logit ŷ_m ; W_repr r_m]`` (``2 h``); the score of the edge teacher -> student is
``W_edge [z_student ; z_teacher]`` and the scores of all ``M (M - 1)`` pairs are normalised with
a softmax with temperature ``tau`` (official ``tau = 8``), so each sample's edges sum to one.

Pair order (student-major, as the official loop): for modalities ``(L, V, A)`` the six edges are
``V->L, A->L, L->V, A->V, L->A, V->A`` (``teacher->student``); :func:`pair_names` gives them.

Losses, all scalars:

* :meth:`GraphDistillationUnit.logit_loss`: ``sum_p mean_b (e_p + prior_p) |ŷ_s - sg(ŷ_t)|``
  (official: the fixed prior is added to the learned weight inside the loss);
* :meth:`GraphDistillationUnit.representation_cosine_loss`: official HeteroGD's extra term,
  ``sum_p mean_b(e_p + prior_p) · mean_b max(0, cos(r_s, sg(r_t)))`` (it pushes the student's
  representation away from the teacher's direction): the official code multiplies the batch-mean
  clamped cosine by the batch-mean weight (``weighting="batch_mean"``); ``"per_sample"`` weights
  each sample's cosine by its own edge, ``sum_p mean_b (e_p + prior_p) max(0, cos)``;
* :meth:`GraphDistillationUnit.prior_loss`: ``sum_p (mean_b e_p - prior_p)^2``.

The teacher side is always detached inside the imitation terms (``sg``); the edge network itself
sees both ends, as in the official code, unless ``detach_edge_inputs=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from msakit.modules.precision import full_precision


@full_precision
def _edge_softmax(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(scores / temperature)`` over the last dim, in float32 (see ``train.precision``)."""
    return torch.softmax(scores / temperature, dim=-1)


def directed_pairs(num_modalities: int) -> list[tuple[int, int]]:
    """``(student, teacher)`` index pairs in the official order (student-major)."""
    return [(s, t) for s in range(num_modalities) for t in range(num_modalities) if s != t]


def pair_names(modality_names: Sequence[str]) -> list[str]:
    """Edge names ``"teacher->student"`` in :func:`directed_pairs` order."""
    return [f"{modality_names[t]}->{modality_names[s]}"
            for s, t in directed_pairs(len(modality_names))]


def prior_from_scores(scores: Sequence[float], temperature: float) -> torch.Tensor:
    """The official fixed prior: ``softmax(scores / temperature)`` (official temperature 0.25)."""
    if temperature <= 0:
        raise ValueError(f"prior temperature must be > 0, got {temperature}")
    return torch.softmax(torch.tensor(list(scores), dtype=torch.float32) / temperature, dim=0)


class GraphDistillationUnit(nn.Module):
    """Learns per-sample distillation edges between modalities and computes the GD losses.

    Args:
        repr_dim: size ``D`` of each modality's representation ``r_m``.
        hidden_size: ``h``, size of each of the two embeddings (official: 64 homo, 32 hetero).
        prior: ``M (M - 1)`` fixed prior weights in :func:`directed_pairs` order (sum to one).
        modality_names: names of the ``M`` modalities, in the order of the stacked inputs.
        temperature: softmax temperature of the edge scores (official 8).
        logit_dim: size of each prediction (1 for regression).
        detach_edge_inputs: compute edges from detached predictions/representations, so that
            the distillation losses train only the GD unit's own weights through the edges.

    Shapes:
        ``logits (M, B, logit_dim)``, ``reprs (M, B, D)`` -> edges ``(B, M (M - 1))``.
    """

    def __init__(
        self,
        repr_dim: int,
        hidden_size: int,
        prior: Sequence[float] | torch.Tensor,
        modality_names: Sequence[str] = ("L", "V", "A"),
        temperature: float = 8.0,
        logit_dim: int = 1,
        detach_edge_inputs: bool = False,
    ):
        super().__init__()
        self.modality_names = tuple(modality_names)
        self.pairs = directed_pairs(len(self.modality_names))
        prior = torch.as_tensor(prior, dtype=torch.float32).flatten()
        if prior.numel() != len(self.pairs):
            raise ValueError(
                f"prior needs {len(self.pairs)} values (one per pair {pair_names(modality_names)}),"
                f" got {prior.numel()}"
            )
        if bool((prior < 0).any()) or abs(float(prior.sum()) - 1.0) > 1e-4:
            raise ValueError(f"prior must be non-negative and sum to one, got {prior.tolist()}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.register_buffer("prior", prior)
        self.temperature = temperature
        self.detach_edge_inputs = detach_edge_inputs
        self.logit_embedding = nn.Linear(logit_dim, hidden_size)
        self.repr_embedding = nn.Linear(repr_dim, hidden_size)
        self.edge_score = nn.Linear(4 * hidden_size, 1)

    @property
    def pair_names(self) -> list[str]:
        return pair_names(self.modality_names)

    def _check(self, logits: torch.Tensor, reprs: torch.Tensor) -> None:
        m = len(self.modality_names)
        if logits.dim() != 3 or logits.shape[0] != m:
            raise ValueError(f"logits must be (M={m}, B, k), got {tuple(logits.shape)}")
        if reprs.dim() != 3 or reprs.shape[:2] != logits.shape[:2]:
            raise ValueError(
                f"reprs must be (M={m}, B={logits.shape[1]}, D), got {tuple(reprs.shape)}"
            )

    def forward(self, logits: torch.Tensor, reprs: torch.Tensor) -> torch.Tensor:
        """Edge weights ``(B, P)``; each row sums to one."""
        self._check(logits, reprs)
        if self.detach_edge_inputs:
            logits, reprs = logits.detach(), reprs.detach()
        z = torch.cat([self.logit_embedding(logits), self.repr_embedding(reprs)], dim=-1)
        scores = torch.cat(
            [self.edge_score(torch.cat([z[s], z[t]], dim=-1)) for s, t in self.pairs], dim=-1
        )
        return _edge_softmax(scores, self.temperature)

    def _weights(self, edges: torch.Tensor) -> torch.Tensor:
        return edges + self.prior.unsqueeze(0)

    def logit_loss(self, logits: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
        """Weighted L1 imitation of the detached teacher predictions, summed over pairs."""
        weights = self._weights(edges)
        loss = logits.new_zeros(())
        for p, (s, t) in enumerate(self.pairs):
            distance = (logits[s] - logits[t].detach()).abs().sum(-1)
            loss = loss + (weights[:, p] * distance).mean()
        return loss

    def representation_cosine_loss(self, reprs: torch.Tensor, edges: torch.Tensor,
                                   weighting: str = "batch_mean") -> torch.Tensor:
        """Official HeteroGD representation term: weighted ``max(0, cos(r_s, sg(r_t)))``.

        ``weighting="batch_mean"`` (official): ``mean_b(w_p) · mean_b(max(0, cos))`` per pair;
        ``"per_sample"``: ``mean_b(w_p · max(0, cos))``.
        """
        if weighting not in ("batch_mean", "per_sample"):
            raise ValueError(f"weighting must be 'batch_mean' or 'per_sample', got {weighting!r}")
        weights = self._weights(edges)
        loss = reprs.new_zeros(())
        for p, (s, t) in enumerate(self.pairs):
            cosine = F.cosine_similarity(reprs[s], reprs[t].detach(), dim=-1, eps=1e-8).clamp(min=0)
            if weighting == "batch_mean":
                loss = loss + weights[:, p].mean() * cosine.mean()
            else:
                loss = loss + (weights[:, p] * cosine).mean()
        return loss

    def prior_loss(self, edges: torch.Tensor) -> torch.Tensor:
        """Squared distance of the batch-mean edges to the prior, summed over pairs."""
        return (edges.mean(0) - self.prior).pow(2).sum()
