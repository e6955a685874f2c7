"""Sample builders by name. `SAMPLE_BUILDERS` is the registry: a plain dict.

A sample builder turns an image source into a map-style data set indexed by (epoch, index)
keys whose samples are pure functions of (data.seed, epoch, index), and carries its own
`collate` into a typed `vice.data.batches.Batch`. A method names the builder it trains on
(`Method.sample_builder`); the trainer builds whatever that is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vice.config import DataConfig
from vice.data.datasets.base import ImageSource
from vice.data.mask_crops import MaskCropDataset
from vice.data.pretrain import ViceDataset
from vice.data.two_crops import TwoCropDataset

SampleBuilder = Callable[[ImageSource, DataConfig], torch.utils.data.Dataset]

SAMPLE_BUILDERS: dict[str, SampleBuilder] = {
    # A center view + surrounding views, common superpixel ids, regional masking (ViCE).
    "vice_views": ViceDataset,
    # Two overlapping random resized crops with their overlap boxes and flips (SlotCon).
    "two_crops": TwoCropDataset,
    # Two random resized crops of an image and its foreground mask prior (MaskContrast).
    "mask_crops": MaskCropDataset,
}


def build_samples(
    name: str,
    source: ImageSource,
    cfg: DataConfig,
    region_views: tuple[int, int] | None = None,
) -> torch.utils.data.Dataset:
    """The builder's data set; `region_views` (a, b): its samples also carry the D3SSL inputs
    made from views a and b (`vice.data.region_aug`; builders of region-level methods only)."""
    if name not in SAMPLE_BUILDERS:
        raise ValueError(f"unknown sample builder {name!r}; known: {sorted(SAMPLE_BUILDERS)}")
    if region_views is None:
        return SAMPLE_BUILDERS[name](source, cfg)
    return SAMPLE_BUILDERS[name](source, cfg, region_views=region_views)
