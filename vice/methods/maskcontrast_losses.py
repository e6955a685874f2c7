"""MaskContrast's losses as pure tensor functions (methods.md section 2; notes section 2.5).

Nothing here talks to other ranks. Each loss returns a (numerator, denominator) pair instead
of a mean, so a caller can all-reduce both and divide (or divide the local numerator by the
global denominator): with world size 1 the quotient is the published loss exactly.

Shapes: B images on this rank, N images of the global batch (all ranks), D embedding dim,
H x W pixels, K queue entries, P anchor pixels (foreground pixels of the query view).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ENet class weighting w = 1 / log(c + p) (Paszke et al. 2016); the published constant.
_ENET_C = 1.02


def foreground_counts(mask_BHW: torch.Tensor) -> torch.Tensor:
    """int64 (B,): foreground pixels of each image (entries of the mask >= 0.5)."""
    return (mask_BHW >= 0.5).flatten(1).sum(dim=1)


def mask_pool(k_BDHW: torch.Tensor, mask_BHW: torch.Tensor) -> torch.Tensor:
    """(B, D): the unit-normalised mask-weighted sum of each image's pixel embeddings.

    The published normalize(bmm(k, s_k)): a sum, not a mean, which is the same direction.
    An empty mask gives the zero vector (F.normalize of 0), i.e. logits of 0 against it.
    """
    pooled_BD = torch.einsum("bdhw,bhw->bd", k_BDHW, mask_BHW.to(k_BDHW.dtype))
    return F.normalize(pooled_BD, dim=1)


def balanced_bce(
    logits_BHW: torch.Tensor,
    mask_BHW: torch.Tensor,
    pos_fraction: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """HED-style class-balanced binary cross-entropy on saliency logits, as a sum and a count.

    The published BalancedCrossEntropyLoss(size_average=True): with pixels whose target
    (mask >= 0.5) is 1 called positive,

        loss = (w * sum_pos BCE + (1 - w) * sum_neg BCE) / (B * H * W),  w = #neg / #total,

    w counted over the whole batch (not per image), and the sum divided by every pixel of the
    batch (size_average; not by the pixels of each class, so a batch's loss scale follows its
    foreground fraction, as published). The rarer class gets the larger weight.

    Args:
        logits_BHW: Saliency logits (before the sigmoid).
        mask_BHW: Target mask (bool or {0, 1} float).
        pos_fraction: #pos / #total of the *global* batch, for w = 1 - pos_fraction; default:
            counted on this rank's mask (the published loss on one process).

    Returns:
        weighted_sum: w * sum_pos BCE + (1 - w) * sum_neg BCE (differentiable).
        num_pixels: B * H * W as a float tensor; weighted_sum / num_pixels is the published
            loss. Across ranks, divide by the all-reduced pixel count.
    """
    target_BHW = (mask_BHW >= 0.5).to(logits_BHW.dtype)
    num_pixels = torch.tensor(float(target_BHW.numel()), dtype=logits_BHW.dtype)
    if pos_fraction is None:
        pos_fraction = target_BHW.sum() / num_pixels
    w = 1.0 - torch.as_tensor(pos_fraction, dtype=logits_BHW.dtype, device=logits_BHW.device)
    bce_BHW = F.binary_cross_entropy_with_logits(logits_BHW, target_BHW, reduction="none")
    weight_BHW = target_BHW * w + (1.0 - target_BHW) * (1.0 - w)
    return (weight_BHW * bce_BHW).sum(), num_pixels.to(logits_BHW.device)


def mask_contrast(
    q_BDHW: torch.Tensor,
    mask_q_BHW: torch.Tensor,
    keys_ND: torch.Tensor,
    queue_KD: torch.Tensor,
    offset: int,
    counts_N: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskContrast's ENet-weighted pixel-to-mask cross-entropy, as a sum and a weight sum.

    Every foreground pixel i of image b of the query view is an anchor with label
    y_i = offset + b (its image's row in `keys_ND`); its logits are
    [q_i . keys_ND^T, q_i . queue_KD^T] / temperature, (N + K) classes. The label weight is
    w_n = 1 / log(1.02 + counts_N[n] / sum(counts_N)) (ENet weighting over masks: rarer
    masks, i.e. smaller objects, weigh more). With w over N + K classes (queue columns are
    never labels, so their weights never enter: F.cross_entropy's mean divides by the
    weights of the targets only),

        weighted_ce_sum = sum_i w_{y_i} CE_i,   weight_sum = sum_i w_{y_i},

    and on one process weighted_ce_sum / weight_sum equals
    F.cross_entropy(logits, labels, weight=w), the published loss (which pads its weight
    vector with p = 0 for the queue columns). Published keys are the B local masks and the
    counts local; with the global keys and counts the all-reduced quotient is the loss of
    one process holding the whole global batch.

    Args:
        q_BDHW: Query pixel embeddings, unit norm along D (the caller normalises).
        mask_q_BHW: Query-view foreground mask (bool or {0, 1}); its pixels are the anchors.
        keys_ND: Mask-pooled key embeddings of every image of the global batch (no gradient).
        queue_KD: Queue of past mask embeddings (no gradient); K may be 0.
        offset: Row of this rank's first image in `keys_ND`.
        counts_N: Foreground pixels of the query mask of every image of the global batch
            (`foreground_counts`, gathered); the weights are computed from it.
        temperature: T (published 0.5).

    Returns:
        weighted_ce_sum (differentiable in q; 0 with no anchors, still in q's graph) and
        weight_sum (no gradient). Images with empty masks contribute nothing.
    """
    b = q_BDHW.shape[0]
    fg_BHW = mask_q_BHW >= 0.5
    q_PD = q_BDHW.permute(0, 2, 3, 1)[fg_BHW]  # anchors in (image, row, column) order
    image_B = torch.arange(b, device=q_BDHW.device)
    labels_P = (offset + image_B[:, None, None].expand_as(fg_BHW))[fg_BHW]

    counts_N = counts_N.to(device=q_BDHW.device, dtype=q_BDHW.dtype)
    p_N = counts_N / counts_N.sum().clamp_min(1.0)
    weight_N = 1.0 / torch.log(_ENET_C + p_N)

    classes_CD = torch.cat([keys_ND, queue_KD.to(keys_ND.dtype)], dim=0).detach()
    logits_PC = q_PD @ classes_CD.T / temperature
    ce_P = F.cross_entropy(logits_PC, labels_P, reduction="none")
    w_P = weight_N[labels_P]
    return (w_P * ce_P).sum(), w_P.sum()
