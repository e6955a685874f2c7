"""The evaluation split's checks: the quick scan at launch and the whole read in the eval job."""

import numpy as np
import pytest
from PIL import Image

from tests.data.datasets.fixtures import VOC_IDS, make_voc, write_palette_png
from vice.config import EvalConfig
from vice.data.datasets.voc import VOCSource
from vice.eval.evaluate import evaluate
from vice.eval.features import load_eval_set_with_instances
from vice.eval.scan import scan_eval_split


@pytest.fixture
def voc(tmp_path):
    return make_voc(tmp_path / "VOC2012")


def _val(root):
    return VOCSource(root, split="val", labels=True)


def test_a_good_split_passes_reading_a_bounded_sample(voc):
    assert scan_eval_split(_val(voc)) == 2
    assert scan_eval_split(_val(voc), sample=1) == 1


def test_a_label_map_of_another_size_names_both_files(voc):
    first = VOC_IDS["val"][0]
    write_palette_png(voc / "SegmentationClass" / f"{first}.png", np.zeros((5, 7), np.int64))
    message = (
        f"label map {voc}/SegmentationClass/{first}.png is 7x5 (width x height) but its image "
        f"{voc}/JPEGImages/{first}.jpg is 16x12"
    )
    with pytest.raises(ValueError, match="a label map must match its image") as err:
        scan_eval_split(_val(voc))
    assert message in str(err.value)


def test_check_label_size_names_the_files_of_any_source(voc):
    from vice.eval.scan import check_label_size

    source = _val(voc)
    check_label_size(source, 0, (12, 16), (12, 16))
    with pytest.raises(ValueError) as err:
        check_label_size(source, 0, (12, 16), (6, 8))
    first = VOC_IDS["val"][0]
    assert str(err.value) == (
        f"label map {voc}/SegmentationClass/{first}.png is 8x6 (width x height) but its image "
        f"{voc}/JPEGImages/{first}.jpg is 16x12: a label map must match its image (it is "
        "another image's, or was resized); fix or remove the pair"
    )


def test_an_unreadable_image_or_an_rgb_label_map_is_named(voc):
    last = VOC_IDS["val"][-1]
    (voc / "JPEGImages" / f"{last}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=rf"evaluation split: cannot decode image .*{last}\.jpg"):
        scan_eval_split(_val(voc))
    voc2 = make_voc(voc.parent / "again")
    first = VOC_IDS["val"][0]
    Image.new("RGB", (16, 12)).save(voc2 / "SegmentationClass" / f"{first}.png")
    with pytest.raises(ValueError, match=r"label maps must be single-channel, got mode RGB"):
        scan_eval_split(_val(voc2))


def test_labels_without_any_valid_class_are_refused(voc):
    for image_id in VOC_IDS["val"]:
        write_palette_png(
            voc / "SegmentationClass" / f"{image_id}.png", np.full((12, 16), 255, np.int64)
        )
    with pytest.raises(ValueError, match=r"none of the 2 label maps .* has a valid class id"):
        scan_eval_split(_val(voc))


def test_the_eval_job_skips_and_counts_a_file_that_went_bad_since(voc, tmp_path):
    last = VOC_IDS["val"][-1]
    source = _val(voc)
    assert scan_eval_split(source) == 2
    (voc / "JPEGImages" / f"{last}.jpg").write_bytes(b"truncated")  # after the launch's check
    skipped: list[str] = []
    images, labels, _ = load_eval_set_with_instances(source, 8, 0, skipped)
    assert images.shape[0] == labels.shape[0] == 1
    assert len(skipped) == 1 and f"{last}.jpg" in skipped[0]
    with pytest.raises(Exception, match="cannot decode image"):  # without the list: an error
        load_eval_set_with_instances(source, 8, 0)

    def features(images_NSS3):
        return np.random.default_rng(0).standard_normal((len(images_NSS3), 4, 8, 8))

    import torch

    cfg = EvalConfig(image_size=8, cluster_counts=[2], linear=False, kmeans_iters=2)
    metrics = evaluate(
        None, source, None, cfg, [0.5] * 3, [0.25] * 3, "cpu", tmp_path / "eval",
        features_fn=lambda x: torch.from_numpy(features(x)).float(),
    )  # fmt: skip
    assert metrics["skipped_images"] == 1 and metrics["num_images"] == 1
    assert f"{last}.jpg" in metrics["skipped"][0]
