import numpy as np
import pytest

from vice.config import ViewConfig
from vice.data.views import (
    ViewBox,
    crop_ids,
    sample_view_boxes,
    standardise,
)


@pytest.mark.parametrize(
    "shape,expected",
    [((100, 200), (500, 1000)), ((600, 300), (1000, 500)), ((50, 5000), (20, 2048))],
)
def test_standardise_short_side_and_cap(shape, expected):
    out = standardise(np.zeros((*shape, 3), np.uint8), 500, 2048)
    assert out.shape == (*expected, 3)


def test_boxes_contain_center_view_center_and_stay_inside():
    cfg = ViewConfig(view_size=100)
    img = np.zeros((500, 667, 3), np.uint8)
    img[100:400, 200:500] = 255
    rng = np.random.default_rng(0)
    for _ in range(200):
        boxes = sample_view_boxes(rng, img, cfg)
        assert len(boxes) == 5
        c = boxes[0]
        for b in boxes:
            assert 50 - 1e-6 <= b.side <= 150 + 1e-6
            assert b.contains(c.cx, c.cy)
            assert b.x0 >= 0 and b.x0 + b.side <= 667 + 1e-6
            assert b.y0 >= 0 and b.y0 + b.side <= 500 + 1e-6


def test_surrounding_views_fill_their_sectors():
    cfg = ViewConfig(view_size=100, crop_scale_min=1.0, crop_scale_max=1.0)
    img = np.zeros((700, 700, 3), np.uint8)  # flat: uniform center, rarely clipped
    rng = np.random.default_rng(1)
    gaps = []
    for _ in range(100):
        boxes = sample_view_boxes(rng, img, cfg)
        c = boxes[0]
        angles = sorted(np.arctan2(b.cy - c.cy, b.cx - c.cx) % (2 * np.pi) for b in boxes[1:])
        gaps += list(np.diff(angles))
    # Four views in four sectors: neighbours sit about a quarter turn apart.
    assert 1.0 < np.median(gaps) < 2.1


def test_center_view_prefers_edges():
    cfg = ViewConfig(view_size=20, crop_scale_min=1.0, crop_scale_max=1.0, edge_floor=0.0)
    img = np.zeros((400, 400, 3), np.uint8)
    img[:, 300:] = 255  # one vertical edge at x = 300
    rng = np.random.default_rng(2)
    xs = [sample_view_boxes(rng, img, cfg)[0].cx for _ in range(200)]
    assert np.mean(np.abs(np.array(xs) - 300) < 20) > 0.9


def test_crop_ids_outside_source_is_minus_one():
    ids = np.arange(100, dtype=np.int32).reshape(10, 10)
    box = ViewBox(cx=0.0, cy=5.0, side=10.0)
    out = crop_ids(ids, box, 10)
    assert (out[:, :5] == -1).all()
    np.testing.assert_array_equal(out[:, 5:], ids[:, :5])
