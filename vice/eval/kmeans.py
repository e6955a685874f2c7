"""Spherical (cosine) k-means in torch, on the CPU or a GPU, deterministic for a seed.

Shape legend: N rows to assign, M rows the centroids are fitted on (a random subset of the N),
D feature channels, K clusters.

The published evaluation clusters L2-normalised embeddings, so centroids live on the unit
sphere: a point joins the centroid of highest cosine similarity and a centroid is the
normalised mean of its points. Fitting on a subset and assigning every row afterwards in
chunks keeps memory bounded for millions of pixels. All random draws come from one seeded CPU
generator, so the result does not depend on the device's random state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows x clusters per similarity block: 2**24 float32 = 64 MiB, whatever K is.
_BLOCK_ELEMS = 1 << 24
# k-means++ seeding is k sequential passes over its rows; this many rows per cluster is plenty
# to place the seeds (the Lloyd iterations then use every fitted row).
_INIT_ROWS_PER_CLUSTER = 64
_MIN_INIT_ROWS = 20_000


def _chunk_rows(k: int) -> int:
    return max(1, _BLOCK_ELEMS // max(k, 1))


def _assign(x_MD: torch.Tensor, c_KD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid by cosine (rows of x need not be unit norm for the argmax)."""
    step = _chunk_rows(c_KD.shape[0])
    assign_M = torch.empty(x_MD.shape[0], dtype=torch.long, device=c_KD.device)
    sim_M = torch.empty(x_MD.shape[0], dtype=torch.float32, device=c_KD.device)
    for start in range(0, x_MD.shape[0], step):
        chunk = x_MD[start : start + step].to(c_KD.device, torch.float32, non_blocking=True)
        best = (chunk @ c_KD.T).max(dim=1)
        sim_M[start : start + step] = best.values
        assign_M[start : start + step] = best.indices
    return assign_M, sim_M


def _kmeanspp(x_MD: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeds: each next seed drawn with probability ~ squared chordal distance."""
    m = x_MD.shape[0]
    first = int(torch.randint(m, (1,), generator=gen))
    c_KD = torch.empty((k, x_MD.shape[1]), dtype=x_MD.dtype, device=x_MD.device)
    c_KD[0] = x_MD[first]
    # On the unit sphere |x - c|^2 = 2 - 2 cos(x, c).
    d2_M = (2 - 2 * (x_MD @ c_KD[0])).clamp_min_(0)
    for j in range(1, k):
        # float64 cumsum: float32 loses the tail of the distribution for ~1e5 rows.
        cdf = torch.cumsum(d2_M.double(), 0)
        u = float(torch.rand((), generator=gen, dtype=torch.float64))
        if float(cdf[-1]) <= 0:  # every row sits on a seed already: any row will do
            idx = int(u * m)
        else:
            target = torch.tensor([u * float(cdf[-1])], dtype=torch.float64, device=cdf.device)
            idx = int(torch.searchsorted(cdf, target, right=True).clamp_max_(m - 1))
        c_KD[j] = x_MD[idx]
        torch.minimum(d2_M, (2 - 2 * (x_MD @ c_KD[j])).clamp_min_(0), out=d2_M)
    return c_KD


def _onehot_sums(x_MD: torch.Tensor, assign_M: torch.Tensor, k: int) -> torch.Tensor:
    """Per-cluster row sums as one-hot matrix products, chunked (deterministic on CUDA)."""
    sums_KD = torch.zeros((k, x_MD.shape[1]), dtype=torch.float32, device=x_MD.device)
    step = _chunk_rows(k)
    for start in range(0, x_MD.shape[0], step):
        onehot_CK = F.one_hot(assign_M[start : start + step], k).to(torch.float32)
        sums_KD += onehot_CK.T @ x_MD[start : start + step]
    return sums_KD


def _centroid_sums(x_MD: torch.Tensor, assign_M: torch.Tensor, k: int) -> torch.Tensor:
    if x_MD.device.type == "cpu":
        # index_add_ is deterministic on the CPU and K times cheaper than the one-hot product.
        sums_KD = torch.zeros((k, x_MD.shape[1]), dtype=torch.float32)
        return sums_KD.index_add_(0, assign_M, x_MD)
    # On CUDA index_add_ adds floats with atomics in a varying order (not bit-reproducible).
    return _onehot_sums(x_MD, assign_M, k)


def _lloyd(
    x_MD: torch.Tensor, c_KD: torch.Tensor, iters: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd iterations from seeds `c_KD`; returns centroids, assignment and similarities."""
    k = c_KD.shape[0]
    prev_M: torch.Tensor | None = None
    for _ in range(iters):
        assign_M, sim_M = _assign(x_MD, c_KD)
        if prev_M is not None and torch.equal(assign_M, prev_M):
            break  # converged: another update would reproduce the same centroids
        prev_M = assign_M
        counts_K = torch.bincount(assign_M, minlength=k)
        c_KD = F.normalize(_centroid_sums(x_MD, assign_M, k), dim=1)
        empty_E = torch.nonzero(counts_K == 0).flatten()
        if empty_E.numel():
            # Re-seed empty clusters with the rows worst served by their current centroid
            # (distinct rows, so two re-seeded clusters never coincide).
            far_E = torch.topk(sim_M, empty_E.numel(), largest=False).indices
            c_KD[empty_E] = x_MD[far_E]
    else:
        assign_M, sim_M = _assign(x_MD, c_KD)
    return c_KD, assign_M, sim_M


def kmeans(
    x_ND: torch.Tensor,
    k: int,
    iters: int = 30,
    seed: int = 0,
    fit_samples: int = 200_000,
    restarts: int = 1,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical k-means with k-means++ seeding.

    Args:
        x_ND: Rows to cluster (any norm; they are L2-normalised, i.e. cosine k-means). May
            stay on the CPU while `device` is a GPU: rows are moved there in chunks.
        k: Number of clusters (at most N).
        iters: Maximum Lloyd iterations per restart (stops early once assignments repeat).
        seed: Seed of every random draw (subset, seeds); same seed, same device -> same result.
        fit_samples: Rows (a random subset) the centroids are fitted on; raised to k if lower.
        restarts: Independent seedings; the one of highest mean cosine similarity wins.
        device: Where the arithmetic runs; default: x's device.

    Returns:
        centroids_KD: Unit-norm float32 centroids, on `device`.
        assign_N: int64 cluster id of every row, on `device`.
    """
    if x_ND.ndim != 2:
        raise ValueError(f"kmeans expects a (N, D) matrix, got shape {tuple(x_ND.shape)}")
    n = x_ND.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"kmeans needs 1 <= k <= N rows, got k={k} for N={n}")
    if iters < 1 or restarts < 1:
        raise ValueError(f"iters and restarts must be >= 1, got {iters} and {restarts}")
    device = torch.device(device) if device is not None else x_ND.device
    gen = torch.Generator().manual_seed(seed)

    m = min(n, max(fit_samples, k))
    rows_M = torch.randperm(n, generator=gen)[:m] if m < n else torch.arange(n)
    fit_MD = F.normalize(x_ND[rows_M.to(x_ND.device)].to(device, torch.float32), dim=1)
    m_init = min(m, max(_MIN_INIT_ROWS, _INIT_ROWS_PER_CLUSTER * k))

    best: tuple[float, torch.Tensor] | None = None
    for _ in range(restarts):
        init_M = torch.randperm(m, generator=gen)[:m_init].to(device)
        seeds_KD = _kmeanspp(fit_MD[init_M], k, gen)
        c_KD, _, sim_M = _lloyd(fit_MD, seeds_KD, iters)
        objective = float(sim_M.double().mean())
        if best is None or objective > best[0]:
            best = (objective, c_KD)
    assert best is not None
    centroids_KD = best[1]
    assign_N, _ = _assign(x_ND, centroids_KD)
    return centroids_KD, assign_N
