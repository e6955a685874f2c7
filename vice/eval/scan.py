"""Checks of a labelled evaluation split: quick before a job starts, whole inside the eval job.

`scan_eval_split` reads a few images evenly spread over the images the eval will use, so a
bad split fails at launch, in about a second, instead of hours into a run: an unreadable
image or label map, a label map that is not single-channel, a label map whose size differs
from its image (never silently resized), or labels without any valid class id. The eval job
reads every image (`vice.eval.features`): an image or label that became unreadable since is
skipped and counted; a size mismatch is an error there too.
"""

from __future__ import annotations

import numpy as np

from vice.data.datasets.base import IGNORE_INDEX, ImageSource
from vice.data.image_io import UnreadableImageError

SCAN_IMAGES = 8  # read at launch: the cost stays bounded on large splits


def describe(source: ImageSource, index: int) -> str:
    """Image `index` as a user finds it: its file, else its key in the source."""
    path = source.path(index)
    return str(path) if path is not None else f"{type(source).__name__} image {index}"


def check_label_size(source: ImageSource, index: int, image_HW: tuple, label_HW: tuple) -> None:
    """Raises ValueError naming both files when label and image sizes differ."""
    if tuple(label_HW) == tuple(image_HW):
        return
    label = source.label_path(index)
    raise ValueError(
        f"label map {label or 'of ' + describe(source, index)} is {label_HW[1]}x{label_HW[0]} "
        f"(width x height) but its image {describe(source, index)} is "
        f"{image_HW[1]}x{image_HW[0]}: a label map must match its image (it is another "
        "image's, or was resized); fix or remove the pair"
    )


def scan_eval_split(source: ImageSource, max_images: int = 0, sample: int = SCAN_IMAGES) -> int:
    """Reads `sample` images evenly spread over the first `max_images` (0: all) and their
    labels; raises ValueError naming the file and the problem. Returns how many were read."""
    n = len(source) if max_images <= 0 else min(max_images, len(source))
    if n == 0:
        raise ValueError(f"{type(source).__name__} holds no images to evaluate on")
    picks = sorted({int(i) for i in np.linspace(0, n - 1, min(sample, n))})
    valid = 0
    for i in picks:
        try:
            image = source.load_image(i)
            label = source.load_label(i)
        except UnreadableImageError as err:
            raise ValueError(f"evaluation split: {err}; fix or remove the file") from None
        if label.ndim != 2:
            raise ValueError(
                f"label map of {describe(source, i)} has shape {label.shape}: label maps are "
                "single-channel class ids (H, W)"
            )
        check_label_size(source, i, image.shape[:2], label.shape)
        valid += int((label != IGNORE_INDEX).any())
    if valid == 0:
        raise ValueError(
            f"none of the {len(picks)} label maps read from the evaluation split has a valid "
            f"class id (all are {IGNORE_INDEX}, ignored): the labels are in another format "
            f"than {type(source).__name__} reads (e.g. colour maps instead of id maps)"
        )
    return len(picks)
