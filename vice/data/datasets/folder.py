"""Any directory tree of images, for pretraining on unlabelled data of one's own."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vice.data.datasets.base import ImageSource, root_error
from vice.data.image_io import IMAGE_EXTENSIONS, load_rgb

LAYOUT = f"""\
<root>/
  any/nesting/of/folders/image.jpg ...
  (every file whose extension is one of {" ".join(IMAGE_EXTENSIONS)}, any case;
   hidden files and folders, names starting with '.', are skipped)
"""


def find_images(root: Path) -> list[Path]:
    """Image files under `root`, recursively and through symlinks, sorted by relative path.

    Hidden entries are skipped: they are tool metadata (.git, .cache, macOS "._x.jpg"
    AppleDouble files), never data, and the latter would fail to decode.
    """
    found: list[str] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        # A symlink pointing at an ancestor would make followlinks walk forever.
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        # Sorted so that, when two links reach one directory, the same path always wins.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.normpath(os.path.join(rel_dir, name)))
    # Sort on "/"-joined parts so the order does not depend on the platform's separator.
    return [root / rel for rel in sorted(found, key=lambda r: Path(r).parts)]


class FolderSource(ImageSource):
    """Every image under a directory, unlabelled (pretraining only).

    Args:
        root: the directory to scan (recursively; symlinks followed; hidden entries skipped).
        split: accepted so that every source shares one signature, but ignored: the whole
            tree is one split.
    """

    def __init__(self, root: str | None, split: str = "train") -> None:
        del split  # a folder has no splits; see the docstring
        if root is None:
            raise root_error("Folder", "<unset>", "data.root is not set", LAYOUT)
        self.root = Path(root)
        if not self.root.is_dir():
            raise root_error("Folder", self.root, "the directory does not exist", LAYOUT)
        self._images = find_images(self.root)
        if not self._images:
            raise root_error("Folder", self.root, "no image files found", LAYOUT)

    def __len__(self) -> int:
        return len(self._images)

    def key(self, index: int) -> str:
        """The image path relative to the root, "/"-separated."""
        return self._images[index].relative_to(self.root).as_posix()

    def path(self, index: int) -> Path:
        return self._images[index]

    def load_image(self, index: int) -> np.ndarray:
        return load_rgb(self._images[index])
