"""Semantic segmentation metrics: per-class IoU, mean IoU and pixel accuracy.

Every value is a fraction in [0, 1] (reports multiply by 100).

Which classes the mean IoU averages over: the classes that occur in the ground truth of the
evaluated pixels. A class absent from the ground truth has no defined IoU (NaN in the
per-class list) and is left out of the mean even if it was predicted. STEGO and PiCIE average
over classes with tp + fp + fn > 0, i.e. they also count a class absent from the ground truth
but predicted, with IoU 0; on a full evaluation split every class occurs and the two agree.
"""

from __future__ import annotations

import numpy as np
import torch

from vice.data.datasets.base import IGNORE_INDEX
from vice.eval.matching import confusion


def segmentation_metrics(
    pred_N: np.ndarray | torch.Tensor,
    gt_N: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore: int = IGNORE_INDEX,
) -> dict:
    """Metrics of class predictions against ground truth (any shape, flattened).

    Args:
        pred_N: Predicted class ids in [0, num_classes) (clusters already mapped).
        gt_N: Ground-truth ids in [0, num_classes) or `ignore`.
        num_classes: K.
        ignore: Ground-truth id of pixels that no metric counts.

    Returns:
        A dict with `miou` (mean over classes present in the ground truth), `acc` (pixel
        accuracy over non-ignored pixels), `iou_per_class` and `acc_per_class` (lists of K
        floats, NaN for classes absent from the ground truth).
    """
    conf_KK = confusion(pred_N, gt_N, num_classes, num_classes, ignore).astype(np.float64)
    tp_K = np.diag(conf_KK)
    gt_K = conf_KK.sum(axis=0)  # pixels of each true class
    pred_K = conf_KK.sum(axis=1)  # labelled pixels predicted as each class
    present_K = gt_K > 0
    if not present_K.any():
        raise ValueError("the ground truth has no labelled pixel (all are ignore)")
    with np.errstate(divide="ignore", invalid="ignore"):
        iou_K = np.where(present_K, tp_K / (gt_K + pred_K - tp_K), np.nan)
        acc_K = np.where(present_K, tp_K / gt_K, np.nan)
    return {
        "miou": float(iou_K[present_K].mean()),
        "acc": float(tp_K.sum() / gt_K.sum()),
        "iou_per_class": iou_K.tolist(),
        "acc_per_class": acc_K.tolist(),
    }
