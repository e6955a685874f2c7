import dataclasses
import math
from functools import reduce

import numpy as np
import pytest

from vice.config import MaskConfig
from vice.data import masking
from vice.data.datasets.synthetic import SyntheticSource
from vice.data.sample import build_views
from vice.data.superpixels import slic_superpixels
from vice.data.views import standardise


def _grid_views(n_views=3, size=8, cell=2):
    ys, xs = np.mgrid[:size, :size]
    ids = ((ys // cell) * (size // cell) + xs // cell).astype(np.int32)
    return [ids.copy() for _ in range(n_views)]


def test_common_ids_intersection_excludes_outside():
    a = np.array([[0, 1], [2, -1]])
    b = np.array([[1, 2], [3, -1]])
    np.testing.assert_array_equal(masking.common_ids([a, b]), [1, 2])


def test_full_cover_keeps_exactly_the_protected_quarter(monkeypatch):
    views = _grid_views()
    common = masking.common_ids(views)  # 16 ids
    monkeypatch.setattr(masking, "sample_mask_box", lambda rng, size, cfg: (0, 0, size, size))
    masks, targets, boxes = masking.regional_masking(
        np.random.default_rng(0), views, common, MaskConfig()
    )
    assert targets.size == math.ceil(0.25 * 16)
    for v, m in enumerate(masks):
        assert boxes[v] == (0, 0, 8, 8)
        # every pixel is masked except the protected superpixels
        np.testing.assert_array_equal(m, ~np.isin(views[v], targets))


@pytest.mark.parametrize("ratio", [0.0, 0.5, 1.0])
def test_protect_ratio_is_a_config_value(monkeypatch, ratio):
    views = _grid_views()
    common = masking.common_ids(views)
    monkeypatch.setattr(masking, "sample_mask_box", lambda rng, size, cfg: (0, 0, size, size))
    _, targets, _ = masking.regional_masking(
        np.random.default_rng(0), views, common, MaskConfig(protect_ratio=ratio)
    )
    assert targets.size == math.ceil(ratio * 16)


def test_disabled_or_zero_prob_masks_nothing():
    views = _grid_views()
    common = masking.common_ids(views)
    for cfg in (MaskConfig(enabled=False), MaskConfig(prob=0.0)):
        masks, targets, _ = masking.regional_masking(np.random.default_rng(0), views, common, cfg)
        assert not any(m.any() for m in masks)
        np.testing.assert_array_equal(targets, common)


def test_center_view_can_be_spared(monkeypatch):
    views = _grid_views()
    monkeypatch.setattr(masking, "sample_mask_box", lambda rng, size, cfg: (0, 0, 2, 2))
    masks, _, boxes = masking.regional_masking(
        np.random.default_rng(0), views, masking.common_ids(views), MaskConfig(mask_center=False)
    )
    assert boxes[0] is None and not masks[0].any()
    assert boxes[1] is not None


def test_box_sides_bounded_and_inside():
    rng = np.random.default_rng(0)
    cfg = MaskConfig(max_box_ratio=0.25)
    sides = []
    for _ in range(2000):
        y0, x0, y1, x1 = masking.sample_mask_box(rng, 400, cfg)
        assert 0 <= y0 < y1 <= 400 and 0 <= x0 < x1 <= 400
        assert y1 - y0 <= 100 and x1 - x0 <= 100
        sides.append(y1 - y0)
    # shifted von Mises: most boxes are large-ish, mode near 0.75 of the maximum
    assert 55 < np.median(sides) < 90


def test_masked_ids_absent_from_all_targets_and_noise_range():
    img = standardise(SyntheticSource(size=128, length=4).load_image(2), 128, 2048)
    ids = slic_superpixels(img, region_size=10)
    from vice.config import DataConfig, ViewConfig

    cfg = DataConfig(
        views=ViewConfig(short_side=128, view_size=48),
        masking=MaskConfig(max_box_ratio=0.5),
    )
    cfg = dataclasses.replace(cfg)
    rng = np.random.default_rng(7)
    noise_values = []
    checked = 0
    for _ in range(20):
        s = build_views(rng, img, ids, cfg, keep_debug=True)
        regions = set(s.regions_R.tolist())
        for v in range(s.views_VCSS.shape[0]):
            m = s.masked_VSS[v].numpy()
            if not m.any():
                continue
            checked += 1
            masked_src = set(np.unique(s.debug["view_source_ids"][v][m]).tolist())
            assert not (masked_src & regions)
            assert (s.ids_VSS[v].numpy()[m] == -1).all()
            # masked superpixels are not targets in any other view either
            for u in range(s.views_VCSS.shape[0]):
                assert not (
                    set(np.unique(s.debug["view_source_ids"][u][s.ids_VSS[u] >= 0])) & masked_src
                )
            noise_values.append(s.views_VCSS[v].numpy()[:, m].ravel())
    assert checked > 10
    noise = np.concatenate(noise_values)
    assert noise.min() >= -1.0 and noise.max() <= 1.0
    assert noise.min() < -0.95 and noise.max() > 0.95 and abs(noise.mean()) < 0.05


def test_align_ids_maps_targets_to_region_indices():
    v = [np.array([[5, 7], [9, -1]]), np.array([[9, 9], [5, 2]])]
    out = masking.align_ids(v, np.array([5, 9]))
    np.testing.assert_array_equal(out, [[[0, -1], [1, -1]], [[1, 1], [0, -1]]])


def _random_views(seed, n_views=4, size=24, n_ids=90):
    """Overlapping random id maps with -1 borders, like crops of one source."""
    rng = np.random.default_rng(seed)
    views = []
    for _ in range(n_views):
        v = rng.integers(0, n_ids, (size, size)).astype(np.int32)
        v[: rng.integers(0, 5)] = -1
        v[:, size - rng.integers(0, 5) :] = -1
        views.append(v)
    return views


@pytest.mark.parametrize("seed", range(5))
def test_common_and_align_equal_set_based_references(seed):
    views = _random_views(seed)
    ref = reduce(np.intersect1d, [np.unique(v) for v in views])
    ref = ref[ref >= 0]
    common = masking.common_ids(views)
    np.testing.assert_array_equal(common, ref)
    assert common.dtype == views[0].dtype
    targets = common[::3]
    lut = {int(t): r for r, t in enumerate(targets)}
    expected = np.vectorize(lambda i: lut.get(int(i), -1))(np.stack(views))
    out = masking.align_ids(views, targets)
    assert out.dtype == np.int64 and out.shape == (4, 24, 24)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(masking.align_ids(views, targets[:0]), np.full(out.shape, -1))


@pytest.mark.parametrize("seed", range(5))
def test_masks_are_exactly_the_touched_unprotected_ids(seed):
    views = _random_views(seed)
    common = masking.common_ids(views)
    masks, targets, boxes = masking.regional_masking(
        np.random.default_rng(seed), views, common, MaskConfig(max_box_ratio=0.5)
    )
    for v, m in enumerate(masks):
        if boxes[v] is None:
            assert not m.any()
            continue
        y0, x0, y1, x1 = boxes[v]
        masked = set(np.unique(views[v][m]).tolist())
        touched = set(np.unique(views[v][y0:y1, x0:x1]).tolist()) - {-1}
        assert masked <= touched and -1 not in masked
        # every pixel of a masked id is masked (whole superpixels)
        np.testing.assert_array_equal(m, np.isin(views[v], list(masked)))
        assert not masked & set(targets.tolist())
