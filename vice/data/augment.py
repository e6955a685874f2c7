"""Per-view photometric augmentation (SimCLR recipe) and normalisation.

Works on 8-bit PIL images with Pillow's C kernels (several times faster than float tensors for
hue shifts at 400 px), with every random draw taken from the caller's generator so a sample is
a pure function of its seed.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from vice.config import ViewConfig


def _shift_hue(img: Image.Image, shift: float) -> Image.Image:
    """Rotates hue by `shift` turns (in [-0.5, 0.5]), as torchvision's adjust_hue."""
    h, s, v = img.convert("HSV").split()
    offset = round(shift * 255) % 256
    lut = [(x + offset) % 256 for x in range(256)]
    return Image.merge("HSV", (h.point(lut), s, v)).convert("RGB")


def color_jitter(rng: np.random.Generator, img: Image.Image, cfg: ViewConfig) -> Image.Image:
    """Brightness, contrast, saturation and hue, each a random factor, in random order."""
    ops = rng.permutation(4)
    for op in ops:
        if op == 0 and cfg.brightness > 0:
            factor = rng.uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
            img = ImageEnhance.Brightness(img).enhance(factor)
        elif op == 1 and cfg.contrast > 0:
            factor = rng.uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
            img = ImageEnhance.Contrast(img).enhance(factor)
        elif op == 2 and cfg.saturation > 0:
            factor = rng.uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
            img = ImageEnhance.Color(img).enhance(factor)
        elif op == 3 and cfg.hue > 0:
            img = _shift_hue(img, rng.uniform(-cfg.hue, cfg.hue))
    return img


def photometric(rng: np.random.Generator, img: Image.Image, cfg: ViewConfig) -> Image.Image:
    """Colour jitter (p=jitter_prob), grayscale (p=gray_prob), Gaussian blur (p=blur_prob)."""
    if rng.random() < cfg.jitter_prob:
        img = color_jitter(rng, img, cfg)
    if rng.random() < cfg.gray_prob:
        img = img.convert("L").convert("RGB")
    if rng.random() < cfg.blur_prob:
        img = img.filter(
            ImageFilter.GaussianBlur(rng.uniform(cfg.blur_sigma_min, cfg.blur_sigma_max))
        )
    return img


def normalise(img: Image.Image, mean: list[float], std: list[float]) -> torch.Tensor:
    """RGB uint8 image -> float32 tensor (3, H, W), (x/255 - mean) / std per channel."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - m) / s
