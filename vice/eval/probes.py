"""Positional-bias and coupling probes of region embeddings (methods.md section 4).

Shape legend: N images, S square side in px, D feature channels, R regions, M probed regions,
B images per feature call, T training regions.

Qiu et al. 2023 ("De-coupling and De-positioning Dense SSL") name two faults of region
features; these probes measure them on the ground-truth regions of the eval images, with the
regions and embeddings of `vice.eval.regions` (one region per (image, instance), its labelled
pixels, the normalised mean of its L2-normalised pixel features):

- positional bias, `probe.position_r2`: ridge regression from a region's embedding to its
  centroid ((x, y) in [0, 1]), fit on the regions of the even eval images and scored (R^2,
  mean of x and y) on those of the odd ones. 1: the embedding says where the region is; 0 or
  below: it does not. Zero padding and large receptive fields push it up; it does not need
  the feature function, so it applies to any feature map.
- coupling, `probe.coupling`: for up to M regions drawn with the seed, the cosine between the
  region's embedding in its image and in the same image with everything outside the region
  (its instance) filled with the image's mean colour. 1: the embedding depends on the region's
  pixels alone (de-coupled); lower: its surroundings leak in. Raw colour scores 1 exactly.

The mean colour, rather than a constant grey, keeps the image's overall colour and brightness,
so the probe reacts to what surrounds a region (structure, neighbouring objects) and not to a
global colour shift that any normalising feature would also see; it is also what the paper's
architecture figure draws (grey, mean-filled cut-outs).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from vice.data.datasets.base import IGNORE_INDEX
from vice.eval.regions import MIN_REGION_PIXELS, region_embeddings, region_index

POSITION_ALPHA = 1e-2  # ridge penalty on standardised embeddings (their Gram has trace D)
MAX_REGIONS = 256  # coupling: M, regions probed (M feature calls' worth of images); the mean
# cosine's standard error is then ~ its spread / 16, small next to gaps between methods
COUPLING_BATCH = 16  # coupling: masked images per feature call (bounds feature memory)

#: images (B, S, S, 3) uint8 -> features (B, D, S, S) float32 on the CPU, each image's
#: features a function of that image alone (as `vice.eval.evaluate.FeaturesFn`).
FeaturesFn = Callable[[np.ndarray], torch.Tensor]


def _labelled(labels_NSS: np.ndarray | None, shape: tuple[int, ...], ignore: int) -> np.ndarray:
    """Labels as region_embeddings needs them when only labelled-or-not matters: 0 or ignore."""
    if labels_NSS is None:
        return np.zeros(shape, dtype=np.int64)
    labels_NSS = np.asarray(labels_NSS)
    if labels_NSS.shape != shape:
        raise ValueError(f"labels {labels_NSS.shape} and instances {shape} must match")
    return np.where(labels_NSS == ignore, ignore, 0).astype(np.int64)


def region_centroids(
    instances_NSS: np.ndarray,
    labels_NSS: np.ndarray | None = None,
    min_pixels: int = MIN_REGION_PIXELS,
    ignore: int = IGNORE_INDEX,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The regions `region_embeddings` keeps, in its order, with where they are.

    Args:
        instances_NSS: Ground-truth instance ids.
        labels_NSS: Pixels labelled `ignore` belong to no region; None: every pixel counts.
        min_pixels: Smallest region kept, in labelled pixels (as in `region_embeddings`).
        ignore: The label of unlabelled pixels.

    Returns:
        centroid_R2: float64 mean (x, y) of each region's labelled pixels, pixel centres in a
            unit square: (column + 0.5) / S, (row + 0.5) / S.
        image_R: int64 image of each region.
        instance_R: int64 instance id of each region in its image.
    """
    inst_NSS = np.asarray(instances_NSS)
    n, h, w = inst_NSS.shape
    region_P, r = region_index(inst_NSS)
    valid_P = _labelled(labels_NSS, inst_NSS.shape, ignore).reshape(-1) != ignore
    _, first_R = np.unique(region_P, return_index=True)  # a pixel of each region
    rows_P, cols_P = (a.reshape(-1) for a in np.indices((n, h, w))[1:])
    region_V = region_P[valid_P]
    pixels_R = np.bincount(region_V, minlength=r)
    sum_x = np.bincount(region_V, weights=cols_P[valid_P] + 0.5, minlength=r)
    sum_y = np.bincount(region_V, weights=rows_P[valid_P] + 0.5, minlength=r)
    keep_R = pixels_R >= max(min_pixels, 1)  # region_embeddings' rule: same regions, same order
    centroid_R2 = np.stack([sum_x[keep_R] / w, sum_y[keep_R] / h], axis=1) / pixels_R[keep_R, None]
    return (
        centroid_R2,
        (first_R[keep_R] // (h * w)).astype(np.int64),
        inst_NSS.reshape(-1)[first_R[keep_R]].astype(np.int64),
    )


def position_r2(
    emb_RD: torch.Tensor,
    centroid_R2: np.ndarray,
    image_R: np.ndarray,
    alpha: float = POSITION_ALPHA,
) -> float:
    """Held-out R^2 of ridge regression from region embeddings to centroids, mean of x and y.

    Trained on the regions of the even images, scored on those of the odd ones: a split by
    image, so a region's own image (its layout, its neighbours) never helps predict it.
    Embeddings are standardised with the training rows' statistics and the intercept is not
    penalised: the minimiser of mean squared error + alpha |w|^2, in closed form.

    Returns:
        R^2 = 1 - SS_res / SS_tot on the test regions (SS_tot about their own mean), the mean
        over x and y; NaN if either side has fewer than 2 regions or a test coordinate has no
        spread.
    """
    x_RD = emb_RD.double()
    y_R2 = torch.as_tensor(np.asarray(centroid_R2), dtype=torch.float64)
    train_R = torch.from_numpy(np.asarray(image_R) % 2 == 0)
    test_R = ~train_R
    if int(train_R.sum()) < 2 or int(test_R.sum()) < 2:
        return float("nan")
    x_TD, y_T2 = x_RD[train_R], y_R2[train_R]
    mean_D, std_D = x_TD.mean(0), x_TD.std(0, correction=0).clamp_min(1e-6)
    z_TD = (x_TD - mean_D) / std_D
    t, d = z_TD.shape
    gram_DD = z_TD.T @ z_TD / t + alpha * torch.eye(d, dtype=torch.float64)
    # z is centred, so the intercept is the target mean and the weights fit the residual.
    w_D2 = torch.linalg.solve(gram_DD, z_TD.T @ (y_T2 - y_T2.mean(0)) / t)
    y_test_2 = y_R2[test_R]
    pred_2 = ((x_RD[test_R] - mean_D) / std_D) @ w_D2 + y_T2.mean(0)
    ss_tot_2 = ((y_test_2 - y_test_2.mean(0)) ** 2).sum(0)
    if bool((ss_tot_2 == 0).any()):
        return float("nan")
    ss_res_2 = ((y_test_2 - pred_2) ** 2).sum(0)
    return float((1.0 - ss_res_2 / ss_tot_2).mean())


def isolate_regions(images_BSS3: np.ndarray, region_BSS: np.ndarray) -> np.ndarray:
    """Each image with every pixel outside its region set to the image's mean colour (over
    all its pixels, region included; uint8, rounded), the region's pixels unchanged."""
    fill_B3 = np.rint(images_BSS3.reshape(len(images_BSS3), -1, 3).mean(axis=1)).astype(np.uint8)
    return np.where(region_BSS[..., None], images_BSS3, fill_B3[:, None, None, :])


def coupling(
    features_fn: FeaturesFn,
    images_NSS3: np.ndarray,
    instances_NSS: np.ndarray,
    feats_NDSS: torch.Tensor,
    image_M: np.ndarray,
    instance_M: np.ndarray,
    labels_NSS: np.ndarray | None = None,
    batch: int = COUPLING_BATCH,
    ignore: int = IGNORE_INDEX,
) -> np.ndarray:
    """Cosine between each given region's embedding in its image and in its isolated image.

    Args:
        features_fn: The feature function that produced `feats_NDSS`; called on the isolated
            images, `batch` at a time (M images in all: the probe's cost).
        images_NSS3, instances_NSS, feats_NDSS: The eval images, instance maps and features.
        image_M, instance_M: The regions to probe: image index and instance id.
        labels_NSS: As in `region_centroids`: embeddings pool the region's labelled pixels.
        batch: Images per feature call.
        ignore: The label of unlabelled pixels.

    Returns:
        cos_M: float64 cosines, in the order given. Both embeddings are pooled by
        `region_embeddings` over the same pixels, so features that do not change there (raw
        colour) give identical vectors.
    """
    instances_NSS = np.asarray(instances_NSS)
    valid_NSS = _labelled(labels_NSS, instances_NSS.shape, ignore) != ignore
    cos_M = np.empty(len(image_M), dtype=np.float64)
    for start in range(0, len(image_M), batch):
        img_B = np.asarray(image_M[start : start + batch], dtype=np.int64)
        region_BSS = (
            instances_NSS[img_B] == np.asarray(instance_M[start : start + batch])[:, None, None]
        )
        # One region per image to pool: instance 1 on the region's labelled pixels, the rest
        # ignored (dropped by region_embeddings, being empty of labelled pixels).
        pool_inst_BSS = region_BSS.astype(np.int64)
        pool_labels_BSS = np.where(region_BSS & valid_NSS[img_B], 0, ignore)
        before_BD = region_embeddings(
            feats_NDSS[torch.from_numpy(img_B)], pool_inst_BSS, pool_labels_BSS, 1, 1, ignore
        ).emb_RD
        after_feats_BDSS = features_fn(isolate_regions(images_NSS3[img_B], region_BSS))
        after_BD = region_embeddings(
            after_feats_BDSS, pool_inst_BSS, pool_labels_BSS, 1, 1, ignore
        ).emb_RD
        if before_BD.shape[0] != len(img_B) or after_BD.shape[0] != len(img_B):
            raise ValueError("coupling: every probed region needs a labelled pixel")
        # Renormalised in float64: float32 unit vectors are unit only to ~1e-7, and identical
        # embeddings (raw colour) should score 1 to float64 precision.
        cos_B = (
            F.normalize(before_BD.double(), dim=1) * F.normalize(after_BD.double(), dim=1)
        ).sum(1)
        cos_M[start : start + len(img_B)] = cos_B.clamp(-1.0, 1.0).numpy()
    return cos_M


def probe_metrics(
    features_fn: FeaturesFn | None,
    images_NSS3: np.ndarray,
    instances_NSS: np.ndarray,
    feats_NDSS: torch.Tensor,
    labels_NSS: np.ndarray | None = None,
    max_regions: int = MAX_REGIONS,
    seed: int = 0,
    min_pixels: int = MIN_REGION_PIXELS,
    batch: int = COUPLING_BATCH,
    ignore: int = IGNORE_INDEX,
) -> dict:
    """Both probes of a feature map on the ground-truth regions of the eval images.

    Args:
        features_fn: images (B, S, S, 3) uint8 -> (B, D, S, S) features, the function that
            gave `feats_NDSS`; each image's features must depend on that image alone (a
            network in eval mode, raw colour; not per-pixel noise, not instance-map floors).
            None skips the coupling probe.
        images_NSS3: The eval images.
        instances_NSS: Their ground-truth instance ids.
        feats_NDSS: `features_fn(images_NSS3)`.
        labels_NSS: Class ids or `ignore`: ignored pixels belong to no region (as in the
            `region.*` metrics); None: every pixel belongs to its instance's region.
        max_regions: M, regions for the coupling probe, drawn without replacement with `seed`
            (all regions when R <= M).
        seed: Seeds that draw.
        min_pixels: Smallest region kept, in labelled pixels.
        batch: Isolated images per feature call.
        ignore: The label of unlabelled pixels.

    Returns:
        probe.position_r2: Held-out R^2 of region centroids from region embeddings (see
            `position_r2`); high = positional bias. NaN when a side has < 2 regions.
        probe.coupling: Mean cosine of region embeddings with and without their surroundings
            (see `coupling`); high = de-coupled. NaN without `features_fn` or regions.
        probe.regions: R, the regions kept (both probes draw on them).
        probe.coupling_regions: M actually probed, min(max_regions, R) (0 when skipped).
    """
    if max_regions < 1:
        raise ValueError(f"probe max_regions must be >= 1, got {max_regions}")
    instances_NSS = np.asarray(instances_NSS)
    labels01_NSS = _labelled(labels_NSS, instances_NSS.shape, ignore)
    regions = region_embeddings(feats_NDSS, instances_NSS, labels01_NSS, 1, min_pixels, ignore)
    centroid_R2, image_R, instance_R = region_centroids(
        instances_NSS, labels01_NSS, min_pixels, ignore
    )
    if not np.array_equal(image_R, regions.image_R):  # both follow region_index's order
        raise RuntimeError("region_centroids and region_embeddings disagree on the regions")
    r = len(image_R)
    out = {
        "probe.position_r2": position_r2(regions.emb_RD, centroid_R2, image_R),
        "probe.coupling": float("nan"),
        "probe.regions": int(r),
        "probe.coupling_regions": 0,
    }
    if features_fn is None or r == 0:
        return out
    # Sorted: isolated images come in eval-set order, whatever the draw.
    pick_M = np.sort(np.random.default_rng(seed).choice(r, size=min(max_regions, r), replace=False))
    cos_M = coupling(
        features_fn,
        images_NSS3,
        instances_NSS,
        feats_NDSS,
        image_R[pick_M],
        instance_R[pick_M],
        labels01_NSS,
        batch,
        ignore,
    )
    out["probe.coupling"] = float(cos_M.mean())
    out["probe.coupling_regions"] = len(pick_M)
    return out
