import cv2
import numpy as np
import pytest
from PIL import Image

from vice.config import ViewConfig
from vice.data.views import (
    ViewBox,
    crop_ids,
    crop_image,
    crop_images,
    sample_view_boxes,
    standardise,
    view_to_source,
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


def _old_crop_ids(ids, box, size):
    """The 2-D fancy-index reference of crop_ids."""
    h, w = ids.shape
    y, x = view_to_source(box, size, np.arange(size)[:, None], np.arange(size)[None, :])
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    return np.where(inside, ids[np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)], -1)


def test_boxes_lie_on_whole_source_pixels():
    cfg = ViewConfig(view_size=100)
    img = np.random.default_rng(0).integers(0, 255, (120, 333, 3), dtype=np.uint8)
    rng = np.random.default_rng(3)
    for _ in range(100):
        for b in sample_view_boxes(rng, img, cfg):
            assert b.side == int(b.side) and b.x0 == int(b.x0) and b.y0 == int(b.y0)
            # exact in the sample's float32 boxes_V3 too
            assert np.float32(b.cx) == b.cx and np.float32(b.cy) == b.cy


def test_crop_ids_equals_the_pointwise_mapping():
    ids = np.random.default_rng(0).integers(0, 500, (37, 53)).astype(np.int32)
    for box in [
        ViewBox(20.0, 15.0, 20.0, False),
        ViewBox(20.0, 15.0, 21.0, True),  # half-pixel center, flipped
        ViewBox(26.5, 18.5, 61.0, True),  # larger than the source: -1 around it
        ViewBox(3.25, 30.1, 17.3, False),  # any box, snapped or not
    ]:
        for size in (16, 24, 50):
            np.testing.assert_array_equal(crop_ids(ids, box, size), _old_crop_ids(ids, box, size))


@pytest.mark.parametrize(
    "box",
    [
        ViewBox(40.0, 30.0, 40.0, False),  # same size: a plain crop
        ViewBox(41.5, 30.5, 57.0, False),  # shrinking
        ViewBox(40.0, 31.0, 18.0, False),  # enlarging
        ViewBox(40.5, 32.5, 95.0, False),  # past the source: black there
    ],
)
def test_crop_image_is_an_antialiased_resize_of_the_box(box):
    img = np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (5, 5), 1.5)  # some spatial correlation
    size = 40
    out = crop_image(img, box, size)
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    # Pillow's resize of the same integer box of the zero-padded source (antialiased bicubic)
    pad = 40
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
    x0, y0, s = int(box.x0) + pad, int(box.y0) + pad, int(box.side)
    crop = Image.fromarray(np.ascontiguousarray(padded[y0 : y0 + s, x0 : x0 + s]))
    ref = np.asarray(crop.resize((size, size), Image.BICUBIC)).astype(int)
    np.testing.assert_allclose(out.astype(int)[2:-2, 2:-2], ref[2:-2, 2:-2], atol=2)
    # flipping mirrors the view columns, as view_to_source says
    flipped = crop_image(img, ViewBox(box.cx, box.cy, box.side, True), size)
    np.testing.assert_array_equal(flipped, out[:, ::-1])
    # pixels whose source point lies outside the image are black
    _, x = view_to_source(box, size, np.zeros(size, int), np.arange(size))
    y, _ = view_to_source(box, size, np.arange(size), np.zeros(size, int))
    outside_rows = (y < -3) | (y >= 64 + 3)
    assert (out[outside_rows] == 0).all()
    assert (out[:, (x < -3) | (x >= 80 + 3)] == 0).all()


def test_crop_images_pads_once_and_matches_single_crops():
    img = np.random.default_rng(2).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    boxes = [ViewBox(30.0, 25.0, 20.0, True), ViewBox(30.5, 25.5, 71.0)]  # the 2nd needs padding
    many = crop_images(img, boxes, 32)
    for b, v in zip(boxes, many, strict=True):
        np.testing.assert_array_equal(v, crop_image(img, b, 32))


def test_crop_image_rejects_boxes_off_the_pixel_grid():
    img = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="whole source pixels"):
        crop_image(img, ViewBox(10.25, 10.0, 8.0), 8)


def test_standardise_is_an_antialiased_bicubic_resize():
    rng = np.random.default_rng(4)
    img = cv2.GaussianBlur(rng.integers(0, 255, (300, 420, 3), dtype=np.uint8), (5, 5), 1.0)
    for short in (120, 500):  # shrink, enlarge
        out = standardise(img, short, 2048)
        ref = np.asarray(Image.fromarray(img).resize(out.shape[1::-1], Image.BICUBIC))
        assert np.abs(out.astype(int) - ref).max() <= 2
    assert standardise(img, 300, 2048) is img  # already standard: untouched
