import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from vice.config import SuperpixelConfig
from vice.data.datasets.synthetic import SyntheticSource
from vice.data.image_io import pil_to_rgb_uint8
from vice.data.superpixels import (
    compute_superpixels,
    gaussian_blur_uint8,
    grid_superpixels,
    relabel_contiguous,
    slic_superpixels,
)
from vice.data.views import standardise


def _textured(size: int = 500, index: int = 0) -> np.ndarray:
    return standardise(SyntheticSource(size=size, length=8).load_image(index), 500, 2048)


def _natural(seed: int = 0, shape=(500, 667)) -> np.ndarray:
    """Smooth random field: the 1/f-like statistics of photographs."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random((*shape, 3)), (6, 6, 0))
    field = (field - field.min()) / (field.max() - field.min())
    return (field * 255).astype(np.uint8)


def _assert_contiguous(ids: np.ndarray) -> None:
    assert ids.dtype == np.int32
    assert ids.min() == 0
    np.testing.assert_array_equal(np.unique(ids), np.arange(ids.max() + 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slic_count_near_target_and_contiguous(seed):
    img = _natural(seed)
    ids = slic_superpixels(img)
    target = img.shape[0] * img.shape[1] / 400  # 833.75
    _assert_contiguous(ids)
    assert 0.95 * target <= ids.max() + 1 <= 1.05 * target


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_slic_count_on_high_contrast_textures(index):
    # fast-slic merges fragments below a quarter of a cell to keep segments connected, which
    # costs up to ~25% of the count on the synthetic stripe/dot textures.
    img = _textured(index=index)
    ids = slic_superpixels(img)
    _assert_contiguous(ids)
    assert 0.7 * 625 <= ids.max() + 1 <= 1.05 * 625


def test_slic_is_deterministic():
    img = _textured(index=3)
    np.testing.assert_array_equal(slic_superpixels(img), slic_superpixels(img.copy()))


def test_slic_region_size_controls_count():
    img = _natural(4)
    n20 = slic_superpixels(img, region_size=20).max() + 1
    n40 = slic_superpixels(img, region_size=40).max() + 1
    assert 3.0 < n20 / n40 < 5.0  # 4x fewer cells at twice the side


def test_grid_is_exact():
    ids = grid_superpixels(45, 50, 20)
    assert ids.shape == (45, 50)
    assert ids.max() + 1 == 3 * 3  # ceil(45/20) * ceil(50/20)
    assert ids[0, 0] == 0 and ids[0, 19] == 0 and ids[0, 20] == 1 and ids[0, 49] == 2
    assert ids[19, 0] == 0 and ids[20, 0] == 3 and ids[44, 49] == 8
    ys, xs = np.mgrid[:45, :50]
    np.testing.assert_array_equal(ids, (ys // 20) * 3 + xs // 20)
    _assert_contiguous(ids)


def test_compute_dispatches_on_method():
    img = _textured(index=5)
    grid = compute_superpixels(img, SuperpixelConfig(method="grid"))
    np.testing.assert_array_equal(grid, grid_superpixels(*img.shape[:2], 20))


def test_relabel_contiguous_keeps_order():
    ids = np.array([[7, 7, 3], [10, 3, 7]])
    np.testing.assert_array_equal(relabel_contiguous(ids), [[1, 1, 0], [2, 0, 1]])


@pytest.mark.parametrize(
    "mode,maker",
    [
        ("L", lambda a: Image.fromarray(a[:, :, 0])),
        ("RGBA", lambda a: Image.fromarray(np.dstack([a, np.full(a.shape[:2], 255, np.uint8)]))),
        ("I;16", lambda a: Image.fromarray(a[:, :, 0].astype(np.uint16) * 257)),
    ],
)
def test_grayscale_rgba_16bit_images_work(mode, maker):
    base = SyntheticSource(size=64, length=1).load_image(0)
    img = maker(base)
    assert img.mode.startswith(mode[:1])
    rgb = standardise(pil_to_rgb_uint8(img), 500, 2048)
    ids = slic_superpixels(rgb)
    _assert_contiguous(ids)
    assert ids.max() + 1 > 300


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (12, 9), (25, 17)])
def test_very_small_images(shape):
    img = np.random.default_rng(0).integers(0, 255, (*shape, 3), dtype=np.uint8)
    ids = slic_superpixels(img)
    assert ids.shape == shape
    _assert_contiguous(ids)


def test_rejects_non_rgb():
    with pytest.raises(ValueError, match=r"RGB uint8"):
        slic_superpixels(np.zeros((10, 10), np.uint8))


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_blur_is_the_gaussian_of_opencvs_sigma_rule(kernel):
    """About one level from a float Gaussian with sigma 0.3 ((k-1)/2 - 1) + 0.8, support k x k,
    edges replicated (not OpenCV's binomial kernels for sigma 0): rounding to uint8 plus
    OpenCV's fixed-point kernel weights."""
    img = np.random.default_rng(kernel).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    radius = (kernel - 1) // 2
    ref = ndimage.gaussian_filter(
        img.astype(np.float64), (sigma, sigma, 0), truncate=radius / sigma, mode="nearest"
    )
    out = gaussian_blur_uint8(img, kernel)
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.abs(out - ref).max() <= 1.05
    assert gaussian_blur_uint8(img, 1) is img
