"""Superpixel (segment) pooling of per-pixel embeddings, vectorised over all regions at once.

ViCE turns the per-pixel embeddings of every view into one vector per common superpixel
(methods.md section 1, "Loss"): either the superpixel mean (FPN runs) or the single most
prototype-confident pixel plus a coherence loss (DeepLab runs). The published code loops over
superpixels in Python; here every region of every image and view is one segment and each
reduction is one scatter/gather over all pixels.

Two layouts: the public segment functions take pixel-major rows (x_ND with a global segment
per row, see `region_index`); `pool_regions`, the training-time entry point, works on the
network's channel-first output directly, one group per (view, image), so it never copies the
(V, B, D, H, W) embeddings into a pixel-major layout and its backward writes a single
full-size gradient.

Shape legend:
    V  views (view 0 is the center view)
    B  images
    H, W  view height and width
    D  embedding dimension
    K  prototypes
    R  regions of the whole batch (sum of num_regions over images)
    N  pixels (pixel-major rows)
    S  segments (S = V * R in `pool_regions`)
    G  groups of pixels that share local segment ids (G = V * B in `pool_regions`)
    P  pixels per group (H * W)
    L  local segments per group (max regions of an image); bucket L collects ignored pixels
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

PoolMode = Literal["mean", "representative"]

# Most pixels per chunk of the per-pixel loops (prototype scores, squared differences), so
# that no (N, K) or (N, D) temporary for the whole batch exists. On CPU the chunks are
# cache-sized: the (2048, K) score block and the (D, 2048) squares stay in L2, which makes
# the score GEMM and the elementwise passes 1.5-3x faster than on a whole view at once. On
# GPUs, large chunks (16 MiB at D = K = 128) keep the kernel count low.
_CHUNK_PIXELS_CPU = 2048
_CHUNK_PIXELS_GPU = 1 << 15


def region_index(ids_VBHW: torch.Tensor, num_regions_B: torch.Tensor) -> torch.Tensor:
    """Maps per-image region ids to one global segment index for the whole batch.

    Segment of region r of image b in view v is ``v * R + offset_b + r`` with ``R =
    num_regions.sum()`` and ``offset_b`` the exclusive cumulative sum of num_regions, so a
    (V * R, D) result of pooling reshapes to (V, R, D) with region rows aligned across views.

    Args:
        ids_VBHW: int64 region index within its image (0 <= id < num_regions[b]), -1 where
            the pixel is not a target.
        num_regions_B: int64 number of regions of each image.

    Returns:
        seg_VBHW: int64 global segment index in [0, V * R), -1 where ids is -1.
    """
    V, B = ids_VBHW.shape[:2]
    if num_regions_B.shape != (B,):
        raise ValueError(f"num_regions has shape {tuple(num_regions_B.shape)}, expected ({B},)")
    num_regions_B = num_regions_B.to(device=ids_VBHW.device, dtype=torch.int64)
    R = num_regions_B.sum()
    offset_B = torch.cumsum(num_regions_B, 0) - num_regions_B
    base_VB = torch.arange(V, device=ids_VBHW.device)[:, None] * R + offset_B[None, :]
    return torch.where(ids_VBHW >= 0, ids_VBHW + base_VB[:, :, None, None], -1)


def segment_mean(
    x_ND: torch.Tensor, seg_N: torch.Tensor, num_segments: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of the rows of each segment.

    One ``index_add`` over all rows (differentiable w.r.t. x; deterministic on CUDA under
    ``torch.use_deterministic_algorithms``). Rows of segment -1 land in a spare bucket that is
    dropped, which is cheaper than first copying the valid rows out.

    Args:
        x_ND: rows to average.
        seg_N: int64 segment of each row in [0, num_segments), -1 = ignore the row.
        num_segments: S.

    Returns:
        mean_SD: per-segment mean, zeros for segments without rows.
        count_S: int64 number of rows per segment.
    """
    bucket_N = seg_N + 1  # bucket 0 collects the ignored rows
    count_S = torch.bincount(bucket_N, minlength=num_segments + 1)[1:]
    sums_SD = x_ND.new_zeros(num_segments + 1, x_ND.shape[1]).index_add(0, bucket_N, x_ND)[1:]
    return sums_SD / count_S.clamp(min=1).to(sums_SD.dtype)[:, None], count_S


def segment_argmax(values_N: torch.Tensor, seg_N: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Index of the largest value of each segment (ties: the smallest index).

    Per segment: ``scatter_reduce(amax)``, then the smallest index among the rows that reach
    it (``scatter_reduce(amin)``), i.e. exactly ``torch.argmax`` over the segment's rows in
    order. CUDA's scatter_reduce has no deterministic mode, so under
    ``torch.use_deterministic_algorithms(True)`` on CUDA the same answer comes from two
    stable sorts instead (slower, deterministic). Values must not be NaN.

    Args:
        values_N: values to compare (not differentiated through).
        seg_N: int64 segment of each value in [0, num_segments), -1 = ignore.
        num_segments: S.

    Returns:
        index_S: int64 row index n of each segment's maximum, -1 for segments without rows.
    """
    values_N = values_N.detach()
    if values_N.is_cuda and torch.are_deterministic_algorithms_enabled():
        return _segment_argmax_sorted(values_N, seg_N, num_segments)
    return _segment_argmax_scatter(values_N, seg_N, num_segments)


def _segment_argmax_scatter(
    values_N: torch.Tensor, seg_N: torch.Tensor, num_segments: int
) -> torch.Tensor:
    N = values_N.shape[0]
    bucket_N = seg_N + 1  # bucket 0 collects the ignored rows
    best_S = values_N.new_full((num_segments + 1,), float("-inf"))
    best_S = best_S.scatter_reduce(0, bucket_N, values_N, "amax")
    row_N = torch.arange(N, device=values_N.device)
    candidate_N = torch.where(values_N == best_S[bucket_N], row_N, N)
    first_S = torch.full_like(best_S, N, dtype=torch.int64)
    first_S = first_S.scatter_reduce(0, bucket_N, candidate_N, "amin")[1:]
    return torch.where(first_S < N, first_S, -1)


def _segment_argmax_sorted(
    values_N: torch.Tensor, seg_N: torch.Tensor, num_segments: int
) -> torch.Tensor:
    # Stable sorts by value (descending), then by segment: each segment's rows form one run
    # that starts with its maximum, equal values kept in row order.
    index_S = torch.full((num_segments,), -1, dtype=torch.int64, device=values_N.device)
    if values_N.numel() == 0:
        return index_S
    by_value_N = torch.sort(values_N, descending=True, stable=True).indices
    order_N = by_value_N[torch.sort(seg_N[by_value_N], stable=True).indices]
    seg_sorted_N = seg_N[order_N]
    first_N = torch.ones_like(seg_sorted_N, dtype=torch.bool)
    first_N[1:] = seg_sorted_N[1:] != seg_sorted_N[:-1]
    first_N &= seg_sorted_N >= 0
    index_S[seg_sorted_N[first_N]] = order_N[first_N]
    return index_S


class _RepresentativeCoherence(torch.autograd.Function):
    """Representative rows and the coherence loss, with a hand-written backward.

    Plain autograd would keep several full-size (G, D, P) tensors alive (the broadcast
    representatives, their difference to every pixel, the norm's backward, one gradient per
    path into z) and sum them. Here the forward keeps exactly one, the differences z_p - r,
    and the backward scales it in place into the gradient w.r.t. z, so the whole op allocates
    one tensor of z's size. The backward can therefore run only once per forward.
    """

    @staticmethod
    def forward(
        ctx,
        z_GDP: torch.Tensor,
        index_GL: torch.Tensor,
        loc_GP: torch.Tensor,
        weight_GP: torch.Tensor,
        detach_representative: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        G, D, P = z_GDP.shape
        L = index_GL.shape[1]
        present_GL = index_GL >= 0
        if P == 0:  # no pixels: every segment is empty
            rep_GDL = z_GDP.new_zeros(G, D, L)
        else:
            pick_GDL = index_GL.clamp(min=0)[:, None, :].expand(G, D, L)
            rep_GDL = z_GDP.gather(2, pick_GDL) * present_GL[:, None, :].to(z_GDP.dtype)
        # Column L is the bucket of ignored pixels (weight 0); its "representative" is 0.
        rep_GDL1 = F.pad(rep_GDL, (0, 1))
        diff_GDP = torch.empty((G, D, P), dtype=z_GDP.dtype, device=z_GDP.device)
        dist_GP = z_GDP.new_empty(G, P)
        bounds = _chunk_bounds(P, z_GDP.device)
        square_X = z_GDP.new_empty(D * max((p1 - p0 for p0, p1 in bounds), default=0))
        ones_D = z_GDP.new_ones(D)
        for g in range(G):
            for p0, p1 in bounds:
                diff_DX = diff_GDP[g, :, p0:p1]
                # index_select is the fast gather here (advanced indexing and gather are
                # several times slower on CPU).
                torch.index_select(rep_GDL1[g], 1, loc_GP[g, p0:p1], out=diff_DX)
                torch.sub(z_GDP[g, :, p0:p1], diff_DX, out=diff_DX)
                square_DX = square_X[: D * (p1 - p0)].view(D, p1 - p0)
                torch.mul(diff_DX, diff_DX, out=square_DX)
                # Summing over D with a mat-vec product: several times faster on CPU than a
                # reduction over the leading (strided) dimension.
                torch.sqrt(ones_D @ square_DX, out=dist_GP[g, p0:p1])
        coherence = (dist_GP * weight_GP).sum()
        ctx.save_for_backward(index_GL, loc_GP, weight_GP, dist_GP)
        ctx.diff_GDP = diff_GDP
        ctx.detach_representative = detach_representative
        return rep_GDL, coherence

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rep_GDL: torch.Tensor, grad_coherence: torch.Tensor):
        index_GL, loc_GP, weight_GP, dist_GP = ctx.saved_tensors
        grad_z_GDP, ctx.diff_GDP = ctx.diff_GDP, None
        if grad_z_GDP is None:
            raise RuntimeError(
                "representative pooling's backward reuses its saved differences as the "
                "gradient buffer and cannot run twice (retain_graph) for one forward"
            )
        G, D, P = grad_z_GDP.shape
        L = index_GL.shape[1]
        # d||z - r|| / dz = (z - r) / ||z - r||, taken as 0 at the representative itself
        # (distance 0), like vector_norm's own backward, and at distances within rounding
        # of 0: pixels that copy the representative's value (bilinear upsampling replicates
        # border pixels) are 0 or one ulp away from it depending on how a kernel vectorised
        # them, and one ulp would give a unit gradient in a direction that is pure rounding.
        # With the representative detached nothing cancels it, and 2 ranks would no longer
        # equal 1 process (tests/train/test_ddp.py).
        tiny = 16 * torch.finfo(dist_GP.dtype).eps
        scale_GP = torch.where(dist_GP > tiny, grad_coherence * weight_GP / dist_GP, 0.0)
        grad_z_GDP.mul_(scale_GP[:, None, :])
        if P == 0:
            return grad_z_GDP, None, None, None, None
        grad_rep_GDL1 = F.pad(grad_rep_GDL, (0, 1))
        if not ctx.detach_representative:
            # The representative sits on the other side of each of its segment's distances.
            pulled_GDL1 = torch.zeros_like(grad_rep_GDL1).scatter_add_(
                2, loc_GP[:, None, :].expand(G, D, P), grad_z_GDP
            )
            grad_rep_GDL1 -= pulled_GDL1
        # Each representative is a pixel: its gradient goes back to that pixel.
        present_GL = (index_GL >= 0)[:, None, :].to(grad_rep_GDL1.dtype)
        grad_rep_GDL = grad_rep_GDL1[:, :, :L] * present_GL
        pick_GDL = index_GL.clamp(min=0)[:, None, :].expand(G, D, L)
        grad_z_GDP.scatter_add_(2, pick_GDL, grad_rep_GDL)
        return grad_z_GDP, None, None, None, None


def _chunk_bounds(P: int, device: torch.device) -> list[tuple[int, int]]:
    """(first, end) pixel of near-equal chunks of at most the device's chunk size."""
    size = _CHUNK_PIXELS_CPU if device.type == "cpu" else _CHUNK_PIXELS_GPU
    n = max(1, -(-P // size))
    return list(pairwise(P * i // n for i in range(n + 1)))


def _grouped_representatives(
    z_GDP: torch.Tensor,
    confidence_GP: torch.Tensor,
    loc_GP: torch.Tensor,
    num_local: int,
    detach_representative: bool,
    coherence_per_group: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Representative pooling within groups; returns (rep_GDL, coherence, count_GL).

    coherence: the mean over non-empty segments of their mean distance, or with
    `coherence_per_group` the mean over non-empty groups of that mean within the group.
    """
    G, _, P = z_GDP.shape
    L = num_local
    group_G = torch.arange(G, device=z_GDP.device)
    valid_GP = loc_GP < L
    seg_GP = torch.where(valid_GP, group_G[:, None] * L + loc_GP, -1)
    index_S = segment_argmax(confidence_GP.reshape(-1), seg_GP.reshape(-1), G * L)
    # Flat row n = g * P + p; keep the pixel p within its group, -1 for empty segments.
    index_GL = torch.where(index_S >= 0, index_S % max(P, 1), -1).reshape(G, L)
    count_GL = torch.bincount((seg_GP + 1).reshape(-1), minlength=G * L + 1)[1:].reshape(G, L)
    # Per-pixel weight 1 / (pixels of its segment * non-empty segments): the weighted sum of
    # distances is then the mean over segments of each segment's mean distance.
    count_GL1 = F.pad(count_GL, (0, 1), value=1)
    if coherence_per_group:
        # 1 / (pixels of its segment * non-empty segments of its group * non-empty groups)
        segments_G = (count_GL > 0).sum(dim=1)
        groups = (segments_G > 0).sum().clamp(min=1)
        per_pixel_GP = count_GL1.gather(1, loc_GP) * segments_G.clamp(min=1)[:, None] * groups
    else:
        nonempty = (count_GL > 0).sum().clamp(min=1)
        per_pixel_GP = count_GL1.gather(1, loc_GP) * nonempty
    weight_GP = valid_GP.to(z_GDP.dtype) / per_pixel_GP
    with torch.autocast(z_GDP.device.type, enabled=False):  # distances in z's dtype
        rep_GDL, coherence = _RepresentativeCoherence.apply(
            z_GDP, index_GL, loc_GP, weight_GP, detach_representative
        )
    return rep_GDL, coherence, count_GL


def representative_pool(
    x_ND: torch.Tensor,
    scores_NK: torch.Tensor,
    seg_N: torch.Tensor,
    num_segments: int,
    *,
    detach_representative: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ViCE's DeepLab pooling: each segment is represented by its most confident pixel.

    The representative of a segment is the pixel with the largest ``max_k scores[n, k]``
    (ties: the smallest n). The coherence loss pulls a segment's pixels together around it:
    the mean over non-empty segments of the mean L2 distance ``||x_n - rep_seg(n)||`` of the
    segment's pixels (the representative itself included, at distance 0). Choosing the pixel
    is not differentiable (scores only select). Gradients reach x through every pixel's side
    of its distance and through the representative row, both from whatever consumes rep_SD
    and, unless `detach_representative`, from the representative's side of every distance in
    its segment. The published code detaches the representative inside the coherence term
    (only the pixels move towards it); ``detach_representative=True`` reproduces that.

    Args:
        x_ND: per-pixel embeddings.
        scores_NK: per-pixel prototype scores (only their row maxima are used; no gradient).
        seg_N: int64 segment per pixel in [0, num_segments), -1 = ignore the pixel.
        num_segments: S.
        detach_representative: stop the coherence gradient into the representative.

    Returns:
        rep_SD: the representative pixel's row of x per segment, zeros for empty segments.
        coherence: scalar loss (0 when every segment is empty).
    """
    with torch.no_grad():
        confidence_N = scores_NK.amax(dim=1) if scores_NK.shape[0] else scores_NK.new_zeros(0)
    loc_N = torch.where(seg_N >= 0, seg_N, num_segments)
    # One group holding every row; the transposed view is only read by gathers.
    rep_1DS, coherence, _ = _grouped_representatives(
        x_ND.t()[None], confidence_N[None], loc_N[None], num_segments, detach_representative
    )
    return rep_1DS[0].t(), coherence


def _max_scores(z_GDP: torch.Tensor, prototypes_KD: torch.Tensor) -> torch.Tensor:
    """confidence_GP = max_k <z_p, c_k>, chunked, without autograd."""
    with torch.no_grad():
        weights_DK = prototypes_KD.detach().to(z_GDP.dtype).t()
        confidence_GP = z_GDP.new_empty(z_GDP.shape[0], z_GDP.shape[2])
        for g in range(z_GDP.shape[0]):
            for p0, p1 in _chunk_bounds(z_GDP.shape[2], z_GDP.device):
                # Pixel-major product (the transposed view costs no copy): BLAS runs it
                # faster than (K, D) @ (D, P), and the max then reduces contiguous rows.
                scores_XK = z_GDP[g, :, p0:p1].t() @ weights_DK
                torch.amax(scores_XK, dim=1, out=confidence_GP[g, p0:p1])
        return confidence_GP


def pool_regions(
    z_VBDHW: torch.Tensor,
    ids_VBHW: torch.Tensor,
    num_regions_B: torch.Tensor,
    mode: PoolMode = "mean",
    prototypes_KD: torch.Tensor | None = None,
    *,
    detach_representative: bool = False,
    coherence_per_group: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One L2-normalised vector per view and region of the batch, plus the coherence loss.

    Works on z in its channel-first layout with one group of local segment ids per (view,
    image): ``scatter_add`` (mean) or a chunked gather (representative) over the pixel axis,
    no pixel-major copy of z. Half-precision embeddings are pooled in float32 (segment sums
    over hundreds of pixels lose too much in bf16). The pooled vectors are L2-normalised because
    SwAV scores are cosine similarities to unit prototypes: a superpixel mean of unit vectors
    is shorter than 1 (a representative pixel of normalised embeddings already has unit
    length). A region without pixels in some view (the data pipeline does not produce one)
    gives a zero row and no coherence term.

    Args:
        z_VBDHW: per-pixel embeddings of every view (view 0 = center view).
        ids_VBHW: int64 region index within its image, -1 = not a target (collate layout).
        num_regions_B: int64 regions per image.
        mode: "mean" (FPN runs) or "representative" (DeepLab runs; needs prototypes_KD).
        prototypes_KD: prototype matrix used to pick each region's most confident pixel.
        detach_representative: see `representative_pool`.
        coherence_per_group: average each (view, image)'s segments first, then the (view,
            image) groups, as the published code does; False: one mean over all segments.

    Returns:
        regions_VRD: unit-norm region vectors; row r is the same region in every view,
            rows ordered by image, then region id (row = offset_b + id, as `region_index`).
        coherence: scalar coherence loss for "representative", a 0 tensor for "mean".
    """
    V, B, _, H, W = z_VBDHW.shape
    if ids_VBHW.shape != (V, B, H, W):
        raise ValueError(
            f"ids has shape {tuple(ids_VBHW.shape)}, expected {(V, B, H, W)} to match z"
        )
    if num_regions_B.shape != (B,):
        raise ValueError(f"num_regions has shape {tuple(num_regions_B.shape)}, expected ({B},)")
    if mode not in ("mean", "representative"):
        raise ValueError(f"unknown pooling mode {mode!r}; use 'mean' or 'representative'")
    if mode == "representative" and prototypes_KD is None:
        raise ValueError("representative pooling needs prototypes_KD to rank pixels")
    device = z_VBDHW.device
    # Pooling and the confidence GEMM stay in float32 under autocast: bf16 scores would tie
    # and reorder pixels, and bf16 sums over hundreds of pixels lose digits.
    with torch.autocast(device.type, enabled=False):
        return _pool_regions(
            z_VBDHW,
            ids_VBHW,
            num_regions_B,
            mode,
            prototypes_KD,
            detach_representative,
            coherence_per_group,
        )


def _pool_regions(
    z_VBDHW: torch.Tensor,
    ids_VBHW: torch.Tensor,
    num_regions_B: torch.Tensor,
    mode: PoolMode,
    prototypes_KD: torch.Tensor | None,
    detach_representative: bool,
    coherence_per_group: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    V, B, D, H, W = z_VBDHW.shape
    device = z_VBDHW.device
    num_regions_B = num_regions_B.to(device=device, dtype=torch.int64)
    L = int(num_regions_B.max()) if B else 0
    if z_VBDHW.dtype in (torch.float16, torch.bfloat16):
        z_VBDHW = z_VBDHW.float()
    z_GDP = z_VBDHW.reshape(V * B, D, H * W)
    ids_GP = ids_VBHW.to(device).reshape(V * B, H * W)
    loc_GP = torch.where(ids_GP >= 0, ids_GP, L)  # bucket L collects the ignored pixels

    if mode == "mean":
        sums_GDL1 = z_GDP.new_zeros(V * B, D, L + 1)
        sums_GDL1 = sums_GDL1.scatter_add(2, loc_GP[:, None, :].expand_as(z_GDP), z_GDP)
        group_G = torch.arange(V * B, device=device)
        bucket_GP = group_G[:, None] * (L + 1) + loc_GP
        count_GL = torch.bincount(bucket_GP.reshape(-1), minlength=V * B * (L + 1))
        count_GL = count_GL.reshape(V * B, L + 1)[:, :L]
        pooled_GDL = sums_GDL1[:, :, :L] / count_GL.clamp(min=1)[:, None, :].to(z_GDP.dtype)
        coherence = z_GDP.new_zeros(())
    else:
        assert prototypes_KD is not None
        confidence_GP = _max_scores(z_GDP, prototypes_KD)
        pooled_GDL, coherence, _ = _grouped_representatives(
            z_GDP, confidence_GP, loc_GP, L, detach_representative, coherence_per_group
        )
    # Row offset_b + r of the batch is local segment r of group (v, b).
    image_R = torch.repeat_interleave(torch.arange(B, device=device), num_regions_B)
    offset_B = torch.cumsum(num_regions_B, 0) - num_regions_B
    local_R = torch.arange(image_R.shape[0], device=device) - offset_B[image_R]
    pooled_VBLD = pooled_GDL.reshape(V, B, D, L).permute(0, 1, 3, 2)
    regions_VRD = pooled_VBLD[:, image_R, local_R]
    return F.normalize(regions_VRD, dim=2), coherence
