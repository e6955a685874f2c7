import numpy as np
import pytest

from vice.eval.slots import slot_usage


def test_counts_of_a_hand_made_case():
    assign = np.array([[[0, 0], [1, 1]], [[1, 1], [1, 1]]])
    instances = np.array([[[5, 5], [7, 8]], [[0, 0], [0, 3]]])
    out = slot_usage(assign, instances, num_prototypes=4)
    assert out["prototypes_used"] == 2
    assert out["prototypes_used_frac"] == 0.5
    assert out["slots_per_image"] == 1.5  # 2 and 1
    assert out["objects_per_image"] == 2.5  # 3 and 2
    assert out["slots_per_object"] == pytest.approx(0.6)


def test_collapse_to_one_prototype():
    instances = np.random.default_rng(0).integers(0, 5, (3, 8, 8))
    out = slot_usage(np.zeros_like(instances), instances, num_prototypes=16)
    assert out["prototypes_used"] == 1 and out["slots_per_image"] == 1.0


def test_shapes_and_range_checked():
    with pytest.raises(ValueError, match="differ in shape"):
        slot_usage(np.zeros((1, 2, 2), int), np.zeros((1, 3, 3), int), 2)
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        slot_usage(np.full((1, 2, 2), 2), np.zeros((1, 2, 2), int), 2)
