"""Robust image decoding into one canonical form: RGB uint8 arrays (H, W, 3).

Real data sets hold grayscale, palette, RGBA, CMYK and 16-bit files; everything downstream
(superpixels, views, colour jitter) assumes 8-bit RGB, so the conversion happens once, here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class UnreadableImageError(RuntimeError):
    """An image file exists but cannot be decoded (truncated, corrupt, not an image)."""


def pil_to_rgb_uint8(img: Image.Image) -> np.ndarray:
    """Converts any PIL image to an RGB uint8 array (H, W, 3).

    16-bit and 32-bit integer images are scaled by their nominal range (65535) rather than
    truncated, float images by their own min/max; alpha is composited onto black so that
    transparent pixels do not keep arbitrary hidden colours.
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.int64)
        peak = 65535 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        gray = np.clip(arr * 255.0 / peak + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        gray = np.zeros(arr.shape, np.uint8) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        gray = np.nan_to_num(gray).round().astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        rgb = rgba[:, :, :3] * (rgba[:, :, 3:4] / 255.0)
        return rgb.round().astype(np.uint8)
    if mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def load_rgb(path: str | Path) -> np.ndarray:
    """Reads an image file as RGB uint8 (H, W, 3), honouring EXIF orientation.

    Raises:
        UnreadableImageError: the file cannot be opened or decoded; the message names it.
    """
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            arr = pil_to_rgb_uint8(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise UnreadableImageError(f"cannot decode image {path}: {err}") from err
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise UnreadableImageError(f"image {path} has an empty shape {arr.shape}")
    return arr


def load_label_png(path: str | Path) -> np.ndarray:
    """Reads a label map stored as a single-channel PNG, keeping raw ids (H, W) int64."""
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise ValueError(f"label maps must be single-channel, got mode {img.mode}")
            return np.asarray(img, dtype=np.int64)
    except (OSError, ValueError, SyntaxError) as err:
        raise UnreadableImageError(f"cannot decode label map {path}: {err}") from err
