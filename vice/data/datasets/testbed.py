"""A procedural testbed that separates semantics from grouping at 2-CPU scale.

In the default synthetic scenes a class is one texture and colours are random, so a feature
that only groups (one random vector per object) clusters as well as a trained network. Here a
class is a (texture family, hue band) pair: 4 families x 3 bands = 12 classes, every family
in every band, so neither colour nor texture alone names a class. Per region, saturation,
value, hue (within its band, +-15 degrees), texture contrast, period, phase and orientation
(+-8 degrees), an illumination gradient and the noise level vary; none carries the class.

Textures have periods of 1-4 px, finer than a 5 px superpixel, and all modulate value by
mean 0, std ~1 (times the region's contrast), so a region's colour statistics give its hue
but not its family. Objects are bars, rings, stars, crosses and ellipses: thin parts whose
borders SLIC follows and grid cells straddle.

Background: 1-3 "stuff" regions (wavy Voronoi cells), each one of the 12 classes, distinct,
and no object takes a stuff class of its image; so every pixel has a class (no ignore label)
and the label map shows every object. Instances: stuff regions 0..m-1, objects m, m+1, ...
The ground-truth foreground (a mask prior's target) is the union of the objects: every pixel
whose instance id is >= m; the stuff regions are background.

`bench/testbed.py` measures the floors (chance, grouping only, colour) and cue-wise nearest
neighbour rates. Image i of a split is a pure function of (seed, split, i); nothing is read
from disk.
"""

from __future__ import annotations

import colorsys
import math
import operator

import numpy as np

from vice.data.datasets.base import ImageSource

SPLIT_CODES = {"train": 0, "val": 1, "init": 2}  # init: disjoint, as synthetic's
MIN_SIZE = 32

# Texture periods are in px up to this side and scale with the side above it (everything
# then scales together, so region_size should too).
_REFERENCE_SIZE = 128

FAMILIES = ("stripes-h", "stripes-v", "checks", "grain")
# Hue band centres as fractions of the colour wheel; jitter stays well inside a band.
HUE_BANDS = (("red", 0.0), ("green", 1 / 3), ("blue", 2 / 3))
_HUE_JITTER = 1 / 24  # +-15 degrees, bands are 120 degrees apart
NUM_CLASSES = len(FAMILIES) * len(HUE_BANDS)
# Class c = family * 3 + band: consecutive ids share a family.
CLASS_NAMES = tuple(f"{fam}/{hue}" for fam in FAMILIES for hue, _ in HUE_BANDS)


def family_of(cls: int | np.ndarray) -> int | np.ndarray:
    return cls // len(HUE_BANDS)


def band_of(cls: int | np.ndarray) -> int | np.ndarray:
    return cls % len(HUE_BANDS)


# Every texture returns t with mean ~0 and std ~1 over a region (the divisors: measured std
# of the clipped waves), so a region's mean and std per channel do not depend on its family:
# only the spatial arrangement of the values tells the families apart.
def _wave(phase: np.ndarray) -> np.ndarray:
    # A clipped sine: two flat bands with soft ~1 px edges (no aliasing at 3 px periods).
    return np.clip(1.6 * np.sin(phase), -1.0, 1.0) * (1 / 0.85)


def _along(rng, xs, ys, degrees: float) -> np.ndarray:
    a = math.radians(degrees + float(rng.uniform(-8.0, 8.0)))
    return xs * math.cos(a) + ys * math.sin(a)


def _tex_stripes_h(rng, xs, ys, scale):
    period = 4.0 * scale * float(rng.uniform(0.9, 1.1))
    return _wave(_along(rng, xs, ys, 90.0) * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi))


def _tex_stripes_v(rng, xs, ys, scale):
    period = 3.0 * scale * float(rng.uniform(0.9, 1.1))
    return _wave(_along(rng, xs, ys, 0.0) * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi))


def _tex_checks(rng, xs, ys, scale):
    k = math.pi / (2.0 * scale * float(rng.uniform(0.9, 1.1)))  # 2 px cells
    u, v = _along(rng, xs, ys, 0.0), _along(rng, xs, ys, 90.0)
    prod = np.sin(u * k + rng.uniform(0, 2 * math.pi)) * np.sin(v * k + rng.uniform(0, 2 * math.pi))
    return np.clip(4.0 * prod, -1.0, 1.0) * (1 / 0.85)


def _tex_grain(rng, xs, ys, scale):
    # Independent +-1 per cell of `scale` px: white, no orientation, no period.
    side = int(max(xs.max(initial=0), ys.max(initial=0)) / scale) + 1
    signs = rng.integers(0, 2, (side, side)).astype(np.float32) * 2.0 - 1.0
    return signs[(ys / scale).astype(np.intp), (xs / scale).astype(np.intp)]


_TEXTURES = (_tex_stripes_h, _tex_stripes_v, _tex_checks, _tex_grain)


# Scene layout, sizes as fractions of the side. At 128 px: 7-12 objects with parts 5-9 px
# wide (thinner ones carry too few texture periods to name their family), on 1-3 stuff
# regions; the largest region then holds about half of an image's pixels.
_NUM_STUFF = (1, 4)  # [low, high)
_NUM_OBJECTS = (7, 13)
_NUM_SHAPES = 5
_WIDTH = (0.04, 0.07)
_EXTENT = 0.32  # max distance of a shape's pixels from its centre


def _shape(rng: np.random.Generator, kind: int, dx: np.ndarray, dy: np.ndarray, side: int):
    """Inside-test of a random shape centred at the origin; most have parts ~5-9 px wide."""
    a = rng.uniform(0, math.pi)
    u = dx * math.cos(a) + dy * math.sin(a)
    v = -dx * math.sin(a) + dy * math.cos(a)
    width = side * rng.uniform(*_WIDTH)
    if kind == 0:  # bar
        return (np.abs(u) <= side * rng.uniform(0.15, 0.32)) & (np.abs(v) <= 0.5 * width)
    rho = np.sqrt(u * u + v * v)
    if kind == 1:  # ring
        outer = side * rng.uniform(0.1, 0.22)
        return (rho <= outer) & (rho >= outer - width)
    phi = np.arctan2(v, u)
    if kind == 2:  # star: radius linear in angle between spike tips and notches
        n, outer = int(rng.integers(4, 8)), side * rng.uniform(0.13, 0.25)
        inner = outer * rng.uniform(0.25, 0.4)
        f = np.mod(phi * (n / (2 * math.pi)), 1.0)
        return rho <= outer - (outer - inner) * 2.0 * np.minimum(f, 1.0 - f)
    if kind == 3:  # cross: 2-4 limbs through the centre
        half, out = side * rng.uniform(0.12, 0.25), np.zeros(u.shape, dtype=bool)
        for b in np.pi * np.sort(rng.random(int(rng.integers(2, 5)))):
            along = u * math.cos(b) + v * math.sin(b)
            across = -u * math.sin(b) + v * math.cos(b)
            out |= (np.abs(along) <= half) & (np.abs(across) <= 0.5 * width)
        return out
    radius = side * rng.uniform(0.08, 0.18)  # ellipse: the one shape without thin parts
    return (u / radius) ** 2 + (v / (radius * rng.uniform(0.4, 1.0))) ** 2 <= 1.0


def _fail(key: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"invalid config value {key}={value!r}: {allowed}")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def achievable_segmentation_accuracy(regions_HW: np.ndarray, target_HW: np.ndarray) -> float:
    """ASA: the fraction of pixels labelled right if every region takes its majority target
    (class or instance id, >= 0): how well a partition can follow the target's borders."""
    r = np.asarray(regions_HW, dtype=np.int64).ravel()
    t = np.asarray(target_HW, dtype=np.int64).ravel()
    nr, nt = int(r.max()) + 1, int(t.max()) + 1
    joint = np.bincount(r * nt + t, minlength=nr * nt).reshape(nr, nt)
    return float(joint.max(1).sum() / r.size)


class TestbedSource(ImageSource):
    """Objects of 12 (texture family x hue band) classes on a textured background, with
    per-pixel class labels and instance ids.

    Args:
        root: Ignored; present so every source has the same constructor.
        split: "train", "val" or "init"; the splits hold different images.
        length: Number of images in the split.
        size: Image side in px (square).
        seed: Data set seed; image i is a pure function of (seed, split, i).
    """

    __test__ = False  # not a pytest class, despite its name
    num_classes = NUM_CLASSES
    class_names = CLASS_NAMES

    def __init__(
        self,
        root: str | None = None,
        split: str = "train",
        length: int = 2000,
        size: int = 128,
        seed: int = 0,
    ) -> None:
        del root  # nothing on disk
        if split not in SPLIT_CODES:
            raise _fail("data.split", split, f"the testbed data set has {list(SPLIT_CODES)}")
        if not _is_int(length) or length < 1:
            raise _fail("data.testbed.length", length, "must be an integer >= 1")
        if not _is_int(size) or size < MIN_SIZE:
            raise _fail("data.testbed.size", size, f"must be an integer >= {MIN_SIZE}")
        if not _is_int(seed) or seed < 0:
            raise _fail("data.seed", seed, "must be an integer >= 0")
        self.split, self.length, self.size, self.seed = split, int(length), int(size), int(seed)
        self._cache: tuple[int, np.ndarray, np.ndarray, np.ndarray, int] | None = None

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = None  # cheap to rebuild in a loader worker
        return state

    def _check_index(self, index: int) -> int:
        i = operator.index(index)
        if not 0 <= i < self.length:
            raise IndexError(f"testbed {self.split} index {i} out of range [0, {self.length})")
        return i

    def key(self, index: int) -> str:
        """A stable identifier, e.g. 'testbed/train/seed0/000042'."""
        return f"testbed/{self.split}/seed{self.seed}/{self._check_index(index):06d}"

    def load_image(self, index: int) -> np.ndarray:
        """Image `index` as RGB uint8 (H, W, 3)."""
        return self._cached(index)[1].copy()

    def load_label(self, index: int) -> np.ndarray:
        """Label map (H, W) int64 with ids in [0, 12): family * 3 + hue band."""
        return self._cached(index)[2].copy()

    @property
    def has_instances(self) -> bool:
        return True

    def load_instances(self, index: int) -> np.ndarray:
        """Instance map (H, W) int64: 0..m-1 the m stuff regions (1-3, one class each), then
        the objects in drawing order (later ones occlude earlier ones, so ids may be absent or
        split in parts)."""
        return self._cached(index)[3].astype(np.int64)

    @property
    def has_foreground(self) -> bool:
        return True

    def load_foreground(self, index: int) -> np.ndarray:
        """Foreground (H, W) bool: the objects' pixels (instance ids >= m); the m stuff
        regions are background."""
        _, _, _, region, m = self._cached(index)
        return region >= m

    def _cached(self, index: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, int]:
        # Callers load the image, then the label or instances, of the same index.
        i = self._check_index(index)
        if self._cache is None or self._cache[0] != i:
            self._cache = (i, *self._generate(i))
        return self._cache

    def _generate(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Image (S, S, 3) uint8, label (S, S) int64, region ids (S, S) of `index` and its
        number of stuff regions m (region ids below m are stuff)."""
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])
        S = self.size
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32)
        classes, centres, region, m = _layout(rng, xx, yy)
        r = len(classes)

        # Texture of each region on its visible pixels only.
        scale = max(1.0, S / _REFERENCE_SIZE)
        t = np.zeros((S, S), dtype=np.float32)
        for k, cls in enumerate(classes):
            visible = region == k
            if visible.any():
                t[visible] = _TEXTURES[int(family_of(cls))](rng, xx[visible], yy[visible], scale)

        # Per-region nuisances: none depends on the class beyond its hue band's centre.
        colour = np.empty((r, 3), dtype=np.float32)
        for k, cls in enumerate(classes):
            hue = HUE_BANDS[int(band_of(cls))][1] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
            sat, value = rng.uniform(0.4, 0.9), rng.uniform(0.35, 0.75)
            colour[k] = colorsys.hsv_to_rgb(hue % 1.0, sat, value)
        contrast = rng.uniform(0.15, 0.3, r).astype(np.float32)
        noise_std = rng.uniform(0.01, 0.035, r).astype(np.float32)
        # Illumination gradient: up to +-0.3 over a region's reach (the image for stuff) along a
        # random direction, from its centre (stuff: its Voronoi seed).
        gain = rng.uniform(0.0, 0.3, r) / np.where(np.arange(r) < m, S, _EXTENT * S)
        angle = rng.uniform(0, 2 * math.pi, r)
        gx = (gain * np.cos(angle)).astype(np.float32)[region]
        gy = (gain * np.sin(angle)).astype(np.float32)[region]
        shade = 1.0 + gx * (xx - centres[region, 0]) + gy * (yy - centres[region, 1])
        shade *= 1.0 + contrast[region] * t  # texture modulates value, not hue
        # Uniform noise with the drawn std (sqrt(12) * std wide): cheaper than Gaussian.
        noise = rng.random((S, S, 3), dtype=np.float32) - 0.5
        noise *= (math.sqrt(12.0) * noise_std)[region][..., None]
        pixels = colour[region] * shade[..., None] + noise
        image = (np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        return image, classes[region].astype(np.int64), region, m


def _layout(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray):
    """Classes (R,), centres (R, 2) and the region map (S, S) of R = m stuff regions + objects.

    Stuff: m = 1-3 Voronoi cells with wavy borders and distinct classes tile the image. Objects
    of the other classes are drawn on top, later ones occluding earlier ones.
    """
    S = xx.shape[0]
    m = int(rng.integers(*_NUM_STUFF))
    n = int(rng.integers(*_NUM_OBJECTS))
    stuff = rng.choice(NUM_CLASSES, m, replace=False)
    rest = np.setdiff1d(np.arange(NUM_CLASSES), stuff)
    classes = np.concatenate([stuff, rest[rng.integers(rest.size, size=n)]])
    centres = rng.uniform(0, S, (m + n, 2)).astype(np.float32)
    amp, freq = S * 0.05, 2 * math.pi / (S * rng.uniform(0.15, 0.3))
    wx = xx + amp * np.sin(yy * freq + rng.uniform(0, 2 * math.pi))
    wy = yy + amp * np.sin(xx * freq + rng.uniform(0, 2 * math.pi))
    cx, cy = centres[:m, 0, None, None], centres[:m, 1, None, None]
    region = np.argmin((wx[None] - cx) ** 2 + (wy[None] - cy) ** 2, axis=0).astype(np.intp)
    reach = int(_EXTENT * S) + 2
    for k in range(m, m + n):
        x, y = centres[k]
        x0, x1 = max(0, int(x) - reach), min(S, int(x) + reach + 1)
        y0, y1 = max(0, int(y) - reach), min(S, int(y) + reach + 1)
        dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(x - 0.5)
        dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(y - 0.5)
        mask = _shape(rng, int(rng.integers(_NUM_SHAPES)), dx, dy, S)
        region[y0:y1, x0:x1][mask] = k
    return classes, centres, region, m
