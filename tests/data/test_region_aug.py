"""D3SSL inputs (vice/data/region_aug.py): ids follow their pixels, pastes move, cuts match
their ratio, and every input is a pure function of its sample's key."""

import dataclasses

import numpy as np
import pytest
import torch

from vice.config import DataConfig, RegionAugConfig
from vice.data.datasets import build_source
from vice.data.pretrain import ViceDataset
from vice.data.region_aug import (
    build_region_inputs,
    grid_boxes,
    paste,
    paste_boxes,
    rcc_mask,
    shrink,
)
from vice.data.two_crops import TwoCropDataset

S = 48


def _view(seed: int = 0, regions: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    view = torch.randn(3, S, S, generator=g)
    ids = torch.randint(-1, regions, (S, S), generator=g)
    return view, ids


def test_paste_moves_the_square_with_its_ids_onto_the_background():
    view, ids = _view()
    background = torch.full((3, S, S), 7.0)
    src, dst = (5, 30, 12, 12), (28, 2, 12, 12)
    img, paste_ids, source_ids = paste(view, ids, background, src, dst)
    assert torch.equal(img[:, 28:40, 2:14], view[:, 5:17, 30:42])
    assert torch.equal(paste_ids[28:40, 2:14], ids[5:17, 30:42])
    assert torch.equal(source_ids[5:17, 30:42], ids[5:17, 30:42])
    inside = torch.zeros(S, S, dtype=torch.bool)
    inside[28:40, 2:14] = True
    assert (img[:, ~inside] == 7.0).all() and (paste_ids[~inside] == -1).all()
    assert (source_ids >= 0).sum() == (paste_ids >= 0).sum() == (ids[5:17, 30:42] >= 0).sum()


@pytest.mark.parametrize("seed", range(20))
def test_every_region_of_the_paste_moves_by_the_shift_and_the_shift_is_large(seed):
    cfg = RegionAugConfig()
    view, ids = _view(seed)
    sample = build_region_inputs(
        np.random.default_rng(seed), view[None].expand(2, -1, -1, -1), ids[None].expand(2, -1, -1),
        0, 1, torch.zeros(3, S, S), cfg,
    )  # fmt: skip
    dy, dx = sample.shift_2.tolist()
    assert max(abs(dy), abs(dx)) >= cfg.min_shift * S
    for r in range(6):
        at_src = (sample.source_ids_SS == r).nonzero().double()
        at_dst = (sample.paste_ids_SS == r).nonzero().double()
        assert len(at_src) == len(at_dst)
        if len(at_src):
            moved = at_dst.mean(0) - at_src.mean(0)
            assert moved.tolist() == pytest.approx([dy, dx])


def test_paste_boxes_stay_inside_and_fall_back_to_the_farthest_corner():
    cfg = RegionAugConfig(paste_scale_min=0.5, paste_scale_max=0.5, min_shift=0.25)
    for seed in range(50):  # room = 24 px, need 12: rare from a central source
        (sy, sx, h, w), (ty, tx, _, _) = paste_boxes(np.random.default_rng(seed), S, cfg)
        assert h == w == 24 and min(sy, sx, ty, tx) >= 0 and max(sy, sx, ty, tx) <= S - 24
        assert max(abs(ty - sy), abs(tx - sx)) >= 12
    with pytest.raises(ValueError, match=r"data.views.region_aug.min_shift=0.3: must be in"):
        RegionAugConfig(paste_scale_max=0.5, min_shift=0.3).validate()


def test_grid_boxes_one_per_cell_centred_in_its_inner_half():
    cfg = RegionAugConfig()
    boxes = grid_boxes(np.random.default_rng(3), 90, cfg)
    assert len(boxes) == 9
    for n, (y0, x0, h, w) in enumerate(boxes):
        i, j = divmod(n, 3)
        assert y0 >= 0 and y0 + h <= 90 and x0 >= 0 and x0 + w <= 90
        area = h * w / 90**2
        assert 0.11 < area < 0.31 and 0.45 < w / h < 2.2
        # not pushed in from a border: the centre is within a pixel of the inner half
        if y0 > 0 and y0 + h < 90:
            assert 30 * i + 7.5 - 1 <= y0 + h / 2 <= 30 * i + 22.5 + 1
        if x0 > 0 and x0 + w < 90:
            assert 30 * j + 7.5 - 1 <= x0 + w / 2 <= 30 * j + 22.5 + 1


@pytest.mark.parametrize("seed", range(10))
def test_one_box_loses_its_ratio_of_area(seed):
    """grid = 1: the single pseudo-box loses ratio U(cut_ratio) of its area, to rounding."""
    cfg = RegionAugConfig(grid=1, box_scale_min=0.2, box_scale_max=0.3)
    rng = np.random.default_rng(seed)
    (y0, x0, h, w) = grid_boxes(rng, 96, cfg)[0]
    ratio = rng.uniform(cfg.cut_ratio_min, cfg.cut_ratio_max)  # the next draw is the ratio
    cut = rcc_mask(np.random.default_rng(seed), 96, cfg)
    assert not cut[:y0].any() and not cut[y0 + h :].any()
    assert not cut[:, :x0].any() and not cut[:, x0 + w :].any()
    assert cut[y0 : y0 + h, x0 : x0 + w].mean() == pytest.approx(ratio, abs=(h + w) / (h * w))


def test_cut_fraction_of_the_view_follows_the_ratio_range():
    cfg = RegionAugConfig()
    fractions = [rcc_mask(np.random.default_rng(s), 96, cfg).mean() for s in range(200)]
    # 9 boxes of 12-30 % of the view, overlapping and covering most of it, each cut by the
    # view's ratio in 20-60 % (later boxes add to earlier ones): measured 0.15-0.60, mean 0.38
    assert min(fractions) > 0.1 and max(fractions) < 0.7
    assert 0.3 < float(np.mean(fractions)) < 0.45


def test_cut_inputs_are_grey_with_ids_removed_and_the_rest_untouched():
    view, ids = _view(1)
    sample = build_region_inputs(
        np.random.default_rng(0), torch.stack([view, view]), torch.stack([ids, ids]), 0, 1,
        torch.zeros(3, S, S), RegionAugConfig(),
    )  # fmt: skip
    cut = (sample.cut_3SS == 0).all(0) & (view != 0).all(0)
    assert cut.any()
    assert (sample.cut_ids_SS[cut] == -1).all()
    assert torch.equal(sample.cut_3SS[:, ~cut], view[:, ~cut])
    assert torch.equal(sample.cut_ids_SS[~cut], ids[~cut])
    assert sample.small_3ss.shape == (3, S // 2, S // 2)
    assert sample.small_ids_ss.shape == (S // 2, S // 2)


def test_shrink_samples_ids_at_the_small_pixels_centres():
    view, ids = _view(2)
    small, small_ids = shrink(view, ids, 0.5)
    assert small.shape == (3, 24, 24)
    assert torch.equal(small_ids, ids[1::2, 1::2])  # centre (i + 0.5) * 2 = 2i + 1
    assert torch.allclose(small.mean(), view.mean(), atol=0.05)


def _data(view_size: int = 40) -> DataConfig:
    cfg = DataConfig(dataset="testbed", batch_size=2, num_workers=0)
    cfg.testbed.length = 8
    cfg.views.view_size = view_size
    cfg.views.short_side = 64
    cfg.views.num_views = 3
    cfg.superpixels.region_size = 8
    return cfg


@pytest.mark.parametrize("builder", [ViceDataset, TwoCropDataset])
def test_inputs_are_pure_functions_of_the_key_and_leave_the_views_as_they_were(builder):
    cfg = _data()
    source = build_source(cfg)
    plain = builder(source, cfg)
    first = builder(source, cfg, region_views=(1, 1) if builder is ViceDataset else (0, 1))
    again = builder(build_source(cfg), cfg, region_views=first.region_views)
    for key in ((0, 3), (2, 5)):
        a, b, c = first[key]["sample"], again[key]["sample"], plain[key]["sample"]
        for field in dataclasses.fields(a.region):
            x, y = getattr(a.region, field.name), getattr(b.region, field.name)
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y
        views = "views_VCSS" if builder is ViceDataset else "views_2CSS"
        assert torch.equal(getattr(a, views), getattr(c, views))  # no draws taken from them
        assert c.region is None
    other = first[(1, 3)]["sample"].region
    assert not torch.equal(other.paste_3SS, first[(0, 3)]["sample"].region.paste_3SS)


def test_batches_carry_the_inputs_and_move_them():
    cfg = _data()
    ds = ViceDataset(build_source(cfg), cfg, region_views=(1, 2))
    batch = ds.collate([ds[(0, i)] for i in range(2)])
    region = batch.region
    assert (region.a, region.b) == (1, 2)
    assert region.cut.shape == (2, 3, 40, 40) and region.small.shape == (2, 3, 20, 20)
    assert region.paste_ids.shape == region.source_ids.shape == (2, 40, 40)
    # the cut view's kept ids are view 1's; the small copy's come from view 2
    kept = region.cut_ids >= 0
    assert torch.equal(region.cut_ids[kept], batch.ids[1][kept])
    moved = batch.to(torch.device("cpu"))
    assert torch.equal(moved.region.paste, region.paste)
    plain = ViceDataset(build_source(cfg), cfg)
    assert plain.collate([plain[(0, 0)]]).region is None
