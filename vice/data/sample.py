"""One ViCE training sample: views, aligned superpixel targets and regional masks.

Shapes: V = views, S = view side, R = target regions of this image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vice.config import DataConfig, MaskConfig
from vice.data.augment import normalise_into, photometric
from vice.data.masking import align_ids, common_ids, regional_masking
from vice.data.region_aug import RegionSample
from vice.data.superpixel_grid import apply_superpixel_grid
from vice.data.views import ViewBox, crop_ids, crop_images, sample_view_boxes


@dataclass
class ViceSample:
    """Everything the method needs from one image; `debug` is filled only on request."""

    views_VCSS: torch.Tensor  # float32, normalised, masked pixels replaced by noise
    ids_VSS: torch.Tensor  # int64 region index r in [0, R) (same superpixel in every view), -1
    regions_R: torch.Tensor  # int64 source superpixel id of each region
    flips_V: torch.Tensor  # bool, view was flipped horizontally
    boxes_V3: torch.Tensor  # float32 (cx, cy, side) in standardised source px
    masked_VSS: torch.Tensor  # bool, pixel replaced by noise
    debug: dict = field(default_factory=dict)
    region: RegionSample | None = None  # the D3SSL inputs, when a method switch asks for them


def build_views(
    rng: np.random.Generator,
    img_HW3: np.ndarray,
    ids_HW: np.ndarray,
    cfg: DataConfig,
    keep_debug: bool = False,
    partner_HW3: np.ndarray | None = None,
) -> ViceSample | None:
    """Samples views of a standardised image and its superpixel map.

    `partner_HW3`: the S x S partner view of data.views.superpixel_grid.kind=mix (else unused).
    Order per view: crop, superpixel-grid augmentation, photometric, normalise, mask noise.
    Returns None when no common superpixel survives masking (the caller resamples).
    """
    vcfg = cfg.views
    size = vcfg.view_size
    boxes = sample_view_boxes(rng, img_HW3, vcfg)
    view_ids = [crop_ids(ids_HW, b, size) for b in boxes]  # flipped like their views
    common = common_ids(view_ids)
    if common.size == 0:
        return None
    masks, targets, mask_boxes = regional_masking(rng, view_ids, common, cfg.masking)
    if targets.size == 0:
        return None

    # Drawn here, before the photometric draws, so the noise stream is fixed by the sample's
    # generator whatever the augmentations consume.
    noise_rng = np.random.default_rng(int(rng.integers(2**62)))
    crops = crop_images(img_HW3, boxes, size)  # draws nothing
    views = torch.empty((len(boxes), 3, size, size), dtype=torch.float32)
    for v, (crop, mask) in enumerate(zip(crops, masks, strict=True)):
        crop = apply_superpixel_grid(rng, crop, vcfg.superpixel_grid, partner_HW3)  # pixels only
        normalise_into(views[v], photometric(rng, crop, vcfg), vcfg.mean, vcfg.std)
        add_mask_noise(noise_rng, views[v], mask, cfg.masking)

    sample = ViceSample(
        views_VCSS=views,
        ids_VSS=torch.from_numpy(align_ids(view_ids, targets)),
        regions_R=torch.from_numpy(targets.astype(np.int64)),
        flips_V=torch.tensor([b.flip for b in boxes]),
        boxes_V3=torch.tensor([[b.cx, b.cy, b.side] for b in boxes], dtype=torch.float32),
        masked_VSS=torch.from_numpy(np.stack(masks)),
    )
    if keep_debug:
        sample.debug = {
            "boxes": boxes,
            "view_source_ids": view_ids,
            "common": common,
            "mask_boxes": mask_boxes,
        }
    return sample


def add_mask_noise(
    rng: np.random.Generator, view_3SS: torch.Tensor, mask_SS: np.ndarray, cfg: MaskConfig
) -> None:
    """Replaces the masked pixels of a normalised view, in place, by U(noise_low, noise_high)
    per channel; draws only as many values as there are masked pixels (3 x count, channel-major,
    pixels in row-major order)."""
    count = int(np.count_nonzero(mask_SS))
    if count == 0:
        return
    noise = rng.random((view_3SS.shape[0], count), dtype=np.float32)
    noise *= cfg.noise_high - cfg.noise_low
    noise += cfg.noise_low
    out = view_3SS.numpy()  # shares memory with the tensor
    for c in range(out.shape[0]):  # per channel: ~5x faster than out[:, mask] = noise
        out[c][mask_SS] = noise[c]


def box_from_row(row: torch.Tensor, flip: bool) -> ViewBox:
    """Rebuilds a ViewBox from a boxes_V3 row and its flip flag."""
    cx, cy, side = (float(v) for v in row)
    return ViewBox(cx, cy, side, flip)
