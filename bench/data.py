"""Per-worker throughput of the ViCE per-sample pipeline, and where its time goes.

Overall: samples/s of ``ViceDataset(source, DataConfig(...))[(0, i)]`` in one process on one
thread (what one loader worker does), with the published defaults: 5 views of 400 px, regional
masking, SLIC superpixels, the source standardised to a 500 px short side. The source is the
synthetic data set at 500 px (500x500, so standardising is a no-op; ``--source-size HxW``
gives other shapes), each index a different image.

Breakdown: the same indices are run again through the stages one by one, mirroring
``vice.data.sample.build_views`` with the same generators (same seeds, same draws), each stage
timed on its own: image generation (``source.load_image``), standardise, superpixels, view
placement (edge map + ``sample_view_boxes``), cropping (id maps + images), photometric
augmentation, masking (``common_ids`` + ``regional_masking`` + ``align_ids``), normalise +
noise, and assembling the sample's tensors. The mirror's output is checked against the data
set's for the first index. Overall and staged runs are interleaved per index on separate
sources (the synthetic source caches its last image), over several passes; every sample and
stage reports its fastest pass (best-of, the least disturbed by other processes on a shared
machine), averaged over the samples. Shares are of the overall time; "glue" is the overall
minus the sum of the stages.

Usage: python bench/data.py [--n 40] [--view-size 400] [--quick] [--reps 3] [--source-size 500]
The last line is ``samples_per_s_per_worker=<x>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import vice  # noqa: F401
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from vice.config import DataConfig, ViewConfig
from vice.data import pretrain
from vice.data.augment import normalise_into, photometric
from vice.data.datasets.synthetic import SyntheticSource
from vice.data.masking import align_ids, common_ids, regional_masking
from vice.data.pretrain import ViceDataset
from vice.data.sample import ViceSample, add_mask_noise
from vice.data.superpixels import compute_superpixels
from vice.data.views import crop_ids, crop_images, sample_view_boxes, standardise

STAGES = (
    "image generation (load_image)",
    "standardise",
    "superpixels",
    "view placement (edges + boxes)",
    "crop ids + images",
    "photometric augmentation",
    "masking (common/regional/align)",
    "normalise + noise",
    "assemble tensors",
)
_VIEWS = getattr(pretrain, "_VIEWS", 2)  # the stream tag ViceDataset seeds view draws with


def parse_size(text: str) -> int | tuple[int, int]:
    """'500' -> 500 (square), '500x667' -> (500, 667) as (height, width)."""
    if "x" in text.lower():
        h, w = text.lower().split("x")
        return int(h), int(w)
    return int(text)


class Timer:
    """Accumulates wall time per stage name."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self._name = ""
        self._t0 = 0.0

    def __call__(self, name: str) -> Timer:
        self._name = name
        return self

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.total[self._name] += time.perf_counter() - self._t0


def staged_sample(
    source: SyntheticSource, cfg: DataConfig, index: int, t: Timer
) -> ViceSample | None:
    """`ViceDataset(source, cfg)[(0, index)]` stage by stage (no substitution of images)."""
    vcfg, mcfg = cfg.views, cfg.masking
    size = vcfg.view_size
    with t(STAGES[0]):
        img = source.load_image(index)
    with t(STAGES[1]):
        img = standardise(img, vcfg.short_side, vcfg.max_side)
    with t(STAGES[2]):
        ids = compute_superpixels(img, cfg.superpixels)
    for attempt in range(cfg.max_resample):
        rng = np.random.default_rng([cfg.seed, 0, index, _VIEWS, index, attempt])
        with t(STAGES[3]):
            boxes = sample_view_boxes(rng, img, vcfg)
        with t(STAGES[4]):
            view_ids = [crop_ids(ids, b, size) for b in boxes]  # flipped like their views
        with t(STAGES[6]):
            common = common_ids(view_ids)
            if common.size == 0:
                continue
            masks, targets, _ = regional_masking(rng, view_ids, common, mcfg)
            if targets.size == 0:
                continue
        noise_rng = np.random.default_rng(int(rng.integers(2**62)))
        with t(STAGES[4]):  # crop_images draws nothing, so cropping first keeps the rng order
            crops = crop_images(img, boxes, size)
        with t(STAGES[5]):
            crops = [photometric(rng, c, vcfg) for c in crops]
        with t(STAGES[7]):
            views = torch.empty((len(boxes), 3, size, size), dtype=torch.float32)
            for v, (crop, mask) in enumerate(zip(crops, masks, strict=True)):
                normalise_into(views[v], crop, vcfg.mean, vcfg.std)
                add_mask_noise(noise_rng, views[v], mask, mcfg)
        with t(STAGES[6]):
            aligned = align_ids(view_ids, targets)
        with t(STAGES[8]):
            return ViceSample(
                views_VCSS=views,
                ids_VSS=torch.from_numpy(aligned),
                regions_R=torch.from_numpy(targets.astype(np.int64)),
                flips_V=torch.tensor([b.flip for b in boxes]),
                boxes_V3=torch.tensor([[b.cx, b.cy, b.side] for b in boxes], dtype=torch.float32),
                masked_VSS=torch.from_numpy(np.stack(masks)),
            )
    return None


def same_sample(a: ViceSample, b: ViceSample) -> bool:
    return all(
        torch.equal(getattr(a, k), getattr(b, k))
        for k in ("views_VCSS", "ids_VSS", "regions_R", "flips_V", "boxes_V3", "masked_VSS")
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=None, help="samples timed (default 40)")
    parser.add_argument("--view-size", type=int, default=400, help="view side in px")
    parser.add_argument("--source-size", type=parse_size, default=500, help="500 or HxW")
    parser.add_argument("--reps", type=int, default=None, help="passes (default 3)")
    parser.add_argument("--quick", action="store_true", help="8 samples, 2 passes")
    args = parser.parse_args(argv)
    n = args.n or (8 if args.quick else 40)
    reps = args.reps or (2 if args.quick else 3)
    warmup = 2

    torch.set_num_threads(1)  # as every loader worker (vice.data.loader.seed_worker)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    cfg = DataConfig(views=ViewConfig(view_size=args.view_size, short_side=500))
    cfg.validate()
    length = n + warmup
    dataset = ViceDataset(SyntheticSource(size=args.source_size, length=length), cfg)
    staged_source = SyntheticSource(size=args.source_size, length=length)

    for i in range(warmup):
        reference = dataset[(0, i)]["sample"]
        mirrored = staged_sample(staged_source, cfg, i, Timer())
        if i == 0 and (mirrored is None or not same_sample(reference, mirrored)):
            print(
                "# warning: the staged mirror no longer reproduces build_views; "
                "the breakdown is approximate"
            )

    overall = np.zeros((reps, n))
    staged = np.zeros((reps, n, len(STAGES)))
    skipped = 0
    for rep in range(reps):
        for k, i in enumerate(range(warmup, length)):
            t0 = time.perf_counter()
            item = dataset[(0, i)]
            overall[rep, k] = time.perf_counter() - t0
            if rep == 0 and item["index"] != i:
                skipped += 1  # substituted image: the staged run below does not follow it
            t = Timer()
            staged_sample(staged_source, cfg, i, t)
            staged[rep, k] = [t.total[name] for name in STAGES]

    h, w = staged_source.load_image(0).shape[:2]
    # Best-of per sample and stage: the run least disturbed by other processes.
    per = dict(zip(STAGES, 1e3 * staged.min(axis=0).mean(axis=0), strict=True))
    total_ms = 1e3 * float(overall.min(axis=0).mean())
    print(
        f"# {n} samples x {reps} passes, synthetic {h}x{w} source, {cfg.views.num_views} views "
        f"of {cfg.views.view_size} px, masking on, 1 thread; ms per sample, best-of {reps} per "
        f"sample and stage (overall median pass: {1e3 * np.median(overall.mean(axis=1)):.1f} ms)"
        + (f"; {skipped} substituted" if skipped else "")
    )
    print(f"{'stage':<34} {'ms/sample':>10} {'share %':>8}")
    for name in STAGES:
        print(f"{name:<34} {per[name]:>10.2f} {100 * per[name] / total_ms:>8.1f}")
    staged_ms = sum(per.values())
    glue = total_ms - staged_ms
    print(f"{'glue (overall - sum of stages)':<34} {glue:>10.2f} {100 * glue / total_ms:>8.1f}")
    print(f"{'sum of stages':<34} {staged_ms:>10.2f} {100 * staged_ms / total_ms:>8.1f}")
    print(f"{'overall (ViceDataset[(0, i)])':<34} {total_ms:>10.2f} {100.0:>8.1f}")
    print(f"samples_per_s_per_worker={1e3 / total_ms:.2f}")


if __name__ == "__main__":
    main()
