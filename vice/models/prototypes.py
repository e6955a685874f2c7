"""Learnable prototypes (SwAV's cluster centres) scored against unit embeddings.

Shape legend: N embeddings, D embed_dim, K num_prototypes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Prototypes(nn.Module):
    """K unit-norm prototype vectors; scores are dot products with (unit) embeddings.

    The rows are kept on the unit sphere by `normalize_`, which the trainer calls after every
    optimizer step (SwAV/ViCE), so scores of unit embeddings are cosine similarities.

    Args:
        num_prototypes: K.
        dim: D, the embedding dimension.

    Attributes:
        weight: (K, D) parameter, initialised from torch's global RNG (normal, rows normalised).
    """

    def __init__(self, num_prototypes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(F.normalize(torch.randn(num_prototypes, dim), dim=1))

    @property
    def num_prototypes(self) -> int:
        return self.weight.shape[0]

    def forward(self, z_ND: Tensor) -> Tensor:
        """Returns scores_NK = z_ND @ weight^T."""
        return F.linear(z_ND, self.weight)

    @torch.no_grad()
    def normalize_(self) -> None:
        """Re-normalises every prototype row to unit L2 norm, in place."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        k, d = self.weight.shape
        return f"num_prototypes={k}, dim={d}"
