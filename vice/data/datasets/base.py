"""The interface every image source implements, and the errors they raise.

A source knows how many images it has and how to load image i (and its label map, for
evaluation splits, and its ground-truth instance map where the data set has one). It knows
nothing of views, superpixels or batching.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

IGNORE_INDEX = 255  # label value for pixels that no class covers; ignored by every metric


class DatasetRootError(ValueError):
    """A data root is missing, has the wrong layout, or holds no images."""


def root_error(name: str, root: str | Path, problem: str, layout: str) -> DatasetRootError:
    """Builds the error text users see for a bad root: the path, what is wrong, the layout."""
    return DatasetRootError(
        f"{name} data set at '{root}': {problem}.\nExpected layout:\n{layout.rstrip()}\n"
        f"Fix: set data.root to the directory that holds this layout."
    )


class ImageSource(ABC):
    """Indexed access to the images (and optional semantic labels) of one split."""

    #: Number of evaluation classes when labels exist, else None.
    num_classes: int | None = None
    #: The label id of "no object" where the data set has such a class (VOC: 0), else None
    #: (every pixel has a semantic class). MaskContrast's k-means protocol gives that class's
    #: pixels their own cluster.
    background_class: int | None = None
    #: Class names, index-aligned with label ids, when labels exist.
    class_names: tuple[str, ...] = ()

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def key(self, index: int) -> str:
        """A stable identifier of image `index` (its path for files)."""

    def path(self, index: int) -> Path | None:
        """The file behind image `index`, or None for procedural sources."""
        return None

    @abstractmethod
    def load_image(self, index: int) -> np.ndarray:
        """Image `index` as RGB uint8 (H, W, 3). Raises UnreadableImageError if corrupt."""

    @property
    def has_labels(self) -> bool:
        return self.num_classes is not None

    def label_path(self, index: int) -> Path | None:
        """The file behind the label map of image `index`, or None (procedural or none)."""
        return None

    def load_label(self, index: int) -> np.ndarray:
        """Label map (H, W) int64 with ids in [0, num_classes) or IGNORE_INDEX."""
        raise NotImplementedError(f"{type(self).__name__} has no labels for this split")

    @property
    def has_instances(self) -> bool:
        """Whether `load_instances` works: this split has ground-truth instance maps."""
        return False

    def instance_path(self, index: int) -> Path | None:
        """The file behind the instance map of image `index`, or None (procedural or none)."""
        return None

    def load_instances(self, index: int) -> np.ndarray:
        """Instance id map (H, W) int64 of image `index`, at the image's own size.

        Every object instance has its own id; pixels of classes without instances (stuff,
        crowds) share one id per class. Ids are non-negative, not necessarily contiguous.
        """
        raise NotImplementedError(f"{type(self).__name__} has no instance maps for this split")

    @property
    def has_foreground(self) -> bool:
        """Whether `load_foreground` works: this split has a ground-truth foreground (the
        object pixels, as opposed to background and stuff), e.g. for a mask prior."""
        return False

    def foreground_path(self, index: int) -> Path | None:
        """The file the foreground of image `index` is computed from (e.g. its label map), for
        cache keys; None for procedural sources or without a foreground."""
        return None

    def load_foreground(self, index: int) -> np.ndarray:
        """Foreground mask (H, W) bool of image `index`, at the image's own size: True on
        object pixels; background, stuff and void pixels are False."""
        raise NotImplementedError(
            f"{type(self).__name__} has no ground-truth foreground for this split"
        )
