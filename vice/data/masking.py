"""Common superpixels across views and ViCE's regional masking (pure numpy on id maps).

Shapes: V = views, S = view side. Id maps hold source superpixel ids, -1 where a view sees
no source pixel.

Set operations over whole id maps use presence tables and lookup tables indexed by id
(linear time) instead of np.unique / np.isin (sorts): ids are dense (0..n-1 per image).
"""

from __future__ import annotations

import math

import numpy as np

from vice.config import MaskConfig


def _id_bound(view_ids: list[np.ndarray]) -> int:
    """One more than the largest id in any view (0 when every pixel is -1)."""
    return max(int(v.max(initial=-1)) for v in view_ids) + 1


def _lookup(table: np.ndarray, ids: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """table[ids] with id -1 reading table[-1]: the caller keeps the last entry for "outside".

    np.take with mode="wrap" maps -1 to the last entry without an int64 copy of the ids and,
    unlike mode="raise", writes into `out` unbuffered.
    """
    return np.take(table, ids, mode="wrap", out=out)


def common_ids(view_ids: list[np.ndarray]) -> np.ndarray:
    """Sorted source ids present in every view (V maps of S x S), excluding -1; the dtype of
    the id maps."""
    n = _id_bound(view_ids)
    present = np.ones(n + 1, dtype=bool)  # entry 0 counts id -1, dropped below
    for v in view_ids:
        present &= np.bincount(v.ravel() + 1, minlength=n + 1).astype(bool)
    return np.flatnonzero(present[1:]).astype(view_ids[0].dtype)


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
    n = max(_id_bound(view_ids), int(common.max()) + 1)
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
            hit = np.zeros(n + 1, dtype=bool)  # last entry: id -1, never masked
            hit[masked] = True
            masks[v] = _lookup(hit, ids)  # == np.isin(ids, masked)
            masked_any = np.union1d(masked_any, masked)
    targets = np.setdiff1d(common, masked_any, assume_unique=True)
    return masks, targets, boxes


def align_ids(view_ids: list[np.ndarray], targets: np.ndarray) -> np.ndarray:
    """Maps source ids to region indices: region r is targets[r] in every view, else -1.

    Returns int64 (V, S, S), each view gathered straight into its slice of the output.
    """
    out = np.empty((len(view_ids), *view_ids[0].shape), dtype=np.int64)
    if targets.size == 0:
        out.fill(-1)
        return out
    n = max(_id_bound(view_ids), int(targets.max()) + 1)
    lut = np.full(n + 1, -1, dtype=np.int64)  # last entry: id -1 stays -1
    lut[targets] = np.arange(targets.size)
    for v, ids in enumerate(view_ids):
        _lookup(lut, ids, out=out[v])
    return out
