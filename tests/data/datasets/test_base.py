import numpy as np
import pytest

from vice.config import DataConfig
from vice.data.datasets import DATASETS, build_source
from vice.data.datasets.base import DatasetRootError, ImageSource, root_error


def test_root_error_names_path_problem_layout_and_fix():
    err = root_error("coco", "/nope", "directory does not exist", "<root>/\n  train2017/\n")
    assert isinstance(err, DatasetRootError) and isinstance(err, ValueError)
    text = str(err)
    assert "coco data set at '/nope': directory does not exist." in text
    assert "  train2017/" in text and "Fix: set data.root" in text


def test_registry_is_a_plain_dict_of_sources():
    assert set(DATASETS) == {"synthetic", "testbed", "coco", "cityscapes", "folder", "voc"}
    assert all(issubclass(cls, ImageSource) for cls in DATASETS.values())


def test_build_source_synthetic_splits_and_labels():
    cfg = DataConfig()
    train = build_source(cfg)
    val = build_source(cfg, split="val", labels=True)
    assert len(train) == cfg.synthetic.length and len(val) == cfg.synthetic.eval_length
    assert val.has_labels


def test_folder_has_no_labels_for_evaluation(tmp_path):
    with pytest.raises(ValueError, match="'folder' has no labels"):
        build_source(DataConfig(dataset="folder", root=str(tmp_path)), labels=True)


def test_sources_have_no_instances_or_foreground_unless_they_say_so():
    class Bare(ImageSource):
        def __len__(self):
            return 1

        def key(self, index):
            return "bare"

        def load_image(self, index):
            return np.zeros((4, 4, 3), np.uint8)

    bare = Bare()
    assert not bare.has_instances and bare.instance_path(0) is None
    with pytest.raises(NotImplementedError, match="Bare has no instance maps for this split"):
        bare.load_instances(0)
    assert not bare.has_foreground and bare.foreground_path(0) is None
    with pytest.raises(
        NotImplementedError, match="Bare has no ground-truth foreground for this split"
    ):
        bare.load_foreground(0)
