import logging

import numpy as np
import pytest
import torch

from vice.data import pretrain
from vice.data.datasets import build_source
from vice.data.datasets.folder import FolderSource
from vice.data.pretrain import ViceDataset

from .datasets.fixtures import make_folder_tree


def _assert_same(a, b):
    for name in ("views_VCSS", "ids_VSS", "regions_R", "flips_V", "boxes_V3", "masked_VSS"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)


def test_sample_is_pure_function_of_seed_epoch_index(small_cfg):
    a = ViceDataset(build_source(small_cfg), small_cfg)
    b = ViceDataset(build_source(small_cfg), small_cfg)
    b[(0, 5)]  # history must not matter
    _assert_same(a[(1, 3)]["sample"], b[(1, 3)]["sample"])
    assert not torch.equal(a[(1, 3)]["sample"].views_VCSS, a[(2, 3)]["sample"].views_VCSS)
    assert a[(1, 3)]["key"] == (1, 3) and a[7]["key"] == (0, 7)


def test_empty_sample_is_resampled_not_returned(small_cfg, monkeypatch):
    real = pretrain.build_views
    calls = []

    def flaky(rng, img, ids, cfg, keep_debug=False):
        calls.append(1)
        return None if len(calls) <= 3 else real(rng, img, ids, cfg, keep_debug)

    monkeypatch.setattr(pretrain, "build_views", flaky)
    item = ViceDataset(build_source(small_cfg), small_cfg)[(0, 0)]
    assert item["sample"].regions_R.numel() > 0 and len(calls) == 4
    assert item["index"] == 0  # resampled views of the same image first


def test_image_without_targets_falls_back_to_another_image(small_cfg, monkeypatch):
    real = pretrain.build_views
    state = {"first": None}

    def never_for_first(rng, img, ids, cfg, keep_debug=False):
        if state["first"] is None:
            state["first"] = img
        if img is state["first"]:
            return None
        return real(rng, img, ids, cfg, keep_debug)

    monkeypatch.setattr(pretrain, "build_views", never_for_first)
    ds = ViceDataset(build_source(small_cfg), small_cfg)
    item = ds[(0, 2)]
    assert item["index"] != 2 and item["sample"].regions_R.numel() > 0


def test_corrupt_images_are_skipped_and_counted(tmp_path, small_cfg, caplog):
    make_folder_tree(tmp_path)
    bad = [tmp_path / "broken_a.jpg", tmp_path / "broken_b.png"]
    for p in bad:
        p.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole image")
    source = FolderSource(str(tmp_path))
    small_cfg.dataset, small_cfg.root = "folder", str(tmp_path)
    ds = ViceDataset(source, small_cfg)
    keys = [source.key(i) for i in range(len(source))]
    bad_idx = [keys.index(p.name) for p in bad]
    with caplog.at_level(logging.WARNING, logger="vice.data.pretrain"):
        items = [ds[(0, i)] for i in range(len(source))]
    assert sum(it["skipped"] for it in items) == 2  # each file fails once, then is remembered
    assert ds.skipped_total == 2
    assert all(it["index"] not in bad_idx for it in items)
    assert "broken_a.jpg" in caplog.text and "skipping unreadable image" in caplog.text


def test_all_images_unreadable_raises_with_hint(tmp_path, small_cfg):
    for i in range(3):
        (tmp_path / f"x{i}.jpg").write_bytes(b"nope")
    small_cfg.max_resample = 2
    with pytest.raises(RuntimeError, match=r"Check data.root"):
        ViceDataset(FolderSource(str(tmp_path)), small_cfg)[(0, 0)]


def test_superpixel_cache_is_used_for_files(tmp_path, small_cfg):
    make_folder_tree(tmp_path / "imgs")
    small_cfg.superpixels.cache_dir = str(tmp_path / "cache")
    ds = ViceDataset(FolderSource(str(tmp_path / "imgs")), small_cfg)
    first = ds.prepare(0)
    again = ds.prepare(0)
    np.testing.assert_array_equal(first[1], again[1])
    assert (ds.cache.misses, ds.cache.hits) == (1, 1)
