"""SlotCon's two overlapping crops: pure per key, overlapping, boxes in each view's frame."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from vice.config import DataConfig, MaskConfig, SyntheticConfig, ViewConfig
from vice.data import two_crops
from vice.data.batches import TwoCropBatch
from vice.data.builders import SAMPLE_BUILDERS, build_samples
from vice.data.datasets import build_source
from vice.data.datasets.base import ImageSource
from vice.data.image_io import UnreadableImageError
from vice.data.two_crops import (
    MIN_OVERLAP,
    TwoCropDataset,
    crop_view,
    intersection,
    overlap_box,
    random_resized_crop,
    sample_two_crops,
    solarize,
)


def _cfg(**views) -> DataConfig:
    base = dict(view_size=32, crop_scale_min=0.08, crop_scale_max=1.0)
    return DataConfig(
        synthetic=SyntheticConfig(length=16, size=64),
        views=ViewConfig(**{**base, **views}),
        masking=MaskConfig(enabled=False),
        num_workers=0,
    )


def test_registered_and_collated_into_its_typed_batch():
    cfg = _cfg()
    assert SAMPLE_BUILDERS["two_crops"] is TwoCropDataset
    samples = build_samples("two_crops", build_source(cfg), cfg)
    batch = samples.collate([samples[(0, 0)], samples[(0, 1)], samples[(0, 2)]])
    assert isinstance(batch, TwoCropBatch)
    assert batch.views.shape == (2, 3, 3, 32, 32) and batch.views.dtype == torch.float32
    assert batch.boxes.shape == (2, 3, 4) and batch.flips.dtype == torch.bool
    assert batch.crops.shape == (2, 3, 4) and batch.keys == [(0, 0), (0, 1), (0, 2)]
    assert batch.indices.tolist() == [0, 1, 2] and batch.skipped == 0
    moved = batch.to(torch.device("cpu"))
    assert isinstance(moved, TwoCropBatch) and torch.equal(moved.boxes, batch.boxes)


def test_a_sample_is_a_pure_function_of_seed_epoch_and_index():
    cfg = _cfg()
    ds = TwoCropDataset(build_source(cfg), cfg)
    a, b = ds[(3, 5)]["sample"], TwoCropDataset(build_source(cfg), cfg)[(3, 5)]["sample"]
    for name in ("views_2CSS", "boxes_24", "flips_2", "crops_24"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    other = ds[(4, 5)]["sample"]
    assert not torch.equal(a.crops_24, other.crops_24)


def test_random_resized_crop_follows_torchvision_ranges():
    rng = np.random.default_rng(0)
    for _ in range(500):
        x0, y0, w, h = random_resized_crop(rng, 90, 120, (0.08, 1.0))
        assert min(x0, y0) >= 0 and x0 + w <= 120 and y0 + h <= 90
        assert 0.08 * 0.9 <= w * h / (90 * 120) <= 1.0
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05
    # a scale no crop of the allowed aspect can reach: the central crop of the clamped ratio
    assert random_resized_crop(rng, 20, 100, (1.0, 1.0)) == (36, 0, 27, 20)  # (100 - 27) // 2


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.005, 0.02)])
def test_view_two_overlaps_view_one_by_at_least_one_percent_of_its_area(scale):
    cfg = ViewConfig(crop_scale_min=scale[0], crop_scale_max=scale[1])
    rng = np.random.default_rng(1)
    fallbacks = 0
    for _ in range(300):
        first, second = sample_two_crops(rng, 100, 150, cfg, tries=20)
        _, _, iw, ih = intersection(first, second)
        assert iw * ih >= MIN_OVERLAP * second[2] * second[3]
        fallbacks += first == second
    if scale == (0.005, 0.02):
        assert fallbacks > 0  # tiny crops rarely meet: view 2 then takes view 1's box


def test_overlap_boxes_name_the_same_source_region_in_both_views():
    rng = np.random.default_rng(2)
    cfg = ViewConfig(crop_scale_min=0.1, crop_scale_max=1.0)
    for _ in range(100):
        crops = sample_two_crops(rng, 80, 120, cfg, tries=20)
        common = intersection(*crops)
        for crop in crops:
            for flip in (False, True):
                x1, y1, x2, y2 = overlap_box(crop, common, flip)
                assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
                if flip:  # un-mirror, then map back to source pixels
                    x1, x2 = 1 - x2, 1 - x1
                x0, y0, w, h = crop
                back = (x0 + x1 * w, y0 + y1 * h, (x2 - x1) * w, (y2 - y1) * h)
                assert back == pytest.approx(common, abs=1e-9)


def test_flipped_view_is_the_mirrored_crop():
    img = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    crop = (5, 7, 30, 25)
    plain, flipped = crop_view(img, crop, 16, False), crop_view(img, crop, 16, True)
    assert np.array_equal(flipped, plain[:, ::-1])


def test_solarize_is_pils():
    img = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)
    assert np.array_equal(solarize(img), np.asarray(ImageOps.solarize(Image.fromarray(img), 128)))


def test_byol_recipe_is_asymmetric(monkeypatch):
    """Blur p 1.0 / 0.1, solarize p 0.0 / 0.2, jitter 0.8 and grayscale 0.2 on both views."""
    calls = {name: [0, 0] for name in ("color_jitter", "grayscale", "gaussian_blur", "solarize")}
    view = {"v": 0}

    def counting(name):
        def fake(*args):
            calls[name][view["v"]] += 1
            return args[1] if name == "color_jitter" else args[0]  # (rng, img, cfg) / (img, ..)

        return fake

    for name in calls:
        monkeypatch.setattr(two_crops, name, counting(name))
    cfg = ViewConfig(jitter_prob=0.8, gray_prob=0.2)
    rng = np.random.default_rng(4)
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    n = 4000
    for _ in range(n):
        for v in (0, 1):
            view["v"] = v
            two_crops.byol_photometric(rng, img, cfg, v)
    share = {k: [c / n for c in counts] for k, counts in calls.items()}
    assert share["gaussian_blur"][0] == 1.0 and share["solarize"][0] == 0.0
    tol = 4 * math.sqrt(0.25 / n)
    assert share["gaussian_blur"][1] == pytest.approx(0.1, abs=tol)
    assert share["solarize"][1] == pytest.approx(0.2, abs=tol)
    for v in (0, 1):
        assert share["color_jitter"][v] == pytest.approx(0.8, abs=tol)
        assert share["grayscale"][v] == pytest.approx(0.2, abs=tol)


class _Flaky(ImageSource):
    def __len__(self):
        return 4

    def key(self, index):
        return str(index)

    def load_image(self, index):
        if index == 0:
            raise UnreadableImageError("broken")
        return np.full((40, 40, 3), 40 * index, dtype=np.uint8)


def test_unreadable_image_is_replaced_and_counted():
    cfg = _cfg()
    item = TwoCropDataset(_Flaky(), cfg)[(0, 0)]
    assert item["skipped"] == 1 and item["index"] != 0 and item["key"] == (0, 0)
