"""Typed batches: what a sample builder's collate returns and the trainer moves to the device.

The trainer knows only `Batch`: `to(device)` moves every tensor field (and nothing else) and
`skipped` counts unreadable images skipped while building the batch. Each method reads its
own batch type's fields.

Shapes: V views, B images, S view side, R_b regions of image b.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """Base of every batch type. Tensor fields move to the device; the rest stays as is."""

    skipped: int  # unreadable images skipped while building this batch

    def to(self, device: torch.device) -> Batch:
        moved = {f.name: _move(getattr(self, f.name), device) for f in dataclasses.fields(self)}
        views = moved.get("views")
        if device.type == "cuda" and isinstance(views, torch.Tensor):
            # the loader's pinned layout of the views is not channels_last
            moved["views"] = views.contiguous(memory_format=torch.contiguous_format)
        return type(self)(**moved)


def _move(value: object, device: torch.device) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, RegionInputs):
        return value.to(device)
    return value


@dataclass
class RegionInputs:
    """The D3SSL student inputs of B images (`vice.data.region_aug`): cut from view `a`, the
    small cut copy and the paste from view `b` of the batch's views. Ids: region ids as the
    method pools them, -1 = not pooled (cut, background)."""

    cut: torch.Tensor  # float32 (B, 3, S, S)
    cut_ids: torch.Tensor  # int64 (B, S, S)
    small: torch.Tensor  # float32 (B, 3, s, s)
    small_ids: torch.Tensor  # int64 (B, s, s)
    paste: torch.Tensor  # float32 (B, 3, S, S)
    paste_ids: torch.Tensor  # int64 (B, S, S): the pasted square's ids at its new place
    source_ids: torch.Tensor  # int64 (B, S, S): the same square's ids in view b
    shifts: torch.Tensor  # int64 (B, 2): (dy, dx) from source to paste
    a: int
    b: int

    def to(self, device: torch.device) -> RegionInputs:
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return RegionInputs(**moved)


@dataclass
class ViceBatch(Batch):
    """ViCE's views of B images, stacked view-major (view 0 = the center view)."""

    views: torch.Tensor  # float32 (V, B, 3, S, S)
    ids: torch.Tensor  # int64 (V, B, S, S): region index within its image, -1 = not a target
    num_regions: torch.Tensor  # int64 (B,)
    regions: list[torch.Tensor]  # B int64 (R_b,): source superpixel id of each region
    flips: torch.Tensor  # bool (V, B)
    boxes: torch.Tensor  # float32 (V, B, 3) as (cx, cy, side) in source pixels
    masked: torch.Tensor  # bool (V, B, S, S)
    keys: list[tuple[int, int]]  # (epoch, index) the sampler handed out
    indices: torch.Tensor  # int64 (B,): images actually used (after substitutions)
    region: RegionInputs | None = None  # with method.decoupling / depositioning on


@dataclass
class TwoCropBatch(Batch):
    """Two overlapping crops of B images, view-major (`vice.data.two_crops`, SlotCon)."""

    views: torch.Tensor  # float32 (2, B, 3, S, S)
    boxes: torch.Tensor  # float32 (2, B, 4): overlap (x1, y1, x2, y2) in the view's [0, 1]
    flips: torch.Tensor  # bool (2, B): view was flipped horizontally (its box is mirrored)
    crops: torch.Tensor  # float32 (2, B, 4): (x0, y0, w, h) in source pixels
    keys: list[tuple[int, int]]  # (epoch, index) the sampler handed out
    indices: torch.Tensor  # int64 (B,): images actually used (after substitutions)
    region: RegionInputs | None = None  # with method.decoupling / depositioning on


@dataclass
class MaskCropBatch(Batch):
    """Two crops of B images and of their foreground masks, view-major
    (`vice.data.mask_crops`, MaskContrast)."""

    views: torch.Tensor  # float32 (2, B, 3, S, S)
    masks: torch.Tensor  # bool (2, B, S, S): the mask prior under each view
    flips: torch.Tensor  # bool (2, B)
    crops: torch.Tensor  # float32 (2, B, 4): (x0, y0, w, h) in source pixels
    keys: list[tuple[int, int]]  # (epoch, index) the sampler handed out
    indices: torch.Tensor  # int64 (B,): images actually used (after substitutions)
