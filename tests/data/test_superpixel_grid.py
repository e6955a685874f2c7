"""SuperpixelGridCut / Mean / Mix: exact pixel ops, the draw count, purity, config errors, and
each sample builder changing pixel values only."""

import dataclasses

import numpy as np
import pytest
import torch

from vice.config import (
    DataConfig,
    MaskConfig,
    MaskPriorConfig,
    SuperpixelGridConfig,
    SyntheticConfig,
    ViewConfig,
)
from vice.data.datasets import build_source
from vice.data.mask_crops import MaskCropDataset
from vice.data.pretrain import ViceDataset
from vice.data.sample import build_views
from vice.data.superpixel_grid import (
    CUT_FILL,
    KINDS,
    apply_superpixel_grid,
    grid_cut,
    grid_mean,
    grid_mix,
    grid_partner,
    partner_view,
    view_superpixels,
)
from vice.data.superpixels import slic_superpixels
from vice.data.two_crops import TwoCropDataset


def _img(seed: int = 0, h: int = 48, w: int = 56) -> np.ndarray:
    """Smooth ramps plus noise, every level >= 1 (so a black fill always changes a pixel)."""
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([xx * 4, yy * 5, 128 + 0 * xx], -1)
    noise = np.random.default_rng(seed).integers(0, 40, (h, w, 3))
    return np.clip(base + noise, 1, 255).astype(np.uint8)


def _grid(kind: str, ratio: float = 0.25, count: int = 30) -> SuperpixelGridConfig:
    return SuperpixelGridConfig(kind=kind, ratio=ratio, count=count)


# --- the pixel ops ------------------------------------------------------------------------------


def test_registry_is_a_plain_dict_with_none_off():
    want = {"none": None, "cut": grid_cut, "mean": grid_mean, "mix": grid_mix}
    assert want == KINDS


def test_cut_blackens_exactly_the_chosen_superpixels():
    img = _img()
    ids = view_superpixels(img, 30)
    chosen = np.array([0, 3, 7])
    out = grid_cut(img, ids, chosen)
    inside = np.isin(ids, chosen)
    assert CUT_FILL == 0 and (out[inside] == 0).all()
    np.testing.assert_array_equal(out[~inside], img[~inside])
    np.testing.assert_array_equal((out != img).any(-1), inside)  # levels >= 1: all change
    assert out is not img and img.min() >= 1  # the input is untouched


def test_mean_replaces_each_chosen_superpixel_by_its_rounded_mean_colour():
    img = _img(1)
    ids = view_superpixels(img, 30)
    chosen = np.array([1, 2, 10])
    out = grid_mean(img, ids, chosen)
    for r in chosen:
        sel = ids == r
        want = np.rint(img[sel].astype(np.float64).mean(axis=0)).astype(np.uint8)
        assert (out[sel] == want).all(), r
    keep = ~np.isin(ids, chosen)
    np.testing.assert_array_equal(out[keep], img[keep])


def test_mix_takes_exactly_the_chosen_superpixels_from_the_other_image():
    img, other = _img(2), 255 - _img(3)
    ids = view_superpixels(img, 30)
    chosen = np.array([4, 5])
    out = grid_mix(img, ids, chosen, other)
    inside = np.isin(ids, chosen)
    np.testing.assert_array_equal(out[inside], other[inside])
    np.testing.assert_array_equal(out[~inside], img[~inside])
    with pytest.raises(ValueError, match="shape"):
        grid_mix(img, ids, chosen, other[:10])


def test_view_superpixels_come_from_the_projects_slic_at_the_count_region_size():
    img = _img(4, 40, 40)
    ids = view_superpixels(img, 25)  # region size sqrt(1600 / 25) = 8
    np.testing.assert_array_equal(ids, slic_superpixels(img, region_size=8))
    assert ids.max() + 1 == 25


@pytest.mark.parametrize("ratio", [0.1, 0.25, 0.5, 0.9])
def test_the_number_of_chosen_superpixels_is_round_ratio_times_q(ratio):
    img = _img(5)
    ids = view_superpixels(img, 30)
    q = int(ids.max()) + 1
    out = apply_superpixel_grid(np.random.default_rng(0), img, _grid("cut", ratio))
    black = (out == 0).all(-1)
    cut_ids = np.unique(ids[black])
    assert cut_ids.size == round(ratio * q)
    np.testing.assert_array_equal(black, np.isin(ids, cut_ids))  # whole superpixels only
    np.testing.assert_array_equal(out[~black], img[~black])


@pytest.mark.parametrize("kind", ["cut", "mean", "mix"])
def test_a_view_is_a_pure_function_of_the_generator(kind):
    img, other = _img(6), _img(7)
    cfg = _grid(kind)
    a = apply_superpixel_grid(np.random.default_rng(3), img, cfg, other)
    b = apply_superpixel_grid(np.random.default_rng(3), img, cfg, other)
    c = apply_superpixel_grid(np.random.default_rng(4), img, cfg, other)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, img)


def test_none_is_the_identity_and_draws_nothing():
    img = _img()
    rng = np.random.default_rng(9)
    before = rng.bit_generator.state
    assert apply_superpixel_grid(rng, img, SuperpixelGridConfig(), _img(1)) is img
    assert rng.bit_generator.state == before
    assert grid_partner(build_source(DataConfig()), rng, 0, ViewConfig()) is None
    assert rng.bit_generator.state == before


def test_mix_without_a_partner_is_refused():
    with pytest.raises(ValueError, match="partner"):
        apply_superpixel_grid(np.random.default_rng(0), _img(), _grid("mix"))


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "key"),
    [
        (SuperpixelGridConfig(kind="blur"), "kind"),
        (SuperpixelGridConfig(ratio=0.0), "ratio"),
        (SuperpixelGridConfig(ratio=1.0), "ratio"),
        (SuperpixelGridConfig(ratio=1.5), "ratio"),
        (SuperpixelGridConfig(ratio=float("nan")), "ratio"),
        (SuperpixelGridConfig(count=1), "count"),
    ],
)
def test_config_errors_name_the_key(grid, key):
    cfg = DataConfig(views=ViewConfig(superpixel_grid=grid))
    with pytest.raises(ValueError, match=rf"data\.views\.superpixel_grid\.{key}="):
        cfg.validate()


def test_config_defaults_are_off_and_valid():
    cfg = DataConfig()
    assert cfg.views.superpixel_grid == SuperpixelGridConfig("none", 0.2, 100)
    cfg.validate()
    for kind in ("cut", "mean", "mix"):
        ViewConfig(superpixel_grid=SuperpixelGridConfig(kind=kind)).validate()


# --- GridMix's partner --------------------------------------------------------------------------


def test_partner_is_another_images_central_square_drawn_without_touching_the_generator():
    cfg = DataConfig(synthetic=SyntheticConfig(length=6, size=64))
    source = build_source(cfg)
    views = dataclasses.replace(cfg.views, view_size=24, superpixel_grid=_grid("mix"))
    rng = np.random.default_rng(5)
    before = rng.bit_generator.state
    partner = grid_partner(source, rng, 2, views)
    assert rng.bit_generator.state == before  # a spawned child stream draws the index
    again = grid_partner(source, np.random.default_rng(5), 2, views)
    np.testing.assert_array_equal(partner, again)
    matches = [
        j
        for j in range(len(source))
        if np.array_equal(partner, partner_view(source.load_image(j), 24))
    ]
    assert len(matches) == 1 and matches[0] != 2 and partner.shape == (24, 24, 3)


def test_partner_view_is_the_central_square_resized():
    img = np.zeros((30, 50, 3), np.uint8)
    img[:, 10:40] = 200  # the central 30 x 30 square
    np.testing.assert_array_equal(partner_view(img, 30), img[:, 10:40])


# --- the sample builders ------------------------------------------------------------------------


def _with_grid(cfg: DataConfig, kind: str, **views) -> DataConfig:
    vcfg = dataclasses.replace(cfg.views, superpixel_grid=_grid(kind), **views)
    return dataclasses.replace(cfg, views=vcfg)


def test_vice_views_differ_only_by_the_cut_pixels(small_cfg):
    """Photometric off: every pixel is the plain view's, the noise's, or normalised black."""
    still = dict(jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0)
    off, cut = _with_grid(small_cfg, "none", **still), _with_grid(small_cfg, "cut", **still)
    img = np.asarray(build_source(small_cfg).load_image(3))
    ids = slic_superpixels(img, region_size=10)
    a = build_views(np.random.default_rng(2), img, ids, off)
    b = build_views(np.random.default_rng(2), img, ids, cut)
    for name in ("ids_VSS", "regions_R", "flips_V", "boxes_V3", "masked_VSS"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    mean, std = torch.tensor(cut.views.mean), torch.tensor(cut.views.std)
    black = (-mean / std)[:, None, None]  # normalised level 0
    changed = (a.views_VCSS != b.views_VCSS).any(1)  # (V, S, S)
    assert changed.any() and not (changed & b.masked_VSS).any()  # the noise is the same
    is_black = torch.isclose(b.views_VCSS, black.expand_as(b.views_VCSS[0])).all(1)
    assert (is_black | ~changed).all()
    c = build_views(np.random.default_rng(2), img, ids, cut)
    assert torch.equal(b.views_VCSS, c.views_VCSS)


@pytest.mark.parametrize("kind", ["cut", "mix"])
def test_vice_dataset_keeps_its_targets_and_stays_pure_per_key(small_cfg, kind):
    off, on = _with_grid(small_cfg, "none"), _with_grid(small_cfg, kind)
    a = ViceDataset(build_source(off), off)[(1, 3)]["sample"]
    b = ViceDataset(build_source(on), on)[(1, 3)]["sample"]
    again = ViceDataset(build_source(on), on)[(1, 3)]["sample"]
    for name in ("ids_VSS", "regions_R", "flips_V", "boxes_V3", "masked_VSS"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.views_VCSS, b.views_VCSS)
    assert torch.equal(b.views_VCSS, again.views_VCSS)


def _two_crops_cfg(kind: str) -> DataConfig:
    return DataConfig(
        synthetic=SyntheticConfig(length=8, size=64),
        views=ViewConfig(
            view_size=32, crop_scale_min=0.2, crop_scale_max=1.0, superpixel_grid=_grid(kind)
        ),
        masking=MaskConfig(enabled=False),
        num_workers=0,
    )


@pytest.mark.parametrize("kind", ["cut", "mix"])
def test_two_crops_keep_their_boxes_and_stay_pure_per_key(kind):
    off, on = _two_crops_cfg("none"), _two_crops_cfg(kind)
    a = TwoCropDataset(build_source(off), off)[(2, 5)]["sample"]
    b = TwoCropDataset(build_source(on), on)[(2, 5)]["sample"]
    again = TwoCropDataset(build_source(on), on)[(2, 5)]["sample"]
    for name in ("boxes_24", "flips_2", "crops_24"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.views_2CSS, b.views_2CSS)
    assert torch.equal(b.views_2CSS, again.views_2CSS)


def _mask_crops_cfg(kind: str) -> DataConfig:
    cfg = DataConfig(
        dataset="testbed",
        views=ViewConfig(
            view_size=32, crop_scale_min=0.2, crop_scale_max=1.0, superpixel_grid=_grid(kind)
        ),
        masking=MaskConfig(enabled=False),
        mask_prior=MaskPriorConfig(source="gt"),
        num_workers=0,
    )
    cfg.testbed.length, cfg.testbed.size = 6, 32
    return cfg


@pytest.mark.parametrize("kind", ["cut", "mix"])
def test_mask_crops_keep_their_masks_and_stay_pure_per_key(kind):
    off, on = _mask_crops_cfg("none"), _mask_crops_cfg(kind)
    a = MaskCropDataset(build_source(off), off)[(1, 4)]["sample"]
    b = MaskCropDataset(build_source(on), on)[(1, 4)]["sample"]
    again = MaskCropDataset(build_source(on), on)[(1, 4)]["sample"]
    for name in ("masks_2SS", "flips_2", "crops_24"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.views_2CSS, b.views_2CSS)
    assert torch.equal(b.views_2CSS, again.views_2CSS)
