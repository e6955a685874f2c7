"""The testbed measured before anything trains on it (data=testbed, its default settings).

A testbed tuned after seeing a method's results is not a test, so these numbers come first,
every baseline computed in this run on the same val images:

  1. ASA (achievable segmentation accuracy: the fraction of pixels right if every region takes
     its majority class / instance) of fast-slic, the same-size grid and OpenCV SLIC through
     `vice.data.regions.compute_regions` at the configured superpixel settings.
  2. k-means at C = #classes through `vice.eval.evaluate.evaluate_features`, the code that
     scores a network: chance (random per-pixel features), instance-random (one random vector
     per ground-truth instance: perfect grouping, no semantics), raw colour, instance-mean
     colour; then a hand-made texture feature (a Gabor bank), texture + colour per pixel, and
     texture + colour averaged over each ground-truth instance.
  3. Region nearest neighbour: per instance one mean feature; the fraction whose cosine
     nearest region in another image has the same class (and the same texture family, the
     same hue band); beside it a supervised hint: a linear classifier trained on the regions
     of train-split images, scored on the val regions.

    python bench/testbed.py [--images 256] [--train-images 256] [--out outputs/bench_testbed]
                            [KEY=VALUE ...]

Trailing Hydra overrides apply on top of `data=testbed` (e.g. data.superpixels.region_size=8).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from vice.config import Config
from vice.data.datasets import build_source
from vice.data.datasets.base import ImageSource
from vice.data.datasets.testbed import achievable_segmentation_accuracy, band_of, family_of
from vice.data.regions import compute_regions
from vice.eval.baselines import raw_colour_features
from vice.eval.evaluate import evaluate_features
from vice.hydra_schema import register, to_config

ROOT = Path(__file__).resolve().parents[1]
MIN_REGION_PX = 32  # smaller instances (occluded slivers) are left out of the region tables
# Gabor bank: the textures' periods (3 and 4 px; checks ~2.8 px along the diagonals) and one
# near Nyquist for grain, at 4 orientations; sigma half a wavelength (about an octave).
WAVELENGTHS = (2.2, 2.8, 4.0)
ORIENTATIONS = (0.0, 45.0, 90.0, 135.0)


def config(overrides: list[str], images: int) -> Config:
    register()
    fixed = ["data=testbed", "tracking.enabled=false", f"data.testbed.eval_length={images}"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return to_config(compose("config", [*fixed, *overrides]))


def load(source: ImageSource, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first n images (N, S, S, 3) uint8, labels and instances (N, S, S) int64."""
    images = np.stack([source.load_image(i) for i in range(n)])
    labels = np.stack([source.load_label(i) for i in range(n)])
    instances = np.stack([source.load_instances(i) for i in range(n)])
    return images, labels, instances


def colour_features(images_NSS3: np.ndarray, cfg: Config) -> np.ndarray:
    """The raw-colour baseline's features: normalised RGB (N, 3, S, S)."""
    feats = raw_colour_features(images_NSS3, cfg.data.views.mean, cfg.data.views.std)
    return np.ascontiguousarray(feats.numpy())


def gabor_features(images_NSS3: np.ndarray) -> np.ndarray:
    """Texture only: local Gabor energy over the local mean grey level, so neither hue nor
    value enters beyond a scale, which cosine similarity ignores. (N, 12, S, S) float32."""
    bank = []
    for lam in WAVELENGTHS:
        sigma = 0.5 * lam
        k = 2 * math.ceil(3 * sigma) + 1
        for th in np.radians(ORIENTATIONS):
            even = cv2.getGaborKernel((k, k), sigma, th, lam, 1.0, 0.0, ktype=cv2.CV_32F)
            odd = cv2.getGaborKernel((k, k), sigma, th, lam, 1.0, math.pi / 2, ktype=cv2.CV_32F)
            bank.append((even - even.mean(), odd))  # zero-mean: flat regions give no energy
    n, s = images_NSS3.shape[:2]
    out_NDSS = np.empty((n, len(bank), s, s), dtype=np.float32)
    for i, img in enumerate(images_NSS3):
        grey = img.astype(np.float32).mean(-1) / 255.0
        local = cv2.GaussianBlur(grey, (0, 0), 3.0) + 0.05
        for j, (even, odd) in enumerate(bank):
            re = cv2.filter2D(grey, -1, even, borderType=cv2.BORDER_REFLECT)
            im = cv2.filter2D(grey, -1, odd, borderType=cv2.BORDER_REFLECT)
            out_NDSS[i, j] = cv2.GaussianBlur(np.sqrt(re * re + im * im), (0, 0), 2.0) / local
    return out_NDSS


def standardise(*blocks: np.ndarray) -> np.ndarray:
    """Channels (axis 1) z-scored over the set, each block scaled to unit expected norm, then
    concatenated: texture and colour weigh the same whatever their channel counts."""
    out = []
    for b in blocks:
        axes = (0, *range(2, b.ndim))
        z = (b - b.mean(axes, keepdims=True)) / (b.std(axes, keepdims=True) + 1e-6)
        out.append(z / math.sqrt(b.shape[1]))
    return np.ascontiguousarray(np.concatenate(out, 1), dtype=np.float32)


def region_means(feat_NDSS: np.ndarray, labels: np.ndarray, instances: np.ndarray):
    """Per instance its mean feature over its interior (>= 2 px from other instances, where
    16 such px exist: texture energies blur across borders).

    Returns the table of instances >= MIN_REGION_PX (features R x D, classes R, image ids R)
    and the (N, D, S, S) map giving every pixel its instance's mean.
    """
    feats, classes, image_ids = [], [], []
    mean_map = np.empty_like(feat_NDSS)
    box = np.ones((5, 5), np.uint8)
    for i, inst in enumerate(instances):
        ids = inst.astype(np.float32)
        interior = cv2.dilate(ids, box) == cv2.erode(ids, box)
        for k in np.unique(inst):
            mask = inst == k
            use = mask & interior if (mask & interior).sum() >= 16 else mask
            f = feat_NDSS[i][:, use].mean(1)
            mean_map[i][:, mask] = f[:, None]
            if mask.sum() >= MIN_REGION_PX:
                feats.append(f)
                classes.append(int(labels[i][mask][0]))
                image_ids.append(i)
    return np.stack(feats), np.array(classes), np.array(image_ids), mean_map


def region_table(images, labels, instances, cfg: Config) -> dict:
    """Region features by cue; colour std comes from the means of colour and its square."""
    colour = colour_features(images, cfg)
    mean_sq, classes, image_ids, _ = region_means(
        np.concatenate([colour, colour * colour], 1), labels, instances
    )
    mean, sq = mean_sq[:, :3], mean_sq[:, 3:]
    gabor = region_means(gabor_features(images), labels, instances)[0]
    std = np.sqrt(np.maximum(sq - mean * mean, 0.0))
    return {
        "classes": classes,
        "image_ids": image_ids,
        "colour mean": [mean],
        "colour mean + std": [mean, std],
        "Gabor (texture only)": [gabor],
        "Gabor + colour mean": [gabor, mean],
    }


def unit_blocks(blocks: list[np.ndarray]) -> np.ndarray:
    """Region features: each block standardised over the regions, unit norm, concatenated."""
    return np.concatenate(
        [(b - b.mean(0)) / (b.std(0) + 1e-6) / math.sqrt(b.shape[1]) for b in blocks], 1
    )


def nn_rates(x_RD: np.ndarray, classes: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
    """Same class, same texture family, same hue band rates of every region's cosine nearest
    neighbour among the regions of other images."""
    x = F.normalize(torch.from_numpy(x_RD).float(), dim=1)
    sim = x @ x.T
    ids = torch.from_numpy(image_ids)
    sim[ids[:, None] == ids[None, :]] = -2.0
    nn = sim.argmax(1).numpy()
    return np.array(
        [
            (classes[nn] == classes).mean(),
            (family_of(classes[nn]) == family_of(classes)).mean(),
            (band_of(classes[nn]) == band_of(classes)).mean(),
        ]
    )


def linear_accuracy(x_tr, y_tr, x_te, y_te, num_classes: int) -> float:
    """A softmax classifier (L-BFGS, small L2) on standardised region features: the fraction
    of test regions it names right."""
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    a = torch.from_numpy((x_tr - mu) / sd).float()
    b = torch.from_numpy((x_te - mu) / sd).float()
    torch.manual_seed(0)
    head = torch.nn.Linear(a.shape[1], num_classes)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=300, line_search_fn="strong_wolfe")
    y = torch.from_numpy(y_tr)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(a), y) + 1e-3 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((head(b).argmax(1).numpy() == y_te).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=256, help="val images measured")
    p.add_argument("--train-images", type=int, default=256, help="train images, linear hint")
    p.add_argument(
        "--out", default="outputs/bench_testbed", help="evaluate_features' output folders"
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides on top of data=testbed")
    args = p.parse_args()
    t_start = time.perf_counter()
    cfg = config(args.overrides, args.images)
    source = build_source(cfg.data, split="val", labels=True)
    c = source.num_classes
    images, labels, instances = load(source, args.images)
    n, s = images.shape[:2]
    print(f"testbed: {n} val images of {s} px, {c} classes")

    sp = cfg.data.superpixels
    print(f"\nASA (%), region_size {sp.region_size}, compactness {sp.compactness}, blur {sp.blur}")
    print(f"{'regions':14s} {'class':>7s} {'instance':>9s} {'segments':>9s} {'s':>6s}")
    asa = {}
    for method in ("slic", "grid", "opencv_slic"):
        tic = time.perf_counter()
        rows = []
        for i in range(n):
            r = compute_regions(source, i, images[i], replace(sp, method=method))
            a_cls = achievable_segmentation_accuracy(r, labels[i])
            rows.append((a_cls, achievable_segmentation_accuracy(r, instances[i]), r.max() + 1))
        a_cls, a_inst, segs = np.mean(rows, 0)
        asa[method] = 100 * np.array([a_cls, a_inst])
        dt = time.perf_counter() - tic
        print(f"{method:14s} {100 * a_cls:7.2f} {100 * a_inst:9.2f} {segs:9.0f} {dt:6.1f}")
    d_cls, d_inst = asa["slic"] - asa["grid"]
    print(f"slic - grid: {d_cls:+.2f} (class), {d_inst:+.2f} (instance) points")

    # k-means floors: every feature map is (N, D, S, S) float32, scored like a network's.
    rng = np.random.default_rng(0)
    colour = colour_features(images, cfg)
    gabor = gabor_features(images)
    both = standardise(gabor, colour)
    vectors = rng.standard_normal((n, int(instances.max()) + 1, 16), dtype=np.float32)
    features = {
        "chance": rng.standard_normal((n, 16, s, s), dtype=np.float32),
        "instance-random": vectors[np.arange(n)[:, None, None], instances].transpose(0, 3, 1, 2),
        "raw colour": colour,
        "instance-mean colour": region_means(colour, labels, instances)[3],
        "Gabor (texture only)": standardise(gabor),
        "Gabor + colour": both,
        "instance-mean Gabor + colour": region_means(both, labels, instances)[3],
    }
    # The configured k-means (iterations, restarts, seed) at C = #classes only.
    ecfg = replace(cfg.eval, cluster_counts=[c], linear=False, max_images=n)
    print(f"\nk-means C={c} (Hungarian) on {n} val images: mIoU, pixel acc (%)")
    for name, feats in features.items():
        tic = time.perf_counter()
        out = Path(args.out) / name.replace(" + ", "_and_").replace(" ", "_")
        t = torch.from_numpy(np.ascontiguousarray(feats))
        m = evaluate_features(
            t, labels, images, c, ecfg, "cpu", out, class_names=source.class_names
        )
        miou, acc = 100 * m[f"clustering.{c}.miou"], 100 * m[f"clustering.{c}.acc"]
        print(f"{name:30s} {miou:6.2f} {acc:6.2f}   ({time.perf_counter() - tic:.1f} s)")
    del features, both, gabor, colour

    val = region_table(images, labels, instances, cfg)
    train = build_source(cfg.data, split="train", labels=True)
    tr = region_table(*load(train, args.train_images), cfg)
    shares = np.bincount(val["classes"], minlength=c) / len(val["classes"])
    print(
        f"\nregion nearest neighbour in another image, {len(val['classes'])} val regions >= "
        f"{MIN_REGION_PX} px: same class / family / hue band (%)\n(chance "
        f"{100 * (shares**2).sum():.1f} / 25 / 33); linear: a classifier fitted on the "
        f"{len(tr['classes'])} regions of {args.train_images} train images, val accuracy (%)"
    )
    print(f"{'region feature':22s} {'class':>6s} {'family':>6s} {'band':>6s}   linear")
    for name in ("colour mean", "colour mean + std", "Gabor (texture only)", "Gabor + colour mean"):
        same, fam, band = 100 * nn_rates(unit_blocks(val[name]), val["classes"], val["image_ids"])
        x_tr, x_va = np.concatenate(tr[name], 1), np.concatenate(val[name], 1)
        lin = 100 * linear_accuracy(x_tr, tr["classes"], x_va, val["classes"], c)
        print(f"{name:22s} {same:6.1f} {fam:6.1f} {band:6.1f}   {lin:6.1f}")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
