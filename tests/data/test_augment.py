import numpy as np
import torch
from PIL import Image

from vice.config import ViewConfig
from vice.data.augment import _shift_hue, color_jitter, normalise, photometric


def _img():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))


def test_normalise_matches_the_formula():
    img = Image.fromarray(np.full((2, 2, 3), [255, 0, 128], np.uint8))
    x = normalise(img, [0.5, 0.5, 0.5], [0.25, 0.5, 1.0])
    assert x.shape == (3, 2, 2) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([2.0, -1.0, 128 / 255 - 0.5]))


def test_same_generator_same_result_and_draws_vary():
    cfg = ViewConfig()
    a = photometric(np.random.default_rng(3), _img(), cfg)
    b = photometric(np.random.default_rng(3), _img(), cfg)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    outs = {
        np.asarray(photometric(np.random.default_rng(s), _img(), cfg)).tobytes() for s in range(10)
    }
    assert len(outs) > 5


def test_all_probabilities_zero_is_identity():
    cfg = ViewConfig(jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0)
    out = photometric(np.random.default_rng(0), _img(), cfg)
    assert np.array_equal(np.asarray(out), np.asarray(_img()))


def test_grayscale_always_gives_equal_channels():
    cfg = ViewConfig(jitter_prob=0.0, gray_prob=1.0, blur_prob=0.0)
    out = np.asarray(photometric(np.random.default_rng(0), _img(), cfg))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_hue_shift_rotates_primaries():
    red = Image.fromarray(np.full((1, 1, 3), [255, 0, 0], np.uint8))
    assert tuple(np.asarray(_shift_hue(red, 1 / 3))[0, 0]) == (0, 255, 0) or np.allclose(
        np.asarray(_shift_hue(red, 1 / 3))[0, 0], [0, 255, 0], atol=8
    )
    assert np.array_equal(np.asarray(_shift_hue(red, 0.0)), np.asarray(red))


def test_jitter_with_zero_strength_is_identity():
    cfg = ViewConfig(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    out = color_jitter(np.random.default_rng(0), _img(), cfg)
    assert np.array_equal(np.asarray(out), np.asarray(_img()))
