import numpy as np
import pytest
import torch

from vice.eval.matching import confusion, hungarian_mapping, majority_mapping, map_clusters

# Three classes on a 4x4 map: 4 px of class 0, 4 of class 1, 8 of class 2.
GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 2, 2],
        [2, 2, 2, 2],
    ]
)


def test_confusion_matches_a_naive_loop_and_drops_ignore():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 5, 500)
    gt = rng.integers(0, 3, 500)
    gt[rng.random(500) < 0.2] = 255
    conf = confusion(pred, gt, 5, 3)
    naive = np.zeros((5, 3), dtype=np.int64)
    for p, g in zip(pred, gt, strict=True):
        if g != 255:
            naive[p, g] += 1
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, naive)
    # Torch tensors of any shape are accepted.
    conf_t = confusion(torch.from_numpy(pred).reshape(20, 25), torch.from_numpy(gt), 5, 3)
    np.testing.assert_array_equal(conf_t, naive)


def test_confusion_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match=r"predicted ids must be in \[0, 2\)"):
        confusion(np.array([0, 2]), np.array([0, 1]), 2, 2)
    with pytest.raises(ValueError, match="ground-truth ids"):
        confusion(np.array([0, 1]), np.array([0, 7]), 2, 2)
    with pytest.raises(ValueError, match="pixels"):
        confusion(np.array([0, 1, 1]), np.array([0, 1]), 2, 2)


def test_hungarian_undoes_a_permutation():
    perm = np.array([2, 0, 1])  # class c appears as cluster perm[c]
    clusters = perm[GT]
    map_P = hungarian_mapping(confusion(clusters, GT, 3, 3))
    np.testing.assert_array_equal(map_P, [1, 2, 0])
    np.testing.assert_array_equal(map_P[clusters], GT)


def test_hungarian_maximises_matched_pixels_not_per_row_majority():
    # Row-wise argmax would send both clusters to class 0; one-to-one must give cluster 1
    # class 1 (total 5 + 3 = 8 matched pixels beats 4 + 3 = 7).
    conf = np.array([[5, 1], [4, 3]])
    np.testing.assert_array_equal(hungarian_mapping(conf), [0, 1])


def test_hungarian_refuses_more_clusters_than_classes():
    with pytest.raises(ValueError, match="majority_mapping"):
        hungarian_mapping(np.ones((4, 3), dtype=np.int64))


def test_majority_mapping_of_five_clusters_onto_three_classes():
    clusters = np.array(
        [
            [0, 0, 1, 1],
            [3, 0, 1, 4],
            [2, 2, 4, 4],
            [2, 2, 2, 2],
        ]
    )
    # Cluster 4 holds one class-1 and two class-2 pixels -> class 2.
    conf = confusion(clusters, GT, 5, 3)
    np.testing.assert_array_equal(conf, [[3, 0, 0], [0, 3, 0], [0, 0, 6], [1, 0, 0], [0, 1, 2]])
    np.testing.assert_array_equal(majority_mapping(conf), [0, 1, 2, 0, 2])
    np.testing.assert_array_equal(map_clusters(conf, 3), [0, 1, 2, 0, 2])


def test_map_clusters_with_fewer_clusters_than_classes_leaves_a_class_unused():
    clusters = (GT == 2).astype(np.int64)
    clusters[0, 2] = 1  # cluster 0: 4 px of class 0, 3 of class 1; cluster 1: 1 + 8
    map_P = map_clusters(confusion(clusters, GT, 2, 3), 3)
    np.testing.assert_array_equal(map_P, [0, 2])


def test_map_clusters_checks_the_class_count():
    with pytest.raises(ValueError, match="expected 4"):
        map_clusters(np.ones((3, 3), dtype=np.int64), 4)


def test_majority_matches_at_least_as_many_pixels_as_hungarian():
    rng = np.random.default_rng(1)
    conf = rng.integers(0, 50, (6, 6))
    matched_h = conf[np.arange(6), hungarian_mapping(conf)].sum()
    matched_m = conf[np.arange(6), majority_mapping(conf)].sum()
    assert matched_m >= matched_h and matched_m == conf.max(axis=1).sum()
