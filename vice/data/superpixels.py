"""Superpixel id maps: SLIC (fast-slic) with ViCE's parameters, and the same-size grid.

Every function returns an int32 array (H, W) whose ids are contiguous: 0..n-1, each used.
"""

from __future__ import annotations

import cv2
import numpy as np

from vice.config import SuperpixelConfig


def _slic_class() -> type:
    # The AVX2 build is ~2x faster; the module raises ImportError on CPUs without AVX2.
    try:
        from fast_slic.avx2 import SlicAvx2

        return SlicAvx2
    except ImportError:
        from fast_slic import Slic

        return Slic


def relabel_contiguous(ids_HW: np.ndarray) -> np.ndarray:
    """Maps the ids present in `ids_HW` (non-negative ints) onto 0..n-1, keeping their order."""
    ids = np.asarray(ids_HW)
    if ids.size == 0:
        return ids.astype(np.int32)
    present = np.zeros(int(ids.max()) + 1, dtype=bool)
    present[ids.ravel()] = True
    lut = np.cumsum(present, dtype=np.int64) - 1  # O(N) lookup instead of np.unique's sort
    return lut[ids].astype(np.int32)


def gaussian_blur_uint8(img_HW3: np.ndarray, kernel: int) -> np.ndarray:
    """Gaussian blur (H, W, 3) uint8 with a k x k support and sigma as OpenCV derives it from k
    (0.3 * ((k - 1) / 2 - 1) + 0.8, i.e. 0.8 for k=3), edges replicated.

    The sigma is passed explicitly: with sigma 0 OpenCV would use its hard-coded tables for
    k <= 9 ([1/4, 1/2, 1/4] for k=3), a different blur from the formula's Gaussian.
    OpenCV's fixed-point uint8 path is deterministic and ~10x faster than a float filter.
    """
    if kernel <= 1:
        return img_HW3
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    return cv2.GaussianBlur(
        np.ascontiguousarray(img_HW3), (kernel, kernel), sigma, borderType=cv2.BORDER_REPLICATE
    )


def slic_superpixels(
    img_HW3: np.ndarray,
    region_size: int = 20,
    compactness: float = 10.0,
    iterations: int = 5,
    blur: int = 3,
) -> np.ndarray:
    """SLIC superpixels of an RGB uint8 image: about H*W / region_size**2 segments.

    Deterministic: single-threaded fast-slic, fixed grid initialisation.
    """
    if img_HW3.dtype != np.uint8 or img_HW3.ndim != 3 or img_HW3.shape[2] != 3:
        raise ValueError(
            f"expected an RGB uint8 image (H, W, 3), got {img_HW3.dtype} {img_HW3.shape}"
        )
    h, w = img_HW3.shape[:2]
    num_components = max(1, round(h * w / region_size**2))
    if num_components == 1 or min(h, w) < 4:
        # Too small for SLIC's grid seeding to mean anything: one region.
        return np.zeros((h, w), dtype=np.int32)
    img = np.ascontiguousarray(gaussian_blur_uint8(img_HW3, blur))
    slic = _slic_class()(num_components=num_components, compactness=compactness, num_threads=1)
    ids = slic.iterate(img, max_iter=iterations)
    return relabel_contiguous(np.asarray(ids))


def grid_superpixels(height: int, width: int, region_size: int = 20) -> np.ndarray:
    """Regular grid of region_size x region_size cells (partial cells at the right/bottom)."""
    cols = -(-width // region_size)
    ys = np.arange(height, dtype=np.int32) // region_size
    xs = np.arange(width, dtype=np.int32) // region_size
    return (ys[:, None] * cols + xs[None, :]).astype(np.int32)


def compute_superpixels(img_HW3: np.ndarray, cfg: SuperpixelConfig) -> np.ndarray:
    """The id map the configured method gives for an RGB uint8 image."""
    if cfg.method == "grid":
        return grid_superpixels(img_HW3.shape[0], img_HW3.shape[1], cfg.region_size)
    return slic_superpixels(img_HW3, cfg.region_size, cfg.compactness, cfg.iterations, cfg.blur)
