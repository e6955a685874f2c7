"""Canny edges and the edge-weighted placement map of ViCE's center view.

Shapes: H, W = source image height and width.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_GRAY = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as OpenCV's RGB2GRAY


def canny(gray_HW: np.ndarray, low: float, high: float) -> np.ndarray:
    """Canny edges (bool, H x W) of a 0-255 gray image, with an L2 Sobel gradient.

    Non-maximum suppression along the gradient direction quantised to 4 orientations, then
    hysteresis: weak edge pixels are kept only when 8-connected to a strong one.
    """
    g = ndimage.gaussian_filter(gray_HW.astype(np.float32), 0.8, truncate=1.25)  # 3x3 support
    gx = ndimage.sobel(g, axis=1)
    gy = ndimage.sobel(g, axis=0)
    mag = np.hypot(gx, gy)
    if float(mag.max(initial=0.0)) < low:
        return np.zeros(gray_HW.shape, dtype=bool)
    # Orientation bins: 0 = gradient along x, 1 = along the y=x diagonal, 2 = along y, 3 = anti.
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    q = (np.floor((angle + np.pi / 8) / (np.pi / 4)).astype(np.int8)) % 4
    p = np.pad(mag, 1)
    h, w = mag.shape

    def shifted(dy: int, dx: int) -> np.ndarray:
        return p[1 + dy : h + 1 + dy, 1 + dx : w + 1 + dx]

    neighbours = {0: (0, 1), 1: (1, 1), 2: (1, 0), 3: (1, -1)}
    keep = np.zeros(mag.shape, dtype=bool)
    for b, (dy, dx) in neighbours.items():
        sel = q == b
        # Strict on one side so a two-pixel plateau yields a one-pixel edge.
        keep |= sel & (mag > shifted(dy, dx)) & (mag >= shifted(-dy, -dx))
    weak = keep & (mag >= low)
    strong = weak & (mag >= high)
    if not strong.any():
        return strong
    labels, _ = ndimage.label(weak, structure=np.ones((3, 3), dtype=bool))
    connected = np.zeros(labels.max() + 1, dtype=bool)
    connected[labels[strong]] = True
    connected[0] = False
    return connected[labels]


def edge_placement_map(
    img_HW3: np.ndarray, low: float, high: float, blur_sigma: float, floor: float
) -> np.ndarray:
    """Probability (float64, H x W, sums to 1) of placing the center view at each pixel.

    A blurred Canny map, so views land on object boundaries where superpixels are most
    informative, mixed with a uniform `floor` so flat images still get every position.
    """
    gray = img_HW3.astype(np.float32) @ _GRAY
    edges = canny(gray, low, high).astype(np.float64)
    if blur_sigma > 0:
        edges = ndimage.gaussian_filter(edges, blur_sigma)
    total = float(edges.sum())
    n = edges.size
    if total <= 0:
        return np.full(edges.shape, 1.0 / n)
    return (1.0 - floor) * edges / total + floor / n
