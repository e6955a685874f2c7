import numpy as np
from PIL import Image

from vice.eval.figures import class_palette, colourise, segmentation_figure


def test_palette_is_fixed_distinct_and_never_black():
    p = class_palette(64)
    assert p.shape == (64, 3) and p.dtype == np.uint8
    assert len({tuple(c) for c in p}) == 64
    assert not (p == 0).all(axis=1).any()
    np.testing.assert_array_equal(class_palette(27), p[:27])  # class c keeps its colour


def test_colourise_draws_ignore_black():
    ids = np.array([[0, 1], [255, 2]])
    rgb = colourise(ids, class_palette(3))
    np.testing.assert_array_equal(rgb[1, 0], [0, 0, 0])
    np.testing.assert_array_equal(rgb[0, 1], class_palette(3)[1])


def test_figure_layout_and_columns():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, (3, 32, 32))
    labels[:, :8, :8] = 255
    pred = rng.integers(0, 4, (3, 32, 32))
    full = segmentation_figure(images, labels, pred, pred, 4, rows=2, class_names=list("abcd"))
    no_linear = segmentation_figure(images, labels, pred, None, 4, rows=5)
    assert isinstance(full, Image.Image) and full.mode == "RGB"
    # 32 px crops are enlarged to 160 px tiles; one column fewer without the probe.
    assert full.width - no_linear.width == 160 + 6
    assert no_linear.height > full.height  # rows=5 is clipped to the 3 images, not 2
    # The ground-truth column (second tile) shows each row's ignored corner in black.
    arr = np.asarray(full)
    gt_x = 6 + 160 + 6 + 10
    assert (arr[:, gt_x] == 0).all(axis=1).sum() >= 2 * 8 * 5  # 8 px * zoom 5, two rows
