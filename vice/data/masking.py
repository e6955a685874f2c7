"""Common superpixels across views and ViCE's regional masking (pure numpy on id maps).

Shapes: V = views, S = view side. Id maps hold source superpixel ids, -1 where a view sees
no source pixel.
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np

from vice.config import MaskConfig


def common_ids(view_ids: list[np.ndarray]) -> np.ndarray:
    """Sorted source ids present in every view (V maps of S x S), excluding -1."""
    present = [np.unique(v) for v in view_ids]
    common = reduce(np.intersect1d, present)
    return common[common >= 0]


def sample_mask_box(
    rng: np.random.Generator, size: int, cfg: MaskConfig
) -> tuple[int, int, int, int]:
    """A box (y0, x0, y1, x1) in view pixels, sides up to max_box_ratio * size.

    Radius from the view center and the sides are shifted von Mises draws (mode at 0.75 of
    their maximum), the angle uniform; the box is clipped to stay inside the view.
    """

    def draw() -> float:
        return (rng.vonmises(0.5 * math.pi, cfg.kappa) + math.pi) / (2 * math.pi)

    max_side = cfg.max_box_ratio * size
    bh = max(1, int(draw() * max_side))
    bw = max(1, int(draw() * max_side))
    angle = rng.uniform(0, 2 * math.pi)
    radius = draw() * (size / 2)
    cy = size / 2 + radius * math.sin(angle)
    cx = size / 2 + radius * math.cos(angle)
    y0 = int(min(max(cy - bh / 2, 0), size - bh))
    x0 = int(min(max(cx - bw / 2, 0), size - bw))
    return y0, x0, y0 + bh, x0 + bw


def regional_masking(
    rng: np.random.Generator, view_ids: list[np.ndarray], common: np.ndarray, cfg: MaskConfig
) -> tuple[list[np.ndarray], np.ndarray, list[tuple[int, int, int, int] | None]]:
    """Chooses the masked superpixels of every view.

    A protected random `protect_ratio` of the common ids (drawn once per image, at least one
    when any is common) is never masked, so every image keeps a target.

    Returns:
        masks: per view a bool map (S x S), True where pixels become noise.
        targets: sorted common ids that no view masks (the training regions).
        boxes: per view the mask box, or None when that view was not masked.
    """
    n_views = len(view_ids)
    masks = [np.zeros(v.shape, dtype=bool) for v in view_ids]
    boxes: list[tuple[int, int, int, int] | None] = [None] * n_views
    if not cfg.enabled or common.size == 0:
        return masks, common, boxes
    n_protect = min(common.size, math.ceil(cfg.protect_ratio * common.size))
    protected = rng.choice(common, size=n_protect, replace=False) if n_protect else common[:0]
    masked_any = np.zeros(0, dtype=common.dtype)
    for v, ids in enumerate(view_ids):
        if (v == 0 and not cfg.mask_center) or rng.random() >= cfg.prob:
            continue
        box = sample_mask_box(rng, ids.shape[0], cfg)
        y0, x0, y1, x1 = box
        touched = np.unique(ids[y0:y1, x0:x1])
        touched = touched[touched >= 0]
        masked = np.setdiff1d(touched, protected, assume_unique=True)
        boxes[v] = box
        if masked.size:
            masks[v] = np.isin(ids, masked)
            masked_any = np.union1d(masked_any, masked)
    targets = np.setdiff1d(common, masked_any, assume_unique=True)
    return masks, targets, boxes


def align_ids(view_ids: list[np.ndarray], targets: np.ndarray) -> np.ndarray:
    """Maps source ids to region indices: region r is targets[r] in every view, else -1.

    Returns int64 (V, S, S).
    """
    stacked = np.stack(view_ids).astype(np.int64)
    if targets.size == 0:
        return np.full(stacked.shape, -1, dtype=np.int64)
    lut = np.full(int(max(stacked.max(), targets.max())) + 2, -1, dtype=np.int64)
    lut[targets] = np.arange(targets.size)
    return lut[stacked]  # id -1 indexes the last entry, which stays -1
