"""Throughput of our superpixel stage against scikit-image and OpenCV-contrib SLIC.

Measures images/s of `vice.data.superpixels.slic_superpixels` with the published defaults
(region 20 px, compactness 10, 5 iterations, single-threaded fast-slic; the 3x3 Gaussian blur,
OpenCV's uint8 kernel with sigma 0.8, included) on several different synthetic images of the
configured size; in the same run our second SLIC region source, `opencv_slic_superpixels`
(data.superpixels.method=opencv_slic: the same blur, OpenCV-contrib's SLIC with the same
parameters, connectivity enforcement, contiguous ids), and two baselines at the same segment
count n = H*W / 400:

* scikit-image: ``skimage.segmentation.slic(img, n_segments=n, compactness=10,
  max_num_iter=5, start_label=0)`` (its defaults otherwise: Lab conversion, connectivity
  enforcement, no blur);
* OpenCV-contrib: 3x3 ``cv2.GaussianBlur`` (sigma 0: OpenCV's [1/4, 1/2, 1/4] kernel) then
  ``cv2.ximgproc.createSuperpixelSLIC(img, algorithm=SLIC, region_size=20, ruler=10)``,
  ``.iterate(5)``, ``.getLabels()`` (what the ViCE authors used).

Everything runs on one thread (``cv2.setNumThreads(1)``; fast-slic is called with
num_threads=1). Each method is warmed up once, then every repetition times one pass over all
images; passes of the methods are interleaved so background load hits them alike. The table
reports best-of-N: per image its fastest of the N runs (the least disturbed by other processes
on a shared machine), averaged over the images; the median pass is in brackets. The last line is
``speedup_vs_skimage=<x> speedup_vs_opencv=<y> speedup_vs_opencv_slic=<z>``: fast-slic's
best-of images/s over theirs and over our opencv_slic source.

Usage: python bench/superpixels.py [--quick] [--size 500 | --size 500x667] [--images N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import vice  # noqa: F401
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
import skimage
from skimage.segmentation import slic as skimage_slic

from vice.data.datasets.synthetic import SyntheticSource
from vice.data.superpixels import opencv_slic_superpixels, slic_superpixels

REGION = 20
COMPACTNESS = 10.0
ITERATIONS = 5
BLUR = 3

Method = Callable[[np.ndarray], np.ndarray]


def parse_size(text: str) -> int | tuple[int, int]:
    """'500' -> 500 (square), '500x667' -> (500, 667) as (height, width)."""
    if "x" in text.lower():
        h, w = text.lower().split("x")
        return int(h), int(w)
    return int(text)


def ours(img: np.ndarray) -> np.ndarray:
    return slic_superpixels(img, REGION, COMPACTNESS, ITERATIONS, BLUR)


def ours_opencv(img: np.ndarray) -> np.ndarray:
    return opencv_slic_superpixels(img, REGION, COMPACTNESS, ITERATIONS, BLUR)


def skimage_method(img: np.ndarray) -> np.ndarray:
    n = round(img.shape[0] * img.shape[1] / REGION**2)
    # The iteration keyword was renamed max_iter -> max_num_iter in scikit-image 0.19.
    return skimage_slic(
        img, n_segments=n, compactness=COMPACTNESS, max_num_iter=ITERATIONS, start_label=0
    )


def opencv_method(img: np.ndarray) -> np.ndarray:
    blurred = cv2.GaussianBlur(img, (BLUR, BLUR), 0)
    sp = cv2.ximgproc.createSuperpixelSLIC(
        blurred, algorithm=cv2.ximgproc.SLIC, region_size=REGION, ruler=COMPACTNESS
    )
    sp.iterate(ITERATIONS)
    return sp.getLabels()


def segment_count(labels: np.ndarray) -> int:
    return int(np.unique(labels).size)


def run(images: list[np.ndarray], methods: dict[str, Method], reps: int) -> dict[str, dict]:
    """Times every method on every image `reps` times (passes interleaved across methods).

    best_s: per image the fastest of its `reps` runs, averaged over the images;
    median_s: the median pass over all images, per image.
    """
    counts: dict[str, float] = {}
    for name, fn in methods.items():
        fn(images[0])  # warm-up: imports, allocator, code paths
        counts[name] = float(np.mean([segment_count(fn(img)) for img in images]))
    times = {name: np.zeros((reps, len(images))) for name in methods}
    for rep in range(reps):
        for name, fn in methods.items():
            for k, img in enumerate(images):
                t0 = time.perf_counter()
                fn(img)
                times[name][rep, k] = time.perf_counter() - t0
    return {
        name: {
            "median_s": statistics.median(ts.sum(axis=1)) / len(images),
            "best_s": float(ts.min(axis=0).mean()),
            "segments": counts[name],
        }
        for name, ts in times.items()
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=500, help="500 or HxW, e.g. 500x667")
    parser.add_argument("--images", type=int, default=None, help="distinct images (default 16)")
    parser.add_argument("--reps", type=int, default=None, help="timed passes (default 7)")
    parser.add_argument("--quick", action="store_true", help="4 images, 3 passes")
    args = parser.parse_args(argv)
    n_images = args.images or (4 if args.quick else 16)
    reps = args.reps or (3 if args.quick else 7)

    cv2.setNumThreads(1)
    source = SyntheticSource(size=args.size, length=n_images)
    images = [source.load_image(i) for i in range(n_images)]
    h, w = images[0].shape[:2]
    methods: dict[str, Method] = {
        "ours (fast-slic + blur)": ours,
        "ours opencv_slic": ours_opencv,
        f"skimage {skimage.__version__} slic": skimage_method,
        f"opencv {cv2.__version__} SLIC + blur": opencv_method,
    }
    results = run(images, methods, reps)

    print(
        f"# {n_images} synthetic images {h}x{w}, n_segments={round(h * w / REGION**2)}, "
        f"{reps} timed passes each, 1 thread; best-of per image (median pass)"
    )
    print(f"{'method':<32} {'images/s':>16} {'ms/image':>16} {'mean segments':>14}")
    for name, r in results.items():
        ips = f"{1 / r['best_s']:.1f} ({1 / r['median_s']:.1f})"
        ms = f"{1e3 * r['best_s']:.2f} ({1e3 * r['median_s']:.2f})"
        print(f"{name:<32} {ips:>16} {ms:>16} {r['segments']:>14.1f}")
    ours_s, ocv_s, sk_s, cv_s = (r["best_s"] for r in results.values())
    print(
        f"speedup_vs_skimage={sk_s / ours_s:.2f} speedup_vs_opencv={cv_s / ours_s:.2f} "
        f"speedup_vs_opencv_slic={ocv_s / ours_s:.2f}"
    )


if __name__ == "__main__":
    main()
