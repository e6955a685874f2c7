import dataclasses

import numpy as np
import torch

from vice.data.datasets.synthetic import SyntheticSource
from vice.data.sample import box_from_row, build_views
from vice.data.superpixels import slic_superpixels
from vice.data.views import standardise, view_to_source


def _source(cfg, index=0):
    img = standardise(SyntheticSource(size=128, length=16).load_image(index), 128, 2048)
    return img, slic_superpixels(img, region_size=cfg.superpixels.region_size)


def test_geometric_consistency_flips_included(small_cfg):
    img, ids = _source(small_cfg)
    cfg = dataclasses.replace(small_cfg, views=dataclasses.replace(small_cfg.views, flip_prob=0.5))
    size = cfg.views.view_size
    rng = np.random.default_rng(3)
    flips_seen = set()
    for _ in range(20):
        sample = build_views(rng, img, ids, cfg, keep_debug=True)
        assert sample is not None
        regions = sample.regions_R.numpy()
        for v, box in enumerate(sample.debug["boxes"]):
            flips_seen.add(box.flip)
            i, j = rng.integers(0, size, (2, 200))
            y, x = view_to_source(box, size, i, j)
            inside = (y >= 0) & (y < ids.shape[0]) & (x >= 0) & (x < ids.shape[1])
            view_src = sample.debug["view_source_ids"][v][i, j]
            np.testing.assert_array_equal(view_src[inside], ids[y[inside], x[inside]])
            # aligned targets point at the same source superpixel
            r = sample.ids_VSS[v].numpy()[i, j]
            hit = r >= 0
            np.testing.assert_array_equal(regions[r[hit]], view_src[hit])
    assert flips_seen == {True, False}


def test_every_region_is_in_every_view(small_cfg):
    img, ids = _source(small_cfg, 1)
    rng = np.random.default_rng(4)
    for _ in range(10):
        s = build_views(rng, img, ids, small_cfg)
        n = s.regions_R.numel()
        assert n > 0
        for v in range(s.ids_VSS.shape[0]):
            present = np.unique(s.ids_VSS[v].numpy())
            np.testing.assert_array_equal(present[present >= 0], np.arange(n))


def test_view_pixels_follow_the_source(small_cfg):
    """Without photometric noise, view pixels equal the source at the mapped point."""
    vcfg = dataclasses.replace(
        small_cfg.views, jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0, flip_prob=0.5
    )
    cfg = dataclasses.replace(
        small_cfg, views=vcfg, masking=dataclasses.replace(small_cfg.masking, enabled=False)
    )
    yy, xx = np.mgrid[:128, :160]
    img = np.stack([xx * 1.5, yy * 1.9, 100 + 0 * xx], -1).astype(np.uint8)  # smooth ramps
    ids = slic_superpixels(img, region_size=10)
    rng = np.random.default_rng(5)
    mean = np.array(vcfg.mean)[:, None]
    std = np.array(vcfg.std)[:, None]
    for _ in range(5):
        s = build_views(rng, img, ids, cfg, keep_debug=True)
        for v, box in enumerate(s.debug["boxes"]):
            i, j = rng.integers(4, vcfg.view_size - 4, (2, 50))
            y, x = view_to_source(box, vcfg.view_size, i, j)
            ok = (y >= 2) & (y < 126) & (x >= 2) & (x < 158)
            got = (s.views_VCSS[v].numpy()[:, i, j] * std + mean) * 255
            np.testing.assert_allclose(got[:, ok], img[y[ok], x[ok]].T, atol=6)


def test_boxes_round_trip_through_the_sample(small_cfg):
    img, ids = _source(small_cfg, 2)
    s = build_views(np.random.default_rng(6), img, ids, small_cfg, keep_debug=True)
    for v, box in enumerate(s.debug["boxes"]):
        again = box_from_row(s.boxes_V3[v], bool(s.flips_V[v]))
        assert abs(again.cx - box.cx) < 1e-3 and abs(again.side - box.side) < 1e-3
        assert again.flip == box.flip


def test_sample_shapes_and_types(small_cfg):
    img, ids = _source(small_cfg, 3)
    s = build_views(np.random.default_rng(8), img, ids, small_cfg)
    v, size = small_cfg.views.num_views, small_cfg.views.view_size
    assert s.views_VCSS.shape == (v, 3, size, size) and s.views_VCSS.dtype.is_floating_point
    assert s.ids_VSS.shape == (v, size, size) and s.masked_VSS.shape == (v, size, size)
    assert s.flips_V.shape == (v,) and s.boxes_V3.shape == (v, 3)
    assert s.debug == {}


def test_a_sample_is_a_pure_function_of_its_generator(small_cfg):
    img, ids = _source(small_cfg, 4)
    a = build_views(np.random.default_rng(11), img, ids, small_cfg)
    b = build_views(np.random.default_rng(11), img, ids, small_cfg)
    c = build_views(np.random.default_rng(12), img, ids, small_cfg)
    fields = ("views_VCSS", "ids_VSS", "regions_R", "flips_V", "boxes_V3", "masked_VSS")
    for name in fields:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.views_VCSS, c.views_VCSS)
    assert a.masked_VSS.any()  # the noise path ran


def test_masked_pixels_hold_noise_and_the_rest_the_augmented_view(small_cfg):
    img, ids = _source(small_cfg, 5)
    s = build_views(np.random.default_rng(13), img, ids, small_cfg)
    m = s.masked_VSS[:, None].expand_as(s.views_VCSS)
    noise = s.views_VCSS[m]
    assert noise.numel() > 0 and noise.min() >= -1.0 and noise.max() < 1.0
    # unmasked pixels are normalised uint8 levels: (k/255 - mean) / std for an integer k
    mean = torch.tensor(small_cfg.views.mean)[None, :, None, None]
    std = torch.tensor(small_cfg.views.std)[None, :, None, None]
    levels = (s.views_VCSS * std + mean) * 255
    kept = levels[~m]
    torch.testing.assert_close(kept, kept.round(), atol=1e-3, rtol=0)
