"""MaskContrast's two crops of an image and its mask: exact masks, bounds, resampling, skips."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from vice.config import DataConfig, MaskConfig, MaskPriorConfig, ViewConfig
from vice.data import mask_crops, mask_priors
from vice.data.batches import MaskCropBatch
from vice.data.builders import SAMPLE_BUILDERS, build_samples
from vice.data.datasets import build_source
from vice.data.datasets.base import ImageSource
from vice.data.mask_crops import (
    MAX_MASK,
    MIN_MASK,
    CropsDidNotFitError,
    MaskCropDataset,
    NoUsableMaskError,
    build_mask_crops,
    crop_mask,
)
from vice.data.mask_priors import compute_mask
from vice.data.two_crops import random_resized_crop


def _cfg(max_resample: int = 20, **views) -> DataConfig:
    base = dict(view_size=32, crop_scale_min=0.2, crop_scale_max=1.0)
    cfg = DataConfig(
        dataset="testbed",
        views=ViewConfig(**{**base, **views}),
        masking=MaskConfig(enabled=False),
        mask_prior=MaskPriorConfig(source="gt"),
        max_resample=max_resample,
        num_workers=0,
    )
    cfg.testbed.length, cfg.testbed.size = 6, 32
    return cfg


def _crop(sample, v: int) -> tuple[int, int, int, int]:
    x0, y0, w, h = (int(c) for c in sample.crops_24[v].tolist())
    return x0, y0, w, h


def _assert_masks_follow_crops(sample, mask_HW: np.ndarray, size: int) -> None:
    for v in range(2):
        want = crop_mask(mask_HW, _crop(sample, v), size, bool(sample.flips_2[v]))
        np.testing.assert_array_equal(sample.masks_2SS[v].numpy(), want)


def _assert_samples_equal(a, b) -> None:
    for name in ("views_2CSS", "masks_2SS", "flips_2", "crops_24"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


# --- crop_mask ----------------------------------------------------------------------------------


def test_crop_mask_upsamples_by_nearest_and_mirrors():
    mask = np.zeros((6, 8), bool)
    mask[1, 3] = mask[2, 2] = mask[2, 3] = True
    part = mask[1:4, 2:5]  # crop (x0=2, y0=1, w=3, h=3)
    want = np.kron(part, np.ones((2, 2), bool))  # 3 -> 6: every pixel a 2 x 2 block
    np.testing.assert_array_equal(crop_mask(mask, (2, 1, 3, 3), 6, False), want)
    flipped = crop_mask(mask, (2, 1, 3, 3), 6, True)
    np.testing.assert_array_equal(flipped, want[:, ::-1])
    assert flipped.dtype == bool and flipped.flags.c_contiguous


def test_crop_mask_downsamples_by_nearest():
    mask = np.random.default_rng(0).random((16, 16)) > 0.5
    # 8 -> 4: cv2's nearest takes source pixel 2 * i of each output pixel i
    np.testing.assert_array_equal(crop_mask(mask, (4, 8, 8, 8), 4, False), mask[8:16:2, 4:12:2])


# --- build_mask_crops ---------------------------------------------------------------------------


def _block_mask(h=40, w=48) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[8:30, 10:34] = True  # 27.5 % of the image
    return mask


def test_masks_are_the_source_mask_under_each_views_crop_and_flip():
    cfg = _cfg()
    img = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    mask = _block_mask()
    flips = set()
    for seed in range(20):
        sample = build_mask_crops(np.random.default_rng(seed), img, mask, cfg)
        assert (
            sample.views_2CSS.shape == (2, 3, 32, 32) and sample.views_2CSS.dtype == torch.float32
        )
        assert sample.masks_2SS.shape == (2, 32, 32) and sample.masks_2SS.dtype == torch.bool
        _assert_masks_follow_crops(sample, mask, 32)
        for v in range(2):
            x0, y0, w, h = _crop(sample, v)
            assert x0 >= 0 and y0 >= 0 and x0 + w <= 48 and y0 + h <= 40
            assert MIN_MASK < float(sample.masks_2SS[v].float().mean()) < MAX_MASK
            flips.add(bool(sample.flips_2[v]))
    assert flips == {False, True}  # flip_prob 0.5: both occur in 40 views


def test_a_sample_is_a_pure_function_of_its_generator():
    cfg = _cfg()
    img = np.random.default_rng(2).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    a = build_mask_crops(np.random.default_rng(7), img, _block_mask(), cfg)
    b = build_mask_crops(np.random.default_rng(7), img, _block_mask(), cfg)
    _assert_samples_equal(a, b)
    c = build_mask_crops(np.random.default_rng(8), img, _block_mask(), cfg)
    assert not torch.equal(a.crops_24, c.crops_24)


def test_views_are_normalised_with_the_configured_mean_and_std():
    mean, std = [0.5, 0.25, 0.125], [0.5, 0.25, 0.2]
    cfg = _cfg(jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0, mean=mean, std=std)
    colour = (100, 150, 200)
    img = np.empty((40, 48, 3), np.uint8)
    img[:] = colour
    sample = build_mask_crops(np.random.default_rng(3), img, _block_mask(), cfg)
    for c in range(3):
        want = (colour[c] / 255 - mean[c]) / std[c]
        torch.testing.assert_close(
            sample.views_2CSS[:, c], torch.full((2, 32, 32), want), rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("almost_all", [False, True])
def test_a_mask_no_crop_keeps_in_bounds_raises_after_max_resample_pairs(monkeypatch, almost_all):
    mask = np.zeros((40, 40), bool)
    mask[0, 0] = True  # 1 px of 1600: under 1 % of any crop of >= 20 % of the image
    if almost_all:
        mask = ~mask  # over 99 % of every crop
    draws = []

    def counting(*args):
        draws.append(args)
        return random_resized_crop(*args)

    monkeypatch.setattr(mask_crops, "random_resized_crop", counting)
    img = np.zeros((40, 40, 3), np.uint8)
    with pytest.raises(CropsDidNotFitError) as err:
        build_mask_crops(np.random.default_rng(0), img, mask, _cfg(max_resample=3))
    assert isinstance(err.value, NoUsableMaskError)  # what the dataset skips
    assert (
        str(err.value)
        == "no pair of crops in 3 draws keeps the mask within (1%, 99%) of both views"
    )
    assert len(draws) == 2 * 3  # two views per pair, three pairs


def _first_fitting_pair(seed: int, mask: np.ndarray, cfg: DataConfig):
    """The builder's draw order replayed: (pairs rejected, crops, flips) of the first fit."""
    rng = np.random.default_rng(seed)
    vcfg = cfg.views
    for rejected in range(cfg.max_resample):
        crops, flips, fits = [], [], True
        for _ in range(2):
            crop = random_resized_crop(rng, *mask.shape, (vcfg.crop_scale_min, vcfg.crop_scale_max))
            flip = bool(rng.random() < vcfg.flip_prob)
            fraction = crop_mask(mask, crop, vcfg.view_size, flip).mean()
            fits = fits and MIN_MASK < fraction < MAX_MASK
            crops.append(crop)
            flips.append(flip)
        if fits:
            return rejected, crops, flips
    return None


def test_a_rejected_pair_is_redrawn_from_the_same_generator():
    mask = np.zeros((40, 40), bool)
    mask[:, :20] = True  # crops inside either half are all (or no) mask: rejected
    cfg = _cfg(max_resample=50, crop_scale_min=0.05, crop_scale_max=0.3)
    img = np.random.default_rng(4).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    redrawn = 0
    for seed in range(12):
        expected = _first_fitting_pair(seed, mask, cfg)
        assert expected is not None
        rejected, crops, flips = expected
        sample = build_mask_crops(np.random.default_rng(seed), img, mask, cfg)
        assert [_crop(sample, v) for v in range(2)] == crops
        assert sample.flips_2.tolist() == flips
        _assert_masks_follow_crops(sample, mask, 32)
        again = build_mask_crops(np.random.default_rng(seed), img, mask, cfg)
        _assert_samples_equal(sample, again)
        redrawn += rejected > 0
    assert redrawn >= 3  # small crops often fall inside one half


# --- MaskCropDataset ----------------------------------------------------------------------------


def test_registered_and_collated_into_its_typed_batch():
    cfg = _cfg(view_size=16)
    assert SAMPLE_BUILDERS["mask_crops"] is MaskCropDataset
    samples = build_samples("mask_crops", build_source(cfg), cfg)
    items = [samples[(0, i)] for i in range(3)]
    batch = samples.collate(items)
    assert isinstance(batch, MaskCropBatch)
    assert batch.views.shape == (2, 3, 3, 16, 16) and batch.views.dtype == torch.float32
    assert batch.masks.shape == (2, 3, 16, 16) and batch.masks.dtype == torch.bool
    assert batch.flips.shape == (2, 3) and batch.flips.dtype == torch.bool
    assert batch.crops.shape == (2, 3, 4) and batch.keys == [(0, 0), (0, 1), (0, 2)]
    assert batch.indices.tolist() == [0, 1, 2] and batch.skipped == 0
    for b, item in enumerate(items):
        assert torch.equal(batch.masks[:, b], item["sample"].masks_2SS)
        assert torch.equal(batch.views[:, b], item["sample"].views_2CSS)


def test_testbed_masks_are_the_ground_truth_foreground_under_the_crops():
    cfg = _cfg(view_size=16)
    source = build_source(cfg)
    ds = MaskCropDataset(source, cfg)
    for index in range(len(source)):
        item = ds[(0, index)]
        assert item["index"] == index and item["skipped"] == 0
        img = source.load_image(index)
        mask = compute_mask(source, index, img, cfg)
        np.testing.assert_array_equal(mask, source.load_foreground(index))  # no small parts
        _assert_masks_follow_crops(item["sample"], mask, 16)


def test_an_item_is_a_pure_function_of_seed_epoch_and_index():
    cfg = _cfg(view_size=16)
    ds = MaskCropDataset(build_source(cfg), cfg)
    a = ds[(3, 2)]
    _assert_samples_equal(a["sample"], ds[(3, 2)]["sample"])
    fresh = MaskCropDataset(build_source(cfg), cfg)[(3, 2)]
    _assert_samples_equal(a["sample"], fresh["sample"])
    assert a["key"] == (3, 2) and a["index"] == 2
    assert ds[2]["key"] == (0, 2)  # a bare int is epoch 0
    _assert_samples_equal(ds[2]["sample"], ds[(0, 2)]["sample"])
    assert not torch.equal(a["sample"].crops_24, ds[(4, 2)]["sample"].crops_24)
    cfg.seed = 1  # another data.seed: another image and other crops
    assert not torch.equal(
        a["sample"].views_2CSS, MaskCropDataset(build_source(cfg), cfg)[(3, 2)]["sample"].views_2CSS
    )


class _Blobs(ImageSource):
    """Procedural 40 x 40 images; image i in `empty` has an empty foreground, the others a
    20 x 20 block."""

    def __init__(self, empty=(0,), length=4):
        self.empty, self.length = set(empty), length

    def __len__(self):
        return self.length

    def key(self, index):
        return f"blobs/{index}"

    def load_image(self, index):
        return np.full((40, 40, 3), 30 * index, np.uint8)

    @property
    def has_foreground(self):
        return True

    def load_foreground(self, index):
        fg = np.zeros((40, 40), bool)
        if index not in self.empty:
            fg[10:30, 5:25] = True
        return fg


def test_an_image_without_a_usable_prior_is_replaced_counted_and_logged(caplog):
    cfg = _cfg(view_size=16)
    ds = MaskCropDataset(_Blobs(), cfg)
    with caplog.at_level(logging.WARNING, logger="vice.data.mask_crops"):
        item = ds[(0, 0)]
    assert item["skipped"] == 1 and item["index"] != 0 and item["key"] == (0, 0)
    assert ds.skipped_total == 1
    assert caplog.messages == [
        "skipping image 0 (1 skipped so far): its mask prior covers less than 1% of the image"
    ]
    _assert_masks_follow_crops(item["sample"], _Blobs().load_foreground(item["index"]), 16)
    batch = ds.collate([item, ds[(0, 1)]])
    assert batch.skipped == 1 and batch.indices.tolist() == [item["index"], 1]
    assert batch.keys == [(0, 0), (0, 1)]
    # an empty prior is the image's for good: later keys pass it over without a new count
    later = ds[(1, 0)]
    assert later["index"] != 0 and later["skipped"] == 0 and ds.skipped_total == 1


def test_a_source_without_any_usable_mask_names_the_mask_prior_keys():
    cfg = _cfg(max_resample=2, view_size=16)
    ds = MaskCropDataset(_Blobs(empty=range(4)), cfg)
    with pytest.raises(RuntimeError) as err:
        ds[(0, 1)]
    text = str(err.value)
    assert text.startswith("could not build a sample for index 1 (epoch 0) after 8 tries; ")
    assert text.endswith("Check data.root and data.mask_prior (source, threshold, min_area).")


def test_a_gt_prior_on_a_source_without_foreground_is_a_config_error():
    class NoForeground(_Blobs):
        has_foreground = False

    with pytest.raises(ValueError, match=r"data\.mask_prior\.source='gt'"):
        MaskCropDataset(NoForeground(), _cfg(view_size=16))[(0, 0)]


def test_a_key_without_a_fitting_pair_does_not_ban_the_image_for_other_keys():
    # Image 0's mask is a 1 px column: most pairs of small crops miss it, some keep it in
    # bounds. The other images' 4 px checkerboard fits every crop.
    ys, xs = np.mgrid[0:40, 0:40]
    checks = (ys // 4 + xs // 4) % 2 == 0
    column = np.zeros((40, 40), bool)
    column[:, 20] = True

    class Column(_Blobs):
        def load_foreground(self, index):
            return column if index == 0 else checks

    cfg = _cfg(max_resample=2, view_size=16, crop_scale_min=0.1, crop_scale_max=0.3)
    cfg.mask_prior.min_component = cfg.mask_prior.min_area = 0.0
    fresh = [MaskCropDataset(Column(), cfg)[(e, 0)]["index"] for e in range(40)]
    failing = [e for e, i in enumerate(fresh) if i != 0]
    fitting = [e for e, i in enumerate(fresh) if i == 0]
    assert len(failing) >= 2 and fitting  # both kinds of key exist
    ds = MaskCropDataset(Column(), cfg)
    assert ds[(failing[0], 0)]["skipped"] == 1
    assert ds[(fitting[0], 0)]["index"] == 0  # as on a fresh dataset object
    assert ds[(failing[1], 0)]["skipped"] == 1  # tried again, not banned


# --- file-backed priors and the cache -----------------------------------------------------------


def _voc_cfg(root, **prior) -> DataConfig:
    return DataConfig(
        dataset="voc",
        root=str(root),
        split="train",
        views=ViewConfig(view_size=16, crop_scale_min=0.3, crop_scale_max=1.0),
        masking=MaskConfig(enabled=False),
        mask_prior=MaskPriorConfig(source="files", **prior),
        num_workers=0,
    )


def _voc_with_left_half_saliency(tmp_path):
    """The VOC fixture with every saliency map replaced by its left half (so masks read from
    the files differ from the ground-truth foreground)."""
    from tests.data.datasets.fixtures import make_voc

    root = make_voc(tmp_path / "voc", saliency=True, size=(12, 16))
    left = np.zeros((12, 16), bool)
    left[:, :8] = True
    for path in (root / "saliency").iterdir():
        Image.fromarray(np.where(left, 255, 0).astype(np.uint8)).save(path)
    return root, left


def test_files_prior_masks_come_from_the_saliency_maps(tmp_path):
    root, left = _voc_with_left_half_saliency(tmp_path)
    cfg = _voc_cfg(root)
    source = build_source(cfg)
    ds = MaskCropDataset(source, cfg)
    for index in range(len(source)):
        item = ds[(0, index)]
        assert item["index"] == index and item["skipped"] == 0
        _assert_masks_follow_crops(item["sample"], left, 16)


def test_a_second_dataset_reads_the_mask_cache(tmp_path, monkeypatch):
    root, left = _voc_with_left_half_saliency(tmp_path)
    cache_dir = tmp_path / "masks"
    cfg = _voc_cfg(root, cache_dir=str(cache_dir))
    first = MaskCropDataset(build_source(cfg), cfg)
    items = [first[(0, i)] for i in range(len(first))]
    assert len(list(cache_dir.glob("*/*.npz"))) == len(first)  # one entry per image

    def no_prior(*args):
        raise AssertionError("the prior ran although the cache holds the mask")

    monkeypatch.setitem(mask_priors.MASK_PRIORS, "files", no_prior)
    second = MaskCropDataset(build_source(cfg), cfg)
    for i, item in enumerate(items):
        _assert_samples_equal(second[(0, i)]["sample"], item["sample"])
        _assert_masks_follow_crops(item["sample"], left, 16)
    assert len(list(cache_dir.glob("*/*.npz"))) == len(first)
