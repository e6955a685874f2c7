"""Region maps by name: the registry the data pipeline draws superpixel id maps from.

`data.superpixels.method` selects a region source in `REGION_SOURCES`. Every source maps
(image source, index, standardised image, config) to an int32 id map (H, W) of the image's
shape with contiguous ids 0..n-1. The image-only methods come from `vice.data.superpixels`;
"gt" reads the data set's ground-truth instance maps. `compute_regions` is the one entry point,
with the on-disk cache in front of every source.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from vice.config import SuperpixelConfig
from vice.data.datasets import DATASETS
from vice.data.datasets.base import ImageSource
from vice.data.superpixel_cache import SuperpixelCache
from vice.data.superpixels import SUPERPIXELS, relabel_contiguous

#: (source, index, img_HW3, cfg) -> ids_HW int32, contiguous.
RegionSource = Callable[[ImageSource, int, np.ndarray, SuperpixelConfig], np.ndarray]


def _image_only(method: Callable[[np.ndarray, SuperpixelConfig], np.ndarray]) -> RegionSource:
    def regions(
        source: ImageSource, index: int, img_HW3: np.ndarray, cfg: SuperpixelConfig
    ) -> np.ndarray:
        return method(img_HW3, cfg)

    return regions


def _data_set_name(source: ImageSource) -> str:
    names = [name for name, cls in DATASETS.items() if type(source) is cls]
    return f"data.dataset={names[0]!r}" if names else f"the {type(source).__name__} data set"


def check_regions(source: ImageSource, cfg: SuperpixelConfig) -> None:
    """Raises ValueError, naming the key and the fix, when `source` cannot give the configured
    regions; for "gt" also reads one instance map, so a missing gtFine fails at start."""
    if cfg.method not in REGION_SOURCES:
        raise _unknown(cfg.method)
    if cfg.method != "gt":
        return
    if not source.has_instances:
        raise _no_instances(source)
    if len(source) > 0:
        source.load_instances(0)


def _unknown(method: str) -> ValueError:
    return ValueError(
        f"invalid config value data.superpixels.method={method!r}: one of {list(REGION_SOURCES)}"
    )


def _no_instances(source: ImageSource) -> ValueError:
    return ValueError(
        "invalid config value data.superpixels.method='gt': "
        f"{_data_set_name(source)} has no ground-truth instance maps for this split; use "
        "data.superpixels.method=slic, opencv_slic or grid, or a data set with instances "
        "(synthetic, or cityscapes with data.split train, val or train+val)"
    )


def gt_regions(
    source: ImageSource, index: int, img_HW3: np.ndarray, cfg: SuperpixelConfig
) -> np.ndarray:
    """The data set's instance map of image `index`, resized to `img_HW3` by nearest neighbour
    (as evaluation resizes label maps) and relabelled 0..n-1 in the order of the raw ids."""
    if not source.has_instances:
        raise _no_instances(source)
    ids_HW = source.load_instances(index)
    if ids_HW.size and ids_HW.min() < 0:
        raise ValueError(f"{source.key(index)}: instance ids must be >= 0, got {ids_HW.min()}")
    h, w = img_HW3.shape[:2]
    if ids_HW.shape != (h, w):
        # Mode "I" (int32) holds every Cityscapes id (< 34000); NEAREST never invents ids.
        resized = Image.fromarray(ids_HW.astype(np.int32)).resize((w, h), Image.NEAREST)
        ids_HW = np.asarray(resized)
    # After resizing, since a small instance may vanish.
    return relabel_contiguous(ids_HW)


#: The region sources by data.superpixels.method.
REGION_SOURCES: dict[str, RegionSource] = {
    **{name: _image_only(method) for name, method in SUPERPIXELS.items()},
    "gt": gt_regions,  # ground-truth instances, where the data set has them
}


def _cache_file(source: ImageSource, index: int, method: str) -> Path | None:
    """The file whose content (with the image shape and the config) determines the map."""
    return source.instance_path(index) if method == "gt" else source.path(index)


def compute_regions(
    source: ImageSource,
    index: int,
    img_HW3: np.ndarray,
    cfg: SuperpixelConfig,
    cache: SuperpixelCache | None = None,
) -> np.ndarray:
    """Region id map (H, W) int32, contiguous ids 0..n-1, of image `index` of `source`.

    Args:
        source: the image source `img_HW3` was loaded from.
        index: the image's index in `source`.
        img_HW3: the standardised (resized) RGB uint8 image; the map has its height and width.
        cfg: data.superpixels; `cfg.method` picks the region source in REGION_SOURCES.
        cache: optional on-disk cache. Entries are keyed by the file behind the map (the image,
            or the instance map for "gt"), the shape and every parameter of `cfg` including the
            method, so sources never read each other's entries. Procedural sources (no file)
            are computed every time.
    """
    region_source = REGION_SOURCES.get(cfg.method)
    if region_source is None:
        raise _unknown(cfg.method)

    def compute() -> np.ndarray:
        return region_source(source, index, img_HW3, cfg)

    path = _cache_file(source, index, cfg.method) if cache is not None else None
    if path is None:
        return compute()
    return cache.get_or_compute(path, img_HW3.shape[:2], cfg, compute)
