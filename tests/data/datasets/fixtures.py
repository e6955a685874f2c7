"""Builders of tiny data set trees in the exact on-disk layout of the real data sets.

Images are small random pictures; label maps repeat a known pattern of raw ids so that tests
can assert the exact class ids a source maps them to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

#: Raw COCO-Stuff fine ids written into every COCO label map, and their coarse classes.
COCO_FINE_VALUES = (0, 1, 91, 181, 255, 71, 119, 170)
COCO_COARSE_VALUES = (9, 11, 17, 24, 255, 0, 26, 18)
COCO_STEMS = {
    "train": ("000000000009", "000000000025", "000000000030"),
    "val": ("000000000139", "000000000285"),
    "unlabeled": ("000000000008", "000000000016"),
}
COCO_DIRS = {"train": "train2017", "val": "val2017", "unlabeled": "unlabeled2017"}

#: Raw Cityscapes labelIds written into every gtFine map, and their 27-class ids.
CITYSCAPES_LABEL_IDS = (0, 6, 7, 8, 24, 26, 33, 34, 255)
CITYSCAPES_CLASSES = (255, 255, 0, 1, 17, 19, 26, 255, 255)
#: Raw gtFine instanceIds written into every train/val instance map: void, road, sidewalk,
#: a car crowd (bare labelId 26), two persons (24 * 1000 + k), a car, a bicycle.
CITYSCAPES_INSTANCE_IDS = (0, 7, 8, 26, 24000, 24001, 26000, 33001)
#: split -> city -> number of frames, as in a (very) reduced Cityscapes.
CITYSCAPES_FRAMES = {
    "train": {"bochum": 1, "aachen": 2},
    "val": {"frankfurt": 2},
    "test": {"berlin": 1},
    "train_extra": {"augsburg": 1},
}


def _rng(path: Path) -> np.random.Generator:
    # Seeded by the file name so fixtures are identical from run to run.
    return np.random.default_rng(sum(path.name.encode()))


def write_rgb(path: Path, size: tuple[int, int] = (6, 8), mode: str = "RGB") -> None:
    """Writes a random image of (height, width) `size` in PIL `mode` ("RGB", "L", "RGBA")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    pixels = _rng(path).integers(0, 256, (*size, channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(2) if channels == 1 else pixels, mode).save(path)


def label_pattern(values: tuple[int, ...], size: tuple[int, int]) -> np.ndarray:
    """A (height, width) map that cycles through `values` in raster order."""
    count = size[0] * size[1]
    return np.resize(np.asarray(values, dtype=np.uint8), count).reshape(size)


def write_label(path: Path, values: tuple[int, ...], size: tuple[int, int]) -> None:
    """Writes a single-channel 8-bit PNG label map cycling through `values`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label_pattern(values, size), "L").save(path)


def write_label16(path: Path, values: tuple[int, ...], size: tuple[int, int]) -> None:
    """Writes a 16-bit PNG id map cycling through `values`, as Cityscapes instanceIds are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = size[0] * size[1]
    ids = np.resize(np.asarray(values, dtype=np.uint16), count).reshape(size)
    Image.fromarray(ids).save(path)


def write_truncated_jpeg(path: Path) -> None:
    """Writes the first half of a valid JPEG, as a broken download leaves it."""
    write_rgb(path, size=(32, 32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_coco_tree(
    root: Path,
    stems: dict[str, tuple[str, ...]] | None = None,
    labels: bool = True,
    curated: dict[str, tuple[str, ...]] | None = None,
    size: tuple[int, int] = (6, 8),
) -> Path:
    """Builds COCO 2017 + COCO-Stuff: <root>/{train,val,unlabeled}2017/<id>.jpg and labels.

    Args:
        root: where to build the tree.
        stems: split -> image ids; COCO_STEMS by default.
        labels: also write stuffthingmaps_trainval2017/{train,val}2017/<id>.png.
        curated: split -> ids written to curated/<split dir>/Coco164kFull_Stuff_Coarse_7.txt.
        size: (height, width) of every image and label map.

    The last train image is grayscale, as a few real COCO images are.
    """
    stems = COCO_STEMS if stems is None else stems
    for split, ids in stems.items():
        image_dir = root / COCO_DIRS[split]
        image_dir.mkdir(parents=True, exist_ok=True)
        for i, stem in enumerate(ids):
            gray = split == "train" and i == len(ids) - 1
            write_rgb(image_dir / f"{stem}.jpg", size, "L" if gray else "RGB")
            if labels and split != "unlabeled":
                label = root / "stuffthingmaps_trainval2017" / COCO_DIRS[split] / f"{stem}.png"
                write_label(label, COCO_FINE_VALUES, size)
    for split, ids in (curated or {}).items():
        path = root / "curated" / COCO_DIRS[split] / "Coco164kFull_Stuff_Coarse_7.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{stem}\n" for stem in ids))
    return root


def cityscapes_name(city: str, index: int) -> str:
    """The <city>_<seq>_<frame> prefix of a Cityscapes file."""
    return f"{city}_{index:06d}_{19 + index * 10:06d}"


def make_cityscapes_tree(
    root: Path,
    frames: dict[str, dict[str, int]] | None = None,
    labels: bool = True,
    size: tuple[int, int] = (8, 16),
) -> Path:
    """Builds leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png and gtFine.

    Args:
        root: where to build the tree.
        frames: split -> city -> number of frames; CITYSCAPES_FRAMES by default.
        labels: also write gtFine/<split>/<city>/..._gtFine_{labelIds,color,instanceIds}.png
            and _polygons.json for train, val and test (test maps are all void, as released;
            train/val instanceIds cycle through CITYSCAPES_INSTANCE_IDS).
        size: (height, width) of every image and label map.
    """
    frames = CITYSCAPES_FRAMES if frames is None else frames
    for split, cities in frames.items():
        for city, count in cities.items():
            for i in range(count):
                name = cityscapes_name(city, i)
                write_rgb(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", size)
                if not labels or split == "train_extra":
                    continue
                gt = root / "gtFine" / split / city
                ids = (0,) if split == "test" else CITYSCAPES_LABEL_IDS
                write_label(gt / f"{name}_gtFine_labelIds.png", ids, size)
                instances = (0,) if split == "test" else CITYSCAPES_INSTANCE_IDS
                write_label16(gt / f"{name}_gtFine_instanceIds.png", instances, size)
                # The other gtFine files of the release, which a source must not pick up.
                write_rgb(gt / f"{name}_gtFine_color.png", size)
                (gt / f"{name}_gtFine_polygons.json").write_text(json.dumps({"objects": []}))
    return root


def make_folder_tree(root: Path, outside: Path | None = None) -> list[str]:
    """Builds a folder of mixed images and non-images; returns the expected sorted keys.

    Holds RGB JPEG, grayscale, RGBA, palette and 16-bit PNG, BMP, an upper-case extension,
    plus things a scan must skip: a text file, a hidden folder, an AppleDouble "._" file and a
    symlink loop. With `outside`, an image there is reached through the symlink root/ext.
    """
    write_rgb(root / "a" / "rgb.jpg")
    write_rgb(root / "a" / "b" / "gray.png", mode="L")
    write_rgb(root / "a" / "b" / "rgba.png", mode="RGBA")
    Image.fromarray(np.full((5, 7), 65535, np.uint16)).save(root / "a" / "deep16.png")
    Image.new("P", (7, 5), 3).save(root / "palette.png")
    write_rgb(root / "c" / "pic.bmp")
    write_rgb(root / "UPPER.JPG")
    (root / "notes.txt").write_text("not an image")
    write_rgb(root / ".cache" / "hidden.jpg")
    (root / "a" / "._rgb.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble metadata")
    os.symlink(".", root / "c" / "loop")
    keys = ["UPPER.JPG", "a/b/gray.png", "a/b/rgba.png", "a/deep16.png", "a/rgb.jpg"]
    keys += ["c/pic.bmp", "palette.png"]
    if outside is not None:
        write_rgb(outside / "far.jpg")
        os.symlink(outside, root / "ext")
        keys.insert(keys.index("palette.png"), "ext/far.jpg")
    return keys


#: split -> image ids of the miniature PASCAL VOC 2012 tree (trainval = train + val).
VOC_IDS = {
    "train": ("2007_000032", "2007_000039", "2008_000008"),
    "val": ("2007_000033", "2009_000012"),
}
#: ids of trainaug that only SBD labels (SegmentationClassAug/ has them, SegmentationClass/
#: does not); trainaug = VOC_IDS["train"] + VOC_AUG_ONLY_IDS, as the real list has no val id.
VOC_AUG_ONLY_IDS = ("2008_000123", "2010_000456")


def voc_palette() -> list[int]:
    """The VOC colour map (768 values): index i's RGB spreads i's bits over the top bits."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def voc_maps(image_id: str, size: tuple[int, int] = (12, 16)) -> tuple[np.ndarray, np.ndarray]:
    """The class map and instance map (H, W) uint8 make_voc writes for `image_id`.

    Two objects on background 0, each inside a 1 px void (255) band, as VOC draws them:
    object 1 a 3 x 4 box (rows 2-4, cols 2-5) of class 1 + n % 20, object 2 a 3 x 3 box (rows
    7-9, cols 10-12) of class 15 (person), where n is the id's last digits. Instances: 1 and
    2 for the objects, 0 background, 255 void. Foreground: 21 pixels (class map not in
    {0, 255}).
    """
    classes = np.zeros(size, np.uint8)
    instances = np.zeros(size, np.uint8)
    boxes = ((2, 5, 2, 6), (7, 10, 10, 13))  # rows [y0, y1), cols [x0, x1)
    for k, ((y0, y1, x0, x1), cls) in enumerate(
        zip(boxes, (1 + int(image_id[-4:]) % 20, 15), strict=True), start=1
    ):
        for target, value in ((classes, cls), (instances, k)):
            target[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = 255
            target[y0:y1, x0:x1] = value
    return classes, instances


def make_voc(
    root: Path,
    ids: dict[str, tuple[str, ...]] | None = None,
    trainaug: bool = True,
    aug_labels: bool = True,
    objects: bool = True,
    saliency: bool = False,
    saliency_size: tuple[int, int] | None = None,
    size: tuple[int, int] = (12, 16),
) -> Path:
    """Builds a miniature VOC2012 directory at `root` and returns `root` (pass it as data.root).

    Writes JPEGImages/<id>.jpg (random RGB), SegmentationClass/<id>.png (palette PNGs of
    voc_maps' class map) and ImageSets/Segmentation/{train,val,trainval}.txt for `ids`.

    Args:
        root: the VOC2012 directory to build.
        ids: split -> image ids for "train" and "val"; VOC_IDS by default.
        trainaug: also write the trainaug images and list: train ids + VOC_AUG_ONLY_IDS
            (the latter get a JPEG but no SegmentationClass map).
        aug_labels: with trainaug, write SegmentationClassAug/<id>.png for every trainaug id:
            grayscale PNGs of voc_maps' class map with the void band set to 0 (SBD draws none),
            so tests can tell which directory a label came from.
        objects: write SegmentationObject/<id>.png (palette PNGs of voc_maps' instance map)
            for the train and val ids.
        saliency: write saliency/<id>.png for every image: 8-bit grayscale, 255 on the
            foreground of voc_maps (class map not in {0, 255}), 0 elsewhere.
        saliency_size: (height, width) of the saliency maps, to write them at a size other
            than their image's (nearest resize); None: the image's size.
        size: (height, width) of every image and map.
    """
    ids = VOC_IDS if ids is None else ids
    lists = {"train": list(ids.get("train", ())), "val": list(ids.get("val", ()))}
    lists["trainval"] = lists["train"] + lists["val"]
    release = lists["trainval"]
    every = release + [i for i in VOC_AUG_ONLY_IDS if trainaug]
    if trainaug:
        lists["trainaug"] = lists["train"] + list(VOC_AUG_ONLY_IDS)
    list_dir = root / "ImageSets" / "Segmentation"
    list_dir.mkdir(parents=True, exist_ok=True)
    for name, names in lists.items():
        (list_dir / f"{name}.txt").write_text("".join(f"{i}\n" for i in names))
    for dirname in ("SegmentationClass", "SegmentationObject"):
        (root / dirname).mkdir(parents=True, exist_ok=True)
    for image_id in every:
        write_rgb(root / "JPEGImages" / f"{image_id}.jpg", size)
        classes, instances = voc_maps(image_id, size)
        if image_id in release:
            write_palette_png(root / "SegmentationClass" / f"{image_id}.png", classes)
            if objects:
                write_palette_png(root / "SegmentationObject" / f"{image_id}.png", instances)
        if trainaug and aug_labels and image_id in lists["trainaug"]:
            path = root / "SegmentationClassAug" / f"{image_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.where(classes == 255, 0, classes).astype(np.uint8), "L").save(path)
        if saliency:
            path = root / "saliency" / f"{image_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            fg = Image.fromarray(
                np.where((classes != 0) & (classes != 255), 255, 0).astype(np.uint8)
            )
            if saliency_size is not None:
                fg = fg.resize((saliency_size[1], saliency_size[0]), Image.Resampling.NEAREST)
            fg.save(path)
    if not objects:
        (root / "SegmentationObject").rmdir()
    return root


def write_palette_png(path: Path, ids: np.ndarray) -> None:
    """Writes an id map (H, W) as a palette PNG with the VOC colours, as VOC releases labels.

    The palette matters: Pillow may renumber the indices of a P image without distinct colours
    when it saves one.
    """
    img = Image.fromarray(ids.astype(np.uint8), "P")
    img.putpalette(voc_palette())
    img.save(path)
