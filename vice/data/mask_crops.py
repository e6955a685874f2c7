"""Two random resized crops of one image and of its foreground mask (MaskContrast's views;
methods.md section 2, research/vice_maskcontrast.md 2.4-2.6).

The image's mask comes from the configured prior (`data.mask_prior`, `vice.data.mask_priors`):
thresholded, small components dropped; an image whose mask covers less than
`data.mask_prior.min_area` has no usable prior and is skipped (replaced, counted in the
batch's `skipped`, as unreadable images are).

Each view is an independent RandomResizedCrop (area fraction U(crop_scale_min,
crop_scale_max), torchvision's aspect ratios and fallback) resized to view_size, applied
jointly to the mask (nearest), then flipped with `flip_prob`, then colour jitter (p
`jitter_prob`), grayscale (p `gray_prob`) and blur (p `blur_prob`; 0 in the published
recipe). A pair whose mask covers at most MIN_MASK or at least MAX_MASK of either view is
drawn again from the same generator, up to `data.max_resample` pairs (the published loader
redraws until it fits); an image with no fitting pair in that many draws is skipped like one
without a mask. Every draw comes from the key's own generator, so a sample stays a pure
function of (data.seed, epoch, index) and resume is exact.

Keys of `data.views` read here: view_size, crop_scale_min / crop_scale_max, flip_prob,
jitter_prob, brightness, contrast, saturation, hue, gray_prob, blur_prob, blur_sigma_*,
mean, std.

Shapes: S view side, B images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from vice.config import DataConfig
from vice.data.augment import normalise_into, photometric
from vice.data.batches import MaskCropBatch
from vice.data.datasets.base import ImageSource
from vice.data.image_io import UnreadableImageError
from vice.data.mask_priors import check_mask_prior, compute_mask
from vice.data.substitution import SkipImageError, SubstitutingDataset
from vice.data.superpixel_grid import apply_superpixel_grid, grid_partner
from vice.data.two_crops import Crop, crop_view, random_resized_crop

MIN_MASK, MAX_MASK = 0.01, 0.99  # a view's mask fraction must lie strictly between these


class NoUsableMaskError(Exception):
    """The image has no usable mask prior (it covers less than data.mask_prior.min_area)."""


class CropsDidNotFitError(NoUsableMaskError):
    """No pair of crops drawn for this key keeps the mask within bounds in both views."""


@dataclass
class MaskCropSample:
    views_2CSS: torch.Tensor  # float32, normalised
    masks_2SS: torch.Tensor  # bool: the foreground prior in each view
    flips_2: torch.Tensor  # bool
    crops_24: torch.Tensor  # float32 (x0, y0, w, h) in source pixels, before the flip


def crop_mask(mask_HW: np.ndarray, crop: Crop, size: int, flip: bool) -> np.ndarray:
    """The mask under `crop`, resized to size x size (nearest), mirrored if `flip`."""
    x0, y0, w, h = crop
    part = mask_HW[y0 : y0 + h, x0 : x0 + w].astype(np.uint8)
    out = cv2.resize(part, (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
    return np.ascontiguousarray(out[:, ::-1]) if flip else out


def build_mask_crops(
    rng: np.random.Generator,
    img_HW3: np.ndarray,
    mask_HW: np.ndarray,
    cfg: DataConfig,
    partner_HW3: np.ndarray | None = None,
) -> MaskCropSample:
    """The two views of an image and its mask (draws: up to max_resample pairs of (crop,
    flip) x 2, then view 1's and view 2's superpixel-grid and photometric augmentation).
    `partner_HW3`: GridMix's S x S partner view."""
    vcfg = cfg.views
    size = vcfg.view_size
    height, width = mask_HW.shape
    scale = (vcfg.crop_scale_min, vcfg.crop_scale_max)
    for _ in range(cfg.max_resample):
        crops, flips, masks = [], [], []
        for _view in range(2):
            crop = random_resized_crop(rng, height, width, scale)
            flip = bool(rng.random() < vcfg.flip_prob)
            crops.append(crop)
            flips.append(flip)
            masks.append(crop_mask(mask_HW, crop, size, flip))
        if all(MIN_MASK < m.mean() < MAX_MASK for m in masks):
            break
    else:
        raise CropsDidNotFitError(
            f"no pair of crops in {cfg.max_resample} draws keeps the mask within "
            f"({MIN_MASK:.0%}, {MAX_MASK:.0%}) of both views"
        )
    views = torch.empty((2, 3, size, size), dtype=torch.float32)
    for v, (crop, flip) in enumerate(zip(crops, flips, strict=True)):
        view = crop_view(img_HW3, crop, size, flip)
        view = apply_superpixel_grid(rng, view, vcfg.superpixel_grid, partner_HW3)  # pixels only
        view = photometric(rng, view, vcfg)
        normalise_into(views[v], view, vcfg.mean, vcfg.std)
    return MaskCropSample(
        views_2CSS=views,
        masks_2SS=torch.from_numpy(np.stack(masks)),
        flips_2=torch.tensor(flips),
        crops_24=torch.tensor(crops, dtype=torch.float32),
    )


def collate_mask_crops(items: list[dict[str, Any]]) -> MaskCropBatch:
    """Stacks samples view-major into a MaskCropBatch."""
    samples = [it["sample"] for it in items]
    return MaskCropBatch(
        views=torch.stack([s.views_2CSS for s in samples], dim=1),
        masks=torch.stack([s.masks_2SS for s in samples], dim=1),
        flips=torch.stack([s.flips_2 for s in samples], dim=1),
        crops=torch.stack([s.crops_24 for s in samples], dim=1),
        keys=[tuple(it["key"]) for it in items],
        indices=torch.tensor([it["index"] for it in items], dtype=torch.int64),
        skipped=sum(int(it["skipped"]) for it in items),
    )


class MaskCropDataset(SubstitutingDataset):
    """Map-style data set indexed by (epoch, index) keys (a bare int means epoch 0).

    An image that is unreadable or has no usable mask prior is replaced by another one drawn
    from the key's own generator and passed over for good; one whose crop pairs did not fit
    is replaced for this key only (another key draws other crops). Both are counted.
    """

    collate = staticmethod(collate_mask_crops)
    hint = "Check data.root and data.mask_prior (source, threshold, min_area)."

    def __init__(self, source: ImageSource, cfg: DataConfig) -> None:
        super().__init__(source, cfg)
        check_mask_prior(source, cfg)  # e.g. gt on a source without foreground: named
        self._cache = None
        if cfg.mask_prior.cache_dir:
            from vice.data.mask_cache import MaskCache

            self._cache = MaskCache(cfg.mask_prior.cache_dir)

    def build(self, current: int, rng: np.random.Generator) -> MaskCropSample:
        try:
            img = self.source.load_image(current)
        except UnreadableImageError as err:
            raise SkipImageError(f"unreadable: {err}") from err
        mask = compute_mask(self.source, current, img, self.cfg, self._cache)
        if mask is None:
            raise SkipImageError(
                f"its mask prior covers less than {self.cfg.mask_prior.min_area:.0%} of the image"
            )
        try:
            partner = grid_partner(self.source, rng, current, self.cfg.views)  # None unless mix
            return build_mask_crops(rng, img, mask, self.cfg, partner)
        except CropsDidNotFitError as err:
            raise SkipImageError(str(err), for_good=False) from err
