"""SlotCon (method=slotcon): the losses against per-image loops of the published description,
the overlap alignment, the teacher and centre schedules, configs through Hydra, and the real
loop (bit-exact resume with teacher and centre, 2 gloo ranks equal 1 process, export)."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vice.config import ViewConfig
from vice.data.two_crops import crop_view, intersection, overlap_box, sample_two_crops
from vice.methods.slotcon import SlotConMethod
from vice.methods.slotcon_losses import align_to_overlap, teacher_momentum

from .test_slotcon import slotcon_config

ROOT = Path(__file__).resolve().parents[2]


def _smooth_image(size=256):
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = np.stack([np.sin(2 * np.pi * (1.3 * xx + 0.4 * yy)),
                    np.cos(2 * np.pi * (1.1 * yy - 0.5 * xx)),
                    np.sin(1.6 * np.pi * (xx + yy))], axis=-1)  # fmt: skip
    return ((img + 1) * 127.5).round().astype(np.uint8)


def _aligned_gap(img, crops, flips, unflip=True, shift=0.0):
    """Largest difference (in [0, 1] of the intensity range) of the two views' aligned maps
    when the network is the identity (score map = the view's pixels)."""
    common = intersection(*crops)
    aligned = []
    for crop, flip in zip(crops, flips, strict=True):
        view = torch.from_numpy(crop_view(img, crop, 64, flip)).permute(2, 0, 1)[None].double()
        box = torch.tensor([overlap_box(crop, common, flip)]) + shift
        aligned.append(align_to_overlap(view, box, torch.tensor([flip and unflip])))
    return ((aligned[0] - aligned[1]).abs().max() / 255).item()


@pytest.mark.parametrize("flips", [(False, True), (True, False), (True, True)])
def test_flipped_sub_crop_aligns_with_its_view_under_the_identity_network(flips):
    img = _smooth_image()
    crops = ((20, 30, 200, 180), (60, 50, 100, 90))  # view 2 inside view 1
    assert _aligned_gap(img, crops, flips) < 0.01  # measured 0.0070 (bicubic vs bilinear)
    if flips[0] != flips[1]:
        assert _aligned_gap(img, crops, flips, unflip=False) > 0.5  # not un-flipped: 0.83
    assert _aligned_gap(img, crops, flips, shift=0.5 / 64) > 0.01  # half a pixel off: caught


def test_random_overlapping_crops_align_under_the_identity_network():
    img, rng = _smooth_image(), np.random.default_rng(0)
    cfg = ViewConfig(crop_scale_min=0.08, crop_scale_max=1.0)
    worst = 0.0
    for _ in range(100):
        crops = sample_two_crops(rng, 256, 256, cfg, tries=20)
        worst = max(worst, _aligned_gap(img, crops, tuple(bool(f) for f in rng.random(2) < 0.5)))
    assert worst < 0.04  # measured 0.028: a 1 % overlap is a few pixels of view 1, upsampled


# ---------------------------------------------------------------------------- schedules


def test_teacher_momentum_is_the_published_cosine_and_follows_the_optimizer_step():
    assert teacher_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert teacher_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert teacher_momentum(100, 100, 0.99) == 1.0
    for k in (1, 17, 63):  # the published formula at iteration k
        assert teacher_momentum(k, 100, 0.99) == pytest.approx(
            1 - 0.01 * (math.cos(math.pi * k / 100) + 1) / 2, abs=1e-15
        )
    method = SlotConMethod(slotcon_config(steps=10))
    assert method.total_steps() == 10
    # after optimizer step s the student has had s + 1 updates: the published k = s + 1
    assert [method.momentum_after(s) for s in (0, 9)] == [teacher_momentum(1, 10, 0.99), 1.0]
