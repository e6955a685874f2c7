"""ViCE view geometry: standardise the source, place views, crop and resize images and ids.

Coordinates are continuous source-pixel coordinates (pixel (y, x) covers [y, y+1) x [x, x+1)).
A view is a square box (cx, cy, side) in the standardised source whose corner (x0, y0) and
side are whole source pixels (`sample_view_boxes` snaps them), so a view is an integer crop of
the source resized to S x S. Output pixel (i, j) of a view of size S samples source point
(y0 + (i + 0.5) * side/S, x0 + (j + 0.5) * side/S), then the view may be flipped
horizontally. `view_to_source` is that mapping, and both the image and the superpixel id crop
follow it, so region ids stay geometrically consistent.

Shapes: H, W = standardised source; S = view size; V = number of views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from vice.config import ViewConfig
from vice.data.edges import edge_placement_map

EDGE_STRIDE = 2  # the placement map is computed at half resolution: ~10x cheaper, same result


@dataclass(frozen=True)
class ViewBox:
    """A square crop of the source: center (cx, cy), side in source px, horizontal flip.

    Boxes from `sample_view_boxes` have integer x0, y0 and side (cx, cy are then whole or
    half pixels, exact in float32 as well).
    """

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


def resize_uint8(img_HW3: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bicubic resize of an RGB uint8 image to (height, width, 3) uint8.

    torch's uint8 kernel with antialias=True reproduces Pillow's BICUBIC resize (within one
    level; the kernel support widens when shrinking, so downscaling smooths instead of
    aliasing) at ~8x Pillow's speed. The kernel runs channels-last, so the input is made
    channels-last contiguous and the output comes back as a contiguous (H, W, 3) array. Pixel
    i of the output samples input point (i + 0.5) * in/out (align_corners=False); near the
    border the kernel's support is cut at the input's edge and renormalised.
    """
    if img_HW3.shape[:2] == (height, width):
        return np.ascontiguousarray(img_HW3)
    h, w, c = img_HW3.shape
    # torch.from_numpy wants a writable array (np.asarray of a PIL image is read-only).
    hwc = torch.from_numpy(np.require(img_HW3, requirements=["C", "W"]))
    # (1, C, H, W) with true channels-last strides (a permute of a numpy array gives the batch
    # dim stride 0, which torch does not take for channels-last): the kernel then returns
    # channels-last too, ~1.7x faster than a transposing round trip.
    x = hwc.as_strided((1, c, h, w), (h * w * c, 1, w * c, c))
    out = F.interpolate(x, size=(height, width), mode="bicubic", antialias=True)
    hwc_out = out[0].permute(1, 2, 0)
    # contiguous for the OpenCV kernels that follow (a no-op for a channels-last output)
    return np.ascontiguousarray(hwc_out.numpy())


def standardise(img_HW3: np.ndarray, short_side: int, max_side: int) -> np.ndarray:
    """Resizes (antialiased bicubic) so the short side is `short_side`, unless the long side
    would then exceed `max_side`, in which case the long side becomes `max_side`."""
    h, w = img_HW3.shape[:2]
    scale = short_side / min(h, w)
    if max(h, w) * scale > max_side:
        scale = max_side / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    if (new_h, new_w) == (h, w):
        return img_HW3
    return resize_uint8(img_HW3, new_h, new_w)


def _clip_center(c: float, side: float, extent: int) -> float:
    """Moves a view center so the view stays inside [0, extent] when it fits at all."""
    if side >= extent:
        return extent / 2
    return min(max(c, side / 2), extent - side / 2)


def _snap_corner(c: float, side: int) -> float:
    """The center of the box of integer `side` whose corner is the whole pixel nearest to
    c - side/2: moves the center by at most half a pixel, so cropping needs no resampling
    offset. A box inside [0, extent] stays inside (the clipped corner range has integer ends).
    """
    return math.floor(c - side / 2 + 0.5) + side / 2


def _shifted_von_mises(rng: np.random.Generator, kappa: float) -> float:
    """A draw in [0, 1] with its mode at 0.75: von Mises(pi/2, kappa) mapped from [-pi, pi]."""
    return (rng.vonmises(0.5 * math.pi, kappa) + math.pi) / (2 * math.pi)


def sample_view_boxes(
    rng: np.random.Generator, img_HW3: np.ndarray, cfg: ViewConfig
) -> list[ViewBox]:
    """Places the center view by the edge map and N-1 surrounding views in angular sectors.

    Surrounding view k lies in sector k of N-1 equal sectors (randomly rotated), at a von Mises
    angle within it and a von Mises radius up to its half side minus one pixel, so every view
    contains the center view's center and all views share a common area. Sides are whole
    source pixels and corners are snapped to whole pixels (at most half a pixel, within the
    one-pixel margin of the radius, so containment survives the snapping).
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

    def side() -> int:
        scale = rng.uniform(cfg.crop_scale_min, cfg.crop_scale_max)
        return max(1, math.floor(scale * cfg.view_size + 0.5))

    s0 = side()
    cx = _snap_corner(_clip_center(cx, s0, w), s0)
    cy = _snap_corner(_clip_center(cy, s0, h), s0)
    boxes = [ViewBox(cx, cy, float(s0), bool(rng.random() < cfg.flip_prob))]
    n_sur = cfg.num_views - 1
    width = 2 * math.pi / n_sur
    offset = rng.uniform(0, 2 * math.pi)
    for k in range(n_sur):
        sk = side()
        theta = offset + (k + 0.5) * width + rng.vonmises(0.0, cfg.kappa) * width / (2 * math.pi)
        radius = _shifted_von_mises(rng, cfg.kappa) * max(sk / 2 - 1, 0.0)
        vx = _snap_corner(_clip_center(cx + radius * math.cos(theta), sk, w), sk)
        vy = _snap_corner(_clip_center(cy + radius * math.sin(theta), sk, h), sk)
        boxes.append(ViewBox(vx, vy, float(sk), bool(rng.random() < cfg.flip_prob)))
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
    the source.

    The mapping is separable (row i depends on i only, column j on j only), so rows then
    columns are gathered by index vectors: ~5x cheaper than a 2-D fancy index.
    """
    h, w = ids_HW.shape
    ar = np.arange(size)
    y, x = view_to_source(box, size, ar, ar)  # y for view rows i, x for view columns j
    out = ids_HW[np.clip(y, 0, h - 1)][:, np.clip(x, 0, w - 1)].astype(np.int32, copy=False)
    out[(y < 0) | (y >= h)] = -1
    out[:, (x < 0) | (x >= w)] = -1
    return out


def _integral_corner(box: ViewBox) -> tuple[int, int, int]:
    """(x0, y0, side) as ints; raises for a box not on whole source pixels."""
    x0, y0, side = round(box.x0), round(box.y0), round(box.side)
    if (x0, y0, side) != (box.x0, box.y0, box.side) or side < 1:
        raise ValueError(
            f"crop_image needs a box on whole source pixels (from sample_view_boxes), got {box}"
        )
    return x0, y0, side


def crop_images(img_HW3: np.ndarray, boxes: list[ViewBox], size: int) -> list[np.ndarray]:
    """Antialiased bicubic crop-and-resize of the source to S x S RGB uint8 per box (black
    outside the source), flipped like its box; output pixels follow `view_to_source`.

    The source is zero-padded once, only as far as the boxes reach past it (boxes larger than
    the source are centred on it), and every box becomes an integer slice of the padded image.
    """
    h, w = img_HW3.shape[:2]
    corners = [_integral_corner(b) for b in boxes]
    pad = max([0] + [max(-x0, -y0, x0 + s - w, y0 + s - h) for x0, y0, s in corners])
    padded = img_HW3
    if pad > 0:
        padded = cv2.copyMakeBorder(img_HW3, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    views = []
    for box, (x0, y0, side) in zip(boxes, corners, strict=True):
        crop = padded[y0 + pad : y0 + pad + side, x0 + pad : x0 + pad + side]
        view = resize_uint8(crop, size, size)
        # Flipped after resampling, as view_to_source defines it (mirror of the view columns).
        views.append(cv2.flip(view, 1) if box.flip else view)
    return views


def crop_image(img_HW3: np.ndarray, box: ViewBox, size: int) -> np.ndarray:
    """One view of `crop_images`: (S, S, 3) uint8."""
    return crop_images(img_HW3, [box], size)[0]
