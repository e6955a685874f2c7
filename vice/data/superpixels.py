"""Superpixel id maps computed from the image alone: SLIC (fast-slic, or OpenCV-contrib's)
with ViCE's parameters, and the same-size grid.

Every function returns an int32 array (H, W) whose ids are contiguous: 0..n-1, each used.
`SUPERPIXELS` is the registry of these methods by name; `vice.data.regions` adds the region
sources that need the data set (ground-truth instances) and is what the data pipeline calls.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from vice.config import SuperpixelConfig

# OpenCV's default for enforceLabelConnectivity: fragments smaller than this percentage of a
# region_size**2 cell are merged into a neighbouring segment.
OPENCV_MIN_ELEMENT_PERCENT = 25


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


def _check_rgb_uint8(img_HW3: np.ndarray) -> None:
    if img_HW3.dtype != np.uint8 or img_HW3.ndim != 3 or img_HW3.shape[2] != 3:
        raise ValueError(
            f"expected an RGB uint8 image (H, W, 3), got {img_HW3.dtype} {img_HW3.shape}"
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
    _check_rgb_uint8(img_HW3)
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


def opencv_slic_superpixels(
    img_HW3: np.ndarray,
    region_size: int = 20,
    compactness: float = 10.0,
    iterations: int = 5,
    blur: int = 3,
) -> np.ndarray:
    """OpenCV-contrib's SLIC (algorithm SLIC, ruler = compactness) after the same blur as
    `slic_superpixels`, with OpenCV's connectivity enforcement: the published ViCE code's
    superpixels, and the maintained alternative where the fast-slic build crashes.

    About round(H / region_size) * round(W / region_size) seeds; merging fragments below a
    quarter cell leaves fewer segments on high-contrast textures. Deterministic: the same map
    for any cv2.setNumThreads.
    """
    _check_rgb_uint8(img_HW3)
    h, w = img_HW3.shape[:2]
    # OpenCV places round(side / region_size) seeds per side and segfaults when that is 0.
    if round(h * w / region_size**2) <= 1 or 2 * min(h, w) <= region_size:
        return np.zeros((h, w), dtype=np.int32)
    ximgproc = getattr(cv2, "ximgproc", None)
    if ximgproc is None:
        raise ImportError(
            "cv2.ximgproc is missing: data.superpixels.method=opencv_slic needs "
            "opencv-contrib-python-headless (a plain opencv-python installed next to it hides "
            "the contrib modules: uninstall both, then reinstall the contrib one)"
        )
    img = np.ascontiguousarray(gaussian_blur_uint8(img_HW3, blur))
    # SLIC's colour distance sums over channels, so RGB and BGR order give the same map.
    slic = ximgproc.createSuperpixelSLIC(
        img, algorithm=ximgproc.SLIC, region_size=region_size, ruler=float(compactness)
    )
    slic.iterate(iterations)
    slic.enforceLabelConnectivity(OPENCV_MIN_ELEMENT_PERCENT)
    return relabel_contiguous(slic.getLabels())


def _slic(img_HW3: np.ndarray, cfg: SuperpixelConfig) -> np.ndarray:
    return slic_superpixels(img_HW3, cfg.region_size, cfg.compactness, cfg.iterations, cfg.blur)


def _opencv_slic(img_HW3: np.ndarray, cfg: SuperpixelConfig) -> np.ndarray:
    return opencv_slic_superpixels(
        img_HW3, cfg.region_size, cfg.compactness, cfg.iterations, cfg.blur
    )


def _grid(img_HW3: np.ndarray, cfg: SuperpixelConfig) -> np.ndarray:
    return grid_superpixels(img_HW3.shape[0], img_HW3.shape[1], cfg.region_size)


#: Methods that need only the image, by data.superpixels.method: (img_HW3, cfg) -> ids_HW.
SUPERPIXELS: dict[str, Callable[[np.ndarray, SuperpixelConfig], np.ndarray]] = {
    "slic": _slic,  # fast-slic, ViCE's parameters (the default)
    "opencv_slic": _opencv_slic,  # OpenCV-contrib SLIC, as the published ViCE code
    "grid": _grid,  # same-size cells: the ablation
}


def compute_superpixels(img_HW3: np.ndarray, cfg: SuperpixelConfig) -> np.ndarray:
    """The id map the configured image-only method gives for an RGB uint8 image.

    Region sources that read the data set ("gt") go through `vice.data.regions.compute_regions`.
    """
    method = SUPERPIXELS.get(cfg.method)
    if method is None:
        hint = (
            "it reads the data set's instance maps: use vice.data.regions.compute_regions"
            if cfg.method == "gt"
            else f"one of {list(SUPERPIXELS)}"
        )
        raise ValueError(f"compute_superpixels: data.superpixels.method={cfg.method!r}: {hint}")
    return method(img_HW3, cfg)
