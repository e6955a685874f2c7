"""Typed configuration schemas and their validation.

Every schema is a plain dataclass (so Hydra/OmegaConf can use them as structured configs) with
a `validate(prefix)` method that raises `ValueError` naming the full key, the value and what
is allowed. Validation runs before anything is built, submitted or written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

DATASET_NAMES = ("synthetic", "coco", "cityscapes", "folder")
SUPERPIXEL_METHODS = ("slic", "grid")


def _fail(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"invalid config value {key}={value!r}: {allowed}")


def _check_range(
    key: str, value: float, lo: float | None = None, hi: float | None = None, *, lo_open=False
) -> None:
    too_low = lo is not None and (value <= lo if lo_open else value < lo)
    too_high = hi is not None and value > hi
    if too_low or too_high:
        lo_txt = "-inf" if lo is None else f"{lo}"
        hi_txt = "inf" if hi is None else f"{hi}"
        bracket = "(" if lo_open else "["
        raise _fail(key, value, f"must be in {bracket}{lo_txt}, {hi_txt}]")


def _check_prob(key: str, value: float) -> None:
    _check_range(key, value, 0.0, 1.0)


@dataclass
class SuperpixelConfig:
    """How the per-image superpixel id map is computed (ViCE: SLIC, region 20 px, ruler 10)."""

    method: str = "slic"  # "slic" (fast-slic) or "grid" (same-size cells; the ablation)
    region_size: int = 20  # px; fast-slic gets num_components = H*W / region_size**2
    compactness: float = 10.0  # SLIC ruler: higher -> more square, less edge-adherent segments
    iterations: int = 5  # SLIC iterations, as the published code
    blur: int = 3  # odd box-blur kernel applied before SLIC; 0 or 1 disables it
    cache_dir: str | None = None  # optional on-disk cache of id maps for file-backed data sets

    def validate(self, prefix: str = "data.superpixels") -> None:
        if self.method not in SUPERPIXEL_METHODS:
            raise _fail(f"{prefix}.method", self.method, f"one of {list(SUPERPIXEL_METHODS)}")
        _check_range(f"{prefix}.region_size", self.region_size, 2)
        _check_range(f"{prefix}.compactness", self.compactness, 0.0, lo_open=True)
        _check_range(f"{prefix}.iterations", self.iterations, 1)
        if self.blur not in (0, 1) and (self.blur < 0 or self.blur % 2 == 0):
            raise _fail(f"{prefix}.blur", self.blur, "0 (off) or an odd kernel size >= 3")


@dataclass
class ViewConfig:
    """ViCE view sampling and photometric augmentation (defaults: methods.md section 1)."""

    short_side: int = 500  # the source image is resized so its short side has this many px
    max_side: int = 2048  # ... unless its long side would exceed this
    view_size: int = 400  # every view is resized to view_size x view_size
    num_views: int = 5  # 1 center view + num_views-1 surrounding views
    crop_scale_min: float = 0.5  # crop side = U(min, max) * view_size, in source pixels
    crop_scale_max: float = 1.5
    kappa: float = 2.0  # von Mises concentration of surrounding views' angle and radius
    edge_floor: float = 0.02  # uniform probability mass mixed into the edge map (center view)
    edge_blur_sigma: float = 3.0  # px of the Gaussian blur over the Canny edge map
    canny_low: float = 10.0  # Canny hysteresis thresholds on the Sobel magnitude of 0-255 gray
    canny_high: float = 50.0
    flip_prob: float = 0.5
    jitter_prob: float = 0.8  # SimCLR colour jitter (brightness, contrast, saturation, hue)
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    gray_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma_min: float = 0.1
    blur_sigma_max: float = 2.0
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # ImageNet
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])

    def validate(self, prefix: str = "data.views") -> None:
        _check_range(f"{prefix}.short_side", self.short_side, 16)
        _check_range(f"{prefix}.max_side", self.max_side, self.short_side)
        _check_range(f"{prefix}.view_size", self.view_size, 8)
        _check_range(f"{prefix}.num_views", self.num_views, 2)
        _check_range(f"{prefix}.crop_scale_min", self.crop_scale_min, 0.0, lo_open=True)
        _check_range(f"{prefix}.crop_scale_max", self.crop_scale_max, self.crop_scale_min)
        _check_range(f"{prefix}.kappa", self.kappa, 0.0)
        _check_prob(f"{prefix}.edge_floor", self.edge_floor)
        _check_range(f"{prefix}.edge_blur_sigma", self.edge_blur_sigma, 0.0)
        _check_range(f"{prefix}.canny_low", self.canny_low, 0.0)
        _check_range(f"{prefix}.canny_high", self.canny_high, self.canny_low)
        for name in ("flip_prob", "jitter_prob", "gray_prob", "blur_prob"):
            _check_prob(f"{prefix}.{name}", getattr(self, name))
        for name in ("brightness", "contrast", "saturation"):
            _check_range(f"{prefix}.{name}", getattr(self, name), 0.0)
        _check_range(f"{prefix}.hue", self.hue, 0.0, 0.5)
        _check_range(f"{prefix}.blur_sigma_min", self.blur_sigma_min, 0.0, lo_open=True)
        _check_range(f"{prefix}.blur_sigma_max", self.blur_sigma_max, self.blur_sigma_min)
        for name in ("mean", "std"):
            values = list(getattr(self, name))
            if len(values) != 3:
                raise _fail(f"{prefix}.{name}", values, "a list of 3 numbers (R, G, B)")
        if min(self.std) <= 0:
            raise _fail(f"{prefix}.std", list(self.std), "every entry must be > 0")


@dataclass
class MaskConfig:
    """ViCE regional masking: per view a random box masks every superpixel it touches."""

    enabled: bool = True
    prob: float = 1.0  # probability that a view gets a mask box
    max_box_ratio: float = 0.25  # box sides up to this fraction of the view side
    protect_ratio: float = 0.25  # fraction of common superpixels never masked (per image)
    noise_low: float = -1.0  # masked pixels become U(noise_low, noise_high) after normalisation
    noise_high: float = 1.0
    kappa: float = 2.0  # von Mises concentration of box radius and sides (mode at 0.75 max)
    mask_center: bool = True  # whether the center view is masked as well

    def validate(self, prefix: str = "data.masking") -> None:
        _check_prob(f"{prefix}.prob", self.prob)
        _check_range(f"{prefix}.max_box_ratio", self.max_box_ratio, 0.0, 1.0, lo_open=True)
        _check_prob(f"{prefix}.protect_ratio", self.protect_ratio)
        _check_range(f"{prefix}.noise_high", self.noise_high, self.noise_low)
        _check_range(f"{prefix}.kappa", self.kappa, 0.0)


@dataclass
class SyntheticConfig:
    """The embedded procedural data set (no files)."""

    length: int = 2000  # images per epoch of the train split
    eval_length: int = 64  # images of the val split used for evaluation
    size: int = 128  # px, square
    num_classes: int = 8

    def validate(self, prefix: str = "data.synthetic") -> None:
        _check_range(f"{prefix}.length", self.length, 1)
        _check_range(f"{prefix}.eval_length", self.eval_length, 1)
        _check_range(f"{prefix}.size", self.size, 16)
        _check_range(f"{prefix}.num_classes", self.num_classes, 6)


@dataclass
class DataConfig:
    """Which images, how each sample is built, and how batches are loaded."""

    dataset: str = "synthetic"  # one of DATASET_NAMES
    root: str | None = None  # data set directory (unused by synthetic)
    split: str = "train"  # pretraining split (data-set specific names)
    eval_split: str = "val"
    batch_size: int = 4  # images per rank per step (each brings num_views views)
    num_workers: int = 2  # loader processes per rank
    seed: int = 0  # every sample is a pure function of (seed, epoch, index)
    max_resample: int = 20  # tries before giving up on an image with no common superpixel
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    masking: MaskConfig = field(default_factory=MaskConfig)

    def validate(self, prefix: str = "data") -> None:
        if self.dataset not in DATASET_NAMES:
            raise _fail(f"{prefix}.dataset", self.dataset, f"one of {list(DATASET_NAMES)}")
        if self.dataset != "synthetic" and not self.root:
            raise _fail(
                f"{prefix}.root", self.root, f"data set '{self.dataset}' needs its directory"
            )
        _check_range(f"{prefix}.batch_size", self.batch_size, 1)
        _check_range(f"{prefix}.num_workers", self.num_workers, 0)
        _check_range(f"{prefix}.max_resample", self.max_resample, 1)
        self.synthetic.validate(f"{prefix}.synthetic")
        self.superpixels.validate(f"{prefix}.superpixels")
        self.views.validate(f"{prefix}.views")
        self.masking.validate(f"{prefix}.masking")


def from_dict(cls: type, values: dict[str, Any] | None, prefix: str = "") -> Any:
    """Builds dataclass `cls` from a nested dict, rejecting unknown keys by name."""
    values = dict(values or {})
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ValueError(f"unknown config key {full}; known keys: {sorted(names)}")
        default = names[key].default_factory  # type: ignore[misc]
        nested = default() if callable(default) else None
        if dataclasses.is_dataclass(nested) and isinstance(value, dict):
            kwargs[key] = from_dict(type(nested), value, full)
        else:
            kwargs[key] = value
    return cls(**kwargs)


@dataclass
class FigureConfig:
    """What the views figure of a run shows."""

    indices: list[int] = field(default_factory=lambda: [0, 1])  # images of data.split to draw
    epoch: int = 0


@dataclass
class Config:
    """The whole job configuration (Hydra's structured schema is this class)."""

    data: DataConfig = field(default_factory=DataConfig)
    figure: FigureConfig = field(default_factory=FigureConfig)

    def validate(self) -> Config:
        self.data.validate("data")
        for i, index in enumerate(self.figure.indices):
            _check_range(f"figure.indices[{i}]", index, 0)
        return self
