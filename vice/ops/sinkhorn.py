"""Sinkhorn-Knopp equal-partition assignments (SwAV), exact across ranks of unequal sizes.

Targets for ViCE's center-view regions (methods.md section 1): the score matrix
exp(scores / epsilon) is alternately rescaled so that every prototype receives 1/K of the
total mass and every sample 1/N, for a few iterations; each sample's row, renormalised to 1,
is its soft cluster assignment. Rows may be spread over ranks: the per-prototype sums run
over the GLOBAL rows (all-reduced), and N is the global row count (all-reduced), so ranks
holding different numbers of rows (unequal region counts) get exactly the assignments that
one process holding all rows would compute. The published SwAV/ViCE code instead uses
N = local rows * world size, which is only right when every rank holds the same number.

Numerics: the iterations run in the log domain (a prototype rescaling is a subtraction of
its log-sum-exp, stabilised by the global per-prototype maximum), in float64. Nothing is
exponentiated before the final per-row softmax, so there is no under- or overflow for any
finite scores and epsilon: no NaN/inf, no all-zero rows or prototypes, no eps fix-ups. The
global maximum of scores / epsilon is subtracted first (all-reduce MAX), as SwAV does before
its exp, to keep the float64 values small; the result does not depend on that shift or on
adding a constant to every score. float64 costs little here (a batch's center-view regions
plus this rank's queue, times K = 128, is tiny next to the per-pixel tensors) and makes the
result independent of how the rows are split across ranks to ~1e-12.

Shape legend:
    N  rows (samples) on this rank; the global row count is the sum over ranks
    K  prototypes
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


def _world_size(group: dist.ProcessGroup | None) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _all_reduce(t: torch.Tensor, op: dist.ReduceOp, group: dist.ProcessGroup | None) -> None:
    if _world_size(group) > 1:
        dist.all_reduce(t, op=op, group=group)


def _global_logsumexp_over_rows(
    log_q_NK: torch.Tensor, group: dist.ProcessGroup | None
) -> torch.Tensor:
    """log sum_n exp(log_q[n, k]) over the rows of every rank, per prototype -> (K,)."""
    N, K = log_q_NK.shape
    # A rank without rows still joins both collectives (amax of no rows would raise).
    max_K = log_q_NK.amax(dim=0) if N else log_q_NK.new_full((K,), float("-inf"))
    _all_reduce(max_K, dist.ReduceOp.MAX, group)
    # Every prototype has a finite global maximum once any rank holds a row.
    sum_K = torch.exp(log_q_NK - max_K).sum(dim=0)
    _all_reduce(sum_K, dist.ReduceOp.SUM, group)
    return max_K + torch.log(sum_K)


@torch.no_grad()
def sinkhorn(
    scores_NK: torch.Tensor,
    epsilon: float = 0.05,
    iterations: int = 3,
    group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """SwAV's Sinkhorn-Knopp soft assignments, with all sums over the rows of every rank.

    Each iteration first rescales every prototype (column) to total mass 1/K over all rows of
    all ranks, then every row to mass 1/N with N the global row count; the returned rows are
    renormalised to sum to 1. After enough iterations the column sums of the result approach
    N/K each. Every rank of `group` must call this (it all-reduces when torch.distributed is
    initialised with more than one rank in `group`), with the same epsilon and iterations.

    Args:
        scores_NK: prototype scores of this rank's rows (e.g. z @ C^T); not differentiated.
        epsilon: entropic regularisation; smaller gives harder assignments.
        iterations: Sinkhorn-Knopp iterations (prototype then row rescaling); 0 gives
            softmax(scores / epsilon) per row.
        group: process group over which rows are spread (None: the default group).

    Returns:
        Q_NK: assignment distribution per row (rows sum to 1), detached, float32 unless
        scores are float64.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    N, K = scores_NK.shape
    out_dtype = torch.float64 if scores_NK.dtype == torch.float64 else torch.float32
    log_q_NK = scores_NK.detach().to(torch.float64) / epsilon
    # Global row count and non-finite count in one collective; every rank then takes the
    # same branch below (a rank raising or returning alone would leave the others waiting).
    nonfinite_local = (~torch.isfinite(log_q_NK)).sum().to(torch.float64)
    stats = torch.stack([log_q_NK.new_tensor(float(N)), nonfinite_local])
    _all_reduce(stats, dist.ReduceOp.SUM, group)
    total, nonfinite = stats[0], int(stats[1])
    if nonfinite:
        raise ValueError(f"sinkhorn got {nonfinite} non-finite entries in scores / epsilon")
    if total == 0:
        return scores_NK.new_zeros((N, K), dtype=out_dtype)
    shift = log_q_NK.max() if N else log_q_NK.new_tensor(float("-inf"))
    _all_reduce(shift, dist.ReduceOp.MAX, group)
    log_q_NK -= shift

    log_col_mass = -math.log(K)  # every prototype gets 1/K of the mass ...
    log_row_mass = -torch.log(total)  # ... and every row 1/N, N = all rows of all ranks
    for _ in range(iterations):
        log_q_NK += log_col_mass - _global_logsumexp_over_rows(log_q_NK, group)
        log_q_NK += log_row_mass - torch.logsumexp(log_q_NK, dim=1, keepdim=True)
    return torch.softmax(log_q_NK, dim=1).to(out_dtype)
