"""The evaluation images and the frozen model's per-pixel features on them.

Shape legend: N images, S square side in px, D embedding channels, P pixels (N*S*S).

Every eval image is resized so its short side is `image_size` (bicubic; labels nearest) and
center-cropped to a square, as PiCIE/STEGO do, so all images stack into one array and every
pixel of the crop has a label.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vice.data.augment import normalise
from vice.data.datasets.base import ImageSource


def _short_side_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(new_h, new_w) with the short side `size`."""
    scale = size / min(h, w)
    # max(size, .) keeps the short side exactly `size` despite rounding of the long side.
    new_h = size if h <= w else max(size, round(h * scale))
    new_w = size if w < h else max(size, round(w * scale))
    return new_h, new_w


def _resize_ids(ids_HW: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Nearest-neighbour resize of an id map (labels, instance ids)."""
    if ids_HW.shape == (new_h, new_w):
        return ids_HW.astype(np.int64, copy=False)
    # Mode "I" (int32) holds every label id, IGNORE_INDEX included; NEAREST never invents ids.
    ids = Image.fromarray(ids_HW.astype(np.int32)).resize((new_w, new_h), Image.NEAREST)
    return np.asarray(ids).astype(np.int64)


def _resize_short_side(
    img_HW3: np.ndarray, label_HW: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    h, w = label_HW.shape
    new_h, new_w = _short_side_shape(h, w, size)
    if (new_h, new_w) == (h, w):
        return img_HW3, label_HW
    img = np.asarray(Image.fromarray(img_HW3).resize((new_w, new_h), Image.BICUBIC))
    return img, _resize_ids(label_HW, new_h, new_w)


def _center_crop(a: np.ndarray, size: int) -> np.ndarray:
    h, w = a.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return a[top : top + size, left : left + size]


def load_eval_set(
    source: ImageSource, image_size: int, max_images: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Loads the first `max_images` labelled images of `source` as square crops.

    Args:
        source: A labelled image source (`source.has_labels`).
        image_size: Side S of the square crops; the short side is resized to it first.
        max_images: Number of images (the first ones, so every run sees the same set);
            0 means the whole split.

    Returns:
        images_NSS3: uint8 RGB crops.
        labels_NSS: int64 class ids in [0, num_classes) or IGNORE_INDEX.
    """
    images_NSS3, labels_NSS, _, _ = _load(source, image_size, max_images, instances=False)
    return images_NSS3, labels_NSS


def load_eval_set_with_instances(
    source: ImageSource, image_size: int, max_images: int = 0, skipped: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`load_eval_set`, plus the ground-truth instance maps where the source has them.

    Returns:
        images_NSS3, labels_NSS: As `load_eval_set`.
        instances_NSS: int64 instance ids, resized (nearest) and cropped exactly like the
            labels; None when the source has no instance maps (`source.has_instances`).

    With a `skipped` list, images or label maps that cannot be read are left out and their
    reasons appended to it (else they raise).
    """
    return _load(source, image_size, max_images, source.has_instances, skipped)[:3]


def load_eval_foreground(source: ImageSource, image_size: int, max_images: int = 0) -> np.ndarray:
    """The ground-truth foreground (`source.load_foreground`) of the images `load_eval_set`
    loads, resized (nearest) and cropped like their labels: bool (N, S, S)."""
    return load_eval_split(source, image_size, max_images, foreground=True)[3]


def load_eval_split(
    source: ImageSource,
    image_size: int,
    max_images: int = 0,
    skipped: list[str] | None = None,
    foreground: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """`load_eval_set_with_instances`, plus, with `foreground`, the ground-truth foreground
    (bool (N, S, S), resized and cropped like the labels), all read in one pass."""
    return _load(source, image_size, max_images, source.has_instances, skipped, foreground)


def _load(
    source: ImageSource,
    image_size: int,
    max_images: int,
    instances: bool,
    skipped: list[str] | None = None,
    foreground: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    # One pass over the images: a procedural source generates image, label, instances and
    # foreground of an index together and keeps only the last index. An image or label map
    # that cannot be read is skipped (its reason appended to `skipped`; without that list it
    # is an error); a label map of another size than its image is always an error, never
    # resized.
    from vice.data.image_io import UnreadableImageError
    from vice.eval.scan import check_label_size

    if not source.has_labels:
        raise ValueError(
            f"{type(source).__name__} has no labels: evaluation needs a labelled split"
        )
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    n = len(source) if max_images <= 0 else min(max_images, len(source))
    if n == 0:
        raise ValueError(f"{type(source).__name__} holds no images to evaluate on")
    images_NSS3 = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    labels_NSS = np.empty((n, image_size, image_size), dtype=np.int64)
    instances_NSS = np.empty((n, image_size, image_size), dtype=np.int64) if instances else None
    fg_NSS = np.empty((n, image_size, image_size), dtype=bool) if foreground else None
    k = 0  # images kept
    for i in range(n):
        try:
            img, label = source.load_image(i), source.load_label(i)
        except UnreadableImageError as err:
            if skipped is None:
                raise
            skipped.append(str(err))
            continue
        check_label_size(source, i, img.shape[:2], label.shape)
        img, lab = _resize_short_side(img, label, image_size)
        images_NSS3[k] = _center_crop(img, image_size)
        labels_NSS[k] = _center_crop(lab, image_size)
        if instances_NSS is not None:
            ids = source.load_instances(i)
            if ids.shape != label.shape:
                raise ValueError(
                    f"{type(source).__name__} image {i}: instance map {ids.shape} and label "
                    f"map {label.shape} differ in size"
                )
            ids = _resize_ids(ids, *_short_side_shape(*label.shape, image_size))
            instances_NSS[k] = _center_crop(ids, image_size)
        if fg_NSS is not None:
            fg = source.load_foreground(i).astype(np.int64)
            fg = _resize_ids(fg, *_short_side_shape(*fg.shape, image_size))
            fg_NSS[k] = _center_crop(fg, image_size) > 0
        k += 1
    if k == 0:
        raise ValueError(f"none of the {n} evaluation images could be read: {skipped[:3]}")
    if instances_NSS is not None:
        instances_NSS = instances_NSS[:k]
    if fg_NSS is not None:
        fg_NSS = fg_NSS[:k]
    return images_NSS3[:k], labels_NSS[:k], instances_NSS, fg_NSS


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    images_NSS3: np.ndarray,
    mean: list[float],
    std: list[float],
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    amp: bool = True,
) -> torch.Tensor:
    """Per-pixel embeddings of a frozen model, gathered on the CPU.

    Args:
        model: `model(x_BCHW) -> z_BDHW` at input resolution, for ImageNet-normalised input.
        images_NSS3: uint8 RGB images.
        mean, std: Normalisation (the values the model was trained with).
        batch_size: Images per forward pass.
        device: Where the model runs (it is moved there).
        amp: bf16 autocast, used only on CUDA.

    Returns:
        feats_NDSS: float32 on the CPU, stored channels-last so that the per-pixel matrix
        `pixels_PD(feats_NDSS)` used by k-means and the linear probe is a view, not a copy.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    use_amp = amp and device.type == "cuda"
    n, s = images_NSS3.shape[0], images_NSS3.shape[1]
    feats_NDSS: torch.Tensor | None = None
    try:
        for start in range(0, n, batch_size):
            batch = images_NSS3[start : start + batch_size]
            x_BCHW = torch.stack([normalise(Image.fromarray(im), mean, std) for im in batch])
            x_BCHW = x_BCHW.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                z_BDHW = model(x_BCHW)
            if z_BDHW.shape[-2:] != (s, s):
                raise ValueError(
                    f"the model returned {tuple(z_BDHW.shape)} for input {tuple(x_BCHW.shape)}; "
                    "evaluation needs embeddings at input resolution"
                )
            if feats_NDSS is None:
                feats_NDSS = torch.empty(
                    (n, z_BDHW.shape[1], s, s), dtype=torch.float32
                ).contiguous(memory_format=torch.channels_last)
            feats_NDSS[start : start + batch_size] = z_BDHW.float().cpu()
    finally:
        model.train(was_training)
    assert feats_NDSS is not None  # n >= 1: the loop ran at least once
    return feats_NDSS


def pixels_PD(feats_NDSS: torch.Tensor) -> torch.Tensor:
    """The features as one row per pixel (image-major, then row, then column).

    A view for channels-last tensors (what `extract_features` returns), a copy otherwise.
    """
    n, d, h, w = feats_NDSS.shape
    return feats_NDSS.permute(0, 2, 3, 1).reshape(n * h * w, d)
