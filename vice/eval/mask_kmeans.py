"""MaskContrast's k-means protocol: one mask-pooled prototype per image, clustered
(notes section 2.7; the published `segmentation/kmeans.py` and `utils/kmeans_utils.py`).

Shape legend: N images, D embedding channels, S x S pixels (embedding, mask and labels on one
grid), M images with a non-empty foreground mask, E PCA components kept, C cluster ids
(k-means clusters + the background cluster 0), K classes.

Not per-pixel k-means: each image's embedding is pooled over its predicted foreground mask
and L2-normalised, the prototypes are PCA-whitened and clustered, and every foreground pixel
of an image takes its prototype's cluster (+1) while predicted-background pixels take cluster
0. Clusters are mapped one-to-one to classes by the Hungarian algorithm maximising IoU over
the labelled pixels, and the whole fit is repeated over seeds.

Clustering uses scikit-learn's PCA and MiniBatchKMeans, as published, rather than
`vice.eval.kmeans`: that one is spherical (it re-normalises its rows), while the published
protocol runs Euclidean k-means on whitened, un-normalised PCA coordinates. scikit-learn is
imported lazily (only this protocol needs it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from vice.data.datasets.base import IGNORE_INDEX
from vice.eval.matching import confusion, hungarian_mapping

DEFAULT_SEEDS = (1234, 1235, 1236, 1237, 1238)  # the published 5 seeds
# PCA components whose variance is below this fraction of the largest one are rank-deficiency
# noise (e.g. fewer distinct prototypes than dimensions); whitening would blow them up to unit
# variance, so they are dropped. Real prototypes of a full-rank set are never near it.
_REL_VARIANCE_FLOOR = 1e-10
# scikit-learn 0.23 (the published environment) ran MiniBatchKMeans with 3 initialisations;
# scikit-learn >= 1.4 defaults to 1 for k-means++, so the published value is set explicitly.
_N_INIT = 3


def _whiten(x_MD: np.ndarray, pca_dim: int) -> np.ndarray:
    """PCA(min(pca_dim, D, M), whiten=True) coordinates, degenerate components dropped."""
    from sklearn.decomposition import PCA

    m, d = x_MD.shape
    if m < 2:  # no variance to estimate: one point
        return np.zeros((m, 1))
    pca = PCA(n_components=min(pca_dim, d, m), svd_solver="full").fit(x_MD)
    var_E = pca.explained_variance_
    keep_E = var_E > _REL_VARIANCE_FLOOR * var_E.max()
    if not keep_E.any():  # every prototype identical
        return np.zeros((m, 1))
    return pca.transform(x_MD)[:, keep_E] / np.sqrt(var_E[keep_E])


def _iou(conf_CK: np.ndarray) -> np.ndarray:
    """IoU of every (cluster, class) pair: |c & k| / |c | k| (0 where both are empty)."""
    union_CK = conf_CK.sum(axis=1, keepdims=True) + conf_CK.sum(axis=0, keepdims=True) - conf_CK
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union_CK > 0, conf_CK / union_CK, 0.0)


def _match(conf_CK: np.ndarray) -> np.ndarray:
    """Cluster -> class maximising summed IoU; -1 for clusters left without a class.

    With more clusters than classes (no background class: k-means has K clusters plus the
    background one) the IoU matrix is padded with zero columns, so the Hungarian assignment
    leaves the extra clusters on padding; their pixels then count as errors.
    """
    c, k = conf_CK.shape
    iou_CK = _iou(conf_CK.astype(np.float64))
    if c > k:
        iou_CK = np.concatenate([iou_CK, np.zeros((c, c - k))], axis=1)
    map_C = hungarian_mapping(iou_CK)
    return np.where(map_C < k, map_C, -1)


def _metrics(conf_CK: np.ndarray, map_C: np.ndarray, num_classes: int) -> dict:
    """`vice.eval.metrics.segmentation_metrics` of the mapped prediction, from the confusion.

    Same definitions (mean IoU over the classes present in the ground truth, pixel accuracy
    over labelled pixels); the extra row K gathers unmatched clusters, which predict no class.
    Computed from the (C, K) matrix so no N x S x S prediction map is built per seed.
    """
    conf_K1K = np.zeros((num_classes + 1, num_classes), dtype=np.float64)
    np.add.at(conf_K1K, np.where(map_C >= 0, map_C, num_classes), conf_CK)
    tp_K = np.diag(conf_K1K[:num_classes])
    gt_K = conf_K1K.sum(axis=0)
    pred_K = conf_K1K[:num_classes].sum(axis=1)
    present_K = gt_K > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iou_K = np.where(present_K, tp_K / (gt_K + pred_K - tp_K), np.nan)
    return {
        "miou": float(iou_K[present_K].mean()),
        "acc": float(tp_K.sum() / gt_K.sum()),
        "iou_per_class": iou_K.tolist(),
    }


def _as_array(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def mask_kmeans(
    emb_NDSS: torch.Tensor,
    fg_NSS: np.ndarray | torch.Tensor,
    labels_NSS: np.ndarray | torch.Tensor,
    num_classes: int,
    background_class: int | None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    pca_dim: int = 32,
    batch_size: int = 1000,
    ignore: int = IGNORE_INDEX,
) -> dict:
    """MaskContrast's k-means evaluation of per-image mask prototypes.

    Args:
        emb_NDSS: Pixel embeddings (the published: unit-norm 32-d head output); pooled as
            given, so features of other norms (a baseline's bottleneck) work too.
        fg_NSS: Predicted foreground mask (bool, or values >= 0.5), on the embedding grid.
        labels_NSS: Ground-truth class ids in [0, num_classes) or `ignore`, same grid.
        num_classes: K, background class included when there is one.
        background_class: Id of the data set's background class (VOC: 0): k-means then
            makes K - 1 clusters, and with the background cluster there are K ids. None when
            every pixel has an object class (our synthetic testbed): K clusters, K + 1 ids,
            so one id stays unmatched. The Hungarian matching is free either way (cluster 0
            is not forced onto `background_class`), as published.
        seeds: k-means seeds (the published 1234..1238); PCA is deterministic and fitted once.
        pca_dim: PCA components (published 32); min(pca_dim, D, M) are fitted.
        batch_size: MiniBatchKMeans batch size (published 1000).
        ignore: Label of pixels no metric counts.

    Returns:
        A dict: `miou`, `acc` (means over seeds, fractions in [0, 1]), `miou_sd`, `acc_sd`
        (sample standard deviations over seeds, 0 for one seed), `per_seed` (a list of
        {seed, miou, acc, iou_per_class, cluster_of_image (N ints, 0 = no mask),
        class_of_cluster (C ints, -1 = unmatched)}), `empty_masks` (images whose predicted
        mask is empty: all their pixels are background cluster 0), `clusters` (C = k-means
        clusters + 1), `pca_components` (E, after dropping degenerate ones), `num_images`.
    """
    if emb_NDSS.ndim != 4:
        raise ValueError(f"emb_NDSS must be (N, D, S, S), got shape {tuple(emb_NDSS.shape)}")
    fg = _as_array(fg_NSS) >= 0.5
    labels = _as_array(labels_NSS)
    n, _, h, w = emb_NDSS.shape
    if fg.shape != (n, h, w) or labels.shape != (n, h, w):
        raise ValueError(
            f"fg_NSS {fg.shape} and labels_NSS {labels.shape} must both be {(n, h, w)}, "
            "the embedding's images and grid"
        )
    if background_class is not None and not 0 <= background_class < num_classes:
        raise ValueError(f"background_class must be in [0, {num_classes}) or None")
    if pca_dim < 1 or not seeds:
        raise ValueError(f"need pca_dim >= 1 and at least one seed, got {pca_dim}, {seeds}")
    k = num_classes - 1 if background_class is not None else num_classes
    nonempty_N = fg.reshape(n, -1).any(axis=1)
    m = int(nonempty_N.sum())
    if not 1 <= k <= m:
        raise ValueError(
            f"{k} k-means clusters need at least as many images with a foreground mask, "
            f"got {m} of {n}"
        )

    rows_M = torch.from_numpy(np.flatnonzero(nonempty_N)).to(emb_NDSS.device)
    fg_MSS = torch.from_numpy(fg[nonempty_N]).to(emb_NDSS.device)
    # the published normalize(bmm(emb, mask)), as vice.methods.maskcontrast_losses.mask_pool
    # (not imported: the eval package does not pull in the training methods)
    pooled_MD = torch.einsum("mdhw,mhw->md", emb_NDSS[rows_M], fg_MSS.to(emb_NDSS.dtype))
    protos_MD = torch.nn.functional.normalize(pooled_MD, dim=1).double().cpu().numpy()
    z_ME = _whiten(protos_MD, pca_dim)

    # Pixel histograms per source, fixed across seeds: row i < N = the foreground of image
    # i, row N = every predicted-background pixel.
    source_NSS = np.where(fg, np.arange(n)[:, None, None], n)
    hist_SK = confusion(source_NSS, labels, n + 1, num_classes, ignore)
    if hist_SK.sum() == 0:
        raise ValueError("the ground truth has no labelled pixel (all are ignore)")

    from sklearn.cluster import MiniBatchKMeans

    per_seed = []
    for seed in seeds:
        km = MiniBatchKMeans(n_clusters=k, batch_size=batch_size, n_init=_N_INIT, random_state=seed)
        cluster_N = np.zeros(n, dtype=np.int64)
        cluster_N[nonempty_N] = km.fit_predict(z_ME) + 1
        conf_CK = np.zeros((k + 1, num_classes), dtype=np.int64)
        np.add.at(conf_CK, np.append(cluster_N, 0), hist_SK)  # background row -> cluster 0
        map_C = _match(conf_CK)
        result = _metrics(conf_CK, map_C, num_classes)
        result.update(
            seed=int(seed), cluster_of_image=cluster_N.tolist(), class_of_cluster=map_C.tolist()
        )
        per_seed.append(result)

    miou_S = np.array([r["miou"] for r in per_seed])
    acc_S = np.array([r["acc"] for r in per_seed])
    ddof = 1 if len(per_seed) > 1 else 0
    return {
        "miou": float(miou_S.mean()),
        "miou_sd": float(miou_S.std(ddof=ddof)),
        "acc": float(acc_S.mean()),
        "acc_sd": float(acc_S.std(ddof=ddof)),
        "per_seed": per_seed,
        "empty_masks": n - m,
        "clusters": k + 1,
        "pca_components": int(z_ME.shape[1]),
        "num_images": n,
    }
