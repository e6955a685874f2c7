"""SuperpixelGridCut / SuperpixelGridMean / SuperpixelGridMix view augmentations (Hammoudi et
al., arXiv 2204.08458; methods.md section 5): over the q SLIC superpixels of a view, a
fraction r of them is dropped (Cut: filled with `CUT_FILL`, black as the published CutOut-like
masks), replaced by its mean colour (Mean), or pasted from a second image (Mix).

The augmentation changes pixel values only, never geometry, so every target aligned with a
view (ViCE's superpixel ids and masks, SlotCon's overlap boxes, MaskContrast's masks) stays
valid. Each sample builder calls `apply_superpixel_grid` once per view, right after the view
is cropped and before its photometric augmentation; with kind "none" it returns the view as
is and draws nothing, so runs without it reproduce bit-exactly.

The superpixels are the view's own (not the data set's region maps): the project's fast-slic
SLIC (`slic_superpixels`, ViCE's compactness, iterations and blur) with the region size
sqrt(H * W / count), so that about `count` segments come out (fast-slic seeds exactly
round(H * W / region_size**2) = count; it may return a few fewer).

Mix's second image comes from the data set, never from the batch: `grid_partner` draws its
index from a child stream spawned from the sample's own generator (a pure function of
(data.seed, epoch, index), and spawning takes no draws from the parent), so resume stays
exact. The partner view is the central square of that image resized to the view size.

Shapes: H, W view height and width, K chosen superpixels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vice.config import SuperpixelGridConfig, ViewConfig
from vice.data.datasets.base import ImageSource
from vice.data.image_io import UnreadableImageError
from vice.data.superpixels import slic_superpixels
from vice.data.views import resize_uint8

CUT_FILL = 0  # GridCut's fill level on every channel: black, as the published masks
PARTNER_TRIES = 10  # partner draws before giving up when partners are unreadable


def _chosen_mask(ids_HW: np.ndarray, chosen_K: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixel's superpixel is one of `chosen_K` (a lookup, no sort)."""
    selected = np.zeros(int(ids_HW.max()) + 1, dtype=bool)
    selected[chosen_K] = True
    return selected[ids_HW]


def grid_cut(img_HW3: np.ndarray, ids_HW: np.ndarray, chosen_K: np.ndarray) -> np.ndarray:
    """The image with the chosen superpixels filled with CUT_FILL (a new array)."""
    out = img_HW3.copy()
    out[_chosen_mask(ids_HW, chosen_K)] = CUT_FILL
    return out


def grid_mean(img_HW3: np.ndarray, ids_HW: np.ndarray, chosen_K: np.ndarray) -> np.ndarray:
    """The image with each chosen superpixel replaced by its mean colour, per channel rounded
    to the nearest level (np.rint: halves to even)."""
    q = int(ids_HW.max()) + 1
    flat = ids_HW.ravel()
    counts_Q = np.bincount(flat, minlength=q).astype(np.float64)
    sums_Q3 = np.stack(
        [np.bincount(flat, weights=img_HW3[..., c].ravel(), minlength=q) for c in range(3)],
        axis=1,
    )  # float64 sums of uint8 levels: exact
    means_Q3 = np.rint(sums_Q3 / np.maximum(counts_Q, 1)[:, None]).astype(np.uint8)
    mask_HW = _chosen_mask(ids_HW, chosen_K)
    out = img_HW3.copy()
    out[mask_HW] = means_Q3[ids_HW[mask_HW]]
    return out


def grid_mix(
    img_HW3: np.ndarray, ids_HW: np.ndarray, chosen_K: np.ndarray, other_HW3: np.ndarray
) -> np.ndarray:
    """The image with the chosen superpixels' pixels taken from `other_HW3` (same shape)."""
    if other_HW3.shape != img_HW3.shape:
        raise ValueError(
            f"grid_mix: the other image has shape {other_HW3.shape}, the view {img_HW3.shape}"
        )
    mask_HW = _chosen_mask(ids_HW, chosen_K)
    out = img_HW3.copy()
    out[mask_HW] = other_HW3[mask_HW]
    return out


#: data.views.superpixel_grid.kind -> the pixel op (None: the augmentation is off).
KINDS: dict[str, Callable[..., np.ndarray] | None] = {
    "none": None,
    "cut": grid_cut,  # SuperpixelGridCut
    "mean": grid_mean,  # SuperpixelGridMean
    "mix": grid_mix,  # SuperpixelGridMix: needs the partner view
}


def view_superpixels(img_HW3: np.ndarray, count: int) -> np.ndarray:
    """About `count` SLIC superpixels of the view: (H, W) int32, contiguous ids 0..q-1."""
    h, w = img_HW3.shape[:2]
    # Float on purpose: fast-slic seeds round(H*W / region_size**2) segments, i.e. `count`;
    # an integer size would be off by up to ~10 % on small views. At least 2 px per side.
    region_size = max(2.0, float(np.sqrt(h * w / count)))
    return slic_superpixels(img_HW3, region_size=region_size)  # type: ignore[arg-type]


def choose_superpixels(rng: np.random.Generator, q: int, ratio: float) -> np.ndarray:
    """round(ratio * q) distinct superpixel ids out of 0..q-1, sorted (one rng.choice draw)."""
    k = round(ratio * q)
    return np.sort(rng.choice(q, size=k, replace=False))


def apply_superpixel_grid(
    rng: np.random.Generator,
    img_HW3: np.ndarray,
    cfg: SuperpixelGridConfig,
    other_HW3: np.ndarray | None = None,
) -> np.ndarray:
    """The view after the configured superpixel-grid augmentation (RGB uint8 in and out).

    kind "none": `img_HW3` itself, no draws. Otherwise the view's own superpixels are computed,
    round(ratio * q) of its q superpixels are chosen with one `rng.choice`, and replaced.
    `other_HW3` (the partner view, same shape) is required by "mix" and ignored otherwise.
    """
    if cfg.kind not in KINDS:
        raise ValueError(
            f"invalid config value data.views.superpixel_grid.kind={cfg.kind!r}: "
            f"one of {sorted(KINDS)}"
        )
    op = KINDS[cfg.kind]
    if op is None:
        return img_HW3
    if cfg.kind == "mix" and other_HW3 is None:
        raise ValueError("superpixel_grid kind 'mix' needs the partner view (other_HW3)")
    ids_HW = view_superpixels(img_HW3, cfg.count)
    chosen_K = choose_superpixels(rng, int(ids_HW.max()) + 1, cfg.ratio)
    if cfg.kind == "mix":
        return op(img_HW3, ids_HW, chosen_K, other_HW3)
    return op(img_HW3, ids_HW, chosen_K)


def partner_view(img_HW3: np.ndarray, size: int) -> np.ndarray:
    """The central square of an image (the short side's length) resized to size x size."""
    h, w = img_HW3.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return resize_uint8(img_HW3[y0 : y0 + side, x0 : x0 + side], size, size)


def grid_partner(
    source: ImageSource, rng: np.random.Generator, current: int, cfg: ViewConfig
) -> np.ndarray | None:
    """Mix's partner view for a sample of image `current`, or None unless kind is "mix".

    The partner index is drawn, uniformly among the other images (the image itself only in a
    one-image source), from a child stream spawned from the sample's generator `rng`: no draws
    are taken from `rng` itself, and the child is a pure function of rng's seed. Unreadable
    partners are redrawn from the same child stream, up to PARTNER_TRIES times.
    """
    if cfg.superpixel_grid.kind != "mix":
        return None
    what = "data.views.superpixel_grid.kind='mix'"
    return draw_partner(source, rng.spawn(1)[0], current, cfg.view_size, what)


def draw_partner(
    source: ImageSource, rng: np.random.Generator, current: int, size: int, what: str
) -> np.ndarray:
    """The `partner_view` of an image drawn from `rng`, uniformly among the images other than
    `current` (itself only in a one-image source); unreadable ones are redrawn from `rng`, up
    to PARTNER_TRIES times, then a RuntimeError names `what` needed the partner."""
    n = len(source)
    errors = []
    for _ in range(PARTNER_TRIES):
        if n > 1:
            index = int(rng.integers(n - 1))
            index += index >= current  # skip the image itself
        else:
            index = current
        try:
            return partner_view(source.load_image(index), size)
        except UnreadableImageError as err:
            errors.append(str(err))
    raise RuntimeError(
        f"no readable partner image for {what} in {PARTNER_TRIES} draws (image {current}); "
        f"last error: {errors[-1]}. Check data.root and the images it holds."
    )
