import os

import numpy as np

from vice.data.npz_entries import entry_key, entry_path, write_entry


def test_key_follows_files_shape_params_and_version(tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(b"x")
    key = entry_key(1, [f], (4, 5), {"k": 1})
    assert key == entry_key(1, [f], (4, 5), {"k": 1}) and len(key) == 64
    others = {
        entry_key(2, [f], (4, 5), {"k": 1}),
        entry_key(1, [f], (5, 4), {"k": 1}),
        entry_key(1, [f], (4, 5), {"k": 2}),
        entry_key(1, [], (4, 5), {"k": 1}),
    }
    assert key not in others and len(others) == 4
    os.utime(f, ns=(0, 123))  # an edited file (new mtime) never reads the old entry
    assert entry_key(1, [f], (4, 5), {"k": 1}) != key


def test_entries_are_written_whole_under_two_hex_folders(tmp_path):
    entry = entry_path(tmp_path, "ab" + "0" * 62)
    assert entry == tmp_path / "ab" / ("ab" + "0" * 62 + ".npz")
    write_entry(entry, ids=np.arange(6).reshape(2, 3))
    with np.load(entry) as data:
        assert np.array_equal(data["ids"], np.arange(6).reshape(2, 3))
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temporary left
