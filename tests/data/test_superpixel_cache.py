import hashlib
import json
import multiprocessing as mp
import os

import numpy as np
from PIL import Image

from vice.config import SuperpixelConfig
from vice.data.superpixel_cache import SuperpixelCache


def _image(tmp_path, name="a.png", value=10):
    path = tmp_path / name
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)
    return path


def test_miss_then_hit(tmp_path):
    cache = SuperpixelCache(tmp_path / "cache")
    path = _image(tmp_path)
    cfg = SuperpixelConfig()
    calls = []

    def compute():
        calls.append(1)
        return np.arange(20, dtype=np.int32).reshape(4, 5)

    first = cache.get_or_compute(path, (4, 5), cfg, compute)
    second = cache.get_or_compute(path, (4, 5), cfg, compute)
    np.testing.assert_array_equal(first, second)
    assert second.dtype == np.int32
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)


def test_key_changes_with_file_size_mtime_shape_and_params(tmp_path):
    cache = SuperpixelCache(tmp_path / "cache")
    path = _image(tmp_path)
    cfg = SuperpixelConfig()
    base = cache.key(path, (4, 5), cfg)
    assert cache.key(path, (4, 6), cfg) != base
    assert cache.key(path, (4, 5), SuperpixelConfig(compactness=20)) != base
    assert cache.key(path, (4, 5), SuperpixelConfig(method="grid")) != base
    # cache_dir itself is not a parameter of the map
    assert cache.key(path, (4, 5), SuperpixelConfig(cache_dir="/elsewhere")) == base
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.key(path, (4, 5), cfg) != base
    _image(tmp_path, value=10).write_bytes(path.read_bytes() + b"\0")
    assert cache.key(path, (4, 5), cfg) != base


def test_every_region_source_has_its_own_key(tmp_path):
    cache = SuperpixelCache(tmp_path / "cache")
    path = _image(tmp_path)
    methods = ["slic", "opencv_slic", "grid", "gt"]
    keys = [cache.key(path, (4, 5), SuperpixelConfig(method=m)) for m in methods]
    assert len(set(keys)) == len(methods)
    for k, m in enumerate(methods):
        cache.get_or_compute(
            path, (4, 5), SuperpixelConfig(method=m), lambda k=k: np.full((4, 5), k, np.int32)
        )
    for k, key in enumerate(keys):
        np.testing.assert_array_equal(cache.load(key), np.full((4, 5), k))


def test_slic_keys_are_unchanged(tmp_path):
    # Entries written before the region-source registry existed stay valid: same blob, same
    # ALGORITHM_VERSION (fast-slic and the grid give the same maps as then).
    cache = SuperpixelCache(tmp_path / "cache")
    path = _image(tmp_path)
    st = os.stat(path)
    params = {"method": "slic", "region_size": 20, "compactness": 10.0, "iterations": 5}
    blob = json.dumps(
        [2, str(path.resolve()), st.st_size, st.st_mtime_ns, [4, 5], {**params, "blur": 3}],
        sort_keys=True,
    )
    assert cache.key(path, (4, 5), SuperpixelConfig()) == hashlib.sha256(blob.encode()).hexdigest()


def test_corrupt_entry_is_recomputed(tmp_path):
    cache = SuperpixelCache(tmp_path / "cache")
    path = _image(tmp_path)
    cfg = SuperpixelConfig()
    key = cache.key(path, (2, 2), cfg)
    cache.store(key, np.zeros((2, 2), np.int32))
    entry = next((tmp_path / "cache").rglob("*.npz"))
    entry.write_bytes(b"garbage")
    out = cache.get_or_compute(path, (2, 2), cfg, lambda: np.ones((2, 2), np.int32))
    np.testing.assert_array_equal(out, np.ones((2, 2)))
    assert cache.load(key) is not None


def _writer(args):
    directory, path, seed = args
    cache = SuperpixelCache(directory)
    ids = np.arange(10000, dtype=np.int32).reshape(100, 100)
    for _ in range(20):
        cache.get_or_compute(path, (100, 100), SuperpixelConfig(), lambda: ids)
        cache.store(cache.key(path, (100, 100), SuperpixelConfig()), ids)
    return seed


def test_concurrent_writers_leave_one_whole_entry(tmp_path):
    path = _image(tmp_path)
    directory = tmp_path / "cache"
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_writer, [(directory, path, s) for s in range(4)])
    entries = list(directory.rglob("*"))
    files = [e for e in entries if e.is_file()]
    assert len(files) == 1 and files[0].suffix == ".npz"  # no temp files left behind
    cache = SuperpixelCache(directory)
    ids = cache.load(cache.key(path, (100, 100), SuperpixelConfig()))
    np.testing.assert_array_equal(ids, np.arange(10000).reshape(100, 100))
