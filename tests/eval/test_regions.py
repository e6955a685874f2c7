import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from vice.data.datasets.base import IGNORE_INDEX
from vice.eval.regions import (
    _probe_objective,
    fit_region_probe,
    nn_same_class,
    region_embeddings,
    region_index,
    region_metrics,
    region_probe,
)


def _scene(n=3, s=10, d=5, k=4, seed=0):
    """Random features, blocky instances (ids up to 40, shared across images on purpose)
    and labels with some ignored pixels."""
    rng = np.random.default_rng(seed)
    feats = torch.from_numpy(rng.normal(size=(n, d, s, s)).astype(np.float32))
    inst = np.repeat(np.repeat(rng.integers(0, 40, (n, s // 2, s // 2)), 2, 1), 2, 2)
    inst[:, :, : s // 2] = 7  # a large instance in every image, same id everywhere
    labels = rng.integers(0, k, (n, s, s))
    labels[rng.random((n, s, s)) < 0.1] = IGNORE_INDEX
    return feats, inst, labels


def test_region_index_numbers_image_instance_pairs_in_order():
    inst = np.array([[[5, 5], [0, 9]], [[5, 2], [2, 2]]])
    region_P, r = region_index(inst)
    # image 0: ids 0, 5, 9 -> 0, 1, 2; image 1: ids 2, 5 -> 3, 4
    np.testing.assert_array_equal(region_P, [1, 1, 0, 2, 4, 3, 3, 3])
    assert r == 5
    with pytest.raises(ValueError, match=">= 0"):
        region_index(-inst)


def test_region_embeddings_equal_a_loop_over_images_and_instances():
    feats, inst, labels = _scene()
    regions = region_embeddings(feats, inst, labels, num_classes=4, min_pixels=3)
    want_emb, want_cls, want_img, want_pix = [], [], [], []
    for i in range(feats.shape[0]):
        for iid in np.unique(inst[i]):
            mask = (inst[i] == iid) & (labels[i] != IGNORE_INDEX)
            if mask.sum() < 3:
                continue
            pix = F.normalize(feats[i].permute(1, 2, 0)[torch.from_numpy(mask)], dim=1)
            want_emb.append(F.normalize(pix.mean(0), dim=0))
            want_cls.append(np.bincount(labels[i][mask], minlength=4).argmax())
            want_img.append(i)
            want_pix.append(mask.sum())
    assert len(want_emb) == len(regions.class_R) > 10
    torch.testing.assert_close(regions.emb_RD, torch.stack(want_emb))
    np.testing.assert_array_equal(regions.class_R, want_cls)
    np.testing.assert_array_equal(regions.image_R, want_img)
    np.testing.assert_array_equal(regions.pixels_R, want_pix)


def test_region_embeddings_check_shapes_and_labels():
    feats, inst, labels = _scene()
    with pytest.raises(ValueError, match="same"):
        region_embeddings(feats, inst[:2], labels, 4)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        region_embeddings(feats, inst, labels, 3)


def test_nn_same_class_and_its_chance_equal_a_loop():
    rng = np.random.default_rng(1)
    r = 40
    emb = F.normalize(torch.randn(r, 6, generator=torch.Generator().manual_seed(1)), dim=1)
    cls = rng.integers(0, 3, r)
    img = rng.integers(0, 5, r)
    img[0] = 9  # an image with one region
    got = nn_same_class(emb, cls, img)
    hits, chance = [], []
    for a in range(r):
        best, best_sim = None, -np.inf
        for b in range(r):
            if img[b] != img[a] and float(emb[a] @ emb[b]) > best_sim:
                best, best_sim = b, float(emb[a] @ emb[b])
        hits.append(cls[best] == cls[a])
        others = [b for b in range(r) if img[b] != img[a]]
        chance.append(np.mean([cls[b] == cls[a] for b in others]))
    assert got["regions"] == r
    assert got["nn_same_class"] == pytest.approx(np.mean(hits))
    assert got["nn_chance"] == pytest.approx(np.mean(chance))


def test_nn_same_class_needs_two_images():
    got = nn_same_class(torch.eye(3), np.array([0, 1, 2]), np.zeros(3, np.int64))
    assert np.isnan(got["nn_same_class"]) and got["regions"] == 3


def test_probe_objective_and_gradient_equal_a_loop():
    rng = np.random.default_rng(2)
    x, y, k, l2 = rng.normal(size=(7, 3)), rng.integers(0, 4, 7), 4, 0.3
    theta = rng.normal(size=k * 4)
    loss, grad = _probe_objective(theta, x, y, k, l2)

    def slow(th):
        w = th.reshape(k, 4)
        total = 0.0
        for xi, yi in zip(x, y, strict=True):
            logits = [w[c, :3] @ xi + w[c, 3] for c in range(k)]
            total += -(logits[yi] - np.log(np.sum(np.exp(logits))))
        return total / len(x) + 0.5 * l2 * np.sum(w[:, :3] ** 2)

    assert loss == pytest.approx(slow(theta))
    eps = 1e-6
    numeric = [
        (slow(theta + eps * np.eye(len(theta))[j]) - slow(theta - eps * np.eye(len(theta))[j]))
        / (2 * eps)
        for j in range(len(theta))
    ]
    np.testing.assert_allclose(grad, numeric, atol=1e-6)


def test_fit_region_probe_reaches_the_optimum():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 4)) * [1, 10, 0.1, 1] + [0, 5, 0, 0]
    x[:, 3] += 0.9 * x[:, 0]  # correlated features
    y = rng.integers(0, 3, 50)
    weight, bias, mean, std = fit_region_probe(x, y, 3, l2=0.1)
    z = (x - mean) / std
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), 1)
    theta = np.concatenate([weight, bias[:, None]], axis=1).reshape(-1)
    loss, grad = _probe_objective(theta, z, y, 3, 0.1)
    assert np.abs(grad).max() < 1e-6
    best = minimize(_probe_objective, np.zeros(15), args=(z, y, 3, 0.1), jac=True, tol=1e-12)
    assert loss == pytest.approx(best.fun, abs=1e-10)


def test_region_probe_splits_by_image_and_separates_separable_classes():
    rng = np.random.default_rng(4)
    cls = rng.integers(0, 3, 60)
    img = np.arange(60) // 3  # 20 images of 3 regions
    emb = F.normalize(
        F.one_hot(torch.from_numpy(cls), 3).float() + 0.05 * torch.randn(60, 3), dim=1
    )
    got = region_probe(emb, cls, img, 3)
    assert got["probe_train_regions"] == 30 and got["probe_test_regions"] == 30
    assert got["probe_acc"] == 1.0
    train_majority = np.bincount(cls[img % 2 == 0], minlength=3).argmax()
    assert got["probe_majority"] == pytest.approx(np.mean(cls[img % 2 == 1] == train_majority))
    # Test regions never reach training: flipping their classes leaves the classifier as is.
    flipped = np.where(img % 2 == 1, (cls + 1) % 3, cls)
    assert region_probe(emb, flipped, img, 3)["probe_acc"] == 0.0
    one_image = region_probe(emb, cls, np.zeros(60, np.int64), 3)
    assert np.isnan(one_image["probe_acc"]) and one_image["probe_test_regions"] == 0


def test_class_features_score_perfectly():
    _, inst, labels = _scene(n=8, s=16, k=3, seed=5)
    labels[labels == IGNORE_INDEX] = 0
    # Each instance one class (its label is the instance's majority, painted over it)
    for i in range(8):
        for iid in np.unique(inst[i]):
            mask = inst[i] == iid
            labels[i][mask] = np.bincount(labels[i][mask], minlength=3).argmax()
    onehot = F.one_hot(torch.from_numpy(labels), 3).permute(0, 3, 1, 2).float()
    got = region_metrics(onehot, inst, labels, 3, min_pixels=4)
    assert got["nn_same_class"] == 1.0 and got["probe_acc"] == 1.0
    assert 0.2 < got["nn_chance"] < 0.6
