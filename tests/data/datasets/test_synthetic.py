"""The procedural default data set: determinism, label sanity, balance, texture vs colour."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

from vice.data.datasets.base import ImageSource
from vice.data.datasets.synthetic import MAX_CLASSES, MIN_CLASSES, SyntheticSource


@pytest.fixture(scope="module")
def sample_set() -> tuple[np.ndarray, np.ndarray]:
    """100 images of size 64 (8 classes) with labels, shared by the statistical tests."""
    src = SyntheticSource(size=64, length=100, seed=0)
    images, labels = zip(*(src.sample(i) for i in range(len(src))), strict=True)
    return np.stack(images).astype(np.float32), np.stack(labels)


def test_is_an_image_source_with_names() -> None:
    src = SyntheticSource(length=5)
    assert isinstance(src, ImageSource)
    assert len(src) == 5
    assert src.has_labels
    assert src.num_classes == 8
    assert len(src.class_names) == 8
    assert len(set(src.class_names)) == 8
    assert src.path(0) is None
    assert src.key(2) == "synthetic/train/seed0/000002"
    assert SyntheticSource(split="val", seed=3, length=100).key(42) == "synthetic/val/seed3/000042"


@pytest.mark.parametrize("size", [16, 64, 128, (48, 80)])
def test_shapes_dtypes_and_label_range(size: int | tuple[int, int]) -> None:
    src = SyntheticSource(size=size, length=4)
    h, w = (size, size) if isinstance(size, int) else size
    for i in range(len(src)):
        image, label = src.load_image(i), src.load_label(i)
        assert image.shape == (h, w, 3) and image.dtype == np.uint8
        assert label.shape == (h, w) and label.dtype == np.int64
        assert label.min() >= 0 and label.max() < src.num_classes


def test_deterministic_across_instances() -> None:
    a = SyntheticSource(length=10, size=64, seed=1)
    b = SyntheticSource(length=10, size=64, seed=1)
    # Different call orders must not matter: nothing depends on global or shared state.
    for i in (3, 7, 3, 0):
        np.testing.assert_array_equal(a.load_image(i), b.load_image(i))
        np.testing.assert_array_equal(a.load_label(i), b.load_label(i))
    np.random.seed(123)  # the global RNG must play no part
    fresh = SyntheticSource(length=10, size=64, seed=1)
    np.testing.assert_array_equal(a.load_image(5), fresh.load_image(5))
    # A pickled copy (as sent to loader workers) regenerates the same pixels.
    c = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(c.load_image(7), b.load_image(7))


def test_different_index_seed_split_give_different_images() -> None:
    base = SyntheticSource(length=10, size=64, seed=0, split="train")
    other_seed = SyntheticSource(length=10, size=64, seed=1, split="train")
    other_split = SyntheticSource(length=10, size=64, seed=0, split="val")
    ref = base.load_image(2)
    assert not np.array_equal(ref, base.load_image(3))
    assert not np.array_equal(ref, other_seed.load_image(2))
    assert not np.array_equal(ref, other_split.load_image(2))


def test_image_and_label_agree_and_cache_returns_copies() -> None:
    src = SyntheticSource(length=3, size=64)
    image, label = src.sample(1)
    # Interleaved calls (label before image, other index in between) give the same sample.
    np.testing.assert_array_equal(src.load_label(1), label)
    src.load_image(2)
    np.testing.assert_array_equal(src.load_image(1), image)
    # Callers may modify what they get without corrupting the cache.
    got = src.load_label(1)
    got[...] = 0
    np.testing.assert_array_equal(src.load_label(1), label)


def test_instances_are_the_drawn_objects() -> None:
    src = SyntheticSource(size=(48, 80), length=20, seed=5)
    assert src.has_instances and src.instance_path(0) is None
    for i in range(20):
        image, label = src.sample(i)
        inst = src.load_instances(i)
        assert inst.shape == (48, 80) and inst.dtype == np.int64
        # 0 is the background, 1..6 the objects (2 to 6 per image), later ones on top.
        assert inst.min() >= 0 and inst.max() <= 6
        for k in np.unique(inst):
            assert np.unique(label[inst == k]).size == 1  # one class per instance
        # The image and label did not change by asking for instances.
        again_image, again_label = src.sample(i)
        np.testing.assert_array_equal(again_image, image)
        np.testing.assert_array_equal(again_label, label)
    # Copies, as for images and labels; and a fresh source regenerates the same map.
    inst = src.load_instances(3)
    inst[:] = -1
    np.testing.assert_array_equal(
        src.load_instances(3), SyntheticSource(size=(48, 80), length=20, seed=5).load_instances(3)
    )
    assert src.load_instances(3).min() == 0


def test_foreground_is_the_drawn_objects() -> None:
    src = SyntheticSource(split="val", size=64, length=24, seed=0)
    assert src.has_foreground and src.foreground_path(0) is None
    fractions = []
    for i in range(len(src)):
        fg, inst, label = src.load_foreground(i), src.load_instances(i), src.load_label(i)
        assert fg.dtype == np.bool_ and fg.shape == (64, 64)
        np.testing.assert_array_equal(fg, inst > 0)
        # The background is one class that no object takes.
        background = np.unique(label[~fg])
        assert background.size == 1 and background[0] not in label[fg]
        fractions.append(fg.mean())
    # Measured on these 24 (2-6 objects of radius 0.1-0.3 x side): 7-48 %, 25 % on average.
    assert min(fractions) > 0.03 and max(fractions) < 0.6, fractions
    assert 0.18 < np.mean(fractions) < 0.32, np.mean(fractions)


def test_index_out_of_range() -> None:
    src = SyntheticSource(length=3, size=32)
    for bad in (3, 100, -1):
        with pytest.raises(IndexError):
            src.load_image(bad)
        with pytest.raises(IndexError):
            src.key(bad)
    src.load_image(np.int64(2))  # numpy integers from samplers are fine


@pytest.mark.parametrize("num_classes", [MIN_CLASSES, 8, MAX_CLASSES])
def test_class_balance(num_classes: int) -> None:
    src = SyntheticSource(size=64, length=200, num_classes=num_classes)
    counts = np.zeros(num_classes)
    for i in range(len(src)):
        counts += np.bincount(src.load_label(i).ravel(), minlength=num_classes)
    share = counts / counts.sum()
    assert (share > 1 / (3 * num_classes)).all(), share
    assert (share < 3 / num_classes).all(), share
    # Measured (8 classes): shares within 0.81..1.23 of 1/8; a tighter guard than the 3x bound.
    assert share.max() / share.min() < 2.0, share


def test_images_have_several_regions() -> None:
    src = SyntheticSource(size=64, length=50)
    classes_per_image = [len(np.unique(src.load_label(i))) for i in range(len(src))]
    assert min(classes_per_image) >= 2
    assert np.mean(classes_per_image) >= 3


def test_colour_varies_per_instance(sample_set: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample_set
    for c in range(8):
        means = np.array(
            [im[lb == c].mean(0) for im, lb in zip(images, labels, strict=True) if (lb == c).sum()]
        )
        assert len(means) >= 20
        # Two independent uniform colours mixed give a std of ~50 per channel; measured 46-56.
        assert means.std(0).mean() > 35, (c, means.std(0))


def _colour_accuracy(images: np.ndarray, labels: np.ndarray) -> float:
    """Pixel accuracy of a nearest-class-mean RGB classifier, fitted on the first half."""
    n = len(images) // 2
    centres = np.stack([images[:n][labels[:n] == c].mean(0) for c in range(8)])
    pixels = images[n:].reshape(-1, 3)
    pred = np.argmin(((pixels[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    return float((pred == labels[n:].ravel()).mean())


def _patches(images: np.ndarray, labels: np.ndarray, p: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping p x p patches that lie inside one class, with that class."""
    n, h, w, _ = images.shape
    pi = images.reshape(n, h // p, p, w // p, p, 3).transpose(0, 1, 3, 2, 4, 5)
    pl = labels.reshape(n, h // p, p, w // p, p).transpose(0, 1, 3, 2, 4)
    pi = pi.reshape(-1, p, p, 3)
    pl = pl.reshape(-1, p * p)
    pure = (pl == pl[:, :1]).all(1)
    return pi[pure], pl[pure, 0]


def _texture_feature(patches: np.ndarray) -> np.ndarray:
    """Colour-blind texture descriptor: normalised FFT magnitude of each mean-free patch."""
    centred = patches - patches.mean((1, 2), keepdims=True)
    spectrum = np.abs(np.fft.fft2(centred, axes=(1, 2))).sum(-1).reshape(len(patches), -1)
    return spectrum / (np.linalg.norm(spectrum, axis=1, keepdims=True) + 1e-6)


def _texture_accuracy(images: np.ndarray, labels: np.ndarray) -> float:
    n = len(images) // 2
    train_x, train_y = _patches(images[:n], labels[:n])
    test_x, test_y = _patches(images[n:], labels[n:])
    f_train, f_test = _texture_feature(train_x), _texture_feature(test_x)
    centres = np.stack([f_train[train_y == c].mean(0) for c in range(8)])
    pred = np.argmin(((f_test[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    return float((pred == test_y).mean())


def test_colour_does_not_identify_class(sample_set: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample_set
    acc = _colour_accuracy(images, labels)
    # Chance is 1/8 = 0.125 and the most frequent class covers ~0.17 of the test pixels;
    # measured 0.16. 1.5/8 = 0.1875 leaves no room for colour carrying real class information.
    assert acc < 1.5 / 8, acc


def test_texture_identifies_class(sample_set: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = sample_set
    texture = _texture_accuracy(images, labels)
    colour = _colour_accuracy(images, labels)
    # Measured 0.73 on pure 8x8 patches (chance 0.125) vs 0.16 for colour.
    assert texture > 0.55, texture
    assert texture > colour + 0.35, (texture, colour)


def test_generation_speed() -> None:
    src = SyntheticSource(size=128, length=1000)
    src.sample(0)  # builds the coordinate grids
    start = time.perf_counter()
    for i in range(1, 51):
        src.sample(i)
    per_image = (time.perf_counter() - start) / 50
    # ~2 ms measured on a busy 2-core machine; the bound only catches a de-vectorised rewrite.
    assert per_image < 0.05, per_image


@pytest.mark.parametrize("num_classes", [5, 0, MAX_CLASSES + 1, 8.0, "8"])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(ValueError, match=r"num_classes") as err:
        SyntheticSource(num_classes=num_classes)  # type: ignore[arg-type]
    assert repr(num_classes) in str(err.value)
    assert f"[{MIN_CLASSES}, {MAX_CLASSES}]" in str(err.value)


@pytest.mark.parametrize("size", [15, 0, -4, (16, 8), (16,), "64", 64.0, True])
def test_bad_size(size: object) -> None:
    with pytest.raises(ValueError, match=r"data\.synthetic\.size") as err:
        SyntheticSource(size=size)  # type: ignore[arg-type]
    assert repr(size) in str(err.value)


@pytest.mark.parametrize("length", [0, -1, 2.5])
def test_bad_length(length: object) -> None:
    with pytest.raises(ValueError, match=r"data\.synthetic\.length"):
        SyntheticSource(length=length)  # type: ignore[arg-type]


@pytest.mark.parametrize("split", ["test", "Train", "", None])
def test_bad_split(split: object) -> None:
    with pytest.raises(ValueError, match=r"data\.split") as err:
        SyntheticSource(split=split)  # type: ignore[arg-type]
    assert "train" in str(err.value) and "val" in str(err.value)


def test_bad_seed() -> None:
    with pytest.raises(ValueError, match=r"data\.seed"):
        SyntheticSource(seed=-1)


def test_root_is_ignored() -> None:
    a = SyntheticSource(root="/does/not/exist", length=2, size=32)
    b = SyntheticSource(root=None, length=2, size=32)
    np.testing.assert_array_equal(a.load_image(1), b.load_image(1))
