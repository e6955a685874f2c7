import numpy as np
import pytest
import torch
from torch import nn

from vice.data.datasets.base import ImageSource
from vice.data.datasets.testbed import TestbedSource
from vice.eval.features import (
    extract_features,
    load_eval_foreground,
    load_eval_set,
    load_eval_set_with_instances,
    pixels_PD,
)

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class _ArraySource(ImageSource):
    def __init__(self, images, labels, num_classes=5):
        self.images, self.labels, self.num_classes = images, labels, num_classes

    def __len__(self):
        return len(self.images)

    def key(self, index):
        return str(index)

    def load_image(self, index):
        return self.images[index]

    def load_label(self, index):
        return self.labels[index]


class _Embed(nn.Module):
    """Stand-in model: a fixed 1x1 conv to D channels, L2-normalised per pixel."""

    def __init__(self, d=5):
        super().__init__()
        self.conv = nn.Conv2d(3, d, 1)

    def forward(self, x):
        return nn.functional.normalize(self.conv(x), dim=1)


def test_load_eval_set_crops_the_center_without_resizing_at_the_right_size():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)
    lab = np.tile(np.arange(40) % 7, (20, 1)).astype(np.int64)
    lab[0, 15] = 255
    images, labels = load_eval_set(_ArraySource([img], [lab], 7), 20)
    assert images.shape == (1, 20, 20, 3) and images.dtype == np.uint8
    assert labels.shape == (1, 20, 20) and labels.dtype == np.int64
    np.testing.assert_array_equal(images[0], img[:, 10:30])
    np.testing.assert_array_equal(labels[0], lab[:, 10:30])  # 255 kept as is


def test_load_eval_set_resizes_labels_with_nearest():
    rng = np.random.default_rng(1)
    small = rng.choice([0, 1, 2, 255], size=(20, 40))
    lab = np.repeat(np.repeat(small, 2, 0), 2, 1)  # 2x2 blocks: halving must recover `small`
    img = rng.integers(0, 256, (40, 80, 3), dtype=np.uint8)
    images, labels = load_eval_set(_ArraySource([img, img], [lab, lab], 3), 20, max_images=1)
    assert images.shape == (1, 20, 20, 3)
    np.testing.assert_array_equal(labels[0], small[:, 10:30])


class _InstanceSource(_ArraySource):
    def __init__(self, images, labels, instances, num_classes=5):
        super().__init__(images, labels, num_classes)
        self.instances = instances

    @property
    def has_instances(self):
        return True

    def load_instances(self, index):
        return self.instances[index]


def test_instance_maps_are_resized_and_cropped_like_the_labels():
    rng = np.random.default_rng(2)
    small = rng.integers(0, 30_000, size=(20, 40))  # cityscapes-like ids (class * 1000 + k)
    inst = np.repeat(np.repeat(small, 2, 0), 2, 1)
    lab = inst % 7
    img = rng.integers(0, 256, (40, 80, 3), dtype=np.uint8)
    source = _InstanceSource([img, img], [lab, lab], [inst, inst], 7)
    images, labels, instances = load_eval_set_with_instances(source, 20)
    want_images, want_labels = load_eval_set(source, 20)
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)
    assert instances.shape == (2, 20, 20) and instances.dtype == np.int64
    np.testing.assert_array_equal(instances[1], small[:, 10:30])
    np.testing.assert_array_equal(instances % 7, labels)  # the same pixels as the labels

    no_instances = _ArraySource([img], [lab], 7)
    assert load_eval_set_with_instances(no_instances, 20)[2] is None
    source.instances = [inst[:-1], inst]
    with pytest.raises(ValueError, match=r"image 0: instance map \(39, 80\) and label map"):
        load_eval_set_with_instances(source, 20)


def test_load_eval_set_needs_labels():
    src = _ArraySource([np.zeros((4, 4, 3), np.uint8)], [None], None)
    with pytest.raises(ValueError, match="no labels"):
        load_eval_set(src, 4)


def test_extract_features_shape_norm_batches_and_mode():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 12, 12, 3), dtype=np.uint8)
    model = _Embed().train()
    feats = extract_features(model, images, MEAN, STD, batch_size=2, device="cpu", amp=True)
    assert feats.shape == (3, 5, 12, 12) and feats.dtype == torch.float32
    assert feats.device.type == "cpu"
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(3, 12, 12))
    assert model.training  # evaluated in eval mode, mode restored afterwards
    one_by_one = extract_features(model, images, MEAN, STD, batch_size=1, device="cpu")
    torch.testing.assert_close(feats, one_by_one)
    # The (P, D) pixel matrix is a view of channels-last features, in image-row-column order.
    x_PD = pixels_PD(feats)
    assert x_PD.data_ptr() == feats.data_ptr()
    torch.testing.assert_close(x_PD[12 * 12 + 3 * 12 + 4], feats[1, :, 3, 4])


def test_extract_features_rejects_downsampled_output():
    class Half(nn.Module):
        def forward(self, x):
            return x[..., ::2, ::2]

    with pytest.raises(ValueError, match="input resolution"):
        extract_features(Half(), np.zeros((1, 8, 8, 3), np.uint8), MEAN, STD)


class _ForegroundSource(_ArraySource):
    """Labelled arrays whose foreground is one class's pixels."""

    def __init__(self, images, labels, num_classes=5, object_class=3):
        super().__init__(images, labels, num_classes)
        self.object_class = object_class

    @property
    def has_foreground(self):
        return True

    def load_foreground(self, index):
        return self.labels[index] == self.object_class


def test_load_eval_foreground_at_the_native_size_is_the_sources():
    source = TestbedSource(split="val", length=3, size=32)
    fg = load_eval_foreground(source, 32)
    assert fg.shape == (3, 32, 32) and fg.dtype == bool
    want = np.stack([source.load_foreground(i) for i in range(3)])
    np.testing.assert_array_equal(fg, want)
    np.testing.assert_array_equal(load_eval_foreground(source, 32, max_images=2), want[:2])
    # at half the size: PIL's nearest takes the pixel under each output pixel's centre
    np.testing.assert_array_equal(load_eval_foreground(source, 16), want[:, 1::2, 1::2])


def test_load_eval_foreground_is_resized_and_cropped_like_the_labels():
    rng = np.random.default_rng(3)
    small = rng.choice([0, 1, 3, 255], size=(20, 40))
    lab = np.repeat(np.repeat(small, 2, 0), 2, 1)
    img = rng.integers(0, 256, (40, 80, 3), dtype=np.uint8)
    source = _ForegroundSource([img, img], [lab, lab], 4, object_class=3)
    fg = load_eval_foreground(source, 20)
    assert fg.shape == (2, 20, 20) and fg.dtype == bool
    np.testing.assert_array_equal(fg[0], small[:, 10:30] == 3)
    _, labels = load_eval_set(source, 20)
    np.testing.assert_array_equal(fg, labels == 3)  # the same pixels as the labels
