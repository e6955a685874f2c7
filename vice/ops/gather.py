"""Gathering rows of different counts from every rank (no gradient).

torch.distributed.all_gather needs equal shapes, so each rank pads its rows to the largest
count first (one small all_gather of the counts, then one of the padded rows) and the padding
is dropped again: M = sum of the counts rows, in rank order.

Shapes: N rows on this rank, D row width, M rows over all ranks.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist

from vice import dist


@torch.no_grad()
def all_gather_rows(x_ND: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every rank's rows, concatenated in rank order, and where this rank's rows start.

    Collective: every rank calls it (with any N, 0 included). A world of one returns x_ND.
    """
    if not dist.is_distributed():
        return x_ND, 0
    world, rank = torch_dist.get_world_size(), torch_dist.get_rank()
    count = torch.tensor([x_ND.shape[0]], device=x_ND.device, dtype=torch.int64)
    counts = [torch.zeros_like(count) for _ in range(world)]
    torch_dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    padded = x_ND.new_zeros((max(sizes), *x_ND.shape[1:]))
    padded[: x_ND.shape[0]] = x_ND
    gathered = [torch.empty_like(padded) for _ in range(world)]
    torch_dist.all_gather(gathered, padded)
    rows = torch.cat([g[:n] for g, n in zip(gathered, sizes, strict=True)])
    return rows, sum(sizes[:rank])
