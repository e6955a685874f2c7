"""The on-disk entries the region and mask caches share: content-addressed `.npz` files
written atomically, so loader workers and nodes can share one directory safely.

An entry's name is the SHA-256 of everything its content depends on: each source file's
resolved path, size and mtime (an edited file never reads a stale entry), the output shape,
the parameters and the cache's algorithm version. Writers use a private temporary file in
the destination directory and `os.replace` it into place: readers see either no entry or a
whole one, and concurrent writers of one entry race to an identical result.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def entry_key(
    version: int, files: Sequence[str | Path], shape: tuple[int, ...], params: dict[str, Any]
) -> str:
    """The entry name (hex SHA-256) of what `files` at `shape` under `params` give."""
    stats = []
    for path in files:
        stat = os.stat(path)
        stats.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps([version, stats, list(shape), params], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def entry_path(directory: Path, key: str) -> Path:
    """`<directory>/<2 hex>/<key>.npz`: 256 subdirectories keep listings short."""
    return directory / key[:2] / f"{key}.npz"


def write_entry(entry: Path, **arrays: np.ndarray) -> None:
    """Writes the arrays to `entry` (compressed `.npz`) atomically."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=f".{entry.stem[:8]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, entry)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
