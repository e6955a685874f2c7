"""The de-coupling / de-positioning inputs of a sample (D3SSL, Qiu et al. 2023; methods.md
section 4, research/slotcon_ddssl.md part 2).

From two of a sample's finished (normalised) views, `a` and `b`, three student inputs whose
region ids stay aligned with the pixels they came from:

- cut: view `a` with region collaborative cut-out (RCC, the authors' public follow-up): a
  grid x grid layout of pseudo-boxes, every box losing the same fraction U(cut_ratio_min,
  cut_ratio_max) of its area to grey rectangles of its own aspect. Grey is the data set mean,
  0 after normalisation. Cut pixels get id -1: the student pools a region over what is left
  of it, while its surroundings changed;
- small: view `b` resized to `small_scale` of its side (antialiased bilinear; ids by nearest
  neighbour at the same pixel centres), then cut out the same way;
- paste: a square of view `b` (side U(paste_scale) of the view) pasted onto another image's
  background at a position moved by at least `min_shift` of the view side (L-inf). Pasted
  pixels keep their ids; the background gets -1. `source_ids` are the same square's ids at
  their original place in view `b`, -1 elsewhere: the teacher's side of the match.

Ids are whatever the method pools by: ViCE's common superpixel ids, or 0 everywhere for
SlotCon, whose slots come from its features (the maps then say which pixels to pool).

The partner image comes from the data set, never from the batch: `partner_image` draws its
index from a child stream of the sample's generator, and all other draws come from a second
child stream. Spawning takes no draws from the parent, so the views are bit-identical with or
without these inputs, and both streams are pure functions of (data.seed, epoch, index).

Shapes: S view side, s small side, C = 3 channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vice.config import RegionAugConfig, ViewConfig
from vice.data.augment import normalise_into
from vice.data.batches import RegionInputs
from vice.data.datasets.base import ImageSource

Box = tuple[int, int, int, int]  # (y0, x0, h, w) in view pixels
SHIFT_TRIES = 20  # paste positions drawn before taking the farthest one


def grid_boxes(rng: np.random.Generator, size: int, cfg: RegionAugConfig) -> list[Box]:
    """One pseudo-box per cell of a grid x grid layout of an S x S view (the follow-up's
    `get_bboxs_in_grid`): centre uniform in the inner half of the cell, area U(box_scale)
    of the view, aspect (w / h) log-uniform in [box_aspect_min, box_aspect_max], clipped to
    the view. Draws 4 numbers per box, row-major over the cells."""
    boxes = []
    cell = size / cfg.grid
    lo, hi = math.log(cfg.box_aspect_min), math.log(cfg.box_aspect_max)
    for i in range(cfg.grid):
        for j in range(cfg.grid):
            cy = (i + 0.25 + 0.5 * rng.random()) * cell
            cx = (j + 0.25 + 0.5 * rng.random()) * cell
            area = rng.uniform(cfg.box_scale_min, cfg.box_scale_max) * size * size
            aspect = math.exp(rng.uniform(lo, hi))
            h = min(size, max(1, round(math.sqrt(area / aspect))))
            w = min(size, max(1, round(math.sqrt(area * aspect))))
            y0 = min(max(0, round(cy - h / 2)), size - h)
            x0 = min(max(0, round(cx - w / 2)), size - w)
            boxes.append((y0, x0, h, w))
    return boxes


def rcc_mask(rng: np.random.Generator, size: int, cfg: RegionAugConfig) -> np.ndarray:
    """Region collaborative cut-out of an S x S view: bool (S, S), True = cut.

    One ratio U(cut_ratio_min, cut_ratio_max) for the view; boxes from the largest down: if a
    box is already cut by more than the ratio (by earlier boxes), it is restored whole first;
    then one rectangle of (ratio - already cut) of its area, with its aspect, is cut at a
    uniform place inside it. So each box, as it is processed, ends within rounding of the
    ratio (later, overlapping boxes can add to it, as in the follow-up).
    """
    boxes = grid_boxes(rng, size, cfg)
    ratio = rng.uniform(cfg.cut_ratio_min, cfg.cut_ratio_max)
    cut = np.zeros((size, size), dtype=bool)
    for y0, x0, h, w in sorted(boxes, key=lambda b: -b[2] * b[3]):
        inside = cut[y0 : y0 + h, x0 : x0 + w]
        done = float(inside.mean())
        if done > ratio:
            inside[:] = False
            done = 0.0
        area = (ratio - done) * h * w
        ch = min(h, max(0, round(math.sqrt(area * h / w))))
        cw = min(w, max(0, round(area / ch))) if ch else 0
        if ch == 0 or cw == 0:
            continue
        dy = int(rng.integers(0, h - ch + 1))
        dx = int(rng.integers(0, w - cw + 1))
        inside[dy : dy + ch, dx : dx + cw] = True
    return cut


def cut_out(
    view_3SS: torch.Tensor, ids_SS: torch.Tensor, cut_SS: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """The view with the cut pixels grey (0: the mean after normalisation) and their ids -1
    (new tensors)."""
    mask = torch.from_numpy(cut_SS)
    return view_3SS.masked_fill(mask, 0.0), ids_SS.masked_fill(mask, -1)


def shrink(
    view_3SS: torch.Tensor, ids_SS: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The view resized to s = round(scale * S) (antialiased bilinear) and its ids sampled at
    the same pixel centres (nearest: small pixel i covers view rows [i, i + 1) * S / s)."""
    size = view_3SS.shape[-1]
    small = max(1, round(scale * size))
    img = F.interpolate(view_3SS[None], size=(small, small), mode="bilinear", antialias=True)[0]
    centre = ((torch.arange(small) + 0.5) * size / small).long().clamp_(0, size - 1)
    return img, ids_SS[centre][:, centre]


def paste_boxes(rng: np.random.Generator, size: int, cfg: RegionAugConfig) -> tuple[Box, Box]:
    """A square of side U(paste_scale) * S at a uniform place (source), and where it goes
    (target): uniform among places moved by at least min_shift * S (L-inf), else after
    SHIFT_TRIES draws the farthest corner of the view from the source (which moves it by at
    least half the room, >= min_shift * S as the config validates)."""
    side = max(1, round(rng.uniform(cfg.paste_scale_min, cfg.paste_scale_max) * size))
    room = size - side
    sy, sx = int(rng.integers(0, room + 1)), int(rng.integers(0, room + 1))
    need = cfg.min_shift * size
    for _ in range(SHIFT_TRIES):
        ty, tx = int(rng.integers(0, room + 1)), int(rng.integers(0, room + 1))
        if max(abs(ty - sy), abs(tx - sx)) >= need:
            return (sy, sx, side, side), (ty, tx, side, side)
    ty = 0 if sy > room / 2 else room
    tx = 0 if sx > room / 2 else room
    return (sy, sx, side, side), (ty, tx, side, side)


def paste(
    view_3SS: torch.Tensor,
    ids_SS: torch.Tensor,
    background_3SS: torch.Tensor,
    source: Box,
    target: Box,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The source square of the view pasted at `target` on the background.

    Returns the pasted image, its ids (the square's ids at their new place, -1 on the
    background) and `source_ids` (the square's ids at their original place, -1 elsewhere).
    """
    sy, sx, h, w = source
    ty, tx = target[:2]
    img = background_3SS.clone()
    img[:, ty : ty + h, tx : tx + w] = view_3SS[:, sy : sy + h, sx : sx + w]
    ids = torch.full_like(ids_SS, -1)
    ids[ty : ty + h, tx : tx + w] = ids_SS[sy : sy + h, sx : sx + w]
    source_ids = torch.full_like(ids_SS, -1)
    source_ids[sy : sy + h, sx : sx + w] = ids_SS[sy : sy + h, sx : sx + w]
    return img, ids, source_ids


def partner_image(
    source: ImageSource, rng: np.random.Generator, current: int, cfg: ViewConfig
) -> torch.Tensor:
    """The paste's background: another image of the data set drawn from `rng`, its central
    square resized to the view size and normalised (`superpixel_grid.draw_partner`)."""
    from vice.data.superpixel_grid import draw_partner  # lazy: cv2 / fast-slic

    img = draw_partner(source, rng, current, cfg.view_size, "the de-positioning paste")
    out = torch.empty((3, cfg.view_size, cfg.view_size), dtype=torch.float32)
    return normalise_into(out, img, cfg.mean, cfg.std)


@dataclass
class RegionSample:
    """One image's D3SSL inputs (see the module doc); views `a` and `b` are their sources."""

    cut_3SS: torch.Tensor
    cut_ids_SS: torch.Tensor
    small_3ss: torch.Tensor
    small_ids_ss: torch.Tensor
    paste_3SS: torch.Tensor
    paste_ids_SS: torch.Tensor
    source_ids_SS: torch.Tensor
    shift_2: torch.Tensor  # int64 (dy, dx) of the paste
    a: int
    b: int


def build_region_inputs(
    rng: np.random.Generator,
    views_VCSS: torch.Tensor,
    ids_VSS: torch.Tensor,
    a: int,
    b: int,
    background_3SS: torch.Tensor,
    cfg: RegionAugConfig,
) -> RegionSample:
    """The three inputs from views `a` and `b` of one sample (draws: cut, small cut, paste)."""
    size = views_VCSS.shape[-1]
    cut, cut_ids = cut_out(views_VCSS[a], ids_VSS[a], rcc_mask(rng, size, cfg))
    small, small_ids = shrink(views_VCSS[b], ids_VSS[b], cfg.small_scale)
    small, small_ids = cut_out(small, small_ids, rcc_mask(rng, small.shape[-1], cfg))
    src, dst = paste_boxes(rng, size, cfg)
    pasted, paste_ids, source_ids = paste(views_VCSS[b], ids_VSS[b], background_3SS, src, dst)
    return RegionSample(
        cut_3SS=cut,
        cut_ids_SS=cut_ids,
        small_3ss=small,
        small_ids_ss=small_ids,
        paste_3SS=pasted,
        paste_ids_SS=paste_ids,
        source_ids_SS=source_ids,
        shift_2=torch.tensor([dst[0] - src[0], dst[1] - src[1]]),
        a=a,
        b=b,
    )


def region_streams(rng: np.random.Generator) -> tuple[np.random.Generator, np.random.Generator]:
    """(partner stream, augmentation stream): children of the sample's generator, taking no
    draws from it."""
    partner, draws = rng.spawn(2)
    return partner, draws


def region_inputs_of(
    rng: np.random.Generator,
    source: ImageSource,
    current: int,
    views_VCSS: torch.Tensor,
    ids_VSS: torch.Tensor,
    views: tuple[int, int],
    cfg: ViewConfig,
) -> RegionSample:
    """A sample's D3SSL inputs from its views `views` = (a, b), its generator `rng` (only
    spawned from) and its image `current` (which the partner must not be)."""
    partner_rng, draws = region_streams(rng)
    background = partner_image(source, partner_rng, current, cfg)
    a, b = views
    return build_region_inputs(draws, views_VCSS, ids_VSS, a, b, background, cfg.region_aug)


def collate_region_inputs(samples: list[RegionSample]) -> RegionInputs:
    """Stacks the samples' inputs image-major."""
    a, b = samples[0].a, samples[0].b
    return RegionInputs(
        cut=torch.stack([s.cut_3SS for s in samples]),
        cut_ids=torch.stack([s.cut_ids_SS for s in samples]),
        small=torch.stack([s.small_3ss for s in samples]),
        small_ids=torch.stack([s.small_ids_ss for s in samples]),
        paste=torch.stack([s.paste_3SS for s in samples]),
        paste_ids=torch.stack([s.paste_ids_SS for s in samples]),
        source_ids=torch.stack([s.source_ids_SS for s in samples]),
        shifts=torch.stack([s.shift_2 for s in samples]),
        a=a,
        b=b,
    )
