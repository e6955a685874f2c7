"""Canny edges and the edge-weighted placement map of ViCE's center view.

Shapes: H, W = source image height and width.
"""

from __future__ import annotations

import cv2
import numpy as np

# cv2.Canny takes int16 Sobel derivatives; computing them in float and storing them 8x
# scaled keeps 1/16-level precision (a 0-255 image has |Sobel| <= 1020, so 8 * 1020 fits int16
# and the squared L2 magnitude, up to 2 * 8160**2, fits Canny's int32 arithmetic).
_GRAD_SCALE = 8.0
_GAUSS_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default support, in sigmas


def _int16(a: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(a), -32767, 32767).astype(np.int16)


def canny(gray_HW: np.ndarray, low: float, high: float) -> np.ndarray:
    """Canny edges (bool, H x W) of a 0-255 gray image (any real dtype), L2 Sobel gradient.

    A 3x3 Gaussian (sigma 0.8) then OpenCV's Canny on 3x3 Sobel derivatives: non-maximum
    suppression along the gradient direction quantised to 4 orientations, then hysteresis:
    pixels with magnitude > low are kept only when 8-connected to one with magnitude > high.
    Blur and derivatives run in float (not on a uint8-rounded image) so thresholds on weak
    gradients are not shifted by quantisation.
    """
    g = gray_HW.astype(np.float32, copy=False)
    g = cv2.GaussianBlur(g, (3, 3), 0.8, borderType=cv2.BORDER_REPLICATE)
    dx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3, scale=_GRAD_SCALE, borderType=cv2.BORDER_REPLICATE)
    dy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3, scale=_GRAD_SCALE, borderType=cv2.BORDER_REPLICATE)
    edges = cv2.Canny(
        _int16(dx), _int16(dy), low * _GRAD_SCALE, high * _GRAD_SCALE, L2gradient=True
    )
    return edges > 0


def gaussian_blur_float(x_HW: np.ndarray, sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(x, sigma) (truncate 4, mode 'reflect') via OpenCV:
    the same kernel and border, float32 output."""
    radius = int(_GAUSS_TRUNCATE * sigma + 0.5)
    k = 2 * radius + 1
    return cv2.GaussianBlur(
        x_HW.astype(np.float32, copy=False), (k, k), sigma, borderType=cv2.BORDER_REFLECT
    )


def edge_placement_map(
    img_HW3: np.ndarray, low: float, high: float, blur_sigma: float, floor: float
) -> np.ndarray:
    """Probability (float64, H x W, sums to 1) of placing the center view at each pixel.

    A blurred Canny map, so views land on object boundaries where superpixels are most
    informative, mixed with a uniform `floor` so flat images still get every position.
    """
    # ITU-R 601 luma in float (OpenCV's RGB2GRAY weights 0.299, 0.587, 0.114), unrounded.
    gray = cv2.cvtColor(np.ascontiguousarray(img_HW3, dtype=np.float32), cv2.COLOR_RGB2GRAY)
    edges = canny(gray, low, high).astype(np.float32)
    if blur_sigma > 0:
        edges = gaussian_blur_float(edges, blur_sigma)
    edges = edges.astype(np.float64)
    total = float(edges.sum())
    n = edges.size
    if total <= 0:
        return np.full(edges.shape, 1.0 / n)
    return (1.0 - floor) * edges / total + floor / n
