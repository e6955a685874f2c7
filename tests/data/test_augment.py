import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from vice.config import ViewConfig
from vice.data.augment import (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    color_jitter,
    gaussian_blur,
    grayscale,
    normalise,
    normalise_into,
    photometric,
    shift_hue,
)


def _img(size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (size, size, 3), dtype=np.uint8)


def test_normalise_matches_the_formula():
    img = np.full((2, 2, 3), [255, 0, 128], np.uint8)
    x = normalise(img, [0.5, 0.5, 0.5], [0.25, 0.5, 1.0])
    assert x.shape == (3, 2, 2) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([2.0, -1.0, 128 / 255 - 0.5]))
    # PIL images are accepted too (the evaluation passes them)
    torch.testing.assert_close(normalise(Image.fromarray(img), [0.5] * 3, [0.25, 0.5, 1.0]), x)


def test_normalise_into_writes_in_place_like_normalise():
    img, mean, std = _img(16), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    batch = torch.zeros(2, 3, 16, 16)
    out = normalise_into(batch[1], img, mean, std)
    assert out.data_ptr() == batch[1].data_ptr() and (batch[0] == 0).all()
    ref = (torch.from_numpy(img).permute(2, 0, 1) / 255.0 - torch.tensor(mean)[:, None, None]) / (
        torch.tensor(std)[:, None, None]
    )
    torch.testing.assert_close(batch[1], ref)


def test_same_generator_same_result_and_draws_vary():
    cfg = ViewConfig()
    a = photometric(np.random.default_rng(3), _img(), cfg)
    b = photometric(np.random.default_rng(3), _img(), cfg)
    assert np.array_equal(a, b)
    outs = {photometric(np.random.default_rng(s), _img(), cfg).tobytes() for s in range(10)}
    assert len(outs) > 5


def test_input_is_never_modified():
    cfg = ViewConfig(jitter_prob=1.0, gray_prob=0.5, blur_prob=0.5)
    img = _img()
    keep = img.copy()
    for s in range(20):
        photometric(np.random.default_rng(s), img, cfg)
    assert np.array_equal(img, keep)


def test_all_probabilities_zero_is_identity():
    cfg = ViewConfig(jitter_prob=0.0, gray_prob=0.0, blur_prob=0.0)
    out = photometric(np.random.default_rng(0), _img(), cfg)
    assert np.array_equal(out, _img())


def test_grayscale_always_gives_equal_channels():
    cfg = ViewConfig(jitter_prob=0.0, gray_prob=1.0, blur_prob=0.0)
    out = photometric(np.random.default_rng(0), _img(), cfg)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    ref = np.asarray(Image.fromarray(_img()).convert("L").convert("RGB"))
    assert np.array_equal(grayscale(_img()), ref)


@pytest.mark.parametrize("factor", [0.0, 0.2, 0.77, 1.0, 1.3, 1.8])
def test_brightness_contrast_saturation_equal_pil_image_enhance(factor):
    """Exactly torchvision's ColorJitter on PIL images (ImageEnhance), level for level."""
    img = _img(64, seed=1)
    img[:8] = 250  # saturating pixels exercise the clipping
    pil = Image.fromarray(img)
    for ours, theirs in [
        (adjust_brightness, ImageEnhance.Brightness),
        (adjust_contrast, ImageEnhance.Contrast),
        (adjust_saturation, ImageEnhance.Color),
    ]:
        assert np.array_equal(ours(img, factor), np.asarray(theirs(pil).enhance(factor)))


def test_hue_shift_rotates_primaries():
    red = np.full((1, 1, 3), [255, 0, 0], np.uint8)
    assert np.allclose(shift_hue(red, 1 / 3)[0, 0], [0, 255, 0], atol=8)
    assert np.allclose(shift_hue(red, -1 / 3)[0, 0], [0, 0, 255], atol=8)
    assert np.array_equal(shift_hue(red, 0.0), red)


def test_hue_shift_keeps_gray_and_round_trips():
    img = _img(64, seed=2)
    gray = np.repeat(img[..., :1], 3, axis=2)
    assert np.array_equal(shift_hue(gray, 0.25), gray)  # no hue to rotate
    back = shift_hue(shift_hue(img, 0.125), -0.125).astype(int)
    assert np.abs(back - img).mean() < 2.0  # only the 8-bit HSV rounding is lost


def test_gaussian_blur_smooths_and_keeps_the_mean():
    img = _img(64, seed=3)
    for sigma in (0.1, 0.7, 2.0):
        out = gaussian_blur(img, sigma)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert abs(out.astype(float).mean() - img.mean()) < 1.0
    assert np.abs(gaussian_blur(img, 0.1).astype(int) - img).max() <= 1  # ~identity
    assert gaussian_blur(img, 2.0).std() < 0.5 * img.std()  # white noise mostly averaged out


def test_jitter_with_zero_strength_is_identity():
    cfg = ViewConfig(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    out = color_jitter(np.random.default_rng(0), _img(), cfg)
    assert np.array_equal(out, _img())
