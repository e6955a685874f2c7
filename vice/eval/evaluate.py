"""Unsupervised segmentation evaluation of a frozen embedding model (methods.md section 1).

(a) Clustering: k-means on the L2-normalised per-pixel embeddings of the eval images for each
C in `eval.cluster_counts`; clusters are mapped to classes on the eval pixels (Hungarian when
C <= #classes, majority vote when over-clustering); mIoU and pixel accuracy.
(b) Linear probe: a 1x1 conv trained on frozen features of labelled train images, scored on
the eval images.
(c) Region metrics (`vice.eval.regions`), where the eval split has instance maps: whether
ground-truth regions of one class look alike across images (`region.*`).
(d) Where the model predicts a foreground (`model.foreground(x) -> bool (B, H, W)`, e.g.
MaskContrast's saliency head): MaskContrast's k-means protocol (`vice.eval.mask_kmeans`: one
mask-pooled prototype per image, PCA-whitened, k-means, Hungarian, 5 seeds) as
`mask_kmeans.*`, and where the eval split has a ground-truth foreground, the predicted mask's
IoU with it (`saliency.iou`).
(e) Floors (`vice.eval.floors`): reference feature maps scored by (a)-(d) on the same images
(the mask protocol with the network's predicted masks), as `floors.<name>.<metric>`;
`margin.<metric>` is the network minus the strongest floor.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from vice.config import EvalConfig
from vice.data.datasets.base import ImageSource
from vice.eval.features import (
    extract_features,
    load_eval_set_with_instances,
    load_eval_split,
    pixels_PD,
)
from vice.eval.figures import segmentation_figure, write_per_class_iou_figure
from vice.eval.floors import Floor, margins
from vice.eval.kmeans import kmeans
from vice.eval.linear import predict_linear, train_linear_probe
from vice.eval.mask_kmeans import mask_kmeans
from vice.eval.matching import confusion, map_clusters
from vice.eval.metrics import segmentation_metrics
from vice.eval.probes import probe_metrics
from vice.eval.regions import region_metrics
from vice.eval.summary import figure_count, mapping_name
from vice.eval.summary import format_summary as format_summary  # re-exported
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


def _score(
    feats_eval_NDSS: torch.Tensor,
    labels_eval_NSS: np.ndarray,
    num_classes: int,
    cfg: EvalConfig,
    device: str | torch.device,
    feats_train_NDSS: torch.Tensor | None = None,
    labels_train_NSS: np.ndarray | None = None,
    instances_eval_NSS: np.ndarray | None = None,
    name: str = "network",
    masks: _Masks | None = None,
) -> tuple[dict, int | None, np.ndarray | None, np.ndarray | None]:
    """The metrics of features (no files); also the figure's C and the two predictions."""
    x_PD = pixels_PD(feats_eval_NDSS)
    num_pixels = x_PD.shape[0]
    counts = []
    for c in dict.fromkeys(cfg.cluster_counts):  # unique, in the configured order
        if c > num_pixels:
            warnings.warn(
                f"eval.cluster_counts: C={c} skipped, the eval set has only {num_pixels} pixels",
                stacklevel=3,
            )
            continue
        counts.append(int(c))
    figure_c = figure_count(counts, num_classes)

    metrics: dict = {}
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
            "%s k-means C=%d: mIoU %.2f%%, acc %.2f%% (%.1f s)",
            name,
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
            "%s linear probe: mIoU %.2f%%, acc %.2f%% (%.1f s)",
            name,
            100 * metrics["linear.miou"],
            100 * metrics["linear.acc"],
            time.perf_counter() - t0,
        )

    if instances_eval_NSS is not None:
        t0 = time.perf_counter()
        region = region_metrics(feats_eval_NDSS, instances_eval_NSS, labels_eval_NSS, num_classes)
        _put(metrics, "region", region)
        log.info(
            "%s regions: NN same class %.2f%% (chance %.2f%%), probe %.2f%% (%.1f s)",
            name,
            100 * region["nn_same_class"],
            100 * region["nn_chance"],
            100 * region["probe_acc"],
            time.perf_counter() - t0,
        )
    if masks is not None:
        metrics.update(_score_masks(feats_eval_NDSS, labels_eval_NSS, num_classes, masks, name))
    return metrics, figure_c, figure_pred, linear_pred


def _probes(
    features_fn: FeaturesFn | None,
    split: _EvalSplit,
    feats_NDSS: torch.Tensor,
    cfg: EvalConfig,
    name: str,
) -> dict:
    """`probe.*` (vice.eval.probes): positional bias and coupling of these features."""
    t0 = time.perf_counter()
    out = probe_metrics(
        features_fn, split.images_NSS3, split.instances_NSS, feats_NDSS, split.labels_NSS,
        max_regions=cfg.probe_regions, seed=cfg.seed,
    )  # fmt: skip
    log.info(
        "%s probes: position R2 %.3f, coupling %.3f over %d regions (%.1f s)",
        name, out["probe.position_r2"], out["probe.coupling"], out["probe.coupling_regions"],
        time.perf_counter() - t0,
    )  # fmt: skip
    return out


@dataclass
class _Masks:
    """The model's predicted foreground of the eval images, for the mask k-means protocol."""

    foreground_NSS: np.ndarray  # bool
    background_class: int | None  # the data set's background class id, if it has one


def _score_masks(
    feats_NDSS: torch.Tensor, labels_NSS: np.ndarray, num_classes: int, masks: _Masks, name: str
) -> dict:
    """`mask_kmeans.*`: MaskContrast's k-means on per-image mask-pooled prototypes."""
    t0 = time.perf_counter()
    try:
        result = mask_kmeans(
            feats_NDSS, masks.foreground_NSS, labels_NSS, num_classes, masks.background_class
        )
    except ValueError as err:  # e.g. fewer images with a mask than clusters
        log.info("%s mask k-means skipped: %s", name, err)
        return {"mask_kmeans.skipped": str(err)}
    out = {f"mask_kmeans.{k}": result[k] for k in ("miou", "acc", "miou_sd", "acc_sd")}
    out["mask_kmeans.empty_masks"] = int(result["empty_masks"])
    out["mask_kmeans.clusters"] = int(result["clusters"])
    log.info(
        "%s mask k-means (%d clusters, %d seeds): mIoU %.2f%% +- %.2f, acc %.2f%% (%.1f s)",
        name, result["clusters"], len(result["per_seed"]), 100 * result["miou"],
        100 * result["miou_sd"], 100 * result["acc"], time.perf_counter() - t0,
    )  # fmt: skip
    return out


def predict_foreground(
    model: torch.nn.Module,
    images_NSS3: np.ndarray,
    mean: list[float],
    std: list[float],
    batch_size: int,
    device: str | torch.device,
    amp: bool,
) -> np.ndarray:
    """`model.foreground` of every image: bool (N, S, S)."""

    class Foreground(torch.nn.Module):  # as extract_features runs models: (B, 1, H, W)
        def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
            return model.foreground(x_BCHW)[:, None].float()

    with torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            fg = extract_features(Foreground(), images_NSS3, mean, std, batch_size, device, amp)
        finally:
            model.train(was_training)
    return fg[:, 0].numpy() > 0.5


def foreground_iou(pred_NSS: np.ndarray, truth_NSS: np.ndarray) -> float:
    """Intersection over union of two foregrounds over all pixels of the set."""
    union = np.logical_or(pred_NSS, truth_NSS).sum()
    return float(np.logical_and(pred_NSS, truth_NSS).sum() / union) if union else 1.0


def _write(
    out_dir: Path,
    metrics: dict,
    images_eval_NSS3: np.ndarray,
    labels_eval_NSS: np.ndarray,
    figure_c: int | None,
    figure_pred: np.ndarray | None,
    linear_pred: np.ndarray | None,
    cfg: EvalConfig,
) -> None:
    """metrics.json and the figures, into `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(EvalDir(out_dir).metrics, metrics)
    write_per_class_iou_figure(out_dir, metrics)
    if figure_pred is not None:
        num_classes = metrics["num_classes"]
        mapping = mapping_name(figure_c, num_classes)
        fig = segmentation_figure(
            images_eval_NSS3,
            labels_eval_NSS,
            figure_pred,
            linear_pred,
            num_classes,
            rows=cfg.figure_rows,
            class_names=metrics["class_names"],
            cluster_title=f"k-means C={figure_c} ({mapping})",
        )
        _atomic_write(EvalDir(out_dir).segmentations, lambda tmp: fig.save(tmp, format="PNG"))


def _header(n: int, num_classes: int, size: int, class_names) -> dict:
    return {
        "num_images": int(n),
        "num_classes": int(num_classes),
        "class_names": list(class_names),
        "image_size": int(size),
    }


def evaluate_features(
    feats_eval_NDSS: torch.Tensor,
    labels_eval_NSS: np.ndarray,
    images_eval_NSS3: np.ndarray,
    num_classes: int,
    cfg: EvalConfig,
    device: str | torch.device,
    out_dir: str | Path | None,
    feats_train_NDSS: torch.Tensor | None = None,
    labels_train_NSS: np.ndarray | None = None,
    class_names: tuple[str, ...] | list[str] = (),
    instances_eval_NSS: np.ndarray | None = None,
) -> dict:
    """Clustering, linear-probe and region metrics of given features; writes them and the
    figures.

    Args:
        feats_eval_NDSS: Features of the eval images (float32, CPU; channels-last is cheaper).
        labels_eval_NSS: Eval ground truth (class ids or IGNORE_INDEX).
        images_eval_NSS3: The eval images, for the figure.
        num_classes: K.
        cfg: Cluster counts, k-means and probe settings, figure rows, seed.
        device: Where k-means and the probe run.
        out_dir: Folder for metrics.json and the figures (created if missing); None writes
            nothing.
        feats_train_NDSS, labels_train_NSS: Probe training data; None skips the probe.
        class_names: For metrics.json and the figure legend.
        instances_eval_NSS: Ground-truth instance ids of the eval pixels; with them the
            region metrics (`vice.eval.regions`) are added as `region.*`.

    Returns:
        The metrics, as written to metrics.json (per-class values of classes absent from the
        ground truth are None).
    """
    n, _, s, _ = feats_eval_NDSS.shape
    metrics = _header(n, num_classes, s, class_names)
    scored, figure_c, figure_pred, linear_pred = _score(
        feats_eval_NDSS,
        labels_eval_NSS,
        num_classes,
        cfg,
        device,
        feats_train_NDSS,
        labels_train_NSS,
        instances_eval_NSS,
    )
    metrics.update(scored)
    if out_dir is not None:
        _write(
            Path(out_dir),
            metrics,
            images_eval_NSS3,
            labels_eval_NSS,
            figure_c,
            figure_pred,
            linear_pred,
            cfg,
        )
    return metrics


@dataclass(frozen=True)
class _EvalSplit:
    """Loaded images of one split, with their labels and (where present) instance maps."""

    images_NSS3: np.ndarray
    labels_NSS: np.ndarray
    instances_NSS: np.ndarray | None
    foreground_NSS: np.ndarray | None = None  # ground truth, for a foreground model


def _score_floors(
    floors: Sequence[Floor],
    eval_split: _EvalSplit,
    train_split: _EvalSplit | None,
    num_classes: int,
    cfg: EvalConfig,
    device: str | torch.device,
    masks: _Masks | None = None,
) -> dict:
    """`floors.<name>.<metric>` of every floor (scalars only), `floors.names`,
    `floors.skipped` and the seconds they took."""
    out: dict = {}
    names, skipped = [], []
    t_all = time.perf_counter()
    for floor in floors:
        if floor.needs_instances and eval_split.instances_NSS is None:
            log.info("floor %s skipped: the eval split has no instance maps", floor.name)
            skipped.append(floor.name)
            continue
        t0 = time.perf_counter()
        feats_eval = floor.features(eval_split.images_NSS3, eval_split.instances_NSS, cfg.seed)
        feats_train = labels_train = None
        if train_split is not None:
            if floor.needs_instances and train_split.instances_NSS is None:
                log.info("floor %s: no probe, the train split has no instance maps", floor.name)
            else:
                feats_train = floor.features(
                    train_split.images_NSS3, train_split.instances_NSS, cfg.seed + 1
                )
                labels_train = train_split.labels_NSS
        scored, *_ = _score(
            feats_eval,
            eval_split.labels_NSS,
            num_classes,
            cfg,
            device,
            feats_train,
            labels_train,
            eval_split.instances_NSS,
            name=f"floor {floor.name}",
            masks=masks,
        )
        if cfg.probes and eval_split.instances_NSS is not None:
            # chance draws new vectors per call and the instance floors read the instance
            # maps, not the images: neither is a function of the image to probe for coupling
            image_fn = (
                None if floor.needs_instances or floor.name == "chance"
                else (lambda x, f=floor: f.features(x, None, cfg.seed))
            )  # fmt: skip
            scored.update(_probes(image_fn, eval_split, feats_eval, cfg, f"floor {floor.name}"))
        del feats_eval, feats_train
        for key, value in scored.items():
            if not isinstance(value, list | str):  # per-class lists: the network's only
                out[f"floors.{floor.name}.{key}"] = value
        out[f"floors.{floor.name}.seconds"] = time.perf_counter() - t0
        names.append(floor.name)
    out["floors.names"] = names
    out["floors.skipped"] = skipped
    out["floors.seconds"] = time.perf_counter() - t_all
    return out


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
    floors: Sequence[Floor] = (),
    floors_skipped: Sequence[str] = (),
) -> dict:
    """Evaluates a frozen model (or any feature function) on a labelled eval split, and the
    floors on the same images.

    Args:
        model: `model(x_BCHW) -> z_BDHW`, L2-normalised embeddings at input resolution. It is
            moved to `device` and run in eval mode (its train/eval mode is restored after).
            May be None when `features_fn` is given.
        source_eval: Labelled eval split; the first `cfg.max_images` images (0: all). Where it
            has instance maps, the region metrics are computed too (else `region.skipped`).
        source_train: Labelled split for the linear probe (its first
            `cfg.linear_train_images` images); None, or `cfg.linear` false, skips the probe.
        cfg: The eval settings.
        mean, std: Input normalisation of the model.
        device: Where the model, k-means and the probe run.
        out_dir: Folder for metrics.json and segmentations.png.
        amp: bf16 autocast for the model on CUDA.
        features_fn: Replaces the model: images (N, S, S, 3) uint8 -> (N, D, S, S) features
            (e.g. `baselines.raw_colour_features`).
        floors: Scored like the model on the same images (`vice.eval.floors.build_floors`);
            the metrics then hold `floors.<name>.<metric>` and `margin.<metric>` (see
            `vice.eval.floors.margins`).
        floors_skipped: Floors the caller could not build, listed in `floors.skipped`.

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
    skipped: list[str] = []  # images or labels unreadable since the launch's check
    # a foreground model's masks are scored against the true foreground, read in the same pass
    truth = model is not None and hasattr(model, "foreground") and source_eval.has_foreground
    eval_split = _EvalSplit(
        *load_eval_split(source_eval, cfg.image_size, cfg.max_images, skipped, truth)
    )
    for reason in skipped:
        log.warning("eval image skipped: %s", reason)
    feats_eval = features_fn(eval_split.images_NSS3)
    masks = None
    if model is not None and hasattr(model, "foreground"):
        masks = _Masks(
            predict_foreground(
                model, eval_split.images_NSS3, mean, std, cfg.batch_size, device, amp
            ),
            source_eval.background_class,
        )
    feats_train = train_split = None
    if cfg.linear and source_train is not None:
        if source_train.num_classes != num_classes:
            raise ValueError(
                f"linear probe: the train split has {source_train.num_classes} classes, "
                f"the eval split {num_classes}"
            )
        train_split = _EvalSplit(
            *load_eval_set_with_instances(
                source_train, cfg.image_size, cfg.linear_train_images, skipped
            )
        )
        feats_train = features_fn(train_split.images_NSS3)
    elif cfg.linear:
        log.info("linear probe skipped: no labelled train split given")
    log.info(
        "eval features of %d images in %.1f s",
        len(eval_split.images_NSS3),
        time.perf_counter() - t0,
    )
    metrics = _header(
        len(eval_split.images_NSS3), num_classes, cfg.image_size, source_eval.class_names
    )
    metrics["skipped_images"] = len(skipped)
    if skipped:
        metrics["skipped"] = skipped[:10]
    scored, figure_c, figure_pred, linear_pred = _score(
        feats_eval,
        eval_split.labels_NSS,
        num_classes,
        cfg,
        device,
        feats_train,
        None if train_split is None else train_split.labels_NSS,
        eval_split.instances_NSS,
        masks=masks,
    )
    metrics.update(scored)
    if cfg.probes and eval_split.instances_NSS is not None:
        metrics.update(_probes(features_fn, eval_split, feats_eval, cfg, "network"))
    if masks is not None and eval_split.foreground_NSS is not None:
        truth_NSS = eval_split.foreground_NSS
        metrics["saliency.iou"] = foreground_iou(masks.foreground_NSS, truth_NSS)
        metrics["saliency.fg_fraction"] = float(masks.foreground_NSS.mean())
        metrics["saliency.gt_fg_fraction"] = float(truth_NSS.mean())
    del feats_eval, feats_train  # the floors' features take their place
    if eval_split.instances_NSS is None:
        metrics["region.skipped"] = f"{type(source_eval).__name__} has no instance maps"
    if floors or floors_skipped:
        metrics.update(
            _score_floors(floors, eval_split, train_split, num_classes, cfg, device, masks)
        )
        metrics["floors.skipped"] = [*floors_skipped, *metrics["floors.skipped"]]
        metrics.update(margins(metrics, metrics["floors.names"]))
    metrics = {k: _json_safe(v) for k, v in metrics.items()}
    _write(
        Path(out_dir),
        metrics,
        eval_split.images_NSS3,
        eval_split.labels_NSS,
        figure_c,
        figure_pred,
        linear_pred,
        cfg,
    )
    return metrics
