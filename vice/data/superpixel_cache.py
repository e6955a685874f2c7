"""On-disk cache of region id maps, shared safely by loader workers and nodes.

Entries are keyed by the file the map is computed from (path, size, mtime: the image, or the
instance map for ground-truth regions), the map's shape and every SuperpixelConfig parameter,
the region source's name (`method`) included, so an edited file, a new setting or another
source never reads a stale or foreign entry. Writers use a private
temporary file in the destination directory and `os.replace` it into place: readers see either
no entry or a whole one, and concurrent writers of the same entry simply race to an identical
result.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from vice.config import SuperpixelConfig
from vice.data.npz_entries import entry_path, write_entry

# Bumped whenever the superpixel computation changes output for the same parameters, so
# entries written by an older version are never mistaken for current ones.
ALGORITHM_VERSION = 2


class SuperpixelCache:
    """Directory of compressed id maps: `<dir>/<2 hex>/<sha256>.npz`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def key(self, path: str | Path, shape: tuple[int, int], cfg: SuperpixelConfig) -> str:
        """The entry name of the map computed from file `path` at `shape` under `cfg`."""
        stat = os.stat(path)
        # cfg.method is one of the params: slic, opencv_slic, grid and gt never share entries.
        params = {k: v for k, v in asdict(cfg).items() if k != "cache_dir"}
        # This blob, not npz_entries.entry_key's: entries written by earlier versions of vice
        # stay valid (tests/data/test_superpixel_cache.py::test_slic_keys_are_unchanged).
        blob = json.dumps(
            [ALGORITHM_VERSION, str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns,
             list(shape), params],
            sort_keys=True,
        )  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()

    def _entry(self, key: str) -> Path:
        return entry_path(self.directory, key)

    def load(self, key: str) -> np.ndarray | None:
        entry = self._entry(key)
        try:
            with np.load(entry) as data:
                return data["ids"].astype(np.int32)
        except (OSError, ValueError, KeyError, EOFError):
            # Missing, or damaged by something outside our atomic writes: recompute.
            return None

    def store(self, key: str, ids_HW: np.ndarray) -> None:
        # uint16 halves the size; SLIC at 20 px never comes near 65535 segments per image.
        small = ids_HW.astype(np.uint16) if ids_HW.max(initial=0) < 65535 else ids_HW
        write_entry(self._entry(key), ids=small)

    def get_or_compute(
        self,
        path: str | Path,
        shape: tuple[int, int],
        cfg: SuperpixelConfig,
        compute: Callable[[], np.ndarray],
    ) -> np.ndarray:
        """Returns the cached map for (file, shape, cfg), computing and storing it on a miss."""
        key = self.key(path, shape, cfg)
        ids = self.load(key)
        if ids is not None and ids.shape == tuple(shape):
            self.hits += 1
            return ids
        self.misses += 1
        ids = compute()
        self.store(key, ids)
        return ids
