"""The embedded default data set: procedural texture scenes with exact semantic labels (and
instance maps: which drawn object each pixel shows).

Each image is a background region plus a few overlapping objects (ellipses, rectangles,
polygons, blobs). Every region belongs to a semantic class, and the class is carried only by
its texture (stripes, dots, checks, rings, ...): the two colours a region is painted with are
drawn independently of its class, so clustering raw colours cannot recover the labels while
dense features that see texture can. Nothing is read from disk; image `i` of a split is a pure
function of (seed, split, i), so any worker on any node regenerates the same pixels.

Ground-truth foreground (a mask prior's target): the union of the drawn objects. The
background region is the one large surface every object lies on, so it is what a saliency
model would leave out, even though it too carries a texture class.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vice.data.datasets.base import ImageSource

# "init": images for an image-level supervised init of the trunk (tools/make_init_weights.py),
# disjoint from the pretraining and evaluation splits.
SPLIT_CODES = {"train": 0, "val": 1, "init": 2}

MIN_CLASSES = 6
MIN_SIZE = 16

# Texture periods are in pixels at this image size; larger images get proportionally coarser
# textures (by the square root of the ratio) so that textures stay legible but objects, which
# scale linearly, still hold many periods.
_REFERENCE_SIZE = 128


@dataclass(frozen=True)
class _Region:
    """What a texture needs to know about the region it paints."""

    cx: float  # region centre, px (rings are centred on it)
    cy: float
    height: int  # image size, px (value noise needs the extent of its lattice)
    width: int
    scale: float  # texture period multiplier for this image size


_Texture = Callable[[np.random.Generator, np.ndarray, np.ndarray, _Region], np.ndarray]


def _jitter(rng: np.random.Generator, value: float, rel: float = 0.2) -> float:
    return value * float(rng.uniform(1.0 - rel, 1.0 + rel))


def _rotate(
    rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, degrees: float, jitter: float
) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along and across direction `degrees` (+ a few degrees of jitter)."""
    a = math.radians(degrees + float(rng.normal(0.0, jitter)))
    c, s = math.cos(a), math.sin(a)
    return xs * c + ys * s, -xs * s + ys * c


def _square_wave(phase: np.ndarray, sharpness: float = 1.6) -> np.ndarray:
    # A clipped sine: two flat colour bands with a ~1 px soft edge, which avoids aliasing.
    return np.clip(0.5 + sharpness * np.sin(phase), 0.0, 1.0)


def _line(dist: np.ndarray, width: float) -> np.ndarray:
    """Antialiased coverage of a line of `width` px at distance `dist` from its centre."""
    return np.clip(0.5 * width - dist + 0.5, 0.0, 1.0)


def _tex_stripes_h(rng, xs, ys, reg):
    period = _jitter(rng, 14.0 * reg.scale)
    u, _ = _rotate(rng, xs, ys, 90.0, 4.0)  # wave vector vertical -> horizontal bands
    return _square_wave(u * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi))


def _tex_stripes_d(rng, xs, ys, reg):
    period = _jitter(rng, 5.0 * reg.scale)
    u, _ = _rotate(rng, xs, ys, -45.0, 4.0)
    return _square_wave(u * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi), 1.2)


def _tex_dots(rng, xs, ys, reg):
    period = _jitter(rng, 10.0 * reg.scale)
    u, v = _rotate(rng, xs, ys, 0.0, 5.0)
    u = np.mod(u + rng.uniform(0, period), period) - 0.5 * period
    v = np.mod(v + rng.uniform(0, period), period) - 0.5 * period
    return np.clip(0.3 * period - np.sqrt(u * u + v * v) + 0.5, 0.0, 1.0)


def _tex_checks(rng, xs, ys, reg):
    cell = _jitter(rng, 7.0 * reg.scale)
    u, v = _rotate(rng, xs, ys, 0.0, 5.0)
    k = math.pi / cell
    prod = np.sin(u * k + rng.uniform(0, 2 * math.pi)) * np.sin(v * k + rng.uniform(0, 2 * math.pi))
    return np.clip(0.5 + 4.0 * prod, 0.0, 1.0)


def _tex_blobs(rng, xs, ys, reg):
    # Value noise: random values on a coarse lattice, smoothstep-interpolated -> soft blotches.
    cell = _jitter(rng, 14.0 * reg.scale)
    gh = int(reg.height / cell) + 3
    gw = int(reg.width / cell) + 3
    grid = rng.random((gh, gw), dtype=np.float32)
    gx = xs / cell + rng.uniform(0, 1)
    gy = ys / cell + rng.uniform(0, 1)
    fx0 = np.floor(gx)
    fy0 = np.floor(gy)
    fx = gx - fx0
    fy = gy - fy0
    x0 = fx0.astype(np.intp)
    y0 = fy0.astype(np.intp)
    fx = fx * fx * (3 - 2 * fx)
    fy = fy * fy * (3 - 2 * fy)
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    noise = top * (1 - fy) + bottom * fy
    return np.clip(0.5 + 3.0 * (noise - 0.5), 0.0, 1.0)


def _tex_rings(rng, xs, ys, reg):
    period = _jitter(rng, 8.0 * reg.scale)
    rho = np.sqrt((xs - reg.cx) ** 2 + (ys - reg.cy) ** 2)
    return _square_wave(rho * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi))


def _tex_grain(rng, xs, ys, reg):
    # Independent values per cell of ~1 px (at the reference size): the only class with no
    # structure above the cell size. Stretched so most cells sit near one of the two colours.
    cell = reg.scale
    lattice = rng.random((int(reg.height / cell) + 1, int(reg.width / cell) + 1), np.float32)
    t = lattice[(ys / cell).astype(np.intp), (xs / cell).astype(np.intp)]
    return np.clip(0.5 + 1.5 * (t - 0.5), 0.0, 1.0)


def _tex_zigzag(rng, xs, ys, reg):
    period = _jitter(rng, 8.0 * reg.scale)
    wavelength = _jitter(rng, 12.0 * reg.scale)
    u, v = _rotate(rng, xs, ys, 0.0, 4.0)
    # Triangle wave in u displaces horizontal bands vertically -> chevrons.
    tri = np.abs(np.mod(u / wavelength + rng.uniform(0, 1), 1.0) - 0.5) * 2.0
    phase = (v + 0.9 * period * tri) * (2 * math.pi / period) + rng.uniform(0, 2 * math.pi)
    return _square_wave(phase)


def _tex_grid(rng, xs, ys, reg):
    period = _jitter(rng, 11.0 * reg.scale)
    width = 2.0 * reg.scale
    u, v = _rotate(rng, xs, ys, 0.0, 4.0)
    du = np.abs(np.mod(u + rng.uniform(0, period), period) - 0.5 * period)
    dv = np.abs(np.mod(v + rng.uniform(0, period), period) - 0.5 * period)
    return np.maximum(_line(du, width), _line(dv, width))


def _tex_bricks(rng, xs, ys, reg):
    row = _jitter(rng, 8.0 * reg.scale)
    brick = 2.2 * row
    width = 2.0 * reg.scale
    u, v = _rotate(rng, xs, ys, 0.0, 4.0)
    v = v + rng.uniform(0, row)
    u = u + rng.uniform(0, brick) + 0.5 * brick * np.mod(np.floor(v / row), 2)
    dv = np.abs(np.mod(v, row) - 0.5 * row)
    du = np.abs(np.mod(u, brick) - 0.5 * brick)
    # Mortar lines sit on the cell borders, i.e. where the distance to the cell centre is max.
    return np.maximum(_line(0.5 * row - dv, width), _line(0.5 * brick - du, width))


TEXTURES: tuple[tuple[str, _Texture], ...] = (
    ("stripes-h", _tex_stripes_h),
    ("stripes-d", _tex_stripes_d),
    ("dots", _tex_dots),
    ("checks", _tex_checks),
    ("blobs", _tex_blobs),
    ("rings", _tex_rings),
    ("grain", _tex_grain),
    ("zigzag", _tex_zigzag),
    ("grid", _tex_grid),
    ("bricks", _tex_bricks),
)
MAX_CLASSES = len(TEXTURES)


def _fail(key: str, value: object, allowed: str) -> ValueError:
    # Same wording as vice.config, so users see one style of message for every bad value.
    return ValueError(f"invalid config value {key}={value!r}: {allowed}")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _parse_size(size: int | Sequence[int]) -> tuple[int, int]:
    if _is_int(size):
        hw = (int(size), int(size))
    elif (
        isinstance(size, Sequence)
        and not isinstance(size, str)
        and len(size) == 2
        and all(_is_int(s) for s in size)
    ):
        hw = (int(size[0]), int(size[1]))
    else:
        raise _fail("data.synthetic.size", size, "an integer (square side) or [height, width]")
    if min(hw) < MIN_SIZE:
        raise _fail("data.synthetic.size", size, f"every side must be >= {MIN_SIZE} px")
    return hw


def _two_colours(rng: np.random.Generator) -> np.ndarray:
    """Two random RGB colours in [0, 1], far enough apart for the texture to be visible."""
    cand = rng.random((16, 2, 3), dtype=np.float32)
    dist = np.linalg.norm(cand[:, 0] - cand[:, 1], axis=1)
    ok = np.flatnonzero(dist > 0.45)
    if ok.size:
        return cand[ok[0]]
    first = cand[0, 0]
    return np.stack([first, 1.0 - first])  # maximally distant fallback, practically never used


def _shape_mask(
    rng: np.random.Generator, kind: int, dx: np.ndarray, dy: np.ndarray, radius: float
) -> np.ndarray:
    """Inside-test of one random shape centred at the origin, on offsets (dx, dy)."""
    angle = rng.uniform(0, math.pi)
    c, s = math.cos(angle), math.sin(angle)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    if kind == 0:  # ellipse
        ry = radius * rng.uniform(0.45, 1.0)
        return (u / radius) ** 2 + (v / ry) ** 2 <= 1.0
    if kind == 1:  # rotated rectangle
        ry = radius * rng.uniform(0.4, 1.0)
        return (np.abs(u) <= radius * 0.85) & (np.abs(v) <= ry * 0.85)
    phi = np.arctan2(v, u)  # in (-pi, pi]
    rho = np.sqrt(u * u + v * v)
    if kind == 2:  # random star-shaped polygon, exact straight edges
        n = int(rng.integers(3, 8))
        # Evenly spaced vertex angles with small jitter: they stay sorted, no gap reaches pi
        # (which would put the centre outside the polygon and break the ray test below), and
        # vertices never bunch into near-degenerate slivers.
        step = 2 * math.pi / n
        angles = -math.pi + step * (np.arange(n) + 0.5 + rng.uniform(-0.2, 0.2, n))
        radii = radius * rng.uniform(0.6, 1.0, n)
        px, py = radii * np.cos(angles), radii * np.sin(angles)
        qx, qy = np.roll(px, -1), np.roll(py, -1)
        # Edge i joins vertex i and i+1; its line is {p : n_i . p = d_i}.
        nx, ny = qy - py, px - qx
        d = nx * px + ny * py
        sector = (np.searchsorted(angles, phi, side="right") - 1) % n
        denom = nx[sector] * np.cos(phi) + ny[sector] * np.sin(phi)
        with np.errstate(divide="ignore", invalid="ignore"):
            edge = d[sector] / denom
        return (rho <= edge) | (rho < 1e-6)
    # kind == 3: smooth blob, radius modulated by a few low harmonics of the angle
    r = np.full_like(rho, radius * 0.85)
    for k in (2, 3, 4):
        r += radius * 0.15 * rng.uniform(-1, 1) * np.cos(k * phi + rng.uniform(0, 2 * math.pi))
    return rho <= r


_NUM_SHAPES = 4


class SyntheticSource(ImageSource):
    """Procedural texture scenes with per-pixel semantic labels and instance ids (the default
    data set).

    Args:
        root: Ignored; present so every source has the same constructor.
        split: "train", "val" or "init"; the splits hold different images.
        length: Number of images in the split.
        size: Image side in px (square), or (height, width).
        seed: Data set seed; image i is a pure function of (seed, split, i).
        num_classes: Number of texture classes used, in [6, MAX_CLASSES].
    """

    def __init__(
        self,
        root: str | None = None,
        split: str = "train",
        length: int = 2000,
        size: int | Sequence[int] = 128,
        seed: int = 0,
        num_classes: int = 8,
    ) -> None:
        del root  # nothing on disk
        if split not in SPLIT_CODES:
            raise _fail("data.split", split, f"the synthetic data set has {list(SPLIT_CODES)}")
        if not _is_int(length) or length < 1:
            raise _fail("data.synthetic.length", length, "must be an integer >= 1")
        if not _is_int(num_classes) or not MIN_CLASSES <= num_classes <= MAX_CLASSES:
            raise _fail(
                "data.synthetic.num_classes",
                num_classes,
                f"must be an integer in [{MIN_CLASSES}, {MAX_CLASSES}] "
                f"(one texture per class: {[name for name, _ in TEXTURES]})",
            )
        if not _is_int(seed) or seed < 0:
            raise _fail("data.seed", seed, "must be an integer >= 0")
        self.split = split
        self.length = int(length)
        self.height, self.width = _parse_size(size)
        self.seed = int(seed)
        self.num_classes = int(num_classes)
        self.class_names = tuple(name for name, _ in TEXTURES[: self.num_classes])
        self._cache: tuple[int, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._grids: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict:
        # Sources are pickled into loader workers; the caches are cheap to rebuild there.
        state = self.__dict__.copy()
        state["_cache"] = None
        state["_grids"] = None
        return state

    def _check_index(self, index: int) -> int:
        i = operator.index(index)
        if not 0 <= i < self.length:
            raise IndexError(f"synthetic {self.split} index {i} out of range [0, {self.length})")
        return i

    def key(self, index: int) -> str:
        """A stable identifier, e.g. 'synthetic/train/seed0/000042'."""
        i = self._check_index(index)
        return f"synthetic/{self.split}/seed{self.seed}/{i:06d}"

    def load_image(self, index: int) -> np.ndarray:
        """Image `index` as RGB uint8 (H, W, 3)."""
        return self.sample(index)[0]

    def load_label(self, index: int) -> np.ndarray:
        """Label map (H, W) int64 with ids in [0, num_classes)."""
        return self.sample(index)[1]

    @property
    def has_instances(self) -> bool:
        return True

    def load_instances(self, index: int) -> np.ndarray:
        """Instance map (H, W) int64: 0 for the background, k for the k-th object drawn.

        Objects occlude earlier ones, so a hidden object's id is absent and an occluded one
        may be split in parts; two objects of one class keep two ids.
        """
        return self._cached(index)[3].astype(np.int64)  # a copy

    @property
    def has_foreground(self) -> bool:
        return True

    def load_foreground(self, index: int) -> np.ndarray:
        """Foreground (H, W) bool: the visible pixels of the drawn objects (instance id > 0);
        the background region (id 0) is not foreground."""
        return self._cached(index)[3] > 0

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image and label of `index`, generated together so they always agree.

        Copies are returned so callers may modify them in place.
        """
        _, image, label, _ = self._cached(index)
        return image.copy(), label.copy()

    def _cached(self, index: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        # The last sample is kept because callers typically load the image and then the label
        # (or the instances) of the same index.
        i = self._check_index(index)
        cached = self._cache
        if cached is None or cached[0] != i:
            cached = (i, *self._generate(i))
            self._cache = cached
        return cached

    def _generate(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image (H, W, 3) uint8, label (H, W) int64 and instance ids (H, W) of `index`."""
        rng = np.random.default_rng([self.seed, SPLIT_CODES[self.split], index])
        H, W = self.height, self.width
        side = min(H, W)
        scale = max(1.0, side / _REFERENCE_SIZE) ** 0.5
        C = self.num_classes

        # Region 0 is the background; objects get 1..n and later ones occlude earlier ones.
        background = int(rng.integers(C))
        # Objects never share the background class (they would be invisible in the label map);
        # by symmetry every class is still equally likely overall.
        num_objects = int(rng.integers(2, 7))
        others = rng.integers(C - 1, size=num_objects)
        classes = np.concatenate([[background], others + (others >= background)])
        centres = [(rng.uniform(0, W), rng.uniform(0, H))]
        region = np.zeros((H, W), dtype=np.intp)
        boxes = [(slice(0, H), slice(0, W))]
        for k in range(1, num_objects + 1):
            radius = side * rng.uniform(0.1, 0.3)
            cx, cy = rng.uniform(0, W), rng.uniform(0, H)
            kind = int(rng.integers(_NUM_SHAPES))
            centres.append((cx, cy))
            x0, x1 = max(0, int(cx - radius)), min(W, int(cx + radius) + 2)
            y0, y1 = max(0, int(cy - radius)), min(H, int(cy + radius) + 2)
            boxes.append((slice(y0, y1), slice(x0, x1)))
            dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx - 0.5)
            dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy - 0.5)
            mask = _shape_mask(rng, kind, dx, dy, radius)
            region[y0:y1, x0:x1][mask] = k

        # The background texture is computed on the whole grid (no gather needed), objects only
        # on their visible pixels; later writes win, matching the occlusion order of `region`.
        xx, yy = self._grid()
        t_map = np.empty((H, W), dtype=np.float32)
        colours = np.zeros((len(classes), 2, 3), dtype=np.float32)
        for k, cls in enumerate(classes):
            box = boxes[k]
            reg = _Region(centres[k][0], centres[k][1], H, W, scale)
            texture = TEXTURES[int(cls)][1]
            colours[k] = _two_colours(rng)
            if k == 0:
                t_map[...] = texture(rng, xx, yy, reg)
                continue
            visible = region[box] == k
            if visible.any():
                t_map[box][visible] = texture(rng, xx[box][visible], yy[box][visible], reg)
        label = classes[region].astype(np.int64)

        # Global photometric nuisance: brightness, a soft illumination ramp, sensor noise.
        gain = rng.uniform(0.8, 1.2)
        ramp_angle = rng.uniform(0, 2 * math.pi)
        ry = np.linspace(-0.5, 0.5, H, dtype=np.float32)[:, None] * math.sin(ramp_angle)
        rx = np.linspace(-0.5, 0.5, W, dtype=np.float32)[None, :] * math.cos(ramp_angle)
        shade = (255.0 * gain) * (1.0 + 0.25 * (rx + ry))
        # Uniform noise of std ~0.023 (x255); far cheaper to draw than Gaussian noise.
        noise = rng.random((3, H, W), dtype=np.float32)
        noise -= 0.5
        noise *= 0.08 * 255.0
        noise += 0.5  # rounds instead of truncating on the cast below
        image = np.empty((H, W, 3), dtype=np.uint8)
        low, diff = colours[:, 0], colours[:, 1] - colours[:, 0]
        for c in range(3):
            chan = diff[:, c][region]
            chan *= t_map
            chan += low[:, c][region]
            chan *= shade
            chan += noise[c]
            np.clip(chan, 0.0, 255.0, out=chan)
            image[..., c] = chan
        return image, label, region

    def _grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinate grids (x, y) as float32, built once per source."""
        if self._grids is None:
            yy, xx = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
            self._grids = (xx, yy)
        return self._grids
