"""CityscapesSource on a miniature leftImg8bit / gtFine tree."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.data.datasets.fixtures import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_INSTANCE_IDS,
    CITYSCAPES_LABEL_IDS,
    label_pattern,
    make_cityscapes_tree,
    write_truncated_jpeg,
)
from vice.data.datasets.base import IGNORE_INDEX, DatasetRootError
from vice.data.datasets.cityscapes import CLASS_NAMES, CityscapesSource
from vice.data.image_io import UnreadableImageError


@pytest.fixture
def city_root(tmp_path):
    return make_cityscapes_tree(tmp_path / "cityscapes")


@pytest.mark.parametrize(
    ("split", "count"),
    [
        ("train", 3),
        ("val", 2),
        ("test", 1),
        ("train_extra", 1),
        ("train+val", 5),
        ("val+train+val", 5),
        ("all", 7),
    ],
)
def test_split_lengths(city_root, split, count):
    assert len(CityscapesSource(str(city_root), split=split)) == count


def test_all_uses_the_splits_present(city_root):
    shutil.rmtree(city_root / "leftImg8bit" / "train_extra")
    assert len(CityscapesSource(str(city_root), split="all")) == 6


def test_keys_sorted_by_city_then_frame(city_root):
    source = CityscapesSource(str(city_root), split="train+val")
    keys = [source.key(i) for i in range(len(source))]
    assert keys == [
        "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
        "leftImg8bit/train/aachen/aachen_000001_000029_leftImg8bit.png",
        "leftImg8bit/train/bochum/bochum_000000_000019_leftImg8bit.png",
        "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png",
        "leftImg8bit/val/frankfurt/frankfurt_000001_000029_leftImg8bit.png",
    ]
    assert source.path(0) == city_root / keys[0]
    image = source.load_image(0)
    assert image.shape == (8, 16, 3) and image.dtype == np.uint8


def test_without_labels(city_root):
    source = CityscapesSource(str(city_root), split="all")
    assert not source.has_labels and source.num_classes is None
    with pytest.raises(NotImplementedError):
        source.load_label(0)


def test_label_mapping_is_exact(city_root):
    source = CityscapesSource(str(city_root), split="train+val", labels=True)
    assert source.num_classes == 27 and len(source.class_names) == 27
    assert CLASS_NAMES[0] == "road" and CLASS_NAMES[19] == "car" and CLASS_NAMES[26] == "bicycle"
    raw = label_pattern(CITYSCAPES_LABEL_IDS, (8, 16))
    expected = label_pattern(CITYSCAPES_CLASSES, (8, 16))
    # void 0, 6 -> ignore; road 7 -> 0; sidewalk 8 -> 1; person 24 -> 17; car 26 -> 19;
    # bicycle 33 -> 26; 34 (not a class) and 255 (license plate, -1) -> ignore.
    assert raw[0, :9].tolist() == [0, 6, 7, 8, 24, 26, 33, 34, 255]
    assert expected[0, :9].tolist() == [255, 255, 0, 1, 17, 19, 26, IGNORE_INDEX, 255]
    for i in range(len(source)):
        label = source.load_label(i)
        assert label.dtype == np.int64
        np.testing.assert_array_equal(label, expected)


@pytest.mark.parametrize("split", ["test", "train_extra", "train+test", "all"])
def test_labels_only_for_train_and_val(city_root, split):
    with pytest.raises(ValueError, match="labels exist only for 'train' and 'val'"):
        CityscapesSource(str(city_root), split=split, labels=True)


def test_missing_label_map_fails(city_root):
    missing = city_root / "gtFine/val/frankfurt/frankfurt_000001_000029_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(DatasetRootError) as info:
        CityscapesSource(str(city_root), split="val", labels=True)
    assert str(missing) in str(info.value)


def test_instance_maps_of_train_and_val(city_root):
    source = CityscapesSource(str(city_root), split="train+val")  # no labels=True needed
    assert source.has_instances and not source.has_labels
    path = source.instance_path(3)
    assert path == city_root / "gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_instanceIds.png"
    # Raw 16-bit ids: labelId * 1000 + k for instances, the bare labelId for stuff and crowds.
    expected = np.resize(np.array(CITYSCAPES_INSTANCE_IDS), 8 * 16).reshape(8, 16)
    for i in range(len(source)):
        ids = source.load_instances(i)
        assert ids.dtype == np.int64
        np.testing.assert_array_equal(ids, expected)


@pytest.mark.parametrize("split", ["test", "train_extra", "train+test", "all"])
def test_no_instances_outside_train_and_val(city_root, split):
    source = CityscapesSource(str(city_root), split=split)
    assert not source.has_instances and source.instance_path(0) is None
    with pytest.raises(NotImplementedError, match="no instance maps"):
        source.load_instances(0)


def test_missing_instance_map_fails_loudly(city_root):
    source = CityscapesSource(str(city_root), split="val")
    source.instance_path(1).unlink()
    source.load_instances(0)
    # A broken gtFine download, not a corrupt image for the loader to skip.
    with pytest.raises(DatasetRootError, match=r"instance map missing: .*frankfurt_000001"):
        source.load_instances(1)


def test_unknown_split_names_key_value_and_choices(city_root):
    with pytest.raises(ValueError) as info:
        CityscapesSource(str(city_root), split="training")
    message = str(info.value)
    assert "data.split='training'" in message
    assert "train, val, test, train_extra" in message and "'all'" in message


def test_missing_root(tmp_path):
    with pytest.raises(DatasetRootError) as info:
        CityscapesSource(str(tmp_path))
    message = str(info.value)
    assert str(tmp_path / "leftImg8bit") in message
    assert "aachen_000000_000019_leftImg8bit.png" in message
    assert "gtFine/" in message


def test_unset_root():
    with pytest.raises(DatasetRootError, match=r"data\.root is not set"):
        CityscapesSource(None)


def test_missing_split_directory(tmp_path):
    root = make_cityscapes_tree(tmp_path, frames={"train": {"aachen": 1}})
    with pytest.raises(DatasetRootError) as info:
        CityscapesSource(str(root), split="train+val")
    assert str(root / "leftImg8bit" / "val") in str(info.value)


def test_empty_split(tmp_path):
    (tmp_path / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    (tmp_path / "leftImg8bit" / "train" / "aachen" / "README").write_text("nothing")
    with pytest.raises(DatasetRootError) as info:
        CityscapesSource(str(tmp_path), split="all")
    message = str(info.value)
    assert str(tmp_path) in message and "no images found for split 'all'" in message
    assert "leftImg8bit/" in message


def test_corrupt_image_raises_unreadable(city_root):
    path = city_root / "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png"
    write_truncated_jpeg(path)  # wrong content under a .png name, cut short
    source = CityscapesSource(str(city_root), split="test")
    with pytest.raises(UnreadableImageError):
        source.load_image(0)
