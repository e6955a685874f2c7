import os

import numpy as np
import pytest

from vice.data import mask_cache
from vice.data.mask_cache import MaskCache


def _file(tmp_path, name="a.png", data=b"image"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _mask():
    mask = np.zeros((5, 7), bool)
    mask[1:4, 2:6] = True
    mask[0, 0] = True
    return mask


def test_miss_then_hit_round_trips_the_mask(tmp_path):
    cache = MaskCache(tmp_path / "cache")
    path = _file(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return _mask()

    first = cache.get_or_compute([path], (5, 7), {"t": 0.5}, compute)
    second = cache.get_or_compute([path], (5, 7), {"t": 0.5}, compute)
    np.testing.assert_array_equal(first, _mask())
    np.testing.assert_array_equal(second, _mask())
    assert second.dtype == bool and second.shape == (5, 7)
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)


def test_a_skip_is_cached(tmp_path):
    cache = MaskCache(tmp_path / "cache")
    path = _file(tmp_path)
    calls = []

    def compute():
        calls.append(1)

    assert cache.get_or_compute([path], (5, 7), {}, compute) is None
    assert cache.get_or_compute([path], (5, 7), {}, compute) is None
    assert len(calls) == 1 and (cache.hits, cache.misses) == (1, 1)


def test_key_changes_with_every_file_shape_params_and_version(tmp_path, monkeypatch):
    cache = MaskCache(tmp_path / "cache")
    image, saliency = _file(tmp_path, "a.png"), _file(tmp_path, "a_map.png", b"map")
    base = cache.key([image, saliency], (5, 7), {"threshold": 0.5})
    assert cache.key([image, saliency], (5, 7), {"threshold": 0.5}) == base
    assert cache.key([image], (5, 7), {"threshold": 0.5}) != base
    assert cache.key([image, saliency], (5, 8), {"threshold": 0.5}) != base
    assert cache.key([image, saliency], (5, 7), {"threshold": 0.6}) != base
    st = os.stat(saliency)
    os.utime(saliency, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = cache.key([image, saliency], (5, 7), {"threshold": 0.5})
    assert changed != base
    saliency.write_bytes(b"map!")
    os.utime(saliency, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.key([image, saliency], (5, 7), {"threshold": 0.5}) not in (base, changed)
    before = cache.key([image], (5, 7), {"threshold": 0.5})
    monkeypatch.setattr(mask_cache, "ALGORITHM_VERSION", mask_cache.ALGORITHM_VERSION + 1)
    assert cache.key([image], (5, 7), {"threshold": 0.5}) != before


def test_store_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    cache = MaskCache(tmp_path / "cache")
    key = "ab" + "0" * 62
    cache.store(key, _mask())
    entry = tmp_path / "cache" / "ab" / f"{key}.npz"
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]

    def broken(*args, **kwargs):
        raise OSError("disk full")

    # A failing writer leaves the previous entry whole and no temporary file behind.
    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        cache.store(key, None)
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]
    found, mask = cache.load(key)
    assert found
    np.testing.assert_array_equal(mask, _mask())


def test_damaged_or_missing_entries_are_misses(tmp_path):
    cache = MaskCache(tmp_path / "cache")
    key = "cd" + "1" * 62
    assert cache.load(key) == (False, None)
    entry = tmp_path / "cache" / "cd" / f"{key}.npz"
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"not a zip")
    assert cache.load(key) == (False, None)
    path = _file(tmp_path)
    cache.get_or_compute([path], (5, 7), {}, _mask)
    assert cache.misses == 1


def test_an_entry_of_another_shape_is_recomputed(tmp_path):
    cache = MaskCache(tmp_path / "cache")
    path = _file(tmp_path)
    key = cache.key([path], (5, 7), {})
    cache.store(key, np.ones((2, 2), bool))  # e.g. a hash collision or a foreign writer
    np.testing.assert_array_equal(cache.get_or_compute([path], (5, 7), {}, _mask), _mask())
    assert (cache.hits, cache.misses) == (0, 1)
