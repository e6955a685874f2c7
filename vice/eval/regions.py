"""Region-level metrics: does the embedding say what a region is, across images?

Shape legend: N images, S square side in px, D feature channels, P pixels (N*S*S), V labelled
pixels, R regions, K classes.

Pixel metrics after k-means reward grouping the pixels of one object together, which any
embedding that is constant over each object does perfectly (even one with no semantics, see
the `instance_random` floor in `vice.eval.floors`). These metrics look at regions instead:
a region is one ground-truth instance of one image (`ImageSource.load_instances`, restricted
to its labelled pixels), its class is its majority label, its embedding is the normalised mean
of its L2-normalised pixel features. Within-image grouping does not help them, only whether
regions of the same class look alike in different images:

- nearest-neighbour same-class rate: for every region, its nearest region by cosine among the
  regions of the OTHER images; the fraction whose neighbour has the same class. Its chance
  rate (the same fraction for a uniformly random neighbour, from the class frequencies) is
  reported alongside.
- region probe: multinomial logistic regression on the region embeddings of the even eval
  images, accuracy on the regions of the odd ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vice.data.datasets.base import IGNORE_INDEX
from vice.eval.features import pixels_PD

MIN_REGION_PIXELS = 16  # labelled pixels a region needs (4x4): fewer give a noisy mean
PROBE_L2 = 1e-2  # weight penalty of the region probe on standardised features (~ 1/#regions)
PROBE_STEPS = 500  # full-batch accelerated gradient steps of the region probe
_ROWS = 1 << 16  # pixels per block
_SIM_ELEMS = 1 << 24  # region x region similarities per block (64 MiB of float32)


def region_index(instances_NSS: np.ndarray) -> tuple[np.ndarray, int]:
    """One id per (image, instance) pair: instances of different images never share one.

    Args:
        instances_NSS: Ground-truth instance ids (non-negative ints) of every pixel.

    Returns:
        region_P: int64 region of every pixel (image-major, then row, then column, the order
            of `pixels_PD`), numbered by (image, instance id) in increasing order.
        num_regions: R, the number of distinct ids.
    """
    inst = np.asarray(instances_NSS).astype(np.int64, copy=False)
    if inst.ndim != 3:
        raise ValueError(f"instance maps must be (N, S, S), got shape {inst.shape}")
    if inst.size and inst.min() < 0:
        raise ValueError(f"instance ids must be >= 0, found {inst.min()}")
    n = inst.shape[0]
    span = int(inst.max()) + 1 if inst.size else 1
    key_P = (np.arange(n, dtype=np.int64)[:, None, None] * span + inst).reshape(-1)
    _, region_P = np.unique(key_P, return_inverse=True)
    region_P = region_P.reshape(-1).astype(np.int64)
    return region_P, int(region_P.max()) + 1 if region_P.size else 0


@dataclass(frozen=True)
class Regions:
    """The regions of an eval set: R rows, ordered by (image, instance id)."""

    emb_RD: torch.Tensor  # float32 unit-norm mean embeddings
    class_R: np.ndarray  # int64 majority label (ties: the lowest class id)
    image_R: np.ndarray  # int64 image index in the eval set
    pixels_R: np.ndarray  # int64 labelled pixels


def region_embeddings(
    feats_NDSS: torch.Tensor,
    instances_NSS: np.ndarray,
    labels_NSS: np.ndarray,
    num_classes: int,
    min_pixels: int = MIN_REGION_PIXELS,
    ignore: int = IGNORE_INDEX,
) -> Regions:
    """The ground-truth regions with their class and mean embedding.

    Pixels labelled `ignore` belong to no region; a region with fewer than `min_pixels`
    labelled pixels is dropped.

    Args:
        feats_NDSS: Per-pixel features (any norm: each pixel is L2-normalised first, as the
            spherical k-means sees them).
        instances_NSS: Ground-truth instance ids, aligned with the features.
        labels_NSS: Class ids in [0, num_classes) or `ignore`.
        num_classes: K.
        min_pixels: Smallest region kept, in labelled pixels.
        ignore: The label of unlabelled pixels.
    """
    n, d, h, w = feats_NDSS.shape
    if tuple(np.shape(instances_NSS)) != (n, h, w) or tuple(np.shape(labels_NSS)) != (n, h, w):
        raise ValueError(
            f"features {tuple(feats_NDSS.shape)}, instances {np.shape(instances_NSS)} and "
            f"labels {np.shape(labels_NSS)} must cover the same (N, S, S) pixels"
        )
    region_P, r = region_index(instances_NSS)
    y_P = np.asarray(labels_NSS).reshape(-1).astype(np.int64, copy=False)
    valid_P = y_P != ignore
    if valid_P.any() and (y_P[valid_P].min() < 0 or y_P[valid_P].max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}) or {ignore}")
    counts_RK = np.bincount(
        region_P[valid_P] * num_classes + y_P[valid_P], minlength=r * num_classes
    ).reshape(r, num_classes)
    pixels_R = counts_RK.sum(axis=1)
    image_R = np.zeros(r, dtype=np.int64)
    image_R[region_P] = np.repeat(np.arange(n, dtype=np.int64), h * w)

    x_PD = pixels_PD(feats_NDSS)
    region_t = torch.from_numpy(np.where(valid_P, region_P, r))  # r: a bin for ignored pixels
    sums_RD = torch.zeros((r + 1, d), dtype=torch.float32)
    for start in range(0, x_PD.shape[0], _ROWS):
        chunk = F.normalize(x_PD[start : start + _ROWS].float(), dim=1)
        sums_RD.index_add_(0, region_t[start : start + _ROWS], chunk)
    keep_R = pixels_R >= max(min_pixels, 1)
    emb_RD = F.normalize(sums_RD[:r][torch.from_numpy(keep_R)], dim=1)
    return Regions(
        emb_RD=emb_RD,
        class_R=counts_RK.argmax(axis=1)[keep_R].astype(np.int64),
        image_R=image_R[keep_R],
        pixels_R=pixels_R[keep_R],
    )


def nn_same_class(emb_RD: torch.Tensor, class_R: np.ndarray, image_R: np.ndarray) -> dict:
    """Nearest neighbour of every region among the regions of the other images.

    Args:
        emb_RD: Unit-norm region embeddings (as `region_embeddings` returns them), so that the
            largest dot product is the largest cosine.
        class_R: Class of every region.
        image_R: Image of every region.

    Returns:
        nn_same_class: Fraction of regions whose neighbour has the same class (ties: the
            lowest region index), over the regions that have a neighbour (NaN if none has).
        nn_chance: The expected fraction for a uniformly random neighbour among the other
            images' regions (from the class frequencies), over the same regions.
        regions: R.
    """
    class_R = np.asarray(class_R, dtype=np.int64)
    image_R = np.asarray(image_R, dtype=np.int64)
    r = emb_RD.shape[0]
    image_t = torch.from_numpy(image_R)
    nn_R = np.zeros(r, dtype=np.int64)
    has_R = np.zeros(r, dtype=bool)  # some region of another image exists
    step = max(1, _SIM_ELEMS // max(r, 1))  # rows per similarity block
    for start in range(0, r, step):
        sim_BR = emb_RD[start : start + step] @ emb_RD.T
        b = sim_BR.shape[0]
        same_BR = image_t[start : start + b, None] == image_t[None, :]
        nn_R[start : start + b] = sim_BR.masked_fill(same_BR, float("-inf")).argmax(dim=1).numpy()
        has_R[start : start + b] = (~same_BR).any(dim=1).numpy()
    if not has_R.any():
        return {"nn_same_class": float("nan"), "nn_chance": float("nan"), "regions": int(r)}
    # Chance: P(a random region of another image has my class), from per-image class counts.
    _, image_idx_R = np.unique(image_R, return_inverse=True)
    counts_IK = np.zeros((image_idx_R.max() + 1, class_R.max() + 1), dtype=np.int64)
    np.add.at(counts_IK, (image_idx_R, class_R), 1)
    others_R = r - counts_IK.sum(axis=1)[image_idx_R]
    same_others_R = counts_IK.sum(axis=0)[class_R] - counts_IK[image_idx_R, class_R]
    hit_R = class_R[nn_R] == class_R
    return {
        "nn_same_class": float(hit_R[has_R].mean()),
        "nn_chance": float((same_others_R[has_R] / others_R[has_R]).mean()),
        "regions": int(r),
    }


def _probe_objective(
    theta: np.ndarray, x_TD: np.ndarray, y_T: np.ndarray, k: int, l2: float
) -> tuple[float, np.ndarray]:
    """Mean cross-entropy of a (K, D+1) softmax classifier + l2/2 |W|^2; value and gradient."""
    d = x_TD.shape[1]
    wb_KD1 = theta.reshape(k, d + 1)
    # einsum without `optimize` never calls BLAS: no OpenBLAS worker threads, which on a busy
    # machine made each of these tiny products cost milliseconds (and the fit seconds).
    logits_TK = np.einsum("td,kd->tk", x_TD, wb_KD1[:, :d]) + wb_KD1[:, d]
    logits_TK -= logits_TK.max(axis=1, keepdims=True)
    log_p_TK = logits_TK - np.log(np.exp(logits_TK).sum(axis=1, keepdims=True))
    t = x_TD.shape[0]
    loss = -log_p_TK[np.arange(t), y_T].mean() + 0.5 * l2 * np.sum(wb_KD1[:, :d] ** 2)
    g_TK = np.exp(log_p_TK)
    g_TK[np.arange(t), y_T] -= 1.0
    g_TK /= t
    grad_KD1 = np.empty_like(wb_KD1)
    grad_KD1[:, :d] = np.einsum("tk,td->kd", g_TK, x_TD) + l2 * wb_KD1[:, :d]
    grad_KD1[:, d] = g_TK.sum(axis=0)
    return float(loss), grad_KD1.reshape(-1)


def _largest_eigenvalue(g_DD: np.ndarray, iters: int = 100) -> float:
    """Power iteration on a symmetric PSD matrix (einsum: no BLAS threads, see above)."""
    v_D = np.ones(g_DD.shape[0]) / np.sqrt(g_DD.shape[0])
    lam = 0.0
    for _ in range(iters):
        w_D = np.einsum("ij,j->i", g_DD, v_D)
        lam = float(np.sqrt((w_D**2).sum()))
        if lam == 0.0:
            break
        v_D = w_D / lam
    return lam


def fit_region_probe(
    x_TD: np.ndarray,
    y_T: np.ndarray,
    num_classes: int,
    l2: float = PROBE_L2,
    steps: int = PROBE_STEPS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Multinomial logistic regression on standardised features: `steps` full-batch
    Nesterov-accelerated gradient steps from zero, of size 1/L (L: the objective's Lipschitz
    constant, from the features' largest eigenvalue).

    The objective is convex with a unique optimum (the L2 term) and nothing is drawn at
    random, so the result is a function of the data alone (no seed, no learning rate).

    Returns:
        weight_KD, bias_K: the classifier on standardised features.
        mean_D, std_D: the standardisation (of the training rows) to apply before it.
    """
    x_TD = np.asarray(x_TD, dtype=np.float64)
    y_T = np.asarray(y_T, dtype=np.int64)
    mean_D = x_TD.mean(axis=0)
    std_D = np.maximum(x_TD.std(axis=0), 1e-6)
    z_TD = (x_TD - mean_D) / std_D
    t, d = z_TD.shape
    # The softmax cross-entropy's Hessian is at most 1/2 (features + bias column)'s Gram.
    z1_TD1 = np.concatenate([z_TD, np.ones((t, 1))], axis=1)
    lipschitz = 0.5 * _largest_eigenvalue(np.einsum("ti,tj->ij", z1_TD1, z1_TD1) / t) + l2
    theta = prev = np.zeros(num_classes * (d + 1))
    for step in range(steps):
        look = theta + step / (step + 3) * (theta - prev)
        _, grad = _probe_objective(look, z_TD, y_T, num_classes, l2)
        prev, theta = theta, look - grad / lipschitz
    wb_KD1 = theta.reshape(num_classes, d + 1)
    return wb_KD1[:, :d], wb_KD1[:, d], mean_D, std_D


def region_probe(
    emb_RD: torch.Tensor,
    class_R: np.ndarray,
    image_R: np.ndarray,
    num_classes: int,
    l2: float = PROBE_L2,
    steps: int = PROBE_STEPS,
) -> dict:
    """Linear probe across images: trained on the regions of the even images, tested on the
    regions of the odd ones (a split by image, so no image is on both sides).

    Returns:
        probe_acc: Test accuracy (NaN if either side has no region).
        probe_majority: Test accuracy of always answering the most frequent training class.
        probe_train_regions, probe_test_regions: The two sides' sizes.
    """
    class_R = np.asarray(class_R, dtype=np.int64)
    train_R = np.asarray(image_R) % 2 == 0
    test_R = ~train_R
    out = {
        "probe_acc": float("nan"),
        "probe_majority": float("nan"),
        "probe_train_regions": int(train_R.sum()),
        "probe_test_regions": int(test_R.sum()),
    }
    if not train_R.any() or not test_R.any():
        return out
    x_RD = emb_RD.double().numpy()
    weight_KD, bias_K, mean_D, std_D = fit_region_probe(
        x_RD[train_R], class_R[train_R], num_classes, l2, steps
    )
    z_TD = (x_RD[test_R] - mean_D) / std_D
    pred_T = (np.einsum("td,kd->tk", z_TD, weight_KD) + bias_K).argmax(axis=1)
    majority = np.bincount(class_R[train_R], minlength=num_classes).argmax()
    out["probe_acc"] = float((pred_T == class_R[test_R]).mean())
    out["probe_majority"] = float((class_R[test_R] == majority).mean())
    return out


def region_metrics(
    feats_NDSS: torch.Tensor,
    instances_NSS: np.ndarray,
    labels_NSS: np.ndarray,
    num_classes: int,
    min_pixels: int = MIN_REGION_PIXELS,
) -> dict:
    """Both region metrics of a feature map (keys as in `nn_same_class` and `region_probe`)."""
    regions = region_embeddings(feats_NDSS, instances_NSS, labels_NSS, num_classes, min_pixels)
    return {
        **nn_same_class(regions.emb_RD, regions.class_R, regions.image_R),
        **region_probe(regions.emb_RD, regions.class_R, regions.image_R, num_classes),
    }
