"""COCO 2017 images, with COCO-Stuff-27 label maps for evaluation.

Pretraining reads train2017 + unlabeled2017 without labels. Evaluation reads train2017 or
val2017 with the COCO-Stuff label maps collapsed from 182 fine to 27 coarse classes, the
setting of IIC, PiCIE and STEGO, optionally restricted to IIC's curated image lists.
"""

from __future__ import annotations

import itertools
import os
import warnings
from pathlib import Path

import numpy as np

from vice.data.datasets.base import IGNORE_INDEX, ImageSource, root_error
from vice.data.image_io import IMAGE_EXTENSIONS, load_label_png, load_rgb

#: split name -> image directory under the root.
SPLIT_DIRS = {"train": "train2017", "val": "val2017", "unlabeled": "unlabeled2017"}
LABEL_DIR = "stuffthingmaps_trainval2017"
CURATED_DIR = "curated"
CURATED_FILE = "Coco164kFull_Stuff_Coarse_7.txt"

LAYOUT = f"""\
<root>/
  train2017/000000000009.jpg ...
  val2017/000000000139.jpg ...
  unlabeled2017/000000000008.jpg ...
  {LABEL_DIR}/            (labels=True only; 0..181, 255 = unlabeled)
    train2017/000000000009.png ...
    val2017/000000000139.png ...
  {CURATED_DIR}/                                (optional IIC curated lists)
    train2017/{CURATED_FILE}
    val2017/{CURATED_FILE}
"""


def _fine_to_coarse() -> np.ndarray:
    """The 182-entry COCO-Stuff fine -> coarse (27 classes) lookup table.

    Things (fine 0..90) come in contiguous runs per supercategory, so they are stored as
    (first fine id, coarse id) runs; stuff classes (fine 91..181) interleave supercategories
    and are listed one by one, ten per row.
    """
    thing_runs = ((0, 9), (1, 11), (9, 8), (15, 7), (25, 6), (33, 10))
    thing_runs += ((43, 5), (51, 2), (61, 3), (71, 0), (77, 1), (83, 4), (91, None))
    stuff = (
        (17, 17, 22, 20, 20, 22, 15, 25, 16, 13),  # 91..100
        (12, 12, 17, 17, 23, 15, 15, 17, 15, 21),  # 101..110
        (15, 25, 13, 13, 13, 13, 13, 22, 26, 14),  # 111..120
        (14, 15, 22, 21, 21, 24, 20, 22, 15, 17),  # 121..130
        (16, 15, 22, 24, 21, 17, 25, 16, 21, 17),  # 131..140
        (22, 16, 21, 21, 25, 21, 26, 21, 24, 20),  # 141..150
        (17, 14, 21, 26, 15, 23, 20, 21, 24, 15),  # 151..160
        (24, 22, 25, 15, 20, 17, 17, 22, 14, 18),  # 161..170
        (18, 18, 18, 18, 18, 18, 26, 26, 19, 19),  # 171..180
        (24,),  # 181
    )
    table = np.empty(182, dtype=np.int64)
    for (start, coarse), (stop, _) in itertools.pairwise(thing_runs):
        table[start:stop] = coarse
    table[91:] = [c for row in stuff for c in row]
    return table


FINE_TO_COARSE = _fine_to_coarse()

# Coarse ids 0..26 in the order the mapping above uses. Checked by walking every fine class
# of the COCO-Stuff label list (nightrome/cocostuff labels.md; stuffthingmaps ids are its
# 1-based ids minus one) through the table: e.g. person(0) -> 9, tv..cell phone(71..76) -> 0,
# microwave..blender(77..82) -> 1, fog(119) -> 26 water, wall-*(170..176) -> 18,
# window-*(179, 180) -> 19, wood(181) -> 24 solid; every fine class lands on the coarse name
# of its COCO-Stuff supercategory, so this is the supercategory order of that mapping.
COARSE_NAMES = (
    "electronic",
    "appliance",
    "food",
    "furniture",
    "indoor",
    "kitchen",
    "accessory",
    "animal",
    "outdoor",
    "person",
    "sports",
    "vehicle",
    "ceiling",
    "floor",
    "food-stuff",
    "furniture-stuff",
    "raw-material",
    "textile",
    "wall",
    "window",
    "building",
    "ground",
    "plant",
    "sky",
    "solid",
    "structural",
    "water",
)


def parse_split(split: str, allowed: tuple[str, ...], also: str = "") -> list[str]:
    """Splits "a+b" into known split names, deduplicated, in the canonical `allowed` order.

    Args:
        split: the data.split value.
        allowed: the split names, in canonical order.
        also: extra allowed values the caller handles itself, named in the error message.

    Raises:
        ValueError: a part is not in `allowed`; the message names data.split.
    """
    parts = [p.strip() for p in str(split).split("+")]
    unknown = [p for p in parts if p not in allowed]
    if unknown:
        raise ValueError(
            f"data.split={split!r}: unknown split {unknown[0]!r}; allowed: "
            f"{', '.join(allowed)}, or several joined with '+' (e.g. '{'+'.join(allowed[:2])}')"
            f"{also}"
        )
    return [name for name in allowed if name in parts]


def _list_stems(directory: Path, suffixes: tuple[str, ...]) -> dict[str, str]:
    """Maps file stem -> file name for the files in `directory` with one of `suffixes`."""
    with os.scandir(directory) as entries:
        return {
            Path(e.name).stem: e.name
            for e in entries
            if not e.name.startswith(".") and Path(e.name).suffix.lower() in suffixes
        }


class CocoSource(ImageSource):
    """COCO 2017 images; with labels=True, COCO-Stuff-27 label maps.

    Args:
        root: directory holding train2017/, val2017/, unlabeled2017/ and, for labels,
            stuffthingmaps_trainval2017/ (see LAYOUT).
        split: "train", "val", "unlabeled" or a "+" combination ("train+unlabeled" is the
            pretraining default).
        labels: load COCO-Stuff-27 label maps (train/val only); only images that have a
            label map are kept.
        curated: with labels, restrict each split to IIC's curated list
            (curated/<split dir>/Coco164kFull_Stuff_Coarse_7.txt) when it exists, the usual
            benchmark subset. Ignored without labels: pretraining uses every image.
    """

    def __init__(
        self,
        root: str | None,
        split: str = "train+unlabeled",
        labels: bool = False,
        curated: bool = True,
    ) -> None:
        names = parse_split(split, tuple(SPLIT_DIRS))
        if labels and "unlabeled" in names:
            raise ValueError(
                f"data.split={split!r}: unlabeled2017 has no COCO-Stuff label maps; "
                "evaluation with labels needs 'train', 'val' or 'train+val'"
            )
        if root is None:
            raise root_error("COCO", "<unset>", "data.root is not set", LAYOUT)
        self.root = Path(root)
        if not self.root.is_dir():
            raise root_error("COCO", self.root, "the directory does not exist", LAYOUT)
        self.class_names = COARSE_NAMES if labels else ()
        self.num_classes = len(COARSE_NAMES) if labels else None
        self._images: list[Path] = []
        self._labels: list[Path] = []
        for name in names:
            self._add_split(SPLIT_DIRS[name], labels, curated)
        if not self._images:
            raise root_error("COCO", self.root, f"no images found for split {split!r}", LAYOUT)

    def _add_split(self, dirname: str, labels: bool, curated: bool) -> None:
        image_dir = self.root / dirname
        if not image_dir.is_dir():
            raise root_error("COCO", self.root, f"missing directory {image_dir}", LAYOUT)
        images = _list_stems(image_dir, IMAGE_EXTENSIONS)
        if not labels:
            self._images += [image_dir / images[s] for s in sorted(images)]
            return
        label_dir = self.root / LABEL_DIR / dirname
        if not label_dir.is_dir():
            raise root_error("COCO", self.root, f"missing label directory {label_dir}", LAYOUT)
        stems = sorted(images.keys() & _list_stems(label_dir, (".png",)).keys())
        if curated:
            stems = self._restrict_to_curated(dirname, stems)
        self._images += [image_dir / images[s] for s in stems]
        self._labels += [label_dir / f"{s}.png" for s in stems]

    def _restrict_to_curated(self, dirname: str, stems: list[str]) -> list[str]:
        path = self.root / CURATED_DIR / dirname / CURATED_FILE
        if not path.is_file():
            warnings.warn(
                f"COCO curated list {path} not found; evaluating on all {len(stems)} "
                f"labelled {dirname} images instead of the IIC curated subset",
                stacklevel=4,
            )
            return stems
        wanted = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        available = set(stems)
        missing = [s for s in wanted if s not in available]
        if missing:
            # A partial download would silently shrink the benchmark; fail loudly instead.
            raise root_error(
                "COCO",
                self.root,
                f"{len(missing)} image(s) of the curated list {path} have no image or label "
                f"map (first: {missing[0]})",
                LAYOUT,
            )
        return sorted(set(wanted))

    def __len__(self) -> int:
        return len(self._images)

    def key(self, index: int) -> str:
        """The image path relative to the root, e.g. "train2017/000000000009.jpg"."""
        return self._images[index].relative_to(self.root).as_posix()

    def path(self, index: int) -> Path:
        return self._images[index]

    def load_image(self, index: int) -> np.ndarray:
        return load_rgb(self._images[index])

    def label_path(self, index: int) -> Path | None:
        return self._labels[index] if self.has_labels else None

    def load_label(self, index: int) -> np.ndarray:
        """COCO-Stuff-27 label map (H, W) int64; unlabeled pixels are IGNORE_INDEX."""
        if not self.has_labels:
            return super().load_label(index)
        fine = load_label_png(self._labels[index])
        coarse = np.full(fine.shape, IGNORE_INDEX, dtype=np.int64)
        known = (fine >= 0) & (fine < len(FINE_TO_COARSE))
        coarse[known] = FINE_TO_COARSE[fine[known]]
        return coarse
