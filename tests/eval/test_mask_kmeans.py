"""MaskContrast's k-means protocol: separable prototypes give mIoU 1 (with and without a
background class), random ones give chance, metrics equal `segmentation_metrics` of the
explicit pixel map, empty masks, seeds and PCA sizes."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vice.eval.mask_kmeans import DEFAULT_SEEDS, mask_kmeans
from vice.eval.metrics import segmentation_metrics


def _voc_like(n=24, num_classes=4, d=16, s=8, noise=0.0, seed=0):
    """Each image: one object of class 1 + n % (K - 1) in a square, background class 0
    around it; the predicted mask is the object; object pixels embed as direction e_class
    (+ noise per image), background pixels randomly."""
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(n, d, s, s, generator=g), dim=1)
    fg = np.zeros((n, s, s), dtype=bool)
    labels = np.zeros((n, s, s), dtype=np.int64)
    for i in range(n):
        c = 1 + i % (num_classes - 1)
        r0, c0 = i % 3, (i // 3) % 3
        fg[i, r0 : r0 + 4, c0 : c0 + 5] = True
        labels[i][fg[i]] = c
        direction = F.one_hot(torch.tensor(c), d).float() + noise * torch.randn(d, generator=g)
        emb[i][:, torch.from_numpy(fg[i])] = F.normalize(direction, dim=0)[:, None]
    return emb, fg, labels


def _testbed_like(n=24, num_classes=4, d=16, s=8, noise=0.0, seed=0):
    """No background class: every pixel has a class. Even images are salient everywhere and
    one class throughout; odd ones have a partial mask with ignore (255) outside it."""
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(n, d, s, s, generator=g), dim=1)
    fg = np.ones((n, s, s), dtype=bool)
    labels = np.zeros((n, s, s), dtype=np.int64)
    for i in range(n):
        c = i % num_classes
        labels[i] = c
        if i % 2:
            fg[i, :, : s // 2] = False
            labels[i, :, : s // 2] = 255
        direction = F.one_hot(torch.tensor(c), d).float() + noise * torch.randn(d, generator=g)
        emb[i][:, torch.from_numpy(fg[i])] = F.normalize(direction, dim=0)[:, None]
    return emb, fg, labels


def _explicit_metrics(run, fg, labels, num_classes):
    """segmentation_metrics of the pixel map built from one seed's assignment and mapping
    (unmatched clusters predict an extra class K that no pixel has)."""
    cluster_N = np.array(run["cluster_of_image"])
    map_C = np.array(run["class_of_cluster"])
    map_C = np.where(map_C >= 0, map_C, num_classes)
    pred = map_C[np.where(fg, cluster_N[:, None, None], 0)]
    return segmentation_metrics(pred, labels, num_classes + 1)


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_separable_prototypes_with_a_background_class_give_miou_one(noise):
    emb, fg, labels = _voc_like(noise=noise)
    # with noise, only the 2 signal components: whitening would scale the 14 noise ones to
    # unit variance too and bury the class directions (PCA keeps min(pca_dim, D, M))
    out = mask_kmeans(emb, fg, labels, 4, background_class=0, pca_dim=2 if noise else 32)
    assert out["miou"] == 1.0 and out["acc"] == 1.0
    assert out["miou_sd"] == 0.0 and out["acc_sd"] == 0.0
    assert out["clusters"] == 4 and out["empty_masks"] == 0 and out["num_images"] == 24
    assert [r["seed"] for r in out["per_seed"]] == list(DEFAULT_SEEDS)
    for run in out["per_seed"]:
        assert run["class_of_cluster"][0] == 0  # the background cluster found background
        assert run["iou_per_class"] == [1.0] * 4
    if noise == 0.0:  # 3 distinct points: 2 whitened components, the rest is rank noise
        assert out["pca_components"] == 2


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_separable_prototypes_without_a_background_class_give_miou_one(noise):
    emb, fg, labels = _testbed_like(noise=noise)
    out = mask_kmeans(emb, fg, labels, 4, background_class=None, pca_dim=3 if noise else 32)
    assert out["clusters"] == 5  # 4 k-means clusters + the background cluster
    assert out["miou"] == 1.0 and out["acc"] == 1.0 and out["miou_sd"] == 0.0
    for run in out["per_seed"]:
        # the background cluster holds only ignored pixels: it is the one left unmatched
        assert run["class_of_cluster"][0] == -1
        assert sorted(run["class_of_cluster"][1:]) == [0, 1, 2, 3]


def test_seeds_change_nothing_on_separable_data():
    emb, fg, labels = _voc_like(noise=0.05, seed=3)
    out = mask_kmeans(emb, fg, labels, 4, 0, seeds=(0, 1, 2, 99, 1234), pca_dim=2)
    partitions = set()
    for run in out["per_seed"]:
        cluster_N = np.array(run["cluster_of_image"])
        class_N = np.array(run["class_of_cluster"])[cluster_N]  # mapped: a partition by class
        partitions.add(tuple(class_N.tolist()))
    assert len(partitions) == 1
    assert out["miou_sd"] == 0.0


def test_random_prototypes_are_near_chance():
    # 4 classes, every image salient everywhere with one class, embeddings unrelated to it:
    # chance accuracy is 1/4 (plus what the best of 24 matchings picks up by luck)
    n, num_classes = 240, 4
    g = torch.Generator().manual_seed(5)
    emb = F.normalize(torch.randn(n, 16, 4, 4, generator=g), dim=1)
    labels = np.broadcast_to(np.random.default_rng(5).integers(0, 4, n)[:, None, None],
                             (n, 4, 4)).copy()  # fmt: skip
    out = mask_kmeans(emb, np.ones((n, 4, 4), bool), labels, num_classes, None)
    assert 0.2 < out["acc"] < 0.4  # measured 0.30
    assert out["miou"] < 0.25  # measured 0.18 (chance: 1 / (2K - 1) = 0.14 for even sizes)
    separable = mask_kmeans(*_testbed_like(n=n, s=4), num_classes, None, seeds=(0,))
    assert separable["miou"] == 1.0


@pytest.mark.parametrize("background_class", [0, None])
def test_metrics_equal_segmentation_metrics_of_the_pixel_map(background_class):
    make = _voc_like if background_class == 0 else _testbed_like
    emb, fg, labels = make(noise=0.6, seed=7)  # noisy: imperfect clusters
    fg[2] = False  # and an empty mask
    out = mask_kmeans(emb, fg, labels, 4, background_class, seeds=(1, 2))
    assert out["miou"] < 1.0
    for run in out["per_seed"]:
        ref = _explicit_metrics(run, fg, labels, 4)
        assert run["miou"] == pytest.approx(ref["miou"], abs=1e-12)
        assert run["acc"] == pytest.approx(ref["acc"], abs=1e-12)
        np.testing.assert_allclose(run["iou_per_class"], ref["iou_per_class"][:4])
    assert out["miou"] == pytest.approx(np.mean([r["miou"] for r in out["per_seed"]]))
    assert out["miou_sd"] == pytest.approx(np.std([r["miou"] for r in out["per_seed"]], ddof=1))


def test_empty_masks_are_all_background_and_counted():
    emb, fg, labels = _voc_like()
    fg[[0, 5]] = False
    emb[[0, 5]] = float("nan")  # never pooled
    out = mask_kmeans(emb, fg, labels, 4, 0)
    assert out["empty_masks"] == 2
    run = out["per_seed"][0]
    assert run["cluster_of_image"][0] == run["cluster_of_image"][5] == 0
    assert min(run["cluster_of_image"][1:5]) >= 1
    # their object pixels (2 x 20) are predicted background: the only errors
    total = int((labels != 255).sum())
    assert out["acc"] == pytest.approx(1 - 40 / total)
    assert out["miou"] == pytest.approx(_explicit_metrics(run, fg, labels, 4)["miou"])
    assert out["miou"] < 1.0


def test_pca_dim_larger_than_the_number_of_images():
    emb, fg, labels = _testbed_like(n=12, num_classes=3, noise=0.05)
    out = mask_kmeans(emb, fg, labels, 3, None, pca_dim=64)
    # min(64, D=16, N=12) components fitted; 12 centred points span at most 11 dimensions
    assert out["pca_components"] == 11
    assert 0.0 <= out["miou"] <= 1.0  # (whitened, 12 points in 11-d are a regular simplex)
    # noise-free: 3 distinct prototypes, 2 components. (MiniBatchKMeans, as published, can
    # merge two of them on a handful of points: 10 of 100 seeds at 6 points, none at 24.)
    emb, fg, labels = _testbed_like(n=12, num_classes=3)
    out = mask_kmeans(emb, fg, labels, 3, None, pca_dim=64)
    assert out["pca_components"] == 2
    assert out["miou"] == 1.0


def test_too_few_masks_for_the_clusters_and_bad_shapes_are_refused():
    emb, fg, labels = _voc_like(n=6)
    fg[1:] = False
    with pytest.raises(ValueError, match="3 k-means clusters need at least as many images"):
        mask_kmeans(emb, fg, labels, 4, 0)
    with pytest.raises(ValueError, match="must both be"):
        mask_kmeans(emb, fg[:, :4], labels, 4, 0)
    with pytest.raises(ValueError, match="background_class"):
        mask_kmeans(emb, fg, labels, 4, 4)
