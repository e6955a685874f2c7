import os

import numpy as np
import pytest

from tests.data.datasets.fixtures import (
    CITYSCAPES_INSTANCE_IDS,
    make_cityscapes_tree,
    make_coco_tree,
    make_folder_tree,
)
from vice.config import SuperpixelConfig
from vice.data.datasets.base import DatasetRootError
from vice.data.datasets.cityscapes import CityscapesSource
from vice.data.datasets.coco import CocoSource
from vice.data.datasets.folder import FolderSource
from vice.data.datasets.synthetic import SyntheticSource
from vice.data.regions import REGION_SOURCES, check_regions, compute_regions
from vice.data.superpixel_cache import SuperpixelCache
from vice.data.superpixels import (
    grid_superpixels,
    opencv_slic_superpixels,
    relabel_contiguous,
    slic_superpixels,
)
from vice.data.views import standardise

METHODS = ["slic", "opencv_slic", "grid", "gt"]


def _assert_contiguous(ids: np.ndarray, shape: tuple[int, int]) -> None:
    assert ids.dtype == np.int32 and ids.shape == shape
    np.testing.assert_array_equal(np.unique(ids), np.arange(ids.max() + 1))


@pytest.fixture
def city_root(tmp_path):
    # 64 x 96 px: large enough for a few SLIC cells at region_size 16.
    return make_cityscapes_tree(tmp_path / "cityscapes", size=(64, 96))


def test_registry_is_a_plain_dict_of_every_source():
    assert type(REGION_SOURCES) is dict
    assert sorted(REGION_SOURCES) == sorted(METHODS)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("side", [128, 200])
def test_every_source_gives_contiguous_int32_of_the_image_shape(method, side):
    source = SyntheticSource(size=128, length=4)
    img = standardise(source.load_image(2), side, 2048)
    ids = compute_regions(source, 2, img, SuperpixelConfig(method=method))
    _assert_contiguous(ids, (side, side))
    assert ids.max() + 1 >= 2


def test_slic_and_grid_are_the_functions_they_were():
    source = SyntheticSource(size=160, length=3)
    for index in range(3):
        img = standardise(source.load_image(index), 250, 2048)
        cfg = SuperpixelConfig(region_size=14, compactness=7.5, iterations=4, blur=5)
        np.testing.assert_array_equal(
            compute_regions(source, index, img, cfg), slic_superpixels(img, 14, 7.5, 4, 5)
        )
        np.testing.assert_array_equal(
            compute_regions(source, index, img, SuperpixelConfig()), slic_superpixels(img)
        )
        grid = SuperpixelConfig(method="grid", region_size=14)
        np.testing.assert_array_equal(
            compute_regions(source, index, img, grid), grid_superpixels(250, 250, 14)
        )
        ocv = SuperpixelConfig(method="opencv_slic", region_size=14)
        np.testing.assert_array_equal(
            compute_regions(source, index, img, ocv), opencv_slic_superpixels(img, 14)
        )


def test_gt_on_synthetic_is_its_instance_map():
    source = SyntheticSource(size=128, length=30)
    cfg = SuperpixelConfig(method="gt")
    shared = 0
    for index in range(30):
        img, label = source.sample(index)
        instances = source.load_instances(index)
        ids = compute_regions(source, index, img, cfg)
        np.testing.assert_array_equal(ids, relabel_contiguous(instances))
        # Instances refine the semantic map: one class per region, a new region per class.
        n = ids.max() + 1
        lo = np.full(n, 99)
        hi = np.zeros(n, int)
        np.minimum.at(lo, ids.ravel(), label.ravel())
        np.maximum.at(hi, ids.ravel(), label.ravel())
        np.testing.assert_array_equal(lo, hi)
        shared += n > np.unique(label).size  # two objects of one class: two regions
        # Nearest-neighbour resizing of the raw map, computed directly: PIL's NEAREST samples
        # source pixel floor((x + 0.5) * in / out), i.e. a 2x2 repeat up, every odd pixel down.
        up = compute_regions(source, index, standardise(img, 256, 2048), cfg)
        np.testing.assert_array_equal(up, np.repeat(np.repeat(ids, 2, 0), 2, 1))
        down = compute_regions(source, index, standardise(img, 64, 2048), cfg)
        np.testing.assert_array_equal(down, relabel_contiguous(instances[1::2, 1::2]))
    assert shared >= 3  # the data set does draw same-class objects (measured: 17 of 30)


def test_gt_on_cityscapes_reads_instance_ids(city_root):
    source = CityscapesSource(str(city_root), split="train+val")
    assert source.has_instances
    img = source.load_image(1)
    ids = compute_regions(source, 1, img, SuperpixelConfig(method="gt"))
    # Raw ids ranked: stuff and crowd pixels keep one region per class, instances one each.
    ranks = {v: k for k, v in enumerate(sorted(CITYSCAPES_INSTANCE_IDS))}
    expected = np.resize([ranks[v] for v in CITYSCAPES_INSTANCE_IDS], 64 * 96).reshape(64, 96)
    np.testing.assert_array_equal(ids, expected)
    up = compute_regions(source, 1, standardise(img, 128, 2048), SuperpixelConfig(method="gt"))
    np.testing.assert_array_equal(up, np.repeat(np.repeat(expected, 2, 0), 2, 1))


@pytest.mark.parametrize("split", ["all", "test", "train_extra", "train+test"])
def test_cityscapes_instances_only_for_train_and_val(city_root, split):
    source = CityscapesSource(str(city_root), split=split)
    assert not source.has_instances and source.instance_path(0) is None
    with pytest.raises(ValueError, match=r"data.dataset='cityscapes' has no ground-truth"):
        check_regions(source, SuperpixelConfig(method="gt"))


def _gt_error(dataset: str) -> str:
    return (
        "invalid config value data.superpixels.method='gt': "
        f"data.dataset='{dataset}' has no ground-truth instance maps for this split; use "
        "data.superpixels.method=slic, opencv_slic or grid, or a data set with instances "
        "(synthetic, or cityscapes with data.split train, val or train+val)"
    )


def test_gt_without_instances_names_key_data_set_and_fix(tmp_path):
    coco = CocoSource(str(make_coco_tree(tmp_path / "coco")), split="train")
    make_folder_tree(tmp_path / "folder")
    folder = FolderSource(str(tmp_path / "folder"))
    cfg = SuperpixelConfig(method="gt")
    cache = SuperpixelCache(tmp_path / "cache")
    for source, name in [(coco, "coco"), (folder, "folder")]:
        img = source.load_image(0)
        with pytest.raises(ValueError) as plain:
            compute_regions(source, 0, img, cfg)
        with pytest.raises(ValueError) as cached:
            compute_regions(source, 0, img, cfg, cache)
        with pytest.raises(ValueError) as checked:
            check_regions(source, cfg)
        for err in (plain, cached, checked):
            assert str(err.value) == _gt_error(name)
        check_regions(source, SuperpixelConfig(method="opencv_slic"))  # the fix works


def test_check_regions_reads_one_instance_map(city_root):
    source = CityscapesSource(str(city_root), split="train")
    check_regions(source, SuperpixelConfig(method="gt"))
    source.instance_path(0).unlink()
    with pytest.raises(DatasetRootError, match=r"instance map missing: .*_gtFine_instanceIds"):
        check_regions(source, SuperpixelConfig(method="gt"))
    check_regions(source, SuperpixelConfig())  # slic reads no instance map
    with pytest.raises(ValueError, match=r"method='seeds': one of \['slic', 'opencv_slic', "):
        compute_regions(source, 0, source.load_image(0), SuperpixelConfig(method="seeds"))


def _configs() -> dict[str, SuperpixelConfig]:
    return {m: SuperpixelConfig(method=m, region_size=16) for m in METHODS}


def test_cache_round_trips_every_source_without_collisions(city_root, tmp_path):
    source = CityscapesSource(str(city_root), split="train+val")
    img = standardise(source.load_image(0), 128, 2048)  # (128, 192)
    cache = SuperpixelCache(tmp_path / "cache")
    fresh = {m: compute_regions(source, 0, img, cfg) for m, cfg in _configs().items()}
    for m, cfg in _configs().items():
        first = compute_regions(source, 0, img, cfg, cache)
        np.testing.assert_array_equal(first, fresh[m])
    assert (cache.hits, cache.misses) == (0, 4)
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 4  # one entry per source
    for m, cfg in _configs().items():
        again = compute_regions(source, 0, img, cfg, cache)
        assert again.dtype == np.int32
        np.testing.assert_array_equal(again, fresh[m])
    assert (cache.hits, cache.misses) == (4, 4)
    # The maps differ, so a shared entry would have shown above.
    maps = list(fresh.values())
    assert all(not np.array_equal(a, b) for i, a in enumerate(maps) for b in maps[i + 1 :])


def test_cache_keys_name_the_source_and_its_file(city_root, tmp_path):
    source = CityscapesSource(str(city_root), split="train")
    cache = SuperpixelCache(tmp_path / "cache")
    path = source.path(0)
    keys = {cache.key(path, (64, 96), cfg) for cfg in _configs().values()}
    assert len(keys) == 4
    img = source.load_image(0)
    cfg = SuperpixelConfig(method="gt")
    compute_regions(source, 0, img, cfg, cache)
    # gt maps are keyed by the instance map: editing it is a miss, touching the image is not.
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    compute_regions(source, 0, img, cfg, cache)
    assert (cache.hits, cache.misses) == (1, 1)
    inst = source.instance_path(0)
    st = os.stat(inst)
    os.utime(inst, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    compute_regions(source, 0, img, cfg, cache)
    assert (cache.hits, cache.misses) == (1, 2)


def test_procedural_sources_are_not_cached(tmp_path):
    source = SyntheticSource(size=64, length=2)
    cache = SuperpixelCache(tmp_path / "cache")
    for cfg in _configs().values():
        ids = compute_regions(source, 1, source.load_image(1), cfg, cache)
        np.testing.assert_array_equal(ids, compute_regions(source, 1, source.load_image(1), cfg))
    assert (cache.hits, cache.misses) == (0, 0)
    assert not (tmp_path / "cache").exists()
