"""FolderSource on a directory of mixed image formats and clutter."""

from __future__ import annotations

import numpy as np
import pytest

from tests.data.datasets.fixtures import make_folder_tree, write_truncated_jpeg
from vice.data.datasets.base import DatasetRootError
from vice.data.datasets.folder import FolderSource
from vice.data.image_io import UnreadableImageError


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    keys = make_folder_tree(root, outside=tmp_path / "elsewhere")
    return root, keys


def _keys(source):
    return [source.key(i) for i in range(len(source))]


def test_finds_images_sorted_skipping_clutter(folder):
    root, expected = folder
    source = FolderSource(str(root))
    # No notes.txt, .cache/hidden.jpg, a/._rgb.jpg; c/loop does not repeat c/; ext/ followed.
    assert _keys(source) == expected
    assert "ext/far.jpg" in expected
    assert source.path(0) == root / "UPPER.JPG"


def test_split_is_ignored(folder):
    root, expected = folder
    assert _keys(FolderSource(str(root), split="val")) == expected


def test_no_labels(folder):
    source = FolderSource(str(folder[0]))
    assert source.num_classes is None and not source.has_labels
    with pytest.raises(NotImplementedError):
        source.load_label(0)


def test_every_format_loads_as_rgb_uint8(folder):
    root, keys = folder
    source = FolderSource(str(root))
    for i in range(len(source)):
        image = source.load_image(i)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    images = {key: source.load_image(i) for i, key in enumerate(keys)}
    assert images["a/deep16.png"].shape == (5, 7, 3)
    assert (images["a/deep16.png"] == 255).all()  # 65535 scales to 255, not truncated
    gray = images["a/b/gray.png"]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert images["a/b/rgba.png"].shape == (6, 8, 3)


def test_missing_root(tmp_path):
    missing = tmp_path / "absent"
    with pytest.raises(DatasetRootError) as info:
        FolderSource(str(missing))
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message
    assert "any/nesting/of/folders/image.jpg" in message


def test_unset_root():
    with pytest.raises(DatasetRootError, match=r"data\.root is not set"):
        FolderSource(None)


def test_no_images(tmp_path):
    (tmp_path / "notes.txt").write_text("text only")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.jpg").write_bytes(b"")
    with pytest.raises(DatasetRootError) as info:
        FolderSource(str(tmp_path))
    message = str(info.value)
    assert str(tmp_path) in message and "no image files found" in message
    assert ".jpg" in message


def test_corrupt_image_raises_unreadable(tmp_path):
    write_truncated_jpeg(tmp_path / "broken.jpg")
    source = FolderSource(str(tmp_path))
    assert len(source) == 1
    with pytest.raises(UnreadableImageError, match=r"broken\.jpg"):
        source.load_image(0)
