"""Prototypes: unit rows at construction and after normalize_, scores = z @ W^T."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vice.models.prototypes import Prototypes


def row_norms(p: Prototypes) -> torch.Tensor:
    return p.weight.detach().norm(dim=1)


def test_init_unit_rows_from_global_rng() -> None:
    torch.manual_seed(3)
    a = Prototypes(27, 16)
    torch.manual_seed(3)
    b = Prototypes(27, 16)
    assert a.weight.shape == (27, 16) and a.num_prototypes == 27
    torch.testing.assert_close(row_norms(a), torch.ones(27))
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, Prototypes(27, 16).weight)


def test_scores_are_dot_products() -> None:
    p = Prototypes(10, 8)
    z_ND = F.normalize(torch.randn(50, 8), dim=1)
    torch.testing.assert_close(p(z_ND), z_ND @ p.weight.T)
    assert p(z_ND).abs().max() <= 1 + 1e-6  # cosine similarities


def test_normalize_restores_unit_rows_keeping_directions() -> None:
    p = Prototypes(10, 8)
    with torch.no_grad():
        p.weight.mul_(torch.rand(10, 1) * 5 + 0.1).add_(0.3)
    direction = F.normalize(p.weight.detach().clone(), dim=1)
    p.normalize_()
    torch.testing.assert_close(row_norms(p), torch.ones(10))
    torch.testing.assert_close(p.weight.detach(), direction)
    assert p.weight.requires_grad and p.weight.grad is None


def test_gradient_reaches_weight() -> None:
    p = Prototypes(5, 4)
    p(torch.randn(3, 4)).pow(2).sum().backward()
    assert p.weight.grad is not None and p.weight.grad.abs().sum() > 0
