"""CocoSource on a miniature COCO 2017 / COCO-Stuff tree."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests.data.datasets.fixtures import (
    COCO_COARSE_VALUES,
    COCO_FINE_VALUES,
    COCO_STEMS,
    label_pattern,
    make_coco_tree,
    write_truncated_jpeg,
)
from vice.data.datasets.base import IGNORE_INDEX, DatasetRootError
from vice.data.datasets.coco import COARSE_NAMES, FINE_TO_COARSE, CocoSource
from vice.data.image_io import UnreadableImageError

# The standard COCO-Stuff-27 table (IIC / PiCIE / STEGO) as "fine ids:coarse id" entries,
# written independently of the run/row form in coco.py.
STANDARD_TABLE = (
    "0:9 1-8:11 9-14:8 15-24:7 25-32:6 33-42:10 43-50:5 51-60:2 61-70:3 71-76:0 77-82:1 "
    "83-90:4 91-92:17 93:22 94-95:20 96:22 97:15 98:25 99:16 100:13 101-102:12 103-104:17 "
    "105:23 106-107:15 108:17 109:15 110:21 111:15 112:25 113-117:13 118:22 119:26 "
    "120-121:14 122:15 123:22 124-125:21 126:24 127:20 128:22 129:15 130:17 131:16 132:15 "
    "133:22 134:24 135:21 136:17 137:25 138:16 139:21 140:17 141:22 142:16 143-144:21 "
    "145:25 146:21 147:26 148:21 149:24 150:20 151:17 152:14 153:21 154:26 155:15 156:23 "
    "157:20 158:21 159:24 160:15 161:24 162:22 163:25 164:15 165:20 166-167:17 168:22 "
    "169:14 170-176:18 177-178:26 179-180:19 181:24"
)


def _standard_table() -> dict[int, int]:
    table = {}
    for entry in STANDARD_TABLE.split():
        ids, coarse = entry.split(":")
        first, _, last = ids.partition("-")
        for fine in range(int(first), int(last or first) + 1):
            table[fine] = int(coarse)
    return table


@pytest.fixture
def coco_root(tmp_path):
    return make_coco_tree(tmp_path / "coco")


def test_fine_to_coarse_is_the_standard_table():
    expected = _standard_table()
    assert sorted(expected) == list(range(182))
    assert FINE_TO_COARSE.shape == (182,)
    assert FINE_TO_COARSE.tolist() == [expected[i] for i in range(182)]
    # How many fine classes each coarse class gathers (person 1, wall 7, ...).
    sizes = [6, 6, 10, 10, 8, 8, 8, 10, 6, 1, 10, 8, 2, 6, 4, 11, 4, 11, 7, 2, 6, 11, 9, 2, 6]
    assert np.bincount(FINE_TO_COARSE, minlength=27).tolist() == [*sizes, 5, 5]


def test_coarse_names():
    assert len(COARSE_NAMES) == 27
    named = {COARSE_NAMES[FINE_TO_COARSE[f]] for f in (0, 2, 15, 101, 119, 156, 170, 181)}
    assert named == {"person", "vehicle", "animal", "ceiling", "water", "sky", "wall", "solid"}
    assert COARSE_NAMES[0] == "electronic" and COARSE_NAMES[-1] == "water"


@pytest.mark.parametrize(
    ("split", "count"),
    [
        ("train", 3),
        ("val", 2),
        ("unlabeled", 2),
        ("train+unlabeled", 5),
        ("train+val+unlabeled", 7),
        ("unlabeled+train+train", 5),
    ],
)
def test_split_lengths(coco_root, split, count):
    assert len(CocoSource(str(coco_root), split=split)) == count


def test_default_split_is_train_plus_unlabeled(coco_root):
    default = CocoSource(str(coco_root))
    explicit = CocoSource(str(coco_root), split="train+unlabeled")
    assert [default.key(i) for i in range(len(default))] == [
        explicit.key(i) for i in range(len(explicit))
    ]
    assert len(default) == 5


def test_keys_sorted_and_deterministic(coco_root):
    source = CocoSource(str(coco_root), split="unlabeled+train")
    keys = [source.key(i) for i in range(len(source))]
    train = [f"train2017/{s}.jpg" for s in sorted(COCO_STEMS["train"])]
    unlabeled = [f"unlabeled2017/{s}.jpg" for s in sorted(COCO_STEMS["unlabeled"])]
    assert keys == train + unlabeled
    assert source.path(0) == coco_root / "train2017" / "000000000009.jpg"


def test_images_load_as_rgb_uint8(coco_root):
    source = CocoSource(str(coco_root), split="train")
    for i in range(len(source)):  # the last train image is a grayscale JPEG
        image = source.load_image(i)
        assert image.shape == (6, 8, 3) and image.dtype == np.uint8


def test_without_labels(coco_root):
    source = CocoSource(str(coco_root), split="train", labels=False)
    assert not source.has_labels
    assert source.num_classes is None
    assert source.class_names == ()
    with pytest.raises(NotImplementedError):
        source.load_label(0)


def test_label_mapping_is_exact(coco_root):
    source = CocoSource(str(coco_root), split="train+val", labels=True, curated=False)
    assert source.has_labels and source.num_classes == 27
    assert source.class_names == COARSE_NAMES
    assert len(source) == 5
    raw = label_pattern(COCO_FINE_VALUES, (6, 8))
    expected = label_pattern(COCO_COARSE_VALUES, (6, 8))
    assert raw[0, :5].tolist() == [0, 1, 91, 181, 255]
    assert expected[0, :5].tolist() == [9, 11, 17, 24, IGNORE_INDEX]
    for i in range(len(source)):
        label = source.load_label(i)
        assert label.dtype == np.int64
        np.testing.assert_array_equal(label, expected)


def test_labels_keep_only_images_with_a_label_map(coco_root):
    (coco_root / "stuffthingmaps_trainval2017" / "train2017" / "000000000025.png").unlink()
    source = CocoSource(str(coco_root), split="train", labels=True, curated=False)
    assert [source.key(i) for i in range(len(source))] == [
        "train2017/000000000009.jpg",
        "train2017/000000000030.jpg",
    ]


def test_curated_list_restricts(tmp_path):
    root = make_coco_tree(
        tmp_path, curated={"train": ("000000000030", "000000000009"), "val": ("000000000285",)}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both lists exist: no warning
        source = CocoSource(str(root), split="train+val", labels=True)
    assert [source.key(i) for i in range(len(source))] == [
        "train2017/000000000009.jpg",
        "train2017/000000000030.jpg",
        "val2017/000000000285.jpg",
    ]
    assert source.load_label(2).shape == (6, 8)


def test_curated_flag_off_uses_all_labelled_images(tmp_path):
    root = make_coco_tree(tmp_path, curated={"val": ("000000000285",)})
    assert len(CocoSource(str(root), split="val", labels=True, curated=False)) == 2


def test_curated_list_absent_warns_and_uses_all(coco_root):
    expected = coco_root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    with pytest.warns(UserWarning, match="curated list") as record:
        source = CocoSource(str(coco_root), split="val", labels=True)
    assert len(record) == 1
    assert str(expected) in str(record[0].message)
    assert len(source) == 2


def test_curated_entry_without_image_fails(tmp_path):
    root = make_coco_tree(tmp_path, curated={"val": ("000000000285", "000000999999")})
    with pytest.raises(DatasetRootError, match="000000999999"):
        CocoSource(str(root), split="val", labels=True)


def test_curated_ignored_for_pretraining(tmp_path):
    root = make_coco_tree(tmp_path, curated={"train": ("000000000009",)})
    assert len(CocoSource(str(root), split="train")) == 3


def test_unlabeled_with_labels_is_rejected(coco_root):
    with pytest.raises(ValueError, match="unlabeled2017 has no COCO-Stuff label maps"):
        CocoSource(str(coco_root), split="train+unlabeled", labels=True)


def test_unknown_split_names_key_value_and_choices(coco_root):
    with pytest.raises(ValueError) as info:
        CocoSource(str(coco_root), split="train+test")
    message = str(info.value)
    assert "data.split='train+test'" in message
    assert "'test'" in message
    assert "train, val, unlabeled" in message


def test_missing_root(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetRootError) as info:
        CocoSource(str(missing))
    message = str(info.value)
    assert str(missing) in message
    assert "does not exist" in message
    assert "train2017/000000000009.jpg" in message
    assert "stuffthingmaps_trainval2017/" in message


def test_unset_root():
    with pytest.raises(DatasetRootError, match=r"data\.root is not set"):
        CocoSource(None)


def test_missing_split_directory(tmp_path):
    root = make_coco_tree(tmp_path, stems={"train": COCO_STEMS["train"]})
    with pytest.raises(DatasetRootError) as info:
        CocoSource(str(root), split="train+unlabeled")
    assert str(root / "unlabeled2017") in str(info.value)
    assert "Expected layout" in str(info.value)


def test_missing_label_directory(tmp_path):
    root = make_coco_tree(tmp_path, labels=False)
    with pytest.raises(DatasetRootError) as info:
        CocoSource(str(root), split="val", labels=True)
    assert str(root / "stuffthingmaps_trainval2017" / "val2017") in str(info.value)


def test_empty_split(tmp_path):
    root = make_coco_tree(tmp_path, stems={"train": (), "unlabeled": ()})
    (root / "train2017" / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetRootError) as info:
        CocoSource(str(root))
    message = str(info.value)
    assert str(root) in message and "no images found" in message
    assert "unlabeled2017/" in message


def test_corrupt_image_raises_unreadable(coco_root):
    write_truncated_jpeg(coco_root / "val2017" / "000000000139.jpg")
    source = CocoSource(str(coco_root), split="val")
    assert len(source) == 2  # listing does not decode; skipping happens downstream
    with pytest.raises(UnreadableImageError, match=r"000000000139\.jpg"):
        source.load_image(0)
    assert source.load_image(1).shape == (6, 8, 3)
