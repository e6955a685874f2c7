"""Batching ViCE samples into view-major tensors.

Shapes: V = views, B = images, S = view side, R_b = regions of image b.
"""

from __future__ import annotations

from typing import Any

import torch

from vice.data.batches import ViceBatch
from vice.data.region_aug import collate_region_inputs


def collate_vice(items: list[dict[str, Any]]) -> ViceBatch:
    """Stacks samples view-major.

    Returns a ViceBatch with
        views: float32 (V, B, 3, S, S)
        ids: int64 (V, B, S, S), region index within its image, -1 = not a target
        num_regions: int64 (B,)
        regions: list of B int64 tensors (R_b,), the source superpixel id of each region
        flips: bool (V, B); boxes: float32 (V, B, 3) as (cx, cy, side)
        masked: bool (V, B, S, S)
        keys: list of (epoch, index); indices: int64 (B,) images actually used
        skipped: int, unreadable images skipped while building this batch
        region: the D3SSL inputs (`RegionInputs`) when the samples carry them, else None
    """
    samples = [it["sample"] for it in items]
    region = samples[0].region is not None
    return ViceBatch(
        views=torch.stack([s.views_VCSS for s in samples], dim=1),
        ids=torch.stack([s.ids_VSS for s in samples], dim=1),
        num_regions=torch.tensor([s.regions_R.numel() for s in samples], dtype=torch.int64),
        regions=[s.regions_R for s in samples],
        flips=torch.stack([s.flips_V for s in samples], dim=1),
        boxes=torch.stack([s.boxes_V3 for s in samples], dim=1),
        masked=torch.stack([s.masked_VSS for s in samples], dim=1),
        keys=[tuple(it["key"]) for it in items],
        indices=torch.tensor([it["index"] for it in items], dtype=torch.int64),
        skipped=sum(int(it["skipped"]) for it in items),
        region=collate_region_inputs([s.region for s in samples]) if region else None,
    )
