"""Two overlapping random resized crops of one image (SlotCon's views; methods.md section 3).

View 1 is a RandomResizedCrop of the image (area fraction U(crop_scale_min, crop_scale_max),
aspect ratio log-U(3/4, 4/3), torchvision's 10 tries then a central crop). View 2 is drawn the
same way until its intersection with view 1 covers at least `MIN_OVERLAP` of its own area, at
most `data.max_resample` draws; if none does, view 2 takes view 1's box (the published code
falls back to an unconditioned crop, which may not overlap at all: then its group loss has no
pixels to compare). Each view is flipped with `flip_prob`, then gets BYOL's photometric
recipe: colour jitter (p `jitter_prob`, strengths `brightness` ... `hue`), grayscale
(p `gray_prob`), Gaussian blur (sigma U(`blur_sigma_min`, `blur_sigma_max`)) with p 1.0 on
view 1 and 0.1 on view 2, and solarization (threshold 128) with p 0.0 and 0.2.

The batch carries, per view, the intersection box in that view's own normalised coordinates
(x1, y1, x2, y2 in [0, 1], mirrored when the view is flipped) and the flip flags: what SlotCon
needs to crop each view's score map to the common region with RoIAlign and un-flip it.

Keys of `data.views` read here: view_size, crop_scale_min / crop_scale_max (fractions of the
image area, so at most 1), flip_prob, jitter_prob, brightness, contrast, saturation, hue,
gray_prob, blur_sigma_min / blur_sigma_max, mean, std. ViCE's placement keys (num_views,
kappa, edge_*, canny_*, short_side, max_side) and blur_prob (the asymmetric probabilities
below replace it) are not used; neither are superpixels or regional masking.

Every sample is a pure function of (data.seed, epoch, index). Coordinates: crop (x0, y0, w, h)
in whole source pixels; normalised coordinate u of a view is source x0 + u * w (output pixel
a of an S-pixel view samples u = (a + 0.5) / S, as the resize does).

Shapes: S view side, B images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from vice.config import DataConfig, ViewConfig
from vice.data.augment import color_jitter, gaussian_blur, grayscale, normalise_into
from vice.data.batches import TwoCropBatch
from vice.data.datasets.base import ImageSource
from vice.data.image_io import UnreadableImageError
from vice.data.region_aug import RegionSample, collate_region_inputs, region_inputs_of
from vice.data.substitution import SkipImageError, SubstitutingDataset
from vice.data.superpixel_grid import apply_superpixel_grid, grid_partner
from vice.data.views import resize_uint8

MIN_OVERLAP = 0.01  # view 2 shares at least this fraction of its area with view 1
ASPECT_RATIOS = (3 / 4, 4 / 3)  # RandomResizedCrop's default range
BLUR_PROBS = (1.0, 0.1)  # BYOL / SlotCon: view 1 always blurred, view 2 rarely
SOLARIZE_PROBS = (0.0, 0.2)
SOLARIZE_THRESHOLD = 128
_CROP_TRIES = 10  # torchvision's RandomResizedCrop tries before its central fallback

Crop = tuple[int, int, int, int]  # (x0, y0, w, h) in source pixels


def random_resized_crop(
    rng: np.random.Generator, height: int, width: int, scale: tuple[float, float]
) -> Crop:
    """torchvision's RandomResizedCrop box: area fraction U(scale), log-uniform aspect ratio,
    up to 10 tries to fit, else the central crop of the clamped aspect ratio."""
    area = height * width
    log_lo, log_hi = math.log(ASPECT_RATIOS[0]), math.log(ASPECT_RATIOS[1])
    for _ in range(_CROP_TRIES):
        target = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            y0 = int(rng.integers(0, height - h + 1))
            x0 = int(rng.integers(0, width - w + 1))
            return x0, y0, w, h
    ratio = width / height
    if ratio < ASPECT_RATIOS[0]:
        w, h = width, round(width / ASPECT_RATIOS[0])
    elif ratio > ASPECT_RATIOS[1]:
        w, h = round(height * ASPECT_RATIOS[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def intersection(a: Crop, b: Crop) -> Crop:
    """The intersection box of two crops (w or h 0 when they do not overlap)."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def sample_two_crops(
    rng: np.random.Generator, height: int, width: int, cfg: ViewConfig, tries: int
) -> tuple[Crop, Crop]:
    """View 1's crop, and view 2's: the first of `tries` draws that overlaps view 1 by at
    least MIN_OVERLAP of its own area, else view 1's crop itself."""
    scale = (cfg.crop_scale_min, cfg.crop_scale_max)
    first = random_resized_crop(rng, height, width, scale)
    for _ in range(tries):
        second = random_resized_crop(rng, height, width, scale)
        _, _, iw, ih = intersection(first, second)
        if iw * ih >= MIN_OVERLAP * second[2] * second[3]:
            return first, second
    return first, first


def overlap_box(crop: Crop, common: Crop, flip: bool) -> list[float]:
    """`common` in `crop`'s normalised coordinates (x1, y1, x2, y2), mirrored if flipped."""
    x0, y0, w, h = crop
    x1, y1 = (common[0] - x0) / w, (common[1] - y0) / h
    x2, y2 = (common[0] + common[2] - x0) / w, (common[1] + common[3] - y0) / h
    return [1.0 - x2, y1, 1.0 - x1, y2] if flip else [x1, y1, x2, y2]


def solarize(img_HW3: np.ndarray) -> np.ndarray:
    """PIL's ImageOps.solarize(img, 128): levels >= 128 are inverted."""
    lut = np.arange(256, dtype=np.uint8)
    lut[SOLARIZE_THRESHOLD:] = 255 - lut[SOLARIZE_THRESHOLD:]
    return cv2.LUT(img_HW3, lut)


def byol_photometric(
    rng: np.random.Generator, img_HW3: np.ndarray, cfg: ViewConfig, view: int
) -> np.ndarray:
    """Jitter, grayscale, blur, solarize of view 0 or 1 (BYOL's asymmetric probabilities)."""
    img = np.ascontiguousarray(img_HW3)
    if rng.random() < cfg.jitter_prob:
        img = color_jitter(rng, img, cfg)
    if rng.random() < cfg.gray_prob:
        img = grayscale(img)
    if rng.random() < BLUR_PROBS[view]:
        img = gaussian_blur(img, rng.uniform(cfg.blur_sigma_min, cfg.blur_sigma_max))
    if rng.random() < SOLARIZE_PROBS[view]:
        img = solarize(img)
    return img


def crop_view(img_HW3: np.ndarray, crop: Crop, size: int, flip: bool) -> np.ndarray:
    """The crop resized to size x size (antialiased bicubic), mirrored if `flip`."""
    x0, y0, w, h = crop
    view = resize_uint8(img_HW3[y0 : y0 + h, x0 : x0 + w], size, size)
    return np.ascontiguousarray(view[:, ::-1]) if flip else view


@dataclass
class TwoCropSample:
    """Two views of one image and where they overlap."""

    views_2CSS: torch.Tensor  # float32, normalised
    boxes_24: torch.Tensor  # float32 overlap (x1, y1, x2, y2) in each view's [0, 1] coords
    flips_2: torch.Tensor  # bool
    crops_24: torch.Tensor  # float32 (x0, y0, w, h) in source pixels, before the flip
    region: RegionSample | None = None  # the D3SSL inputs, when a method switch asks for them


def build_two_crops(
    rng: np.random.Generator,
    img_HW3: np.ndarray,
    cfg: DataConfig,
    partner_HW3: np.ndarray | None = None,
) -> TwoCropSample:
    """Samples the two views of an image (draws: crops, flips, then view 1's and view 2's
    superpixel-grid and photometric augmentation). `partner_HW3`: GridMix's S x S partner."""
    vcfg = cfg.views
    size = vcfg.view_size
    crops = sample_two_crops(rng, img_HW3.shape[0], img_HW3.shape[1], vcfg, cfg.max_resample)
    flips = [bool(rng.random() < vcfg.flip_prob) for _ in crops]
    common = intersection(*crops)
    views = torch.empty((2, 3, size, size), dtype=torch.float32)
    for v, (crop, flip) in enumerate(zip(crops, flips, strict=True)):
        view = crop_view(img_HW3, crop, size, flip)
        view = apply_superpixel_grid(rng, view, vcfg.superpixel_grid, partner_HW3)  # pixels only
        view = byol_photometric(rng, view, vcfg, v)
        normalise_into(views[v], view, vcfg.mean, vcfg.std)
    return TwoCropSample(
        views_2CSS=views,
        boxes_24=torch.tensor(
            [overlap_box(c, common, f) for c, f in zip(crops, flips, strict=True)],
            dtype=torch.float32,
        ),
        flips_2=torch.tensor(flips),
        crops_24=torch.tensor(crops, dtype=torch.float32),
    )


def collate_two_crops(items: list[dict[str, Any]]) -> TwoCropBatch:
    """Stacks samples view-major into a TwoCropBatch."""
    samples = [it["sample"] for it in items]
    return TwoCropBatch(
        views=torch.stack([s.views_2CSS for s in samples], dim=1),
        boxes=torch.stack([s.boxes_24 for s in samples], dim=1),
        flips=torch.stack([s.flips_2 for s in samples], dim=1),
        crops=torch.stack([s.crops_24 for s in samples], dim=1),
        keys=[tuple(it["key"]) for it in items],
        indices=torch.tensor([it["index"] for it in items], dtype=torch.int64),
        skipped=sum(int(it["skipped"]) for it in items),
        region=(
            collate_region_inputs([s.region for s in samples])
            if samples[0].region is not None
            else None
        ),
    )


class TwoCropDataset(SubstitutingDataset):
    """Map-style data set indexed by (epoch, index) keys (a bare int means epoch 0).

    An unreadable image is replaced by another one drawn from the key's own generator. With
    `region_views` (a, b), each sample also carries its D3SSL inputs from those views, with
    one region (id 0) covering each view: SlotCon's slots come from its features, so the
    inputs' id maps only say which pixels to pool.
    """

    collate = staticmethod(collate_two_crops)

    def __init__(
        self, source: ImageSource, cfg: DataConfig, region_views: tuple[int, int] | None = None
    ) -> None:
        super().__init__(source, cfg)
        self.region_views = region_views

    def build(self, current: int, rng: np.random.Generator) -> TwoCropSample:
        try:
            img = self.source.load_image(current)
        except UnreadableImageError as err:
            raise SkipImageError(f"unreadable: {err}") from err
        partner = grid_partner(self.source, rng, current, self.cfg.views)  # None unless mix
        sample = build_two_crops(rng, img, self.cfg, partner)
        if self.region_views is not None:
            views = sample.views_2CSS
            ids = torch.zeros((2, *views.shape[-2:]), dtype=torch.int64)
            sample.region = region_inputs_of(
                rng, self.source, current, views, ids, self.region_views, self.cfg.views
            )
        return sample
