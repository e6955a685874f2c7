"""Typed configuration schemas and their validation.

Every schema is a plain dataclass (so Hydra/OmegaConf can use them as structured configs) with
a `validate(prefix)` method that raises `ValueError` naming the full key, the value and what
is allowed. Validation runs before anything is built, submitted or written.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


def _fail(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"invalid config value {key}={value!r}: {allowed}")


def check_name(key: str, value: Any, registry: Mapping[str, Any]) -> None:
    """`value` must be a key of `registry` (the plain dict the builder itself looks up)."""
    if value not in registry:
        raise _fail(key, value, f"one of {sorted(registry)}")


def _check_range(
    key: str, value: float, lo: float | None = None, hi: float | None = None, *, lo_open=False
) -> None:
    # NaN compares false with every bound, and inf passes where there is no upper bound:
    # both would start a job that fails much later without naming the key.
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(key, value, "must be a finite number")
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

    # A key of vice.data.regions.REGION_SOURCES: slic (fast-slic), opencv_slic (OpenCV-contrib
    # SLIC, the published code's), grid (same-size cells; the ablation), gt (the data set's
    # instance maps).
    method: str = "slic"
    region_size: int = 20  # px; SLIC seeds about H*W / region_size**2 segments (both SLICs)
    compactness: float = 10.0  # SLIC ruler: higher -> more square, less edge-adherent segments
    iterations: int = 5  # SLIC iterations, as the published code
    blur: int = 3  # odd k: k x k Gaussian blur (OpenCV's sigma for k) before SLIC; 0/1 = off
    cache_dir: str | None = None  # optional on-disk cache of id maps for file-backed data sets

    def validate(self, prefix: str = "data.superpixels") -> None:
        from vice.data.regions import REGION_SOURCES  # the registry itself (lazy: cv2)

        check_name(f"{prefix}.method", self.method, REGION_SOURCES)
        _check_range(f"{prefix}.region_size", self.region_size, 2)
        _check_range(f"{prefix}.compactness", self.compactness, 0.0, lo_open=True)
        _check_range(f"{prefix}.iterations", self.iterations, 1)
        if self.blur not in (0, 1) and (self.blur < 0 or self.blur % 2 == 0):
            raise _fail(f"{prefix}.blur", self.blur, "0 (off) or an odd kernel size >= 3")


@dataclass
class SuperpixelGridConfig:
    """SuperpixelGridCut / Mean / Mix on every view (Hammoudi et al., arXiv 2204.08458);
    vice.data.superpixel_grid applies it. Off by default."""

    # A key of vice.data.superpixel_grid.KINDS: none (off), cut (chosen superpixels black),
    # mean (their mean colour), mix (their pixels from a partner image of the data set).
    kind: str = "none"
    ratio: float = 0.2  # r: fraction of the view's superpixels replaced, in (0, 1)
    count: int = 100  # q: about this many SLIC superpixels per view (>= 2)

    def validate(self, prefix: str = "data.views.superpixel_grid") -> None:
        from vice.data.superpixel_grid import KINDS  # the registry itself (lazy: cv2)

        check_name(f"{prefix}.kind", self.kind, KINDS)
        _check_range(f"{prefix}.ratio", self.ratio)  # finite
        if not 0.0 < self.ratio < 1.0:
            raise _fail(f"{prefix}.ratio", self.ratio, "must be in (0, 1)")
        _check_range(f"{prefix}.count", self.count, 2)


@dataclass
class RegionAugConfig:
    """The de-coupling / de-positioning inputs (D3SSL; methods.md section 4): region cut-out,
    a small cut-out copy and a re-positioned paste; vice.data.region_aug builds them, only
    for a method with method.decoupling or method.depositioning on. Defaults: the authors'
    public follow-up (RCC: a 3 x 3 grid of pseudo-boxes of 12-30 % of the view, aspect
    0.5-2, a shared cut ratio U(0.2, 0.6)); the paste's sizes are this project's choice."""

    grid: int = 3  # pseudo-boxes: one per cell of a grid x grid layout
    box_scale_min: float = 0.12  # a pseudo-box's area, as a fraction of the view's
    box_scale_max: float = 0.3
    box_aspect_min: float = 0.5  # its width / height, log-uniform
    box_aspect_max: float = 2.0
    cut_ratio_min: float = 0.2  # every pseudo-box loses this fraction of its area, U(min, max)
    cut_ratio_max: float = 0.6
    small_scale: float = 0.5  # side of the small cut-out copy / the view's side
    paste_scale_min: float = 0.4  # side of the pasted square / the view's side, U(min, max)
    paste_scale_max: float = 0.6
    # The paste moves by at least this fraction of the view side (L-inf); at most half the
    # room a paste of paste_scale_max leaves, so that every source place has such a target.
    min_shift: float = 0.2

    def validate(self, prefix: str = "data.views.region_aug") -> None:
        _check_range(f"{prefix}.grid", self.grid, 1)
        for name in ("box_scale", "cut_ratio", "paste_scale"):  # fractions: (0, 1), min <= max
            a, b = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            for key, value in ((f"{name}_min", a), (f"{name}_max", b)):
                _check_range(f"{prefix}.{key}", value)  # finite
                if not 0.0 < value < 1.0:
                    raise _fail(f"{prefix}.{key}", value, "must be in (0, 1)")
            if b < a:
                raise _fail(f"{prefix}.{name}_max", b, f"must be >= {prefix}.{name}_min={a}")
        _check_range(f"{prefix}.box_aspect_min", self.box_aspect_min, 0.0, lo_open=True)
        _check_range(f"{prefix}.box_aspect_max", self.box_aspect_max, self.box_aspect_min)
        _check_range(f"{prefix}.small_scale", self.small_scale, 0.0, 1.0, lo_open=True)
        room = (1.0 - self.paste_scale_max) / 2
        _check_range(f"{prefix}.min_shift", self.min_shift, 0.0, room)


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
    # Superpixel-grid augmentation of every view, before its photometric augmentation.
    superpixel_grid: SuperpixelGridConfig = field(default_factory=SuperpixelGridConfig)
    # The de-coupling / de-positioning inputs (built only when a method switch is on).
    region_aug: RegionAugConfig = field(default_factory=RegionAugConfig)

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
            if not all(math.isfinite(v) for v in values):
                raise _fail(f"{prefix}.{name}", values, "every entry must be a finite number")
        if min(self.std) <= 0:
            raise _fail(f"{prefix}.std", list(self.std), "every entry must be > 0")
        self.superpixel_grid.validate(f"{prefix}.superpixel_grid")
        self.region_aug.validate(f"{prefix}.region_aug")


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
class MaskPriorConfig:
    """One foreground (object) mask per image, MaskContrast's prior (methods.md section 2).

    Post-processing follows the published saliency rules: threshold the map, drop connected
    components under `min_component` of the image, skip (and count) images whose mask covers
    less than `min_area` of it.
    """

    # A key of vice.data.mask_priors.MASK_PRIORS: gt (the data set's ground-truth
    # foreground), superpixel_saliency (unsupervised: superpixels merged into a salient
    # region), files (saliency maps beside the images: <data.root>/<directory>/<stem>.png).
    source: str = "gt"
    directory: str = "saliency"  # files: relative to data.root, or an absolute path
    threshold: float = 0.5  # of the map in [0, 1] (8-bit files: value / 255)
    min_component: float = 0.01  # fraction of the image; smaller components are dropped
    min_area: float = 0.01  # fraction of the image; images with less mask are skipped
    cache_dir: str | None = None  # optional on-disk cache of masks (file-backed data sets)

    def validate(self, prefix: str = "data.mask_prior") -> None:
        from vice.data.mask_priors import MASK_PRIORS  # the registry itself (lazy: cv2)

        check_name(f"{prefix}.source", self.source, MASK_PRIORS)
        if not self.directory:
            raise _fail(f"{prefix}.directory", self.directory, "a directory name or path")
        _check_range(f"{prefix}.threshold", self.threshold, 0.0, 1.0, lo_open=True)
        _check_range(f"{prefix}.min_component", self.min_component, 0.0, 1.0)
        _check_range(f"{prefix}.min_area", self.min_area, 0.0, 1.0)


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
class TestbedConfig:
    """The procedural testbed (vice/data/datasets/testbed.py): 12 texture x hue classes."""

    length: int = 2000  # images per epoch of the train split
    eval_length: int = 256  # images of the val split (bench/testbed.py measures on these)
    size: int = 128  # px, square; texture periods are fixed in px up to 128

    def validate(self, prefix: str = "data.testbed") -> None:
        _check_range(f"{prefix}.length", self.length, 1)
        _check_range(f"{prefix}.eval_length", self.eval_length, 1)
        _check_range(f"{prefix}.size", self.size, 32)


@dataclass
class DataConfig:
    """Which images, how each sample is built, and how batches are loaded."""

    dataset: str = "synthetic"  # a key of vice.data.datasets.DATASETS
    root: str | None = None  # data set directory (unused by synthetic)
    split: str = "train"  # pretraining split (data-set specific names)
    eval_split: str = "val"
    batch_size: int = 4  # images per rank per step (each brings num_views views)
    num_workers: int = 2  # loader processes per rank
    seed: int = 0  # every sample is a pure function of (seed, epoch, index)
    max_resample: int = 20  # tries before giving up on an image with no common superpixel
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    testbed: TestbedConfig = field(default_factory=TestbedConfig)
    superpixels: SuperpixelConfig = field(default_factory=SuperpixelConfig)
    views: ViewConfig = field(default_factory=ViewConfig)
    masking: MaskConfig = field(default_factory=MaskConfig)
    mask_prior: MaskPriorConfig = field(default_factory=MaskPriorConfig)

    def validate(self, prefix: str = "data") -> None:
        from vice.data.datasets import DATASETS  # the registry itself (lazy: torch)

        check_name(f"{prefix}.dataset", self.dataset, DATASETS)
        if self.dataset not in ("synthetic", "testbed") and not self.root:  # procedural
            raise _fail(
                f"{prefix}.root", self.root, f"data set '{self.dataset}' needs its directory"
            )
        _check_range(f"{prefix}.batch_size", self.batch_size, 1)
        _check_range(f"{prefix}.num_workers", self.num_workers, 0)
        _check_range(f"{prefix}.max_resample", self.max_resample, 1)
        self.synthetic.validate(f"{prefix}.synthetic")
        self.testbed.validate(f"{prefix}.testbed")
        self.superpixels.validate(f"{prefix}.superpixels")
        self.views.validate(f"{prefix}.views")
        self.masking.validate(f"{prefix}.masking")
        self.mask_prior.validate(f"{prefix}.mask_prior")


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
class ModelConfig:
    """Segmentation network producing L2-normalised per-pixel embeddings (a method's trunk)."""

    backbone: str = "resnet50"  # dilated torchvision ResNet: resnet18 / resnet50 / resnet101
    output_stride: int = 8  # 8 (layer3/4 dilated 2/4) or 16 (layer4 dilated 2)
    decoder: str = "deeplabv3plus"  # or "fpn" (PiCIE-style)
    # FPN only: L2-normalise every lateral before the top-down sum (not in PiCIE / ViCE), so no
    # level dominates the sum by activation scale alone; see FPNDecoder.
    fpn_normalize_laterals: bool = False
    embed_dim: int = 128
    aspp_rates: list[int] = field(default_factory=lambda: [12, 24, 36])  # at output stride 8
    # A local torchvision-format ResNet state dict (fc.* ignored) the trunk starts from, e.g.
    # from tools/make_init_weights.py; never downloaded. null: random init.
    init_weights: str | None = None
    channels_last: bool = True  # on CUDA only
    sync_bn: bool = True  # batch statistics over all ranks under DDP (CUDA and gloo alike)

    def validate(self, prefix: str = "model") -> None:
        from vice.models.backbones import BACKBONES  # the registries themselves (lazy: torch)
        from vice.models.decoders import DECODERS

        check_name(f"{prefix}.backbone", self.backbone, BACKBONES)
        if self.output_stride not in (8, 16):
            raise _fail(f"{prefix}.output_stride", self.output_stride, "8 or 16")
        check_name(f"{prefix}.decoder", self.decoder, DECODERS)
        if self.fpn_normalize_laterals and self.decoder != "fpn":
            raise _fail(
                f"{prefix}.fpn_normalize_laterals",
                self.fpn_normalize_laterals,
                f"only the fpn decoder has laterals (model.decoder={self.decoder!r}); "
                "set it to false or use model.decoder=fpn",
            )
        _check_range(f"{prefix}.embed_dim", self.embed_dim, 2)
        if len(self.aspp_rates) != 3 or min(self.aspp_rates) < 1:
            raise _fail(f"{prefix}.aspp_rates", list(self.aspp_rates), "3 positive dilations")


@dataclass
class RegionSwitchConfig:
    """A D3SSL loss on top of a region-level method (methods.md section 4)."""

    weight: float = 0.0  # 0 = off; 0.3 is the authors' follow-up's weight (the default when on)

    def validate(self, prefix: str) -> None:
        _check_range(f"{prefix}.weight", self.weight, 0.0)


#: The D3SSL switches every method's schema has, and what each one asks of the method.
REGION_SWITCHES = {
    "decoupling": "de-coupling (the student on cut-out inputs matches the clean views)",
    "depositioning": "de-positioning (the student on re-positioned regions matches them in place)",
}


@dataclass
class MethodConfig:
    """What every method's schema has: its name (a key of `vice.methods.METHODS`) and the
    D3SSL switches, which only region-level methods take (`Method.region_switches`).

    Each method subclasses this with its own keys (`ViceMethod.Config` = `ViceConfig`); the
    Hydra group `conf/method/` holds one file per method with its published defaults.
    """

    name: str = "vice"
    decoupling: RegionSwitchConfig = field(default_factory=RegionSwitchConfig)
    depositioning: RegionSwitchConfig = field(default_factory=RegionSwitchConfig)

    def validate(self, prefix: str = "method") -> None:
        from vice.methods import METHODS  # the registry itself (lazy: torch)

        check_name(f"{prefix}.name", self.name, METHODS)
        expected = METHODS[self.name].Config
        if type(self) is not expected:
            raise _fail(
                f"{prefix}.name",
                self.name,
                f"the method's keys must be a {expected.__name__}, got {type(self).__name__}; "
                f"select it with the config group: method={self.name}",
            )
        takers = sorted(n for n, m in METHODS.items() if m.region_switches)
        for switch, what in REGION_SWITCHES.items():
            cfg = getattr(self, switch)
            cfg.validate(f"{prefix}.{switch}")
            if cfg.weight > 0 and not METHODS[self.name].region_switches:
                raise _fail(
                    f"{prefix}.{switch}.weight",
                    cfg.weight,
                    f"method={self.name} cannot take {what}: it has no region-level features "
                    f"to match. The region-level methods are {takers}; set it to 0",
                )

    def region_switches_on(self) -> bool:
        """Whether any D3SSL loss is on (the sample builder then makes its inputs)."""
        return any(getattr(self, s).weight > 0 for s in REGION_SWITCHES)


def default_method() -> MethodConfig:
    from vice.methods.vice import ViceConfig  # lazy: vice.methods imports this module

    return ViceConfig()


@dataclass
class OptimConfig:
    """SGD + LARC, linear warm-up then cosine, stepped per iteration (published R50 recipe)."""

    name: str = "sgd_larc"  # sgd_larc (trust clipping), sgd_lars (scaling), sgd
    lr: float = 0.32  # peak learning rate (after warm-up)
    start_lr: float = 0.02  # warm-up starts here
    final_lr: float = 0.00032  # cosine ends here
    warmup_iters: int = 313
    momentum: float = 0.9
    weight_decay: float = 1e-6
    trust_coefficient: float = 0.001  # LARC/LARS eta
    grad_clip: float = 0.0  # max global grad norm; 0 disables clipping
    # After warm-up: cosine (lr -> final_lr), poly (lr * (1 - t)^poly_power per step) or
    # poly_epoch (the same, stepped per epoch: MaskContrast's published schedule).
    schedule: str = "cosine"
    poly_power: float = 0.9

    def validate(self, prefix: str = "optim") -> None:
        from vice.train.optim import OPTIMIZERS, SCHEDULES  # the registries (lazy: torch)

        check_name(f"{prefix}.name", self.name, OPTIMIZERS)
        check_name(f"{prefix}.schedule", self.schedule, SCHEDULES)
        _check_range(f"{prefix}.poly_power", self.poly_power, 0.0)
        _check_range(f"{prefix}.lr", self.lr, 0.0, lo_open=True)
        _check_range(f"{prefix}.start_lr", self.start_lr, 0.0)
        _check_range(f"{prefix}.final_lr", self.final_lr, 0.0)
        _check_range(f"{prefix}.warmup_iters", self.warmup_iters, 0)
        _check_range(f"{prefix}.momentum", self.momentum, 0.0, 1.0)
        _check_range(f"{prefix}.weight_decay", self.weight_decay, 0.0)
        _check_range(f"{prefix}.trust_coefficient", self.trust_coefficient, 0.0, lo_open=True)
        _check_range(f"{prefix}.grad_clip", self.grad_clip, 0.0)


@dataclass
class TrainerConfig:
    """The training loop, its processes, logging and checkpoints."""

    nodes: int = 1
    gpus_per_node: int = 1  # processes per node (CPU processes when there is no GPU)
    epochs: int = 12
    max_steps: int = 0  # > 0: stop after this many optimizer steps (overrides epochs)
    log_every: int = 10  # steps between log lines / MLflow metrics
    checkpoint_every: int = 500  # steps between checkpoints
    checkpoint_minutes: float = 30.0  # ... and at least this often in wall time
    keep_checkpoints: int = 2  # k >= 2 newest complete checkpoints are kept
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0  # model init and any non-data randomness
    deterministic: bool = True  # deterministic algorithms (bit-exact resume on CPU)
    threads_per_process: int = 0  # torch CPU threads per process; 0 = cores / processes
    # Time-limit requeues (on SLURM) before a job gives up; preemptions do not count.
    max_requeues: int = 3

    def validate(self, prefix: str = "trainer") -> None:
        _check_range(f"{prefix}.nodes", self.nodes, 1)
        _check_range(f"{prefix}.gpus_per_node", self.gpus_per_node, 1)
        _check_range(f"{prefix}.epochs", self.epochs, 1)
        _check_range(f"{prefix}.max_steps", self.max_steps, 0)
        _check_range(f"{prefix}.log_every", self.log_every, 1)
        _check_range(f"{prefix}.checkpoint_every", self.checkpoint_every, 1)
        _check_range(f"{prefix}.checkpoint_minutes", self.checkpoint_minutes, 0.0, lo_open=True)
        if self.keep_checkpoints < 2:
            raise _fail(
                f"{prefix}.keep_checkpoints",
                self.keep_checkpoints,
                "must be >= 2 (a crash while writing one must leave a complete older one)",
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise _fail(f"{prefix}.device", self.device, "one of ['auto', 'cpu', 'cuda']")
        _check_range(f"{prefix}.threads_per_process", self.threads_per_process, 0)
        _check_range(f"{prefix}.max_requeues", self.max_requeues, 0)


@dataclass
class FloorsConfig:
    """Floors scored with the network on the same images (vice/eval/floors.py): the network
    counts by its margin over the strongest one."""

    enabled: bool = True
    # chance, instance_random, instance_mean_colour, raw_colour, random_init, random_init_layerN
    names: list[str] = field(
        default_factory=lambda: [
            "chance",
            "instance_random",
            "instance_mean_colour",
            "raw_colour",
            "random_init",
            "random_init_layer2",
        ]
    )
    dim: int = 32  # channels of the random floors (chance, instance_random)

    def validate(self, prefix: str = "eval.floors") -> None:
        from vice.eval.floors import check_floor_name  # the floors' own check (lazy: torch)

        for name in self.names:
            try:
                check_floor_name(name)
            except ValueError as err:
                raise _fail(f"{prefix}.names", list(self.names), str(err)) from None
        _check_range(f"{prefix}.dim", self.dim, 1)


@dataclass
class EvalConfig:
    """Unsupervised segmentation evaluation: k-means clustering and a linear probe."""

    enabled: bool = True
    image_size: int = 128  # eval images: short side resized to this, then center-cropped square
    max_images: int = 0  # 0 = the whole eval split
    cluster_counts: list[int] = field(default_factory=lambda: [27, 45, 128, 256])
    kmeans_iters: int = 30
    kmeans_fit_pixels: int = 200_000  # pixels sampled to fit centroids; all are assigned
    kmeans_restarts: int = 1
    linear: bool = True
    linear_train_split: str = "train"  # labelled split the probe is trained on
    linear_train_images: int = 256
    linear_iters: int = 12_000
    linear_lr: float = 0.01
    linear_batch_pixels: int = 65_536
    batch_size: int = 8  # images per forward pass
    # Positional-bias and coupling probes (vice.eval.probes), where instance maps exist;
    # coupling runs the network on up to probe_regions images with one region kept each.
    probes: bool = True
    probe_regions: int = 256
    figure_rows: int = 4
    seed: int = 0
    floors: FloorsConfig = field(default_factory=FloorsConfig)

    def validate(self, prefix: str = "eval") -> None:
        _check_range(f"{prefix}.image_size", self.image_size, 16)
        _check_range(f"{prefix}.max_images", self.max_images, 0)
        if not self.cluster_counts or min(self.cluster_counts) < 2:
            raise _fail(
                f"{prefix}.cluster_counts",
                list(self.cluster_counts),
                "a non-empty list of cluster counts >= 2",
            )
        _check_range(f"{prefix}.kmeans_iters", self.kmeans_iters, 1)
        _check_range(f"{prefix}.kmeans_fit_pixels", self.kmeans_fit_pixels, 1)
        _check_range(f"{prefix}.kmeans_restarts", self.kmeans_restarts, 1)
        _check_range(f"{prefix}.linear_train_images", self.linear_train_images, 1)
        _check_range(f"{prefix}.linear_iters", self.linear_iters, 1)
        _check_range(f"{prefix}.linear_lr", self.linear_lr, 0.0, lo_open=True)
        _check_range(f"{prefix}.linear_batch_pixels", self.linear_batch_pixels, 1)
        _check_range(f"{prefix}.batch_size", self.batch_size, 1)
        _check_range(f"{prefix}.probe_regions", self.probe_regions, 1)
        _check_range(f"{prefix}.figure_rows", self.figure_rows, 1)
        self.floors.validate(f"{prefix}.floors")


@dataclass
class TrackingConfig:
    """MLflow: SQLite file by default, any tracking URI otherwise; rank 0 logs."""

    enabled: bool = True
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "vice"
    run_name: str | None = None
    system_metrics: bool = True  # CPU, memory (and GPU) of every node, with each log line

    def validate(self, prefix: str = "tracking") -> None:
        if self.enabled and not self.uri:
            raise _fail(f"{prefix}.uri", self.uri, "a tracking URI, e.g. sqlite:///mlflow.db")


@dataclass
class FigureConfig:
    """What the views figure of a run shows."""

    indices: list[int] = field(default_factory=lambda: [0, 1])  # images of data.split to draw
    epoch: int = 0


@dataclass
class ClusterConfig:
    """SLURM resources of the pretrain and eval jobs (`python jobs/launch.py -m ...`).

    Nodes and processes per node come from trainer.nodes and trainer.gpus_per_node.

    Only jobs/ reads this section, `launch` and `trainer.max_requeues` (the library only keeps
    them out of MLflow params). They stay in the one schema that types a run's config.yaml,
    at composition and when a job reads it back (`vice.pipeline.load_config`): moving them
    into jobs/ means a jobs-side subclass of Config chosen by every entry point, not done yet.
    """

    partition: str | None = None  # None: the cluster's default partition (sinfo's `*`)
    account: str | None = None
    qos: str | None = None
    time_min: int = 60  # pretrain job time limit; requeued (trainer.max_requeues) at the end
    mem_gb: float | None = None  # per node; None: the cluster's default
    constraint: str | None = None  # node features, e.g. "a100"
    cpus_per_task: int | None = None  # per node (one task per node); None: procs x (workers+1)
    additional: dict[str, Any] = field(default_factory=dict)  # other sbatch options, e.g. mail
    # USR2 this long before the time limit: save, requeue. 60 s = 3 x the measured save of the
    # published R50 model (2.4 s, bench/preemption.py) + a step + 30 s to exit, rounded up.
    signal_delay_s: int = 60
    eval_time_min: int = 60  # eval job time limit
    eval_nodes: int = 1  # the eval runs one process; more nodes only hold resources

    # sbatch options the launcher sets itself (from trainer.*, cluster.* and the chain); set
    # through `additional` they would silently fight the launcher, so they are refused there.
    MANAGED_OPTIONS: ClassVar[tuple[str, ...]] = (
        "job-name", "partition", "time", "nodes", "ntasks-per-node", "ntasks", "gpus-per-node",
        "cpus-per-task", "mem", "account", "qos", "constraint", "signal", "dependency",
        "kill-on-invalid-dep", "output", "error", "chdir", "array",
    )  # fmt: skip

    def validate(self, prefix: str = "cluster") -> None:
        for name in ("partition", "account", "qos", "constraint"):
            value = getattr(self, name)
            if value is not None and (not str(value).strip() or " " in str(value)):
                raise _fail(f"{prefix}.{name}", value, "a SLURM name without spaces, or null")
        _check_range(f"{prefix}.time_min", self.time_min, 1)
        if self.mem_gb is not None:
            _check_range(f"{prefix}.mem_gb", self.mem_gb, 0.0, lo_open=True)
        if self.cpus_per_task is not None:
            _check_range(f"{prefix}.cpus_per_task", self.cpus_per_task, 1)
        _check_range(f"{prefix}.signal_delay_s", self.signal_delay_s, 0)
        if self.signal_delay_s >= self.time_min * 60:
            raise _fail(
                f"{prefix}.signal_delay_s",
                self.signal_delay_s,
                f"must be shorter than the time limit ({prefix}.time_min={self.time_min} min "
                f"= {self.time_min * 60} s)",
            )
        _check_range(f"{prefix}.eval_time_min", self.eval_time_min, 1)
        _check_range(f"{prefix}.eval_nodes", self.eval_nodes, 1)
        for key in self.additional:
            option = str(key).replace("_", "-")
            if option in self.MANAGED_OPTIONS:
                raise _fail(
                    f"{prefix}.additional.{key}",
                    self.additional[key],
                    "is set by the launcher; use the matching trainer.* or cluster.* key",
                )


@dataclass
class LaunchConfig:
    """How `python jobs/launch.py -m ...` submits (ignored by local runs)."""

    wait: bool = False  # block and print job state changes until every job has ended
    dry_run: bool = False  # print the sbatch scripts and resources; submit nothing

    def validate(self, prefix: str = "launch") -> None:
        if self.wait and self.dry_run:
            raise _fail(f"{prefix}.wait", self.wait, "a dry run submits nothing to wait for")


@dataclass
class Config:
    """The whole job configuration (Hydra's structured schema is this class)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # The selected method's schema (a MethodConfig subclass, `vice.methods.METHODS[name].Config`);
    # typed Any so that Hydra's config group can put any method's schema here.
    method: Any = field(default_factory=default_method)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    figure: FigureConfig = field(default_factory=FigureConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    run_dir: str | None = None  # set by the launcher; everything a run writes goes here

    def validate(self) -> Config:
        self.data.validate("data")
        self.model.validate("model")
        self.method.validate("method")
        self.optim.validate("optim")
        self.trainer.validate("trainer")
        self.eval.validate("eval")
        self.tracking.validate("tracking")
        self.cluster.validate("cluster")
        self.launch.validate("launch")
        from vice.methods import METHODS

        # What the method cannot use (data settings, model shapes): named, with the fix.
        METHODS[self.method.name].check_config(self)
        for i, index in enumerate(self.figure.indices):
            _check_range(f"figure.indices[{i}]", index, 0)
        if self.eval.enabled and self.data.dataset == "folder":
            raise _fail(
                "data.dataset",
                "folder",
                "has no labels to evaluate on; set eval.enabled=false or use a labelled data set",
            )
        return self
