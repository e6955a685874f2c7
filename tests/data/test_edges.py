import numpy as np
from scipy import ndimage

from vice.data.edges import canny, edge_placement_map, gaussian_blur_float


def _disc(radius=100):
    yy, xx = np.mgrid[:500, :600]
    img = np.zeros((500, 600, 3), np.uint8)
    img[(xx - 300) ** 2 + (yy - 250) ** 2 < radius**2] = 200
    return img, yy, xx


def test_canny_finds_a_thin_closed_contour():
    img, yy, xx = _disc()
    edges = canny(img[:, :, 0].astype(np.float32), 10, 50)
    r = np.hypot(xx - 300, yy - 250)[edges]
    assert np.all(np.abs(r - 100) < 2.5)
    # one-pixel-wide contour: close to the circumference in 8-connected steps
    assert 0.9 * 2 * np.pi * 100 / 1.2 < edges.sum() < 1.3 * 2 * np.pi * 100


def test_canny_hysteresis_drops_isolated_weak_edges():
    gray = np.zeros((64, 64), np.float32)
    gray[:, 32:] = 4.0  # a step too weak to be strong anywhere
    assert not canny(gray, 10, 50).any()
    gray[:, 32:] = 60.0
    assert canny(gray, 10, 50).any()


def test_placement_map_is_a_distribution_peaked_at_edges():
    img, yy, xx = _disc()
    p = edge_placement_map(img, 10, 50, 3.0, 0.02)
    assert abs(p.sum() - 1) < 1e-9 and p.min() > 0
    near = np.abs(np.hypot(xx - 300, yy - 250) - 100) < 6
    assert p[near].sum() > 0.9


def test_flat_image_gives_uniform_map():
    p = edge_placement_map(np.full((40, 50, 3), 7, np.uint8), 10, 50, 3.0, 0.02)
    np.testing.assert_allclose(p, 1 / 2000)


def test_canny_accepts_uint8_and_float_alike():
    img, _, _ = _disc(60)
    gray = img[:, :, 0]
    np.testing.assert_array_equal(canny(gray, 10, 50), canny(gray.astype(np.float32), 10, 50))


def test_edge_blur_is_scipys_gaussian_filter():
    edges = np.zeros((60, 70), np.float32)
    edges[10, 5:60] = 1.0
    edges[:, 0] = 1.0  # at the border: reflect mode
    for sigma in (0.7, 1.5, 3.0):
        np.testing.assert_allclose(
            gaussian_blur_float(edges, sigma), ndimage.gaussian_filter(edges, sigma), atol=1e-6
        )
