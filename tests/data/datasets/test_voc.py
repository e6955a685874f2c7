"""VOCSource on a miniature VOC2012 tree: splits, labels, instances, foreground, errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from tests.data.datasets.fixtures import (
    VOC_AUG_ONLY_IDS,
    VOC_IDS,
    make_voc,
    voc_maps,
    write_palette_png,
    write_truncated_jpeg,
)
from vice.config import DataConfig
from vice.data.datasets import DATASETS, build_source
from vice.data.datasets.base import IGNORE_INDEX, DatasetRootError
from vice.data.datasets.voc import CLASS_NAMES, VOCSource
from vice.data.image_io import UnreadableImageError


@pytest.fixture
def voc_root(tmp_path):
    return make_voc(tmp_path / "VOC2012")


@pytest.mark.parametrize(
    ("split", "ids"),
    [
        ("train", VOC_IDS["train"]),
        ("val", VOC_IDS["val"]),
        ("trainval", VOC_IDS["train"] + VOC_IDS["val"]),
        ("trainaug", VOC_IDS["train"] + VOC_AUG_ONLY_IDS),
    ],
)
def test_split_lists_in_order(voc_root, split, ids):
    source = VOCSource(str(voc_root), split=split)
    assert len(source) == len(ids)
    assert [source.image_id(i) for i in range(len(source))] == list(ids)
    assert source.key(0) == f"JPEGImages/{ids[0]}.jpg"
    assert source.path(1) == voc_root / "JPEGImages" / f"{ids[1]}.jpg"
    image = source.load_image(0)
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    assert not source.has_labels and source.num_classes is None and source.class_names == ()


def test_registered_and_built_with_labels_for_evaluation(voc_root):
    assert DATASETS["voc"] is VOCSource
    cfg = DataConfig(dataset="voc", root=str(voc_root), split="trainaug")
    train = build_source(cfg)
    assert isinstance(train, VOCSource) and len(train) == 5 and not train.has_labels
    val = build_source(cfg, split=cfg.eval_split, labels=True)
    assert len(val) == 2 and val.has_labels and val.num_classes == 21
    assert val.class_names == CLASS_NAMES


def test_conf_data_voc_has_maskcontrast_views(voc_root):
    # The group file typed by the schema it is composed into (the compose API costs seconds).
    path = Path(__file__).resolve().parents[3] / "conf" / "data" / "voc.yaml"
    assert OmegaConf.is_missing(OmegaConf.load(path), "root")  # the user passes data.root=
    merged = OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.load(path))
    merged.root = str(voc_root)
    data = OmegaConf.to_object(merged)
    data.views.validate()
    assert (data.dataset, data.split, data.eval_split) == ("voc", "trainaug", "val")
    views = data.views
    assert (views.view_size, views.num_views) == (224, 2)
    assert (views.crop_scale_min, views.crop_scale_max) == (0.2, 1.0)
    assert (views.brightness, views.contrast, views.saturation, views.hue) == (0.4, 0.4, 0.4, 0.1)
    assert (views.jitter_prob, views.gray_prob, views.flip_prob, views.blur_prob) == (
        0.8,
        0.2,
        0.5,
        0.0,
    )
    assert views.mean == [0.485, 0.456, 0.406] and views.std == [0.229, 0.224, 0.225]
    assert len(build_source(data)) == 5 and len(build_source(data, "val", labels=True)) == 2


def test_standard_class_names():
    assert len(CLASS_NAMES) == 21 == len(set(CLASS_NAMES))
    assert CLASS_NAMES[:3] == ("background", "aeroplane", "bicycle")
    assert (CLASS_NAMES[15], CLASS_NAMES[20]) == ("person", "tvmonitor")


def test_palette_indices_come_back_as_class_ids(voc_root):
    source = VOCSource(str(voc_root), split="val", labels=True)
    with Image.open(source.label_path(0)) as img:
        assert img.mode == "P"  # as released: colours on disk, ids in the indices
    for i, image_id in enumerate(VOC_IDS["val"]):
        label = source.load_label(i)
        expected, _ = voc_maps(image_id)
        assert label.dtype == np.int64 and label.shape == (12, 16)
        np.testing.assert_array_equal(label, expected.astype(np.int64))
        # 2009_000012: object 1 is class 1 + 12 % 20 = 13 (horse), object 2 is a person.
    assert set(np.unique(source.load_label(1))) == {0, 13, 15, IGNORE_INDEX}
    assert (source.load_label(1) == IGNORE_INDEX).sum() == (5 * 6 - 12) + (5 * 5 - 9)


def test_ids_beyond_the_classes_are_ignored(voc_root):
    source = VOCSource(str(voc_root), split="train", labels=True)
    ids = np.resize(np.array([0, 20, 21, 254, 255, 0, 0, 0], np.uint8), (12, 16))
    write_palette_png(source.label_path(0), ids)
    assert source.load_label(0)[0, :5].tolist() == [0, 20, 255, 255, 255]
    assert source.load_foreground(0)[0, :5].tolist() == [False, True, False, False, False]


def test_instances_of_the_release_splits(voc_root):
    source = VOCSource(str(voc_root), split="trainval", labels=True)
    assert source.has_instances
    assert source.instance_path(2) == voc_root / "SegmentationObject" / "2008_000008.png"
    inst = source.load_instances(2)
    _, expected = voc_maps("2008_000008")
    assert inst.dtype == np.int64
    np.testing.assert_array_equal(inst, expected.astype(np.int64))
    # Objects 1 and 2 (12 and 9 px), background 0, the void band its own id 255.
    counts = dict(zip(*np.unique(inst, return_counts=True), strict=True))
    assert counts == {0: 12 * 16 - 55, 1: 12, 2: 9, 255: 18 + 16}
    label = source.load_label(2)
    for k in (1, 2):
        assert np.unique(label[inst == k]).size == 1  # one class per object


@pytest.mark.parametrize(
    ("kwargs", "split", "labels"),
    [({}, "train", False), ({}, "trainaug", True), ({"objects": False}, "val", True)],
)
def test_no_instances(tmp_path, kwargs, split, labels):
    source = VOCSource(str(make_voc(tmp_path / "VOC2012", **kwargs)), split=split, labels=labels)
    assert not source.has_instances and source.instance_path(0) is None
    with pytest.raises(NotImplementedError, match="VOCSource has no instance maps"):
        source.load_instances(0)


def test_a_partial_segmentation_object_dir_gives_no_instances(voc_root):
    (voc_root / "SegmentationObject" / "2007_000033.png").unlink()
    assert not VOCSource(str(voc_root), split="val", labels=True).has_instances
    assert VOCSource(str(voc_root), split="train", labels=True).has_instances


@pytest.mark.parametrize("labels", [False, True])
def test_foreground_is_every_object_pixel(voc_root, labels):
    source = VOCSource(str(voc_root), split="train", labels=labels)
    assert source.has_foreground  # read from the label maps, with or without labels=True
    for i, image_id in enumerate(VOC_IDS["train"]):
        assert source.foreground_path(i) == voc_root / "SegmentationClass" / f"{image_id}.png"
        fg = source.load_foreground(i)
        classes, _ = voc_maps(image_id)
        assert fg.dtype == np.bool_ and fg.shape == (12, 16)
        np.testing.assert_array_equal(fg, (classes != 0) & (classes != 255))
        assert fg.sum() == 21  # two boxes of 12 and 9 px; the void bands are not foreground


def test_no_foreground_without_label_maps(voc_root):
    shutil.rmtree(voc_root / "SegmentationClass")
    source = VOCSource(str(voc_root), split="val")
    assert not source.has_foreground and source.foreground_path(0) is None
    with pytest.raises(NotImplementedError, match="VOCSource has no ground-truth foreground"):
        source.load_foreground(0)


def test_trainaug_reads_the_sbd_labels(voc_root):
    source = VOCSource(str(voc_root), split="trainaug", labels=True)
    assert len(source) == 5 and not source.has_instances
    for i in range(len(source)):
        image_id = source.image_id(i)
        assert source.label_path(i) == voc_root / "SegmentationClassAug" / f"{image_id}.png"
        assert source.foreground_path(i) == source.label_path(i)
        classes, _ = voc_maps(image_id)
        # The Aug maps have no void band (SBD draws none): the band reads as background.
        np.testing.assert_array_equal(
            source.load_label(i), np.where(classes == 255, 0, classes).astype(np.int64)
        )
        assert source.load_foreground(i).sum() == 21


def test_trainaug_without_the_aug_dir_falls_back_to_segmentation_class(tmp_path):
    root = make_voc(tmp_path / "VOC2012", aug_labels=False)
    source = VOCSource(str(root), split="trainaug", labels=True)
    assert len(source) == 5 and source.has_foreground
    assert source.label_path(0) == root / "SegmentationClass" / "2007_000032.png"
    classes, _ = voc_maps("2007_000032")
    np.testing.assert_array_equal(source.load_label(0), classes.astype(np.int64))
    # The SBD-only ids have no SegmentationClass map: a clear error at load.
    index = [source.image_id(i) for i in range(5)].index(VOC_AUG_ONLY_IDS[0])
    missing = root / "SegmentationClass" / f"{VOC_AUG_ONLY_IDS[0]}.png"
    for load in (source.load_label, source.load_foreground):
        with pytest.raises(DatasetRootError) as info:
            load(index)
        text = str(info.value)
        assert f"label map {missing} of image {source.path(index)} does not exist" in text
        assert f"trainaug needs the SBD labels in {root / 'SegmentationClassAug'}" in text


def test_missing_label_map_of_a_release_split(voc_root):
    (voc_root / "SegmentationClass" / "2007_000033.png").unlink()
    source = VOCSource(str(voc_root), split="val", labels=True)  # construction still works
    with pytest.raises(DatasetRootError, match=r"label map .*2007_000033\.png of image .*"):
        source.load_label(0)
    assert source.load_label(1).shape == (12, 16)


def test_unknown_split_names_the_key_and_choices(voc_root):
    with pytest.raises(ValueError) as info:
        VOCSource(str(voc_root), split="test")
    assert str(info.value) == (
        "invalid config value data.split='test': PASCAL VOC splits are train, val, trainval, "
        "trainaug (trainaug: pretraining, val: evaluation)"
    )


def test_missing_or_unset_root(tmp_path):
    with pytest.raises(DatasetRootError, match=r"PASCAL VOC data set at '<unset>': data\.root is"):
        VOCSource(None, split="val")
    with pytest.raises(DatasetRootError) as info:
        VOCSource(str(tmp_path / "nope"), split="val")
    text = str(info.value)
    assert f"PASCAL VOC data set at '{tmp_path / 'nope'}': the directory does not exist" in text
    assert "JPEGImages/2007_000032.jpg" in text and "Fix: set data.root" in text


def test_missing_image_dir(voc_root):
    shutil.rmtree(voc_root / "JPEGImages")
    with pytest.raises(DatasetRootError, match=re.escape(f"missing directory {voc_root}")):
        VOCSource(str(voc_root), split="val")


def test_missing_split_list_names_it_and_the_lists_present(tmp_path):
    root = make_voc(tmp_path / "VOC2012", trainaug=False)
    with pytest.raises(DatasetRootError) as info:
        VOCSource(str(root), split="trainaug")
    text = str(info.value)
    path = root / "ImageSets" / "Segmentation" / "trainaug.txt"
    assert f"the list of split 'trainaug' is missing: {path}" in text
    assert "(lists present: train, trainval, val); set data.split to one of them" in text
    assert "trainaug.txt is not part of the VOC2012 release" in text
    (path.parent / "val.txt").unlink()
    with pytest.raises(DatasetRootError, match=r"lists present: train, trainval\)"):
        VOCSource(str(root), split="val")


def test_split_list_naming_missing_images(voc_root):
    for image_id in VOC_IDS["train"][1:]:
        (voc_root / "JPEGImages" / f"{image_id}.jpg").unlink()
    with pytest.raises(DatasetRootError) as info:
        VOCSource(str(voc_root), split="train")
    text = str(info.value)
    path = voc_root / "ImageSets" / "Segmentation" / "train.txt"
    assert f"2 of the 3 ids in the split list {path} have no image" in text
    assert "(first: 2007_000039, 2008_000008)" in text
    assert len(VOCSource(str(voc_root), split="val")) == 2


def test_empty_split_list(voc_root):
    (voc_root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    with pytest.raises(DatasetRootError, match=r"the split list .*val\.txt is empty"):
        VOCSource(str(voc_root), split="val")


def test_labels_need_the_label_dir(voc_root):
    shutil.rmtree(voc_root / "SegmentationClass")
    with pytest.raises(DatasetRootError, match=r"missing label directory .*SegmentationClass"):
        VOCSource(str(voc_root), split="val", labels=True)


def test_label_of_another_size_names_both_files_and_sizes(voc_root):
    source = VOCSource(str(voc_root), split="val", labels=True)
    write_palette_png(source.label_path(0), np.zeros((10, 16), np.uint8))
    expected = (
        f"PASCAL VOC label map {source.label_path(0)} is 16x10 (width x height) but its image "
        f"{source.path(0)} is 16x12"
    )
    for load in (source.load_label, source.load_foreground):
        with pytest.raises(ValueError, match=re.escape(expected)):
            load(0)


def test_corrupt_image(voc_root):
    write_truncated_jpeg(voc_root / "JPEGImages" / "2007_000033.jpg")
    source = VOCSource(str(voc_root), split="val")
    with pytest.raises(UnreadableImageError, match=r"2007_000033\.jpg"):
        source.load_image(0)
    assert source.load_image(1).shape == (12, 16, 3)


def test_fixture_saliency_maps(tmp_path):
    root = make_voc(tmp_path / "a", saliency=True)
    source = VOCSource(str(root), split="trainaug")
    for i in range(len(source)):
        with Image.open(root / "saliency" / f"{source.image_id(i)}.png") as img:
            assert img.mode == "L"
            saliency = np.asarray(img)
        np.testing.assert_array_equal(saliency, source.load_foreground(i).astype(np.uint8) * 255)
    wrong = make_voc(tmp_path / "b", saliency=True, saliency_size=(6, 8))
    with Image.open(wrong / "saliency" / "2007_000033.png") as img:
        assert img.size == (8, 6)
