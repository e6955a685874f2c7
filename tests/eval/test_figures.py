import json

import numpy as np
import pytest
from PIL import Image

from vice.eval.figures import (
    class_palette,
    colourise,
    default_iou_results,
    iou_results,
    per_class_iou_figure,
    segmentation_figure,
    write_per_class_iou_figure,
)


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


def _metrics(k: int, with_linear: bool = True) -> dict:
    rng = np.random.default_rng(k)
    m = {"num_images": 8, "num_classes": k, "class_names": [f"c{i}" for i in range(k)]}
    for name in ["clustering.16", f"clustering.{k}", *(["linear"] if with_linear else [])]:
        ious = rng.uniform(0, 1, k).round(3).tolist()
        ious[1] = None  # a class absent from the ground truth, as metrics.json stores it
        m[f"{name}.iou_per_class"] = ious
        m[f"{name}.miou"] = float(np.mean([v for v in ious if v is not None]))
    return m


def test_per_class_iou_png_size_and_content(tmp_path):
    m = _metrics(6)
    (tmp_path / "metrics.json").write_text(json.dumps(m))
    path = write_per_class_iou_figure(tmp_path)
    assert path == tmp_path / "per_class_iou.png"
    img = Image.open(path)
    # Default results: the Hungarian k-means (smallest C >= 6 classes) and the probe.
    assert default_iou_results(m) == ["clustering.6", "linear"]
    # (1 + 2 results) text lines * 20 + 12, 6 classes * (2 bars * 14 - 2 + 8), 40 for the axis.
    assert img.size == (900, 3 * 20 + 12 + 6 * 34 + 40) == (900, 316)
    assert img.format == "PNG" and img.mode == "RGB"
    assert not list(tmp_path.glob(".*.tmp"))
    # Each result colour is drawn; a longer bar (higher IoU) covers more pixels.
    arr = np.asarray(img).reshape(-1, 3)
    blue = (arr == (31, 119, 180)).all(axis=1).sum()
    orange = (arr == (255, 127, 14)).all(axis=1).sum()
    assert blue > 0 and orange > 0
    sum_c6 = sum(v for v in m["clustering.6.iou_per_class"] if v is not None)
    sum_lin = sum(v for v in m["linear.iou_per_class"] if v is not None)
    assert (blue > orange) == (sum_c6 > sum_lin)

    # More classes and results: the height follows the formula; the width stays.
    three = per_class_iou_figure(
        _metrics(20), results=["clustering.16", "clustering.20", "linear"], width=700
    )
    assert three.size == (700, 4 * 20 + 12 + 20 * (3 * 14 - 2 + 8) + 40)


def test_per_class_iou_accepts_nan_and_fractions_of_evaluate():
    m = {"linear.iou_per_class": [0.5, float("nan"), 1.0], "linear.miou": 0.75}
    assert per_class_iou_figure(m).size == (900, 2 * 20 + 12 + 3 * (1 * 14 - 2 + 8) + 40)
    assert iou_results(m) == {"linear": [0.5, None, 1.0]}


def test_per_class_iou_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no per-class IoUs in metrics .*got an empty dict"):
        per_class_iou_figure({})
    with pytest.raises(ValueError, match=r"got \['linear.miou'\]"):
        per_class_iou_figure({"linear.miou": 0.3})
    with pytest.raises(ValueError, match=r"no per-class IoUs for \['clustering.99'\]"):
        per_class_iou_figure(_metrics(4), results=["clustering.99"])
    with pytest.raises(ValueError, match="per-class lists differ"):
        per_class_iou_figure({"a.iou_per_class": [0.1], "b.iou_per_class": [0.1, 0.2]}, ["a", "b"])
    with pytest.raises(ValueError, match=r"outside \[0, 1\]: \[31.5\]"):
        per_class_iou_figure({"linear.iou_per_class": [0.2, 31.5]})
    with pytest.raises(FileNotFoundError, match="run the evaluation first"):
        write_per_class_iou_figure(tmp_path)
    assert not (tmp_path / "per_class_iou.png").exists()
