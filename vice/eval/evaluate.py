"""Unsupervised segmentation evaluation of a frozen embedding model (methods.md section 1).

(a) Clustering: k-means on the L2-normalised per-pixel embeddings of the eval images for each
C in `eval.cluster_counts`; clusters are mapped to classes on the eval pixels (Hungarian when
C <= #classes, majority vote when over-clustering); mIoU and pixel accuracy.
(b) Linear probe: a 1x1 conv trained on frozen features of labelled train images, scored on
the eval images.

Outputs in `out_dir`: `metrics.json` (flat keys, fractions in [0, 1], written atomically) and
`segmentations.png`. `evaluate` runs a model; `evaluate_features` takes ready features, so
baselines (e.g. raw colours) are scored by exactly the same code.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from vice.config import EvalConfig
from vice.data.datasets.base import ImageSource
from vice.eval.features import extract_features, load_eval_set, pixels_PD
from vice.eval.figures import segmentation_figure, write_per_class_iou_figure
from vice.eval.kmeans import kmeans
from vice.eval.linear import predict_linear, train_linear_probe
from vice.eval.matching import confusion, map_clusters
from vice.eval.metrics import segmentation_metrics
from vice.run_dir import EvalDir

log = logging.getLogger(__name__)

#: images (N, S, S, 3) uint8 -> features (N, D, S, S) float32 on the CPU.
FeaturesFn = Callable[[np.ndarray], torch.Tensor]


def _json_safe(value):
    """NaN (per-class metrics of absent classes) -> None: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Writes via a temporary file in the same folder, then renames: readers never see half
    a file, and a crash leaves the previous version in place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, metrics: dict) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(metrics, f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(path, write)


def _put(metrics: dict, prefix: str, result: dict) -> None:
    for key, value in result.items():
        metrics[f"{prefix}.{key}"] = _json_safe(value)


def _mapping_name(c: int, num_classes: int) -> str:
    return "majority" if c > num_classes else "Hungarian"


def _figure_count(counts: list[int], num_classes: int) -> int | None:
    """The C drawn: the smallest C >= #classes (the Hungarian one when present), else the
    largest C."""
    if not counts:
        return None
    at_least = [c for c in counts if c >= num_classes]
    return min(at_least) if at_least else max(counts)


def evaluate_features(
    feats_eval_NDSS: torch.Tensor,
    labels_eval_NSS: np.ndarray,
    images_eval_NSS3: np.ndarray,
    num_classes: int,
    cfg: EvalConfig,
    device: str | torch.device,
    out_dir: str | Path,
    feats_train_NDSS: torch.Tensor | None = None,
    labels_train_NSS: np.ndarray | None = None,
    class_names: tuple[str, ...] | list[str] = (),
) -> dict:
    """Clustering and linear-probe metrics of given features; writes the metrics and figure.

    Args:
        feats_eval_NDSS: Features of the eval images (float32, CPU; channels-last is cheaper).
        labels_eval_NSS: Eval ground truth (class ids or IGNORE_INDEX).
        images_eval_NSS3: The eval images, for the figure.
        num_classes: K.
        cfg: Cluster counts, k-means and probe settings, figure rows, seed.
        device: Where k-means and the probe run.
        out_dir: Folder for metrics.json and segmentations.png (created if missing).
        feats_train_NDSS, labels_train_NSS: Probe training data; None skips the probe.
        class_names: For metrics.json and the figure legend.

    Returns:
        The metrics, as written to metrics.json (per-class values of classes absent from the
        ground truth are None).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n, _, s, _ = feats_eval_NDSS.shape
    metrics: dict = {
        "num_images": int(n),
        "num_classes": int(num_classes),
        "class_names": list(class_names),
        "image_size": int(s),
    }
    x_PD = pixels_PD(feats_eval_NDSS)
    num_pixels = x_PD.shape[0]
    counts = []
    for c in dict.fromkeys(cfg.cluster_counts):  # unique, in the configured order
        if c > num_pixels:
            warnings.warn(
                f"eval.cluster_counts: C={c} skipped, the eval set has only {num_pixels} pixels",
                stacklevel=2,
            )
            continue
        counts.append(int(c))
    figure_c = _figure_count(counts, num_classes)

    figure_pred = None
    for c in counts:
        t0 = time.perf_counter()
        _, assign_P = kmeans(
            x_PD,
            c,
            iters=cfg.kmeans_iters,
            seed=cfg.seed,
            fit_samples=cfg.kmeans_fit_pixels,
            restarts=cfg.kmeans_restarts,
            device=device,
        )
        assign_P = assign_P.cpu().numpy()
        map_C = map_clusters(confusion(assign_P, labels_eval_NSS, c, num_classes), num_classes)
        pred_NSS = map_C[assign_P].reshape(labels_eval_NSS.shape)
        _put(
            metrics, f"clustering.{c}", segmentation_metrics(pred_NSS, labels_eval_NSS, num_classes)
        )
        if c == figure_c:
            figure_pred = pred_NSS
        log.info(
            "k-means C=%d: mIoU %.2f%%, acc %.2f%% (%.1f s)",
            c,
            100 * metrics[f"clustering.{c}.miou"],
            100 * metrics[f"clustering.{c}.acc"],
            time.perf_counter() - t0,
        )

    linear_pred = None
    if feats_train_NDSS is not None and labels_train_NSS is not None:
        t0 = time.perf_counter()
        head = train_linear_probe(
            feats_train_NDSS,
            labels_train_NSS,
            num_classes,
            iters=cfg.linear_iters,
            lr=cfg.linear_lr,
            batch_pixels=cfg.linear_batch_pixels,
            seed=cfg.seed,
            device=device,
        )
        linear_pred = predict_linear(head, feats_eval_NDSS).numpy()
        _put(metrics, "linear", segmentation_metrics(linear_pred, labels_eval_NSS, num_classes))
        metrics["linear.train_images"] = int(feats_train_NDSS.shape[0])
        log.info(
            "linear probe: mIoU %.2f%%, acc %.2f%% (%.1f s)",
            100 * metrics["linear.miou"],
            100 * metrics["linear.acc"],
            time.perf_counter() - t0,
        )

    _write_json(EvalDir(out_dir).metrics, metrics)
    write_per_class_iou_figure(out_dir, metrics)
    if figure_pred is not None:
        mapping = _mapping_name(figure_c, num_classes)
        fig = segmentation_figure(
            images_eval_NSS3,
            labels_eval_NSS,
            figure_pred,
            linear_pred,
            num_classes,
            rows=cfg.figure_rows,
            class_names=class_names,
            cluster_title=f"k-means C={figure_c} ({mapping})",
        )
        _atomic_write(EvalDir(out_dir).segmentations, lambda tmp: fig.save(tmp, format="PNG"))
    return metrics


def evaluate(
    model: torch.nn.Module | None,
    source_eval: ImageSource,
    source_train: ImageSource | None,
    cfg: EvalConfig,
    mean: list[float],
    std: list[float],
    device: str | torch.device,
    out_dir: str | Path,
    amp: bool = True,
    features_fn: FeaturesFn | None = None,
) -> dict:
    """Evaluates a frozen model (or any feature function) on a labelled eval split.

    Args:
        model: `model(x_BCHW) -> z_BDHW`, L2-normalised embeddings at input resolution. It is
            moved to `device` and run in eval mode (its train/eval mode is restored after).
            May be None when `features_fn` is given.
        source_eval: Labelled eval split; the first `cfg.max_images` images (0: all).
        source_train: Labelled split for the linear probe (its first
            `cfg.linear_train_images` images); None, or `cfg.linear` false, skips the probe.
        cfg: The eval settings.
        mean, std: Input normalisation of the model.
        device: Where the model, k-means and the probe run.
        out_dir: Folder for metrics.json and segmentations.png.
        amp: bf16 autocast for the model on CUDA.
        features_fn: Replaces the model: images (N, S, S, 3) uint8 -> (N, D, S, S) features
            (e.g. `baselines.raw_colour_features`).

    Returns:
        The metrics dict written to `out_dir/metrics.json`.
    """
    if features_fn is None:
        if model is None:
            raise ValueError("evaluate needs a model or a features_fn")
        features_fn = partial(
            extract_features,
            model,
            mean=mean,
            std=std,
            batch_size=cfg.batch_size,
            device=device,
            amp=amp,
        )
    num_classes = source_eval.num_classes
    if num_classes is None:
        raise ValueError(f"{type(source_eval).__name__} has no labels: it cannot be evaluated")
    t0 = time.perf_counter()
    images_eval, labels_eval = load_eval_set(source_eval, cfg.image_size, cfg.max_images)
    feats_eval = features_fn(images_eval)
    feats_train = labels_train = None
    if cfg.linear and source_train is not None:
        if source_train.num_classes != num_classes:
            raise ValueError(
                f"linear probe: the train split has {source_train.num_classes} classes, "
                f"the eval split {num_classes}"
            )
        images_train, labels_train = load_eval_set(
            source_train, cfg.image_size, cfg.linear_train_images
        )
        feats_train = features_fn(images_train)
    elif cfg.linear:
        log.info("linear probe skipped: no labelled train split given")
    log.info("eval features of %d images in %.1f s", len(images_eval), time.perf_counter() - t0)
    return evaluate_features(
        feats_eval,
        labels_eval,
        images_eval,
        num_classes,
        cfg,
        device,
        out_dir,
        feats_train_NDSS=feats_train,
        labels_train_NSS=labels_train,
        class_names=source_eval.class_names,
    )


def format_summary(metrics: dict) -> str:
    """A plain-text table: one row per cluster count and one for the probe, in percent."""
    rows = []
    counts = sorted(
        {
            int(k.split(".")[1])
            for k in metrics
            if k.startswith("clustering.") and k.endswith(".miou")
        }
    )
    for c in counts:
        rows.append(
            (
                f"clustering C={c} ({_mapping_name(c, metrics['num_classes'])})",
                metrics[f"clustering.{c}.miou"],
                metrics[f"clustering.{c}.acc"],
            )
        )
    if "linear.miou" in metrics:
        rows.append(("linear", metrics["linear.miou"], metrics["linear.acc"]))
    width = max([len("method"), *(len(r[0]) for r in rows)])
    lines = [f"{'method':<{width}}  {'mIoU %':>7}  {'acc %':>7}"]
    lines += [f"{name:<{width}}  {100 * miou:7.2f}  {100 * acc:7.2f}" for name, miou, acc in rows]
    return "\n".join(lines)
