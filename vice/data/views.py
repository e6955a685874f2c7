"""ViCE view geometry: standardise the source, place views, crop and resize images and ids.

Coordinates are continuous source-pixel coordinates (pixel (y, x) covers [y, y+1) x [x, x+1)).
A view is a square box (cx, cy, side) in the standardised source; output pixel (i, j) of a
view of size S samples source point (cy - side/2 + (i + 0.5) * side/S, cx - side/2 + ...),
then the view may be flipped horizontally. `view_to_source` is that mapping, and both the image
and the superpixel id crop follow it, so region ids stay geometrically consistent.

Shapes: H, W = standardised source; S = view size; V = number of views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vice.config import ViewConfig
from vice.data.edges import edge_placement_map

EDGE_STRIDE = 2  # the placement map is computed at half resolution: ~10x cheaper, same result


@dataclass(frozen=True)
class ViewBox:
    """A square crop of the source: center (cx, cy), side in source px, horizontal flip."""

    cx: float
    cy: float
    side: float
    flip: bool = False

    @property
    def x0(self) -> float:
        return self.cx - self.side / 2

    @property
    def y0(self) -> float:
        return self.cy - self.side / 2

    def contains(self, x: float, y: float) -> bool:
        half = self.side / 2
        return abs(x - self.cx) <= half and abs(y - self.cy) <= half


def standardise(img_HW3: np.ndarray, short_side: int, max_side: int) -> np.ndarray:
    """Resizes (bicubic) so the short side is `short_side`, unless the long side would then
    exceed `max_side`, in which case the long side becomes `max_side`."""
    h, w = img_HW3.shape[:2]
    scale = short_side / min(h, w)
    if max(h, w) * scale > max_side:
        scale = max_side / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) == (h, w):
        return img_HW3
    return np.asarray(Image.fromarray(img_HW3).resize((new_w, new_h), Image.BICUBIC))


def _clip_center(c: float, side: float, extent: int) -> float:
    """Moves a view center so the view stays inside [0, extent] when it fits at all."""
    if side >= extent:
        return extent / 2
    return min(max(c, side / 2), extent - side / 2)


def _shifted_von_mises(rng: np.random.Generator, kappa: float) -> float:
    """A draw in [0, 1] with its mode at 0.75: von Mises(pi/2, kappa) mapped from [-pi, pi]."""
    return (rng.vonmises(0.5 * math.pi, kappa) + math.pi) / (2 * math.pi)


def sample_view_boxes(
    rng: np.random.Generator, img_HW3: np.ndarray, cfg: ViewConfig
) -> list[ViewBox]:
    """Places the center view by the edge map and N-1 surrounding views in angular sectors.

    Surrounding view k lies in sector k of N-1 equal sectors (randomly rotated), at a von Mises
    angle within it and a von Mises radius up to its half side, so every view contains the
    center view's center and all views share a common area.
    """
    h, w = img_HW3.shape[:2]
    small = img_HW3[::EDGE_STRIDE, ::EDGE_STRIDE]
    prob = edge_placement_map(
        small, cfg.canny_low, cfg.canny_high, cfg.edge_blur_sigma / EDGE_STRIDE, cfg.edge_floor
    )
    cdf = np.cumsum(prob.ravel())
    flat = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), cdf.size - 1)
    py, px = divmod(flat, prob.shape[1])
    cx = min((px + rng.random()) * EDGE_STRIDE, w)
    cy = min((py + rng.random()) * EDGE_STRIDE, h)

    def side() -> float:
        return rng.uniform(cfg.crop_scale_min, cfg.crop_scale_max) * cfg.view_size

    s0 = side()
    cx, cy = _clip_center(cx, s0, w), _clip_center(cy, s0, h)
    boxes = [ViewBox(cx, cy, s0, bool(rng.random() < cfg.flip_prob))]
    n_sur = cfg.num_views - 1
    width = 2 * math.pi / n_sur
    offset = rng.uniform(0, 2 * math.pi)
    for k in range(n_sur):
        sk = side()
        theta = offset + (k + 0.5) * width + rng.vonmises(0.0, cfg.kappa) * width / (2 * math.pi)
        radius = _shifted_von_mises(rng, cfg.kappa) * max(sk / 2 - 1, 0.0)
        vx = _clip_center(cx + radius * math.cos(theta), sk, w)
        vy = _clip_center(cy + radius * math.sin(theta), sk, h)
        boxes.append(ViewBox(vx, vy, sk, bool(rng.random() < cfg.flip_prob)))
    return boxes


def view_to_source(box: ViewBox, size: int, i: np.ndarray, j: np.ndarray) -> tuple:
    """Source pixel indices (y, x) sampled by view pixels (i, j); flips included."""
    j = np.where(box.flip, size - 1 - np.asarray(j), np.asarray(j))
    step = box.side / size
    y = np.floor(box.y0 + (np.asarray(i) + 0.5) * step).astype(np.int64)
    x = np.floor(box.x0 + (j + 0.5) * step).astype(np.int64)
    return y, x


def crop_ids(ids_HW: np.ndarray, box: ViewBox, size: int) -> np.ndarray:
    """Nearest-neighbour crop of an id map (S x S, int32), flipped like its view; -1 outside
    the source."""
    h, w = ids_HW.shape
    y, x = view_to_source(box, size, np.arange(size)[:, None], np.arange(size)[None, :])
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    out = ids_HW[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)]
    return np.where(inside, out, -1).astype(np.int32)


def crop_image(img: Image.Image, box: ViewBox, size: int) -> Image.Image:
    """Bicubic crop-and-resize of the source to S x S (black outside), flipped if the box is."""
    extent = (box.x0, box.y0, box.x0 + box.side, box.y0 + box.side)
    view = img.transform((size, size), Image.EXTENT, extent, Image.BICUBIC, fillcolor=(0, 0, 0))
    return view.transpose(Image.FLIP_LEFT_RIGHT) if box.flip else view
