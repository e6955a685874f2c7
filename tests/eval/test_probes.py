import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vice.data.datasets.base import IGNORE_INDEX
from vice.data.datasets.testbed import TestbedSource
from vice.eval.baselines import raw_colour_features
from vice.eval.probes import (
    isolate_regions,
    position_r2,
    probe_metrics,
    region_centroids,
)
from vice.eval.regions import region_embeddings


@pytest.fixture(scope="module")
def testbed():
    """8 testbed images of 64 px: images (N, S, S, 3), instances and labels (N, S, S)."""
    src = TestbedSource(split="val", length=8, size=64)
    return tuple(
        np.stack([load(i) for i in range(len(src))])
        for load in (src.load_image, src.load_instances, src.load_label)
    )


def _blocky_instances(n=12, s=16, block=4, ids=6, seed=0):
    """Instances in block x block tiles with random ids: many regions of varied shape."""
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, ids, (n, s // block, s // block))
    return np.repeat(np.repeat(tiles, block, 1), block, 2)


def _blur(k):
    """Raw colour box-blurred over k x k pixels: every pixel sees its surroundings."""

    def features(images_NSS3):
        x = raw_colour_features(images_NSS3).contiguous()
        return F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)

    return features


def test_region_centroids_equal_a_loop_in_region_embeddings_order():
    inst = _blocky_instances(n=3, s=8, block=2)
    labels = np.zeros_like(inst)
    labels[:, 0, :] = IGNORE_INDEX  # the top row belongs to no region
    centroid, image, instance = region_centroids(inst, labels, min_pixels=3)
    want = []
    for i in range(3):
        for iid in np.unique(inst[i]):
            rows, cols = np.nonzero((inst[i] == iid) & (labels[i] != IGNORE_INDEX))
            if rows.size >= 3:
                want.append((i, iid, (cols.mean() + 0.5) / 8, (rows.mean() + 0.5) / 8))
    assert len(want) == len(image) > 6
    np.testing.assert_array_equal(image, [w[0] for w in want])
    np.testing.assert_array_equal(instance, [w[1] for w in want])
    np.testing.assert_allclose(centroid, [w[2:] for w in want])
    feats = torch.randn(3, 4, 8, 8)
    regions = region_embeddings(feats, inst, labels, 1, 3)
    np.testing.assert_array_equal(regions.image_R, image)


def test_position_r2_is_one_for_embeddings_linear_in_the_centroid():
    inst = _blocky_instances()
    centroid, image, instance = region_centroids(inst, min_pixels=1)
    # Unit-norm by construction, (cx, cy, sqrt(2 - cx^2 - cy^2)) / sqrt(2) rotated into 8
    # dims: the mean-pooled, normalised region embedding is exactly linear in the centroid.
    f_R3 = np.column_stack([centroid, np.sqrt(2 - (centroid**2).sum(1))]) / np.sqrt(2)
    q_83, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(8, 3)))
    emb_R8 = torch.from_numpy(f_R3 @ q_83.T).float()
    feats = torch.zeros(inst.shape[0], 8, 16, 16)
    for r, (i, iid) in enumerate(zip(image, instance, strict=True)):
        feats[i][:, torch.from_numpy(inst[i] == iid)] = emb_R8[r][:, None]
    got = probe_metrics(None, np.zeros((*inst.shape, 3), np.uint8), inst, feats, min_pixels=1)
    assert got["probe.regions"] == len(image) > 60
    assert got["probe.position_r2"] > 0.999
    assert position_r2(emb_R8, centroid, image) == pytest.approx(got["probe.position_r2"])


def test_position_r2_is_at_most_chance_for_random_embeddings():
    inst = _blocky_instances(n=40)
    feats = torch.randn(40, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    got = probe_metrics(None, np.zeros((*inst.shape, 3), np.uint8), inst, feats, min_pixels=1)
    assert got["probe.regions"] > 200
    assert got["probe.position_r2"] < 0.02


def test_position_r2_is_nan_without_two_regions_per_side():
    emb = F.normalize(torch.randn(3, 4), dim=1)
    assert np.isnan(position_r2(emb, np.random.rand(3, 2), np.array([0, 0, 1])))
    # Two test regions at the same place: no spread to explain.
    centroid = np.array([[0.1, 0.2], [0.7, 0.9], [0.5, 0.5], [0.5, 0.5]])
    assert np.isnan(position_r2(F.normalize(torch.randn(4, 4), dim=1), centroid, [0, 0, 1, 1]))


def test_position_r2_is_high_for_coordinate_features_on_the_testbed(testbed):
    images, inst, labels = testbed

    def coords(x):  # (x, y, 1) at every pixel: nothing but position
        yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
        return torch.stack([xx, yy, torch.ones_like(xx)]).expand(len(x), 3, 64, 64)

    pos = probe_metrics(coords, images, inst, coords(images), labels)
    colour = probe_metrics(None, images, inst, raw_colour_features(images), labels)
    assert pos["probe.position_r2"] > 0.95
    assert pos["probe.coupling"] == 1.0  # coordinates ignore the pixels altogether
    assert colour["probe.position_r2"] < 0.1


def test_raw_colour_is_exactly_decoupled_and_blur_is_not(testbed):
    images, inst, labels = testbed
    got = {}
    for name, fn in [("raw", raw_colour_features), ("blur5", _blur(5)), ("blur15", _blur(15))]:
        got[name] = probe_metrics(fn, images, inst, fn(images), labels, max_regions=48)
        assert got[name]["probe.coupling_regions"] == 48 < got[name]["probe.regions"]
    # A region's own pixels are unchanged by the isolation, and raw colour sees only them.
    assert got["raw"]["probe.coupling"] == 1.0
    # Blurring mixes the surroundings in, the more the wider (measured: 0.991, 0.958).
    assert 0.98 < got["blur5"]["probe.coupling"] < 0.995
    assert 0.93 < got["blur15"]["probe.coupling"] < 0.975


def test_isolate_regions_keeps_the_region_and_fills_the_rest_with_the_mean_colour(testbed):
    images, inst, _ = testbed
    region = inst[:2] == inst[:2, 32, 32][:, None, None]
    out = isolate_regions(images[:2], region)
    assert out.dtype == np.uint8
    for b in range(2):
        np.testing.assert_array_equal(out[b][region[b]], images[b][region[b]])
        mean = np.rint(images[b].reshape(-1, 3).mean(0)).astype(np.uint8)
        assert (out[b][~region[b]] == mean).all()


def _recording(fn, calls):
    def features(images_BSS3):
        calls.append(images_BSS3.copy())
        return fn(images_BSS3)

    return features


def test_coupling_cost_is_bounded_and_the_draw_is_seeded(testbed):
    images, inst, labels = testbed
    blur = _blur(9)
    feats = blur(images)
    runs = []
    for seed in (0, 0, 1):
        calls = []
        fn = _recording(blur, calls)
        got = probe_metrics(fn, images, inst, feats, labels, max_regions=10, seed=seed, batch=4)
        runs.append((got, np.concatenate(calls)))
        assert [len(c) for c in calls] == [4, 4, 2]  # M = 10 images in all, 4 per call
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][1], runs[2][1])  # another seed, other regions


def test_single_region_images(testbed):
    images, inst, labels = testbed
    one = np.zeros_like(inst[:4])  # four images that are one region each
    got = probe_metrics(_blur(15), images[:4], one, _blur(15)(images[:4]))
    assert got["probe.regions"] == got["probe.coupling_regions"] == 4
    assert got["probe.coupling"] == pytest.approx(1.0, abs=1e-12)  # nothing around to replace
    assert np.isnan(got["probe.position_r2"])  # every centroid is the image centre
    mixed = inst.copy()
    mixed[0] = 3  # one single-region image among the others
    got = probe_metrics(_blur(15), images, mixed, _blur(15)(images), labels)
    assert np.isfinite(got["probe.position_r2"]) and 0.9 < got["probe.coupling"] < 1.0


def test_probe_metrics_without_a_feature_function_or_regions():
    inst = _blocky_instances(n=4)
    feats = torch.randn(4, 3, 16, 16)
    images = np.zeros((4, 16, 16, 3), np.uint8)
    got = probe_metrics(None, images, inst, feats, min_pixels=1)
    assert np.isnan(got["probe.coupling"]) and got["probe.coupling_regions"] == 0
    none = probe_metrics(_blur(3), images, inst, feats, np.full_like(inst, IGNORE_INDEX))
    assert none["probe.regions"] == 0 and np.isnan(none["probe.position_r2"])
    with pytest.raises(ValueError, match="max_regions must be >= 1"):
        probe_metrics(None, images, inst, feats, max_regions=0)
