"""Representation losses shared by MISA, MMILN and DMD.

- :func:`cmd_loss`: Central Moment Discrepancy (Zellinger et al., ICLR 2017), MISA's similarity
  loss between shared representations of two modalities.
- :func:`soft_orthogonality_loss`: MISA's difference loss (squared Frobenius norm of the
  correlation between two batches of representations, averaged).
- :func:`reconstruction_loss`: mean squared error.

All take ``(B, D)`` batches and return a scalar tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from msakit.modules.precision import full_precision


def safe_l2_norm(difference: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of a vector whose gradient is 0 (not NaN) where the vector is 0.

    ``sqrt`` has an infinite derivative at 0, so ``(d ** 2).sum().sqrt()`` back-propagates
    ``inf * 0 = NaN`` when ``d`` is all zeros, which is exactly what happens to every central
    moment of a batch of one sample (or of identical rows). The value is unchanged.
    """
    squared = (difference * difference).sum()
    positive = squared > 0
    safe_squared = torch.where(positive, squared, torch.ones_like(squared))
    return torch.where(positive, safe_squared.sqrt(), torch.zeros_like(squared))


def _check_batch(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"{name}: expected a (B, D) batch with B >= 1, got {tuple(x.shape)}")


@full_precision
def cmd_loss(x: torch.Tensor, y: torch.Tensor, n_moments: int = 5,
             interval: float | None = None) -> torch.Tensor:
    """Central Moment Discrepancy between two batches.

    ``CMD_K(x, y) = ||E[x] - E[y]|| / |b-a| + sum_{k=2..K} ||c_k(x) - c_k(y)|| / |b-a|^k``, with
    ``c_k`` the per-dimension ``k``-th central moment over the batch, ``||.||`` the Euclidean
    norm and ``[a, b]`` the interval the features lie in (Zellinger et al. 2017; MMILN eq. 24).
    ``interval=None`` drops the ``1/|b-a|^k`` factors, as MISA's official implementation does.

    Args:
        x: ``(B_x, D)`` representations of one domain (modality).
        y: ``(B_y, D)`` representations of the other; ``B_y`` may differ from ``B_x``.
        n_moments: ``K``, the highest moment order (>= 1).
        interval: ``|b - a|`` (> 0), or ``None``.

    Returns:
        A scalar. Safe for a batch of one and for identical rows: the gradient stays finite.
    """
    _check_batch(x, "cmd_loss x")
    _check_batch(y, "cmd_loss y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"cmd_loss: feature sizes differ: {x.shape[1]} vs {y.shape[1]}")
    if n_moments < 1:
        raise ValueError(f"cmd_loss: n_moments must be >= 1, got {n_moments}")
    if interval is not None and interval <= 0:
        raise ValueError(f"cmd_loss: interval must be > 0, got {interval}")
    scale = 1.0 if interval is None else 1.0 / interval
    mean_x, mean_y = x.mean(0), y.mean(0)
    centred_x, centred_y = x - mean_x, y - mean_y
    loss = scale * safe_l2_norm(mean_x - mean_y)
    for order in range(2, n_moments + 1):
        moment_x = centred_x.pow(order).mean(0)
        moment_y = centred_y.pow(order).mean(0)
        loss = loss + scale ** order * safe_l2_norm(moment_x - moment_y)
    return loss


@full_precision
def frobenius_orthogonality_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||Aᵀ B||_F²``: the soft orthogonality constraint as MMILN writes it (eq. 26), on the
    raw representations (no centring, no normalisation, a sum over the ``D_a x D_b`` entries).

    Shapes: ``a (B, D_a)``, ``b (B, D_b)`` -> scalar.
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"frobenius_orthogonality_loss: batch sizes differ: {a.shape[0]} vs {b.shape[0]}"
        )
    return (a.reshape(a.shape[0], -1).t() @ b.reshape(b.shape[0], -1)).pow(2).sum()


@full_precision
def soft_orthogonality_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MISA's difference loss: push two sets of representations towards orthogonality.

    Each input is centred over the batch, each row divided by its (detached) L2 norm + 1e-6,
    and the loss is the mean of the squared entries of ``Âᵀ B̂`` (MISA eq. 7, averaged over the
    ``D_a x D_b`` entries as the official code does).

    Args:
        a: ``(B, D_a)`` (more dimensions are flattened to ``(B, -1)``).
        b: ``(B, D_b)``, the same ``B``.

    Returns:
        A scalar in [0, 1]; 0 for a batch of one (the centred rows are zero).
    """
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"soft_orthogonality_loss: batch sizes differ: {a.shape[0]} vs {b.shape[0]}"
        )
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1)
    a = a - a.mean(0, keepdim=True)
    b = b - b.mean(0, keepdim=True)
    a = a / (a.norm(p=2, dim=1, keepdim=True).detach() + 1e-6)
    b = b / (b.norm(p=2, dim=1, keepdim=True).detach() + 1e-6)
    return (a.t() @ b).pow(2).mean()


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all entries of two same-shaped ``(B, D)`` tensors."""
    if pred.shape != target.shape:
        raise ValueError(
            f"reconstruction_loss: shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}"
        )
    return F.mse_loss(pred, target)


__all__ = ["cmd_loss", "soft_orthogonality_loss", "reconstruction_loss", "safe_l2_norm"]
