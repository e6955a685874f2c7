"""Per-view photometric augmentation (SimCLR recipe) and normalisation.

Works on RGB uint8 arrays (H, W, 3) with OpenCV and Pillow C kernels and 256-entry lookup
tables (several times faster than float tensors, or than Pillow's HSV round trip for hue, at
400 px), with every random draw taken from the caller's generator so a sample is a pure
function of its seed.

Brightness, contrast and saturation reproduce torchvision's ColorJitter on PIL images
(Pillow's ImageEnhance: blend with a black / mean-gray / grayscale image, truncated to uint8)
exactly; hue rotates OpenCV's 8-bit full-range HSV; blur is OpenCV's Gaussian.

OpenCV runs single-threaded: loader workers are one thread each (torch.set_num_threads(1) in
vice.data.loader), and OpenCV's own thread pool would oversubscribe the cores they share.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np
import torch
from PIL import Image, ImageEnhance

from vice.config import ViewConfig

cv2.setNumThreads(1)

_LEVELS = np.arange(256, dtype=np.float32)


def _blend_lut(base: float, factor: float) -> np.ndarray:
    """uint8 LUT of Pillow's Image.blend(base image, image, factor) for a constant base:
    (uint8) clip(base + factor * (x - base)), in float32 and truncated as Pillow's C code."""
    out = np.float32(base) + np.float32(factor) * (_LEVELS - np.float32(base))
    return np.clip(out, 0, 255).astype(np.uint8)  # in [0, 255] truncation is a floor


def luma(img_HW3: np.ndarray) -> np.ndarray:
    """Pillow's RGB -> L (ITU-R 601, fixed point, rounded): (H, W) uint8, what
    torchvision's PIL grayscale and ImageEnhance use."""
    return np.asarray(Image.fromarray(img_HW3).convert("L"))


def adjust_brightness(img_HW3: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Brightness(img).enhance(factor), as a per-level LUT."""
    return cv2.LUT(img_HW3, _blend_lut(0.0, factor))


def adjust_contrast(img_HW3: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Contrast(img).enhance(factor): blend with the rounded mean luma, as a LUT."""
    # cv2.mean sums uint8 exactly and divides in double: ImageStat's histogram mean.
    mean = int(cv2.mean(luma(img_HW3))[0] + 0.5)
    return cv2.LUT(img_HW3, _blend_lut(float(mean), factor))


def adjust_saturation(img_HW3: np.ndarray, factor: float) -> np.ndarray:
    """ImageEnhance.Color(img).enhance(factor): blend with the image's grayscale.

    Per pixel, not a LUT; Pillow's C blend is as fast as any rewrite that stays exact.
    """
    return np.asarray(ImageEnhance.Color(Image.fromarray(img_HW3)).enhance(factor))


def shift_hue(img_HW3: np.ndarray, shift: float) -> np.ndarray:
    """Rotates hue by `shift` turns (in [-0.5, 0.5]), as torchvision's adjust_hue.

    OpenCV's 8-bit HSV_FULL spans a turn in 256 hue steps (~8x faster than Pillow's HSV
    round trip); saturation and value pass through unchanged up to the conversion's rounding.
    """
    offset = round(shift * 256) % 256
    if offset == 0:
        return img_HW3
    hsv = cv2.cvtColor(img_HW3, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] += np.uint8(offset)  # uint8 arithmetic wraps: hue is circular
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def grayscale(img_HW3: np.ndarray) -> np.ndarray:
    """Pillow's L replicated to 3 channels (torchvision RandomGrayscale on PIL images)."""
    return cv2.cvtColor(luma(img_HW3), cv2.COLOR_GRAY2RGB)


def gaussian_blur(img_HW3: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation `sigma` px, support +-ceil(3 sigma), borders
    mirrored (as torchvision's tensor gaussian_blur)."""
    k = 2 * math.ceil(3 * sigma) + 1
    return cv2.GaussianBlur(img_HW3, (k, k), sigma, borderType=cv2.BORDER_REFLECT_101)


def color_jitter(rng: np.random.Generator, img_HW3: np.ndarray, cfg: ViewConfig) -> np.ndarray:
    """Brightness, contrast, saturation and hue, each a random factor, in random order."""
    img = np.ascontiguousarray(img_HW3)
    ops = rng.permutation(4)
    for op in ops:
        if op == 0 and cfg.brightness > 0:
            factor = rng.uniform(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
            img = adjust_brightness(img, factor)
        elif op == 1 and cfg.contrast > 0:
            factor = rng.uniform(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
            img = adjust_contrast(img, factor)
        elif op == 2 and cfg.saturation > 0:
            factor = rng.uniform(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
            img = adjust_saturation(img, factor)
        elif op == 3 and cfg.hue > 0:
            img = shift_hue(img, rng.uniform(-cfg.hue, cfg.hue))
    return img


def photometric(rng: np.random.Generator, img_HW3: np.ndarray, cfg: ViewConfig) -> np.ndarray:
    """Colour jitter (p=jitter_prob), grayscale (p=gray_prob), Gaussian blur (p=blur_prob).

    RGB uint8 (H, W, 3) in and out; the input is never modified (it may be returned as is).
    """
    img = np.ascontiguousarray(img_HW3)
    if rng.random() < cfg.jitter_prob:
        img = color_jitter(rng, img, cfg)
    if rng.random() < cfg.gray_prob:
        img = grayscale(img)
    if rng.random() < cfg.blur_prob:
        img = gaussian_blur(img, rng.uniform(cfg.blur_sigma_min, cfg.blur_sigma_max))
    return img


@lru_cache(maxsize=8)
def _affine(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, bias) of shape (3, 1, 1) with (x/255 - mean)/std = x * scale + bias (cached:
    the same two tensors serve every view; they are only read)."""
    m = torch.tensor(mean, dtype=torch.float64)[:, None, None]
    s = torch.tensor(std, dtype=torch.float64)[:, None, None]
    return (1.0 / (255.0 * s)).float(), (-m / s).float()


def normalise_into(
    out_3HW: torch.Tensor, img_HW3: np.ndarray, mean: list[float], std: list[float]
) -> torch.Tensor:
    """Writes (x/255 - mean) / std of an RGB uint8 image into a float32 (3, H, W) tensor (e.g.
    one view of a preallocated batch), in place: one uint8 -> float32 transposing copy, then a
    fused scale and shift. Returns `out_3HW`."""
    scale, bias = _affine(tuple(mean), tuple(std))
    out_3HW.copy_(torch.from_numpy(np.require(img_HW3, requirements=["W"])).permute(2, 0, 1))
    return out_3HW.mul_(scale).add_(bias)


def normalise(img: np.ndarray | Image.Image, mean: list[float], std: list[float]) -> torch.Tensor:
    """RGB uint8 image (H, W, 3) array or PIL image -> float32 tensor (3, H, W),
    (x/255 - mean) / std per channel."""
    a = np.asarray(img)
    out = torch.empty((3, a.shape[0], a.shape[1]), dtype=torch.float32)
    return normalise_into(out, a, mean, std)
