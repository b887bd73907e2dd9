"""Hand-computed cases for the shared representation losses."""

from __future__ import annotations

import math

import pytest
import torch

from msakit.modules.losses import (
    cmd_loss,
    reconstruction_loss,
    safe_l2_norm,
    soft_orthogonality_loss,
)


def test_cmd_one_dimension_by_hand():
    x = torch.tensor([[0.0], [2.0]])
    y = torch.tensor([[1.0], [1.0]])
    # Means equal (1 vs 1). Central moments of x: k=2 -> 1, k=3 -> 0, k=4 -> 1, k=5 -> 0;
    # y's are all 0. CMD_2 = 1, CMD_4 = 2, CMD_5 = 2.
    assert cmd_loss(x, y, n_moments=1).item() == pytest.approx(0.0)
    assert cmd_loss(x, y, n_moments=2).item() == pytest.approx(1.0)
    assert cmd_loss(x, y, n_moments=4).item() == pytest.approx(2.0)
    assert cmd_loss(x, y, n_moments=5).item() == pytest.approx(2.0)


def test_cmd_two_dimensions_by_hand():
    x = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
    y = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    # ||(1,2) - (1,1)|| = 1 ; second central moments (1, 4) vs (0, 0) -> sqrt(17).
    assert cmd_loss(x, y, n_moments=2).item() == pytest.approx(1.0 + math.sqrt(17.0))


def test_cmd_is_zero_for_identical_batches_and_symmetric():
    torch.manual_seed(0)
    x, y = torch.randn(6, 4), torch.randn(5, 4)
    assert cmd_loss(x, x).item() == pytest.approx(0.0)
    assert cmd_loss(x, y).item() == pytest.approx(cmd_loss(y, x).item())


@pytest.mark.parametrize("rows", ["batch_of_one", "identical_rows"])
def test_cmd_gradient_is_finite_where_moments_vanish(rows):
    torch.manual_seed(0)
    if rows == "batch_of_one":
        x = torch.randn(1, 8, requires_grad=True)
        y = torch.randn(1, 8, requires_grad=True)
    else:
        x = torch.full((4, 8), 0.3, requires_grad=True)
        y = torch.full((4, 8), 0.3, requires_grad=True)
    loss = cmd_loss(x, y, n_moments=5)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


def test_naive_norm_would_give_nan_gradient():
    # Documents the pitfall safe_l2_norm exists for.
    zero = torch.zeros(3, requires_grad=True)
    (zero * zero).sum().sqrt().backward()
    assert torch.isnan(zero.grad).all()
    zero = torch.zeros(3, requires_grad=True)
    safe_l2_norm(zero).backward()
    assert torch.equal(zero.grad, torch.zeros(3))
    v = torch.tensor([3.0, 4.0])
    assert safe_l2_norm(v).item() == pytest.approx(5.0)


def test_cmd_shape_errors():
    with pytest.raises(ValueError, match="feature sizes differ"):
        cmd_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        cmd_loss(torch.zeros(3), torch.zeros(3))


def test_soft_orthogonality_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])  # already centred
    # Rows / norms: (1,0), (0,1), (-1,-1)/sqrt(2). ÂᵀÂ = [[1.5, .5], [.5, 1.5]]:
    # squares 2.25 + .25 + .25 + 2.25 = 5, mean 1.25 (up to the 1e-6 in the denominators).
    assert soft_orthogonality_loss(a, a).item() == pytest.approx(1.25, rel=1e-4)
    # Orthogonal column spaces give 0.
    b = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    c = torch.tensor([[0.0, 5.0], [0.0, 5.0]])  # centred to zero
    assert soft_orthogonality_loss(b, c).item() == pytest.approx(0.0)


def test_soft_orthogonality_centres_over_the_batch():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    shifted = a + torch.tensor([10.0, -3.0])
    assert soft_orthogonality_loss(shifted, a).item() == pytest.approx(
        soft_orthogonality_loss(a, a).item(), rel=1e-5
    )


def test_soft_orthogonality_batch_of_one_is_zero_with_finite_gradient():
    a = torch.randn(1, 5, requires_grad=True)
    b = torch.randn(1, 3, requires_grad=True)
    loss = soft_orthogonality_loss(a, b)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_soft_orthogonality_uses_detached_norms():
    torch.manual_seed(0)
    a = torch.randn(4, 3, requires_grad=True)
    b = torch.randn(4, 3)
    soft_orthogonality_loss(a, b).backward()
    # Reference: the norm as a constant.
    a_ref = a.detach().clone().requires_grad_(True)
    centred = a_ref - a_ref.mean(0, keepdim=True)
    norm = centred.norm(dim=1, keepdim=True).detach() + 1e-6
    b_hat = (b - b.mean(0)) / ((b - b.mean(0)).norm(dim=1, keepdim=True) + 1e-6)
    ((centred / norm).t() @ b_hat).pow(2).mean().backward()
    assert torch.allclose(a.grad, a_ref.grad, atol=1e-6)


def test_reconstruction_loss():
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    target = torch.tensor([[1.0, 0.0], [3.0, 5.0]])
    assert reconstruction_loss(pred, target).item() == pytest.approx((4.0 + 1.0) / 4)
    with pytest.raises(ValueError, match="shapes differ"):
        reconstruction_loss(pred, target[:1])
