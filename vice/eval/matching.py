"""Mapping unsupervised cluster ids to ground-truth classes.

Shape legend: N labelled pixels, P predicted ids (clusters), K ground-truth classes.

Clusters carry no class names, so each cluster is mapped to a class using the evaluation
pixels themselves (the standard, transductive protocol of IIC, PiCIE, STEGO and ViCE):
one-to-one by the Hungarian algorithm when there are as many clusters as classes, and each
cluster to its most frequent class when over-clustering (P > K).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from vice.data.datasets.base import IGNORE_INDEX


def as_numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    """A flat int64 numpy copy-or-view of a label/prediction array or tensor."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a).reshape(-1).astype(np.int64, copy=False)


def confusion(
    pred_N: np.ndarray | torch.Tensor,
    gt_N: np.ndarray | torch.Tensor,
    num_pred: int,
    num_classes: int,
    ignore: int = IGNORE_INDEX,
) -> np.ndarray:
    """Pixel counts conf_PK[p, c] of prediction p on ground truth c; `ignore` pixels dropped.

    Any shape is accepted for `pred_N` and `gt_N` (flattened); they must have as many pixels.
    """
    pred, gt = as_numpy(pred_N), as_numpy(gt_N)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {pred.size} pixels but ground truth has {gt.size}")
    keep = gt != ignore
    pred, gt = pred[keep], gt[keep]
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError(
            f"ground-truth ids must be in [0, {num_classes}) or {ignore}, "
            f"found {gt.min()}..{gt.max()}"
        )
    if pred.size and (pred.min() < 0 or pred.max() >= num_pred):
        raise ValueError(
            f"predicted ids must be in [0, {num_pred}), found {pred.min()}..{pred.max()}"
        )
    flat = pred * num_classes + gt
    return np.bincount(flat, minlength=num_pred * num_classes).reshape(num_pred, num_classes)


def hungarian_mapping(conf_PK: np.ndarray) -> np.ndarray:
    """One-to-one map (cluster -> class) maximising the matched pixels.

    Needs P <= K: with P == K it is a permutation; with P < K some classes get no cluster
    (and so no pixels).
    """
    p, k = conf_PK.shape
    if p > k:
        raise ValueError(
            f"a one-to-one mapping needs at most as many clusters as classes, got {p} > {k}; "
            "use majority_mapping for over-clustering"
        )
    rows, cols = linear_sum_assignment(conf_PK, maximize=True)
    map_P = np.empty(p, dtype=np.int64)
    map_P[rows] = cols  # every row is assigned when P <= K
    return map_P


def majority_mapping(conf_PK: np.ndarray) -> np.ndarray:
    """Many-to-one map: every cluster to its most frequent class (ties: the lowest id).

    A cluster with no labelled pixel maps to class 0; it affects no metric.
    """
    return conf_PK.argmax(axis=1).astype(np.int64)


def map_clusters(conf_PK: np.ndarray, num_classes: int) -> np.ndarray:
    """The protocol's map for P clusters: Hungarian when P <= K, majority when P > K."""
    p, k = conf_PK.shape
    if k != num_classes:
        raise ValueError(f"confusion matrix has {k} class columns, expected {num_classes}")
    if p > num_classes:
        return majority_mapping(conf_PK)
    return hungarian_mapping(conf_PK)
