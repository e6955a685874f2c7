"""Training-step throughput, FLOPs, MFU and peak memory of every method, against its network.

For each method of `vice.methods.METHODS` (or `--methods`), builds the config from the
method's recipe with Hydra's compose API (`--recipe smoke`: conf/experiment/smoke.yaml,
slotcon_smoke.yaml, maskcontrast_smoke.yaml; `--recipe published`: coco_r50.yaml,
slotcon_coco.yaml, maskcontrast_voc.yaml, with a dummy `data.root` that nothing reads), then
sizes it to `--images` images of `--size` px views (synthetic images of max(128, size) px;
ViCE's superpixels at the published density, 20 per view side, by `--superpixels`).
Batches come from the method's own sample builder (`Method.sample_builder`) over the
synthetic source and its `collate`, built once before timing (the data pipeline is
benchmarked by bench/data.py). One step is what the trainer does: `loss, terms =
method(batch, step)`, backward, `before_optimizer_step`, gradient clipping when the recipe
clips, the recipe's optimizer step, `after_optimizer_step`.

The baseline, measured in the same process on the same views, is the method's exported
network alone (`method.export()`: the network evaluation reads) trained with a trivial loss
(a fixed random projection of its mean embedding), with the same optimizer: forward +
backward + step over all views of the batch (an EMA teacher's copy is made trainable, as its
student is). So `overhead` says what the method adds on top of its network: teachers / key
encoders, heads, prototypes, pooling, Sinkhorn, losses, hooks. (Our pooling against the
published per-region Python loop is bench/pooling.py.)

Each measurement: one warm-up step, one step under `torch.utils.flop_counter.FlopCounterMode`
(forward + backward FLOPs of matmuls and convolutions, as torch counts them), then `--steps`
timed steps, each timed alone; a row reports their median (robust to other load on a shared
machine). Steps are numbered from `--step` (default past every warm-up schedule: ViCE's
frozen prototypes and queue start), and ViCE's region queue is filled with random unit rows
first, so the timed steps are the steady state of a long run. On CUDA: bf16 autocast
(`method.autocast = True`), channels_last, `torch.cuda.synchronize()` around the timing,
and cuDNN autotuning, as the trainer runs.

    python bench/train_step.py [--methods vice,slotcon,maskcontrast] [--recipe smoke|published]
        [--images 4 --size 96 --steps 5] [--views 5] [--backbones resnet18,resnet50]
        [--superpixels slic|opencv_slic|grid] [--devices auto|cpu|cuda|cpu,cuda]
        [--peak-tflops 989]
    python bench/train_step.py --size 32 --images 2 --steps 2   # a quick CPU check

Columns:
    device, method, backbone: the measured device and the recipe's method and trunk
        (`--backbones` replaces the recipe's trunk);
    img/s: images (not views) per second of the full step; ms/step: its median time;
    net ms: the baseline's median step time; overhead: ms/step over net ms;
    GFLOP, net GFLOP: FLOPs of one step (forward + backward) of the method and of the network;
    TFLOP/s: the method's GFLOP over its step time; MFU: that over the device's peak dense
        bf16 FLOP/s (table PEAK_BF16_FLOPS by GPU name, or `--peak-tflops`; "-" when unknown,
        e.g. on CPU, where the step runs in float32 anyway);
    peak MB: CUDA `max_memory_allocated` of the method's steps; on CPU the process's maximum
        resident set so far (ru_maxrss: it only grows from row to row).
The last lines, `images_per_s_<device>_<method>=` and `overhead_<device>_<method>=`, are
the first backbone's figures, for scripts.
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch.utils.flop_counter import FlopCounterMode

from vice.config import Config
from vice.data.batches import Batch
from vice.data.builders import build_samples
from vice.data.datasets import build_source
from vice.hydra_schema import register, to_config
from vice.methods import METHODS, Method
from vice.ops.queue import EmbeddingQueue
from vice.train.optim import build_optimizer, param_groups

ROOT = Path(__file__).resolve().parents[1]
# Each method's recipe (conf/experiment/<name>.yaml) per --recipe.
RECIPES = {
    "smoke": {"vice": "smoke", "slotcon": "slotcon_smoke", "maskcontrast": "maskcontrast_smoke"},
    "published": {
        "vice": "coco_r50",
        "slotcon": "slotcon_coco",
        "maskcontrast": "maskcontrast_voc",
    },
}
# Published recipes need data.root to validate; batches come from the synthetic source.
DUMMY_ROOT = "/nonexistent/vice-bench-data"
# Peak dense bf16 tensor-core FLOP/s (vendor data sheets, no sparsity), first match of the
# CUDA device name wins.
PEAK_BF16_FLOPS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312e12),
]
# Superpixels per view side at the published density (400 px views, 20 px regions).
REGIONS_PER_SIDE = 20


def build_config(method: str, args: argparse.Namespace, backbone: str | None) -> Config:
    """The method's recipe, sized to the benchmark's batch (validated like a launch)."""
    size = args.size
    overrides = [
        f"experiment={RECIPES[args.recipe][method]}",
        "tracking.enabled=false",
        f"trainer.max_steps={args.step + args.steps + 2}",  # a schedule length, no data listed
        f"data.batch_size={args.images}",
        f"data.views.view_size={size}",
        f"data.views.short_side={max(128, size)}",
        f"data.synthetic.size={max(128, size)}",
        f"data.superpixels.method={args.superpixels}",
        f"data.superpixels.region_size={max(4, size // REGIONS_PER_SIDE)}",
    ]
    if args.recipe == "published":
        overrides.append(f"data.root={DUMMY_ROOT}")
    if method == "vice" and args.views:
        overrides.append(f"data.views.num_views={args.views}")
    if backbone:
        overrides.append(f"model.backbone={backbone}")
    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return to_config(compose("config", overrides))


def make_batch(cfg: Config) -> Batch:
    """`data.batch_size` samples of the method's own builder over the synthetic source."""
    data = copy.deepcopy(cfg.data)
    data.dataset, data.root, data.split = "synthetic", None, "train"
    data.mask_prior.source = "gt"  # the synthetic scenes' foreground (no saliency files)
    data.mask_prior.cache_dir = data.superpixels.cache_dir = None
    method = METHODS[cfg.method.name]
    samples = build_samples(
        method.sample_builder, build_source(data), data, method.region_views(cfg)
    )
    return samples.collate([samples[(0, i)] for i in range(data.batch_size)])


def peak_bf16_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fill_queue(method: Method) -> None:
    """A full region queue (ViCE), as after the first epochs of a run."""
    queue = getattr(method, "queue", None)
    if isinstance(queue, EmbeddingQueue) and queue.capacity > 0:
        rows_CD = torch.randn(queue.capacity, queue.dim, device=queue.device)
        queue.push(F.normalize(rows_CD, dim=1))


def build_on(cfg: Config, device: torch.device) -> Method:
    torch.manual_seed(0)
    method = METHODS[cfg.method.name](cfg).to(device)
    amp = device.type == "cuda"
    if amp and cfg.model.channels_last:
        method = method.to(memory_format=torch.channels_last)
    method.autocast = amp
    return method.train()


def method_step(cfg: Config, method: Method, batch: Batch) -> Callable[[int], None]:
    """One trainer step of the method (vice.train.trainer.train's loop body)."""
    optimizer = build_optimizer(method.param_groups(cfg.optim.weight_decay), cfg.optim)
    trained = [p for p in method.parameters() if p.requires_grad]

    def step(s: int) -> None:
        loss, _ = method(batch, s)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.before_optimizer_step(s)
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trained, cfg.optim.grad_clip)
        optimizer.step()
        method.after_optimizer_step(s)

    return step


def network_step(cfg: Config, method: Method, views: torch.Tensor) -> Callable[[int], None]:
    """The baseline: the exported network alone on all views, a trivial loss, same optimizer."""
    network = copy.deepcopy(method.export())
    if not any(p.requires_grad for p in network.parameters()):  # an EMA teacher's copy
        network.requires_grad_(True)
    optimizer = build_optimizer(param_groups(network, cfg.optim.weight_decay), cfg.optim)
    trained = [p for p in network.parameters() if p.requires_grad]
    x_NCSS = views.flatten(0, 1)  # (V * B, 3, S, S)
    proj_D = torch.randn(4096, device=views.device)
    amp = method.autocast

    def step(s: int) -> None:
        with torch.autocast(views.device.type, dtype=torch.bfloat16, enabled=amp):
            z_NDSS = network(x_NCSS)
        loss = (z_NDSS.float().mean(dim=(0, 2, 3)) * proj_D[: z_NDSS.shape[1]]).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(trained, cfg.optim.grad_clip)
        optimizer.step()

    return step


@dataclass
class Timing:
    seconds: float  # median of the timed steps
    flops: int  # one step, forward + backward


def measure(step: Callable[[int], None], device: torch.device, first: int, steps: int) -> Timing:
    step(first)  # warm-up (allocator, cuDNN autotuning, lazy state)
    with FlopCounterMode(display=False) as counter:
        step(first + 1)
    times = []
    for s in range(steps):
        sync(device)
        tic = time.perf_counter()
        step(first + 2 + s)
        sync(device)
        times.append(time.perf_counter() - tic)
    return Timing(statistics.median(times), counter.get_total_flops())


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated METHODS keys")
    p.add_argument("--recipe", default="smoke", choices=sorted(RECIPES))
    p.add_argument("--images", type=int, default=4, help="images per step (data.batch_size)")
    p.add_argument("--size", type=int, default=96, help="view side, px (data.views.view_size)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after warm-up")
    p.add_argument("--step", type=int, default=100_000, help="step index of the first step")
    p.add_argument("--views", type=int, default=None, help="ViCE views (default: recipe's)")
    p.add_argument("--backbones", default=None, help="e.g. resnet18,resnet50 (default: recipe's)")
    # grid: same region count and shapes for the step, where fast-slic cannot be built
    p.add_argument("--superpixels", default="slic", choices=["slic", "opencv_slic", "grid"])
    p.add_argument("--devices", default="auto", help="auto (cuda if present, else cpu), cpu,cuda")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak for MFU (default: table)")
    args = p.parse_args()
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        p.error(f"--methods: unknown {sorted(unknown)}; known: {list(METHODS)}")
    return args


def devices_of(spec: str) -> list[torch.device]:
    cuda = torch.cuda.is_available()
    if spec == "auto":
        return [torch.device("cuda" if cuda else "cpu")]
    wanted = spec.split(",")
    devices = [torch.device("cpu")] if "cpu" in wanted else []
    if "cuda" in wanted and cuda:
        devices.append(torch.device("cuda"))
    return devices


def main() -> None:
    args = parse_args()
    devices = devices_of(args.devices)
    if not devices:
        raise SystemExit(f"--devices {args.devices}: none here (torch sees no CUDA device)")
    if any(d.type == "cuda" for d in devices):
        torch.backends.cudnn.benchmark = True
    print(
        f"recipe={args.recipe}: {args.images} images of {args.size} px views per step, "
        f"{args.steps} timed steps from step {args.step}; threads={torch.get_num_threads()}"
    )
    header = (
        f"{'device':24s} {'method':12s} {'backbone':9s} {'img/s':>8s} {'ms/step':>8s} "
        f"{'net ms':>8s} {'overhead':>8s} {'GFLOP':>8s} {'net GFLOP':>9s} {'TFLOP/s':>8s} "
        f"{'MFU':>6s} {'peak MB':>8s}"
    )
    rows: list[str] = []
    summary: dict[str, float] = {}
    backbones = args.backbones.split(",") if args.backbones else [None]
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        peak = peak_bf16_flops(device, args.peak_tflops)
        for method_name in args.methods.split(","):
            for backbone in backbones:
                cfg = build_config(method_name, args, backbone)
                batch = make_batch(cfg).to(device)
                views = batch.views.shape[0]
                print(
                    f"{method_name}: {cfg.model.backbone} {cfg.model.decoder} OS "
                    f"{cfg.model.output_stride}, {views} views x {args.images} images",
                    flush=True,
                )
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                method = build_on(cfg, device)
                fill_queue(method)
                full = measure(method_step(cfg, method, batch), device, args.step, args.steps)
                mem = peak_mb(device)
                net = measure(network_step(cfg, method, batch.views), device, 0, args.steps)
                del method
                tflops = full.flops / full.seconds / 1e12
                mfu = f"{tflops * 1e12 / peak:6.1%}" if peak else f"{'-':>6s}"
                rows.append(
                    f"{name[:24]:24s} {method_name:12s} {cfg.model.backbone:9s} "
                    f"{args.images / full.seconds:8.2f} {full.seconds * 1e3:8.1f} "
                    f"{net.seconds * 1e3:8.1f} {full.seconds / net.seconds:7.2f}x "
                    f"{full.flops / 1e9:8.1f} {net.flops / 1e9:9.1f} {tflops:8.3f} {mfu} "
                    f"{mem:8.0f}"
                )
                key = f"{device.type}_{method_name}"
                if f"images_per_s_{key}" not in summary:  # the first backbone's
                    summary[f"images_per_s_{key}"] = args.images / full.seconds
                    summary[f"overhead_{key}"] = full.seconds / net.seconds
    print(header, *rows, sep="\n")
    for key, value in summary.items():
        print(f"{key}={value:.3f}")


if __name__ == "__main__":
    main()
