"""PASCAL VOC 2012 segmentation images, with 21-class label maps for evaluation.

MaskContrast pretrains on "trainaug" (10 582 images: the SBD augmented set plus VOC train,
minus VOC val) and evaluates on val (1 449 images). Label maps hold class ids 0..20
(0 = background) and 255 for the void band drawn around every object and over difficult
objects; the release stores them as palette PNGs whose indices are the ids, SBD's
SegmentationClassAug as grayscale PNGs of the same ids (without void bands).

The ground-truth foreground (MaskContrast's supervised mask prior) is every pixel of a
class other than background; void pixels are not foreground, since they are mostly the
uncertain borders of objects. It is read from the label maps whether or not labels=True, so
pretraining on trainaug can use it.

Instances (SegmentationObject/, train/val/trainval only): each object keeps its id 1..k,
background pixels share id 0 and void pixels share id 255: the void band is kept as one
region of its own (as a class without instances, per ImageSource.load_instances) rather than
guessed onto the objects it outlines.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from vice.data.datasets.base import IGNORE_INDEX, ImageSource, root_error
from vice.data.image_io import UnreadableImageError, load_label_png, load_rgb

SPLITS = ("train", "val", "trainval", "trainaug")
#: Splits of the VOC release itself: SegmentationClass and SegmentationObject cover them.
RELEASE_SPLITS = ("train", "val", "trainval")
LIST_DIR = "ImageSets/Segmentation"
IMAGE_DIR = "JPEGImages"
LABEL_DIR = "SegmentationClass"
AUG_LABEL_DIR = "SegmentationClassAug"
OBJECT_DIR = "SegmentationObject"

LAYOUT = f"""\
<root>/                          (the VOC2012 directory, e.g. VOCdevkit/VOC2012)
  {IMAGE_DIR}/2007_000032.jpg ...
  {LABEL_DIR}/2007_000032.png ...     (palette PNGs: class ids 0..20, 255 = void)
  {OBJECT_DIR}/2007_000032.png ...    (optional: instance ids, 0 = background, 255 = void)
  {AUG_LABEL_DIR}/2007_000032.png ...  (optional, trainaug: SBD labels, grayscale PNGs)
  {LIST_DIR}/
    train.txt val.txt trainval.txt          (one image id per line)
    trainaug.txt                            (optional: the 10 582 trainaug ids)
"""

CLASS_NAMES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # rotations by 90 degrees: width and height swap


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as load_rgb returns it (after its EXIF orientation),
    read from the header only."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
    except (OSError, ValueError, SyntaxError) as err:
        raise UnreadableImageError(f"cannot decode image {path}: {err}") from err
    return width, height


class VOCSource(ImageSource):
    """PASCAL VOC 2012 images of one segmentation split; with labels=True, 21-class maps.

    Args:
        root: the VOC2012 directory (see LAYOUT).
        split: "train", "val", "trainval" (the release's lists) or "trainaug" (the
            augmented list, ImageSets/Segmentation/trainaug.txt; labels from
            SegmentationClassAug/ when present, else SegmentationClass/).
        labels: load 21-class label maps (num_classes=21) and, for the release's splits,
            instance maps from SegmentationObject/.

    Raises:
        ValueError: an unknown split (names data.split and the choices).
        DatasetRootError: data.root unset or missing, no JPEGImages/, a missing split list
            or one naming images that do not exist.
    """

    def __init__(self, root: str | None, split: str = "trainaug", labels: bool = False) -> None:
        if split not in SPLITS:
            raise ValueError(
                f"invalid config value data.split={split!r}: PASCAL VOC splits are "
                f"{', '.join(SPLITS)} (trainaug: pretraining, val: evaluation)"
            )
        if root is None:
            raise root_error("PASCAL VOC", "<unset>", "data.root is not set", LAYOUT)
        self.root = Path(root)
        if not self.root.is_dir():
            raise root_error("PASCAL VOC", self.root, "the directory does not exist", LAYOUT)
        self.split = split
        image_dir = self.root / IMAGE_DIR
        if not image_dir.is_dir():
            raise root_error("PASCAL VOC", self.root, f"missing directory {image_dir}", LAYOUT)
        self._ids = self._read_list(split)
        self._check_images(image_dir)
        self.class_names = CLASS_NAMES if labels else ()
        self.num_classes = len(CLASS_NAMES) if labels else None
        self.background_class = 0 if labels else None  # "background", every non-object pixel
        aug_dir = self.root / AUG_LABEL_DIR
        use_aug = split == "trainaug" and aug_dir.is_dir()
        self._label_dir = aug_dir if use_aug else self.root / LABEL_DIR
        if labels and not self._label_dir.is_dir():
            raise root_error(
                "PASCAL VOC", self.root, f"missing label directory {self._label_dir}", LAYOUT
            )
        self._has_foreground = self._label_dir.is_dir()
        object_dir = self.root / OBJECT_DIR
        self._has_instances = (
            labels
            and split in RELEASE_SPLITS
            and object_dir.is_dir()
            and all((object_dir / f"{i}.png").is_file() for i in self._ids)
        )

    def _read_list(self, split: str) -> list[str]:
        list_dir = self.root / LIST_DIR
        path = list_dir / f"{split}.txt"
        if not path.is_file():
            present = sorted(p.stem for p in list_dir.glob("*.txt")) if list_dir.is_dir() else []
            hint = (
                "; trainaug.txt is not part of the VOC2012 release: it comes with the SBD "
                f"augmented labels ({AUG_LABEL_DIR}/), put it into {list_dir}"
                if split == "trainaug"
                else ""
            )
            raise root_error(
                "PASCAL VOC",
                self.root,
                f"the list of split {split!r} is missing: {path} (lists present: "
                f"{', '.join(present) or 'none'}); set data.split to one of them{hint}",
                LAYOUT,
            )
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not ids:
            raise root_error("PASCAL VOC", self.root, f"the split list {path} is empty", LAYOUT)
        return ids

    def _check_images(self, image_dir: Path) -> None:
        # One directory scan instead of a stat per id (trainaug lists 10 582 of 17 125 files).
        with os.scandir(image_dir) as entries:
            present = {e.name for e in entries}
        missing = [i for i in self._ids if f"{i}.jpg" not in present]
        if missing:
            path = self.root / LIST_DIR / f"{self.split}.txt"
            raise root_error(
                "PASCAL VOC",
                self.root,
                f"{len(missing)} of the {len(self._ids)} ids in the split list {path} have no "
                f"image {image_dir}/<id>.jpg (first: {', '.join(missing[:3])}); the list and "
                f"{IMAGE_DIR}/ do not belong together: re-extract VOC2012 or fix the list",
                LAYOUT,
            )

    def __len__(self) -> int:
        return len(self._ids)

    def image_id(self, index: int) -> str:
        """The id of image `index` in its split list, e.g. "2007_000032"."""
        return self._ids[index]

    def key(self, index: int) -> str:
        """The image path relative to the root, e.g. "JPEGImages/2007_000032.jpg"."""
        return f"{IMAGE_DIR}/{self._ids[index]}.jpg"

    def path(self, index: int) -> Path:
        return self.root / IMAGE_DIR / f"{self._ids[index]}.jpg"

    def load_image(self, index: int) -> np.ndarray:
        return load_rgb(self.path(index))

    def label_path(self, index: int) -> Path:
        """The label map of image `index` (SegmentationClassAug/ for trainaug when present)."""
        return self._label_dir / f"{self._ids[index]}.png"

    def _load_map(self, index: int, path: Path) -> np.ndarray:
        """Raw id map (H, W) int64 at `path`, checked to exist and to match its image's size."""
        if not path.is_file():
            hint = ""
            if self.split == "trainaug" and self._label_dir.name == LABEL_DIR:
                hint = (
                    f"; {LABEL_DIR}/ covers only VOC train/val: trainaug needs the SBD labels "
                    f"in {self.root / AUG_LABEL_DIR}"
                )
            # Not an unreadable image to skip: the labels are missing or partly downloaded.
            raise root_error(
                "PASCAL VOC",
                self.root,
                f"label map {path} of image {self.path(index)} does not exist{hint}",
                LAYOUT,
            )
        ids = load_label_png(path)
        width, height = _image_size(self.path(index))
        if ids.shape != (height, width):
            raise ValueError(
                f"PASCAL VOC label map {path} is {ids.shape[1]}x{ids.shape[0]} (width x "
                f"height) but its image {self.path(index)} is {width}x{height}: a label map "
                "must match its image; re-extract the labels"
            )
        return ids

    def load_label(self, index: int) -> np.ndarray:
        """21-class label map (H, W) int64; void (255) and unknown ids are IGNORE_INDEX."""
        if not self.has_labels:
            return super().load_label(index)
        ids = self._load_map(index, self.label_path(index))
        ids[(ids < 0) | (ids >= len(CLASS_NAMES))] = IGNORE_INDEX
        return ids

    @property
    def has_instances(self) -> bool:
        return self._has_instances

    def instance_path(self, index: int) -> Path | None:
        if not self._has_instances:
            return None
        return self.root / OBJECT_DIR / f"{self._ids[index]}.png"

    def load_instances(self, index: int) -> np.ndarray:
        """Instance map (H, W) int64: objects 1..k, background 0, the void band 255."""
        path = self.instance_path(index)
        if path is None:
            return super().load_instances(index)
        return self._load_map(index, path)

    @property
    def has_foreground(self) -> bool:
        """True when the split's label directory exists (labels=True or not)."""
        return self._has_foreground

    def foreground_path(self, index: int) -> Path | None:
        return self.label_path(index) if self.has_foreground else None

    def load_foreground(self, index: int) -> np.ndarray:
        """Foreground (H, W) bool: pixels of classes 1..20; background (0), void (255) and
        ids no class has are False."""
        if not self.has_foreground:
            return super().load_foreground(index)
        ids = self._load_map(index, self.label_path(index))
        return (ids >= 1) & (ids < len(CLASS_NAMES))
