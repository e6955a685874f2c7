"""Training-step throughput and peak memory for a fixed configuration.

Measures forward + loss + backward + optimizer step of ViCE on pre-built batches (the data
pipeline is benchmarked separately by bench/data.py), for each listed backbone, on CPU and,
when present, on the GPU (bf16 autocast, channels_last). The baseline measured in the same
run is the network alone (forward + backward of backbone and decoder with a trivial loss), so
the printed `overhead` column says what ViCE's pooling, Sinkhorn and loss add on top of it.
(Our pooling against the published per-region Python loop is bench/pooling.py.)

    python bench/train_step.py [--views 5 --images 4 --size 96 --steps 5 --backbones resnet18]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from vice.config import Config, DataConfig, ModelConfig, OptimConfig
from vice.data.batches import ViceBatch
from vice.data.collate import collate_vice
from vice.data.datasets import build_source
from vice.data.pretrain import ViceDataset
from vice.methods import ViceConfig, ViceMethod
from vice.train.optim import build_optimizer


def make_batch(views: int, images: int, size: int, superpixels: str = "slic") -> ViceBatch:
    cfg = DataConfig()
    cfg.superpixels.method = superpixels
    cfg.synthetic.size = max(128, size)
    cfg.views.short_side = max(128, size)
    cfg.views.view_size = size
    cfg.views.num_views = views
    cfg.superpixels.region_size = max(4, size // 12)
    ds = ViceDataset(build_source(cfg), cfg)
    return collate_vice([ds[(0, i)] for i in range(images)])


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_steps(device, backbone, batch, steps, full: bool) -> float:
    torch.manual_seed(0)
    cfg = Config(
        model=ModelConfig(backbone=backbone), method=ViceConfig(num_prototypes=128, queue_length=0)
    )
    method = ViceMethod(cfg).to(device)
    amp = device.type == "cuda"
    if amp:
        method = method.to(memory_format=torch.channels_last)
    method.autocast = amp
    model = method.export()
    opt = build_optimizer(method.param_groups(OptimConfig().weight_decay), OptimConfig())
    b = batch.to(device)
    proj = torch.randn(128, device=device)

    def one(step: int) -> None:
        if full:
            loss, _ = method(b, step)
        else:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                z = model(b.views.flatten(0, 1))
            loss = (z.float() * proj[:, None, None]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        method.before_optimizer_step(step)
        opt.step()
        method.after_optimizer_step(step)

    one(0)  # warm-up (allocator, autotuning)
    if device.type == "cuda":
        torch.cuda.synchronize()
    tic = time.perf_counter()
    for s in range(steps):
        one(s + 1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - tic) / steps


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--views", type=int, default=5)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--backbones", default="resnet18,resnet50")
    # grid: same region count and shapes for the step, where fast-slic cannot be built
    p.add_argument("--superpixels", default="slic", choices=["slic", "opencv_slic", "grid"])
    p.add_argument("--devices", default="cpu,cuda", help="cuda is skipped when absent")
    args = p.parse_args()
    wanted = args.devices.split(",")
    devices = [torch.device("cpu")] if "cpu" in wanted else []
    if "cuda" in wanted and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    batch = make_batch(args.views, args.images, args.size, args.superpixels)
    print(
        f"batch: {args.images} images x {args.views} views of {args.size}px, "
        f"{int(batch.num_regions.sum())} regions; threads={torch.get_num_threads()}"
    )
    print(
        f"{'device':28s} {'backbone':10s} {'img/s':>8s} {'views/s':>8s} {'ms/step':>8s} "
        f"{'trunk ms':>9s} {'overhead':>9s} {'peak MB':>8s}"
    )
    per_s = {}
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        if device.type == "cuda" and args.size < 224:
            batch = make_batch(args.views, args.images * 8, max(args.size, 224), args.superpixels)
        for backbone in args.backbones.split(","):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            full = time_steps(device, backbone, batch, args.steps, full=True)
            mem = peak_mb(device)
            trunk = time_steps(device, backbone, batch, args.steps, full=False)
            images = batch.views.shape[1]
            views = images * batch.views.shape[0]
            print(
                f"{name[:28]:28s} {backbone:10s} {images / full:8.2f} {views / full:8.2f} "
                f"{full * 1e3:8.1f} {trunk * 1e3:9.1f} {full / trunk:8.2f}x {mem:8.0f}"
            )
            per_s.setdefault(device.type, images / full)  # the first backbone's
    for kind, value in per_s.items():
        print(f"images_per_s_{kind}={value:.2f}")


if __name__ == "__main__":
    main()
