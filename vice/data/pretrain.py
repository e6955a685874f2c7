"""The pretraining data set: image source -> standardised image -> superpixels -> ViCE views.

Every sample is a pure function of (data.seed, epoch, index): the sampler hands out
(epoch, index) keys and all randomness comes from generators seeded by them, so worker count,
worker scheduling and resumption never change what a step sees.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from vice.config import DataConfig
from vice.data.collate import collate_vice
from vice.data.datasets.base import ImageSource
from vice.data.image_io import UnreadableImageError
from vice.data.region_aug import region_inputs_of
from vice.data.regions import check_regions, compute_regions
from vice.data.sample import ViceSample, build_views
from vice.data.superpixel_cache import SuperpixelCache
from vice.data.superpixel_grid import grid_partner
from vice.data.views import standardise

log = logging.getLogger(__name__)

_SUBSTITUTE = 1  # stream tags keep the generators of different purposes independent
_VIEWS = 2


class ViceDataset(torch.utils.data.Dataset):
    """Map-style data set indexed by (epoch, index) keys (a bare int means epoch 0).

    ViCE's sample builder: a center view and surrounding views of one image, their common
    superpixel ids and the regional masks; `collate` stacks them into a `ViceBatch`. With
    `region_views` (a, b), each sample also carries its D3SSL inputs from those views.
    """

    collate = staticmethod(collate_vice)

    def __init__(
        self,
        source: ImageSource,
        cfg: DataConfig,
        keep_debug: bool = False,
        region_views: tuple[int, int] | None = None,
    ) -> None:
        if len(source) == 0:
            raise ValueError(f"data set {type(source).__name__} is empty")
        check_regions(source, cfg.superpixels)
        self.source = source
        self.cfg = cfg
        self.keep_debug = keep_debug
        self.region_views = region_views  # (a, b): make the D3SSL inputs from these views
        cache_dir = cfg.superpixels.cache_dir
        self.cache = SuperpixelCache(cache_dir) if cache_dir else None
        self.skipped_total = 0  # per process; batches carry their own count to the trainer
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.source)

    def prepare(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Standardised RGB image (H, W, 3) and its superpixel ids (H, W) int32."""
        img = self.source.load_image(index)
        vcfg = self.cfg.views
        img = standardise(img, vcfg.short_side, vcfg.max_side)
        return img, compute_regions(self.source, index, img, self.cfg.superpixels, self.cache)

    def _substitute(self, epoch: int, index: int, attempt: int) -> int:
        rng = np.random.default_rng([self.cfg.seed, epoch, index, _SUBSTITUTE, attempt])
        return int(rng.integers(len(self.source)))

    def __getitem__(self, key: Any) -> dict[str, Any]:
        epoch, index = (0, int(key)) if np.isscalar(key) else (int(key[0]), int(key[1]))
        skipped = 0
        current = index
        for attempt in range(self.cfg.max_resample * 4):
            if current in self._bad:
                current = self._substitute(epoch, index, attempt)
                continue
            try:
                img, ids = self.prepare(current)
            except UnreadableImageError as err:
                self._bad.add(current)
                skipped += 1
                self.skipped_total += 1
                log.warning(
                    "skipping unreadable image (%d skipped so far): %s", self.skipped_total, err
                )
                current = self._substitute(epoch, index, attempt)
                continue
            sample = self._views(epoch, index, current, img, ids)
            if sample is not None:
                return {
                    "sample": sample,
                    "key": (epoch, index),
                    "index": current,
                    "skipped": skipped,
                }
            # No common superpixel after masking, even after resampling views: other image.
            current = self._substitute(epoch, index, attempt)
        raise RuntimeError(
            f"could not build a sample for index {index} (epoch {epoch}) after "
            f"{self.cfg.max_resample * 4} tries; {skipped} unreadable images on the way. "
            f"Check data.root and the images it holds."
        )

    def _views(
        self, epoch: int, index: int, current: int, img: np.ndarray, ids: np.ndarray
    ) -> ViceSample | None:
        for attempt in range(self.cfg.max_resample):
            rng = np.random.default_rng([self.cfg.seed, epoch, index, _VIEWS, current, attempt])
            # GridMix's partner view (None, and no draws, for every other kind).
            partner = grid_partner(self.source, rng, current, self.cfg.views)
            extra = {} if partner is None else {"partner_HW3": partner}
            sample = build_views(rng, img, ids, self.cfg, self.keep_debug, **extra)
            if sample is not None:
                if self.region_views is not None:
                    sample.region = region_inputs_of(
                        rng, self.source, current, sample.views_VCSS, sample.ids_VSS,
                        self.region_views, self.cfg.views,
                    )  # fmt: skip
                return sample
        return None
