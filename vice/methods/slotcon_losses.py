"""SlotCon's grouping, alignment and losses as pure tensor functions (methods.md section 3).

Nothing here talks to other ranks; `vice.methods.slotcon.slotcon_loss` puts them together with
the cross-rank counts and gathers.

Shapes: B images, D projected dim, K prototypes, h x w score map, C channels of any map,
A anchors (student slots whose prototype is active in both views), M keys (active teacher
slots of the whole batch, all ranks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align


def semantic_grouping(
    x_BDhw: torch.Tensor, prototypes_KD: torch.Tensor, temperature: float, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft assignment of every pixel to the prototypes, and the slots it pools.

    scores = cosine(prototype k, feature at p); attention = softmax_k(scores / temperature)
    + eps, normalised over the pixels of each (image, prototype); slot k = the attention-
    weighted mean of the *un-normalised* features (the published SemanticGrouping).

    Returns:
        slots_BKD and scores_BKhw (cosines in [-1, 1]).
    """
    scores_BKhw = torch.einsum(
        "kd,bdhw->bkhw", F.normalize(prototypes_KD, dim=1), F.normalize(x_BDhw, dim=1)
    )
    attn_BKhw = (scores_BKhw / temperature).softmax(dim=1) + eps
    attn_BKhw = attn_BKhw / attn_BKhw.sum(dim=(2, 3), keepdim=True)
    slots_BKD = torch.einsum("bdhw,bkhw->bkd", x_BDhw, attn_BKhw)
    return slots_BKD, scores_BKhw


def masked_grouping(
    x_BDhw: torch.Tensor,
    prototypes_KD: torch.Tensor,
    temperature: float,
    keep_Bhw: torch.Tensor,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`semantic_grouping` over part of each map: pixel p's attention is multiplied by its
    kept fraction keep (in [0, 1]) before the per-(image, prototype) normalisation, so a slot
    pools only what is kept (a D3SSL cut, paste or source square). keep = 1 everywhere is
    `semantic_grouping`. An image with nothing kept gives zero slots.

    Returns:
        slots_BKD and scores_BKhw (cosines, the whole map).
    """
    scores_BKhw = torch.einsum(
        "kd,bdhw->bkhw", F.normalize(prototypes_KD, dim=1), F.normalize(x_BDhw, dim=1)
    )
    attn_BKhw = ((scores_BKhw / temperature).softmax(dim=1) + eps) * keep_Bhw[:, None]
    attn_BKhw = attn_BKhw / attn_BKhw.sum(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    slots_BKD = torch.einsum("bdhw,bkhw->bkd", x_BDhw, attn_BKhw)
    return slots_BKD, scores_BKhw


def kept_fraction(ids_BSS: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float (B, h, w): the fraction of each map pixel's view pixels with id >= 0 (a view's
    S x S id map averaged over the map's cells; S need not be a multiple of h)."""
    keep = (ids_BSS >= 0).to(torch.float32)[:, None]
    return F.adaptive_avg_pool2d(keep, size)[:, 0]


def align_to_overlap(
    maps_BChw: torch.Tensor, boxes_B4: torch.Tensor, flips_B: torch.Tensor
) -> torch.Tensor:
    """Crops each map to its view's overlap box and resamples it to h x w, then un-flips it.

    `boxes_B4` is (x1, y1, x2, y2) in the view's normalised [0, 1] coordinates, mirrored for a
    flipped view (as the batch carries it); map pixel c covers [c, c + 1) / h of the view, so
    box edges scale by the map size and RoIAlign runs with `aligned=True` (pixel centres at
    +0.5). Output bin (i, j) averages ceil(box side / map side) = 1 bilinear sample at its
    centre. Both views' aligned maps then show the same image region on the same grid.
    """
    n, _, h, w = maps_BChw.shape
    scale = maps_BChw.new_tensor([w, h, w, h])
    index = torch.arange(n, device=maps_BChw.device, dtype=maps_BChw.dtype)[:, None]
    rois = torch.cat([index, boxes_B4.to(maps_BChw.dtype) * scale], dim=1)
    aligned = roi_align(maps_BChw, rois, (h, w), spatial_scale=1.0, aligned=True)
    return torch.where(flips_B.view(n, 1, 1, 1), aligned.flip(-1), aligned)


def group_cross_entropy(
    student_BKhw: torch.Tensor,
    teacher_BKhw: torch.Tensor,
    center_K: torch.Tensor,
    student_temperature: float,
    teacher_temperature: float,
) -> torch.Tensor:
    """Sum over pixels of -sum_k softmax((t - center) / T_t)_k log softmax(s / T_s)_k (DINO's
    self-distillation on aligned score maps; the teacher side carries no gradient)."""
    log_p = F.log_softmax(student_BKhw / student_temperature, dim=1)
    q = F.softmax((teacher_BKhw.detach() - center_K.view(1, -1, 1, 1)) / teacher_temperature, 1)
    return -(q * log_p).sum()


def active_prototypes(
    scores_BKhw: torch.Tensor, where_Bhw: torch.Tensor | None = None
) -> torch.Tensor:
    """bool (B, K): prototype k is the argmax of at least one pixel of image b (of a pixel
    where `where_Bhw` is True, when given)."""
    b, k = scores_BKhw.shape[:2]
    winners = scores_BKhw.detach().argmax(dim=1).flatten(1)  # (B, h*w)
    active = torch.zeros((b, k + 1), dtype=torch.bool, device=scores_BKhw.device)
    if where_Bhw is not None:  # excluded pixels vote for a spare column k
        winners = torch.where(where_Bhw.flatten(1), winners, k)
    return active.scatter_(1, winners, True)[:, :k]


def slot_pairs(
    active_student_BK: torch.Tensor, active_teacher_BK: torch.Tensor, key_offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchors and their positives' places among the gathered keys.

    Anchors are the (image, prototype) pairs active in both views, as flat indices into
    B * K. Keys are every active teacher slot of the batch, rank after rank, each rank's in
    (image, prototype) order; this rank's start at `key_offset`.

    Returns:
        anchors_A (int64 flat indices) and labels_A (int64 indices into the keys).
    """
    both = (active_student_BK & active_teacher_BK).flatten()
    anchors_A = both.nonzero().squeeze(1)
    place_N = active_teacher_BK.flatten().long().cumsum(0) - 1
    return anchors_A, place_N[anchors_A] + key_offset


def slot_contrast(
    predicted_AD: torch.Tensor, keys_MD: torch.Tensor, labels_A: torch.Tensor, tau: float
) -> torch.Tensor:
    """Sum over anchors of InfoNCE(cos(prediction, keys) / tau, label) * 2 tau (published
    scale); keys carry no gradient."""
    logits_AM = F.normalize(predicted_AD, dim=1) @ F.normalize(keys_MD.detach(), dim=1).T / tau
    return F.cross_entropy(logits_AM, labels_A, reduction="sum") * (2 * tau)


def teacher_momentum(step: int, total_steps: int, base: float) -> float:
    """1 - (1 - base) * (cos(pi * step / total) + 1) / 2: base at 0, 1 at `total_steps`."""
    progress = min(step, total_steps) / max(total_steps, 1)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0
