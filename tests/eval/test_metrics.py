import math

import numpy as np
import pytest

from vice.eval.matching import confusion, hungarian_mapping
from vice.eval.metrics import segmentation_metrics

GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 0, 1, 1],
        [2, 2, 2, 2],
        [2, 2, 2, 2],
    ]
)


def test_permuted_clusters_score_perfectly_after_hungarian():
    clusters = np.array([1, 2, 0])[GT]
    pred = hungarian_mapping(confusion(clusters, GT, 3, 3))[clusters]
    m = segmentation_metrics(pred, GT, 3)
    assert m["miou"] == 1.0 and m["acc"] == 1.0
    assert m["iou_per_class"] == [1.0, 1.0, 1.0]


def test_two_wrong_pixels_give_hand_computed_ious():
    pred = GT.copy()
    pred[0, 2] = 0  # a class-1 pixel called class 0
    pred[2, 0] = 0  # a class-2 pixel called class 0
    m = segmentation_metrics(pred, GT, 3)
    # class 0: tp 4, predicted 6, true 4 -> 4 / 6; class 1: 3 / 4; class 2: 7 / 8.
    expected = [4 / 6, 3 / 4, 7 / 8]
    assert m["iou_per_class"] == pytest.approx(expected, abs=1e-12)
    assert m["miou"] == pytest.approx(55 / 72, abs=1e-12)
    assert m["acc"] == pytest.approx(14 / 16, abs=1e-12)
    assert m["acc_per_class"] == pytest.approx([1.0, 3 / 4, 7 / 8], abs=1e-12)


def test_hungarian_then_metrics_on_noisy_permuted_clusters():
    pred = GT.copy()
    pred[0, 2] = 0
    pred[2, 0] = 0
    clusters = np.array([2, 0, 1])[pred]
    mapped = hungarian_mapping(confusion(clusters, GT, 3, 3))[clusters]
    assert segmentation_metrics(mapped, GT, 3)["miou"] == pytest.approx(55 / 72, abs=1e-12)


def test_ignore_pixels_count_nowhere():
    gt = GT.copy()
    gt[3, :] = 255
    pred = GT.copy()
    pred[3, :] = 1  # wrong, but on ignored pixels
    m = segmentation_metrics(pred, gt, 3)
    assert m["miou"] == 1.0 and m["acc"] == 1.0


def test_classes_absent_from_the_ground_truth_are_left_out_of_the_mean():
    gt = GT.copy()
    pred = GT.copy()
    pred[0, 0] = 3  # class 3 is predicted once but never occurs in the ground truth
    m = segmentation_metrics(pred, gt, 4)
    assert math.isnan(m["iou_per_class"][3]) and math.isnan(m["acc_per_class"][3])
    # class 0: tp 3, union 4 -> 0.75; classes 1, 2 perfect; class 3 excluded.
    assert m["miou"] == pytest.approx((0.75 + 1 + 1) / 3, abs=1e-12)
    assert m["acc"] == pytest.approx(15 / 16, abs=1e-12)


def test_all_ignored_ground_truth_raises():
    with pytest.raises(ValueError, match="no labelled pixel"):
        segmentation_metrics(np.zeros(4, np.int64), np.full(4, 255), 3)
