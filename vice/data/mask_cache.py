"""On-disk cache of post-processed foreground masks, shared safely by loader workers and nodes.

The pattern of `vice.data.superpixel_cache`: an entry is keyed by every file the mask is
computed from (path, size, mtime: the image, and the saliency map or foreground file where the
prior reads one), the mask's shape, the parameters (every MaskPriorConfig field but cache_dir,
the prior's name among them, plus what the prior itself depends on) and an algorithm version,
so an edited file, a new setting or another prior never reads a stale or foreign entry.
Writers use a private temporary file in the destination directory and `os.replace` it into
place: readers see either no entry or a whole one. A skipped image (too little mask) is cached
as such, so it is not recomputed every epoch either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vice.data.npz_entries import entry_key, entry_path, write_entry

# Bumped whenever a prior or the post-processing changes output for the same parameters, so
# entries written by an older version are never mistaken for current ones.
ALGORITHM_VERSION = 1


class MaskCache:
    """Directory of bit-packed bool masks: `<dir>/<2 hex>/<sha256>.npz`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def key(
        self, files: Sequence[str | Path], shape: tuple[int, int], params: dict[str, Any]
    ) -> str:
        """The entry name of the mask computed from `files` at `shape` under `params`.

        `params` must be JSON-serialisable and hold everything but the files that the mask
        depends on (the prior's name included).
        """
        return entry_key(ALGORITHM_VERSION, files, shape, params)

    def _entry(self, key: str) -> Path:
        return entry_path(self.directory, key)

    def load(self, key: str) -> tuple[bool, np.ndarray | None]:
        """(found, mask): mask is None for a cached skip; (False, None) when there is no entry."""
        try:
            with np.load(self._entry(key)) as data:
                if bool(data["skip"]):
                    return True, None
                h, w = (int(v) for v in data["shape"])
                mask_HW = np.unpackbits(data["bits"], count=h * w).reshape(h, w).astype(bool)
                return True, mask_HW
        except (OSError, ValueError, KeyError, EOFError):
            # Missing, or damaged by something outside our atomic writes: recompute.
            return False, None

    def store(self, key: str, mask_HW: np.ndarray | None) -> None:
        """Writes `mask_HW` (bool (H, W), or None for a skipped image) atomically."""
        if mask_HW is None:
            arrays = {
                "skip": np.True_,
                "shape": np.zeros(2, np.int64),
                "bits": np.zeros(0, np.uint8),
            }
        else:
            mask_HW = np.asarray(mask_HW, dtype=bool)
            arrays = {
                "skip": np.False_,
                "shape": np.asarray(mask_HW.shape, np.int64),
                "bits": np.packbits(mask_HW.ravel()),  # 8x smaller than uint8
            }
        write_entry(self._entry(key), **arrays)

    def get_or_compute(
        self,
        files: Sequence[str | Path],
        shape: tuple[int, int],
        params: dict[str, Any],
        compute: Callable[[], np.ndarray | None],
    ) -> np.ndarray | None:
        """The cached mask (or skip) for (files, shape, params), computed and stored on a miss."""
        key = self.key(files, shape, params)
        found, mask_HW = self.load(key)
        if found and (mask_HW is None or mask_HW.shape == tuple(shape)):
            self.hits += 1
            return mask_HW
        self.misses += 1
        mask_HW = compute()
        self.store(key, mask_HW)
        return mask_HW
