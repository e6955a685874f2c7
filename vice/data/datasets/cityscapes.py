"""Cityscapes images, with 27-class gtFine label maps for evaluation.

Pretraining in ViCE uses every split ("all", including train_extra); evaluation uses the
27-class setting of unsupervised segmentation papers: labelIds 7..33 become classes 0..26
and everything else (void classes 0..6, license plate, unknown values) is ignored.
The gtFine instanceIds maps of train and val serve as ground-truth regions
(data.superpixels.method=gt): labelId * 1000 + k for instance k of a thing class, the bare
labelId for stuff, void and crowd pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vice.data.datasets.base import IGNORE_INDEX, ImageSource, root_error
from vice.data.datasets.coco import parse_split
from vice.data.image_io import load_label_png, load_rgb

SPLITS = ("train", "val", "test", "train_extra")
#: Splits whose gtFine maps hold real labels (test's are all void, train_extra has none).
LABELLED_SPLITS = ("train", "val")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
INSTANCE_SUFFIX = "_gtFine_instanceIds.png"
FIRST_LABEL_ID = 7  # labelId of "road", class 0; ids below are void classes

LAYOUT = """\
<root>/
  leftImg8bit/
    train/aachen/aachen_000000_000019_leftImg8bit.png ...
    val/frankfurt/frankfurt_000000_000294_leftImg8bit.png ...
    test/berlin/berlin_000000_000019_leftImg8bit.png ...
    train_extra/augsburg/augsburg_000000_000000_leftImg8bit.png ...   (optional)
  gtFine/                 (labels=True: labelIds; data.superpixels.method=gt: instanceIds)
    train/aachen/aachen_000000_000019_gtFine_labelIds.png ...
    train/aachen/aachen_000000_000019_gtFine_instanceIds.png ...
    val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png ...
    val/frankfurt/frankfurt_000000_000294_gtFine_instanceIds.png ...
"""

CLASS_NAMES = (
    "road",
    "sidewalk",
    "parking",
    "rail track",
    "building",
    "wall",
    "fence",
    "guard rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
)


class CityscapesSource(ImageSource):
    """Cityscapes leftImg8bit images; with labels=True, 27-class gtFine label maps.

    Args:
        root: directory holding leftImg8bit/ and, for labels, gtFine/ (see LAYOUT).
        split: "train", "val", "test", "train_extra", a "+" combination of them, or "all"
            (every split directory present; the ViCE pretraining set).
        labels: load 27-class label maps; only "train", "val" or "train+val".
    """

    def __init__(self, root: str | None, split: str = "train", labels: bool = False) -> None:
        names = None if split == "all" else parse_split(split, SPLITS, also=", or 'all'")
        if labels and (names is None or not set(names) <= set(LABELLED_SPLITS)):
            raise ValueError(
                f"data.split={split!r}: Cityscapes labels exist only for 'train' and 'val' "
                "(test gtFine maps are all void, train_extra has no gtFine); use 'train', "
                "'val' or 'train+val' for evaluation"
            )
        if root is None:
            raise root_error("Cityscapes", "<unset>", "data.root is not set", LAYOUT)
        self.root = Path(root)
        image_root = self.root / "leftImg8bit"
        if not image_root.is_dir():
            raise root_error("Cityscapes", self.root, f"missing directory {image_root}", LAYOUT)
        if names is None:
            names = [s for s in SPLITS if (image_root / s).is_dir()]
        self.class_names = CLASS_NAMES if labels else ()
        self.num_classes = len(CLASS_NAMES) if labels else None
        self._images: list[Path] = []
        for name in names:
            split_dir = image_root / name
            if not split_dir.is_dir():
                raise root_error("Cityscapes", self.root, f"missing directory {split_dir}", LAYOUT)
            # Sorting relative paths orders by city, then sequence and frame number.
            self._images += sorted(split_dir.glob(f"*/*{IMAGE_SUFFIX}"))
        if not self._images:
            raise root_error(
                "Cityscapes", self.root, f"no images found for split {split!r}", LAYOUT
            )
        # Instances, like labels, exist only for train and val (test maps are all void).
        self._has_instances = set(names) <= set(LABELLED_SPLITS)
        self._labels = [self._gt_path(p, LABEL_SUFFIX) for p in self._images] if labels else []
        missing = [p for p in self._labels if not p.is_file()]
        if missing:
            # gtFine covers every train/val image; a gap means a broken or partial download.
            raise root_error(
                "Cityscapes",
                self.root,
                f"{len(missing)} label map(s) missing (first: {missing[0]})",
                LAYOUT,
            )

    def _gt_path(self, image: Path, suffix: str) -> Path:
        rel = image.relative_to(self.root / "leftImg8bit")
        stem = rel.name.removesuffix(IMAGE_SUFFIX)
        return self.root / "gtFine" / rel.parent / f"{stem}{suffix}"

    def __len__(self) -> int:
        return len(self._images)

    def key(self, index: int) -> str:
        """The image path relative to the root, e.g. "leftImg8bit/train/aachen/...png"."""
        return self._images[index].relative_to(self.root).as_posix()

    def path(self, index: int) -> Path:
        return self._images[index]

    def load_image(self, index: int) -> np.ndarray:
        return load_rgb(self._images[index])

    def label_path(self, index: int) -> Path | None:
        return self._labels[index] if self.has_labels else None

    def load_label(self, index: int) -> np.ndarray:
        """27-class label map (H, W) int64; void and unknown ids are IGNORE_INDEX."""
        if not self.has_labels:
            return super().load_label(index)
        ids = load_label_png(self._labels[index])
        classes = ids - FIRST_LABEL_ID
        classes[(classes < 0) | (classes >= len(CLASS_NAMES))] = IGNORE_INDEX
        return classes

    @property
    def has_instances(self) -> bool:
        return self._has_instances

    def instance_path(self, index: int) -> Path | None:
        if not self._has_instances:
            return None
        return self._gt_path(self._images[index], INSTANCE_SUFFIX)

    def load_instances(self, index: int) -> np.ndarray:
        """gtFine instanceIds map (H, W) int64: labelId * 1000 + k per instance of a thing
        class, the labelId itself for stuff, void and crowd pixels."""
        path = self.instance_path(index)
        if path is None:
            return super().load_instances(index)
        if not path.is_file():
            # Not an unreadable image to skip: gtFine is missing or partly downloaded.
            raise root_error("Cityscapes", self.root, f"instance map missing: {path}", LAYOUT)
        return load_label_png(path)
