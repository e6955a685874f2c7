import re

import numpy as np
import pytest
from PIL import Image

import vice.data.mask_priors as mask_priors
from vice.config import DataConfig, MaskPriorConfig, SuperpixelConfig
from vice.data.datasets.base import ImageSource
from vice.data.datasets.testbed import TestbedSource
from vice.data.mask_cache import MaskCache
from vice.data.mask_priors import (
    MASK_PRIORS,
    check_mask_prior,
    compute_mask,
    load_saliency_png,
    otsu_threshold,
    postprocess,
    saliency_map,
)


class TinySource(ImageSource):
    """Procedural images with an optional 4 x 6 foreground."""

    def __init__(self, foreground: bool = True, length: int = 2) -> None:
        self.foreground = foreground
        self.length = length

    def __len__(self) -> int:
        return self.length

    def key(self, index: int) -> str:
        return f"tiny/{index}"

    def load_image(self, index: int) -> np.ndarray:
        return np.full((4, 6, 3), 100, np.uint8)

    @property
    def has_foreground(self) -> bool:
        return self.foreground

    def load_foreground(self, index: int) -> np.ndarray:
        fg = np.zeros((4, 6), bool)
        fg[1:3, 2:5] = True
        return fg


class FileSource(ImageSource):
    """Images read from explicit files (their size and name are what the `files` prior uses)."""

    def __init__(self, paths) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def key(self, index: int) -> str:
        return str(self.paths[index])

    def path(self, index: int):
        return self.paths[index]

    def load_image(self, index: int) -> np.ndarray:
        return np.asarray(Image.open(self.paths[index]).convert("RGB"))


def _write_image(path, h, w):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(path)
    return path


def _write_map(path, values_HW):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(values_HW, np.uint8)).save(path)
    return path


def _files_cfg(root, directory="saliency", **prior) -> DataConfig:
    return DataConfig(
        dataset="folder",
        root=str(root),
        mask_prior=MaskPriorConfig(source="files", directory=str(directory), **prior),
    )


def _files_setup(tmp_path, sizes=((8, 10), (6, 6)), map_sizes=None):
    """Images a.png, b.png, ... of `sizes` (H, W) and maps of `map_sizes` (default: the same)."""
    paths = [
        _write_image(tmp_path / "images" / f"{chr(97 + i)}.png", *hw) for i, hw in enumerate(sizes)
    ]
    for path, hw in zip(paths, map_sizes or sizes, strict=True):
        if hw is not None:
            _write_map(tmp_path / "saliency" / f"{path.stem}.png", np.full(hw, 200))
    return FileSource(paths), _files_cfg(tmp_path)


# --- postprocess ------------------------------------------------------------------------------


def test_postprocess_drops_small_components_and_keeps_others_exactly():
    map_HW = np.zeros((20, 20), np.float32)  # 400 px: 1 % = 4 px
    map_HW[0, 0:3] = 0.9  # 3 px: dropped
    map_HW[5:7, 5:7] = 0.6  # 4 px: kept (not smaller than 1 %)
    map_HW[10, 10] = map_HW[11, 11] = map_HW[12, 12] = map_HW[13, 13] = 1.0  # 8-connected: kept
    map_HW[15:20, 15:20] = 0.8  # 25 px: kept
    map_HW[0, 19] = 0.5  # not > threshold
    mask = postprocess(map_HW, MaskPriorConfig())
    assert mask.dtype == bool and mask.shape == (20, 20)
    assert int(mask.sum()) == 4 + 4 + 25
    assert not mask[0, 0:3].any() and not mask[0, 19]
    assert mask[5:7, 5:7].all() and mask[13, 13] and mask[15:20, 15:20].all()


def test_postprocess_skips_images_under_min_area():
    map_HW = np.zeros((20, 20), np.float32)
    map_HW[0, 0:3] = 1.0  # 3 px < 1 %: dropped, nothing left
    assert postprocess(map_HW, MaskPriorConfig()) is None
    map_HW[5:7, 5:7] = 1.0  # 4 px = 1 %: kept
    assert int(postprocess(map_HW, MaskPriorConfig()).sum()) == 4
    assert postprocess(map_HW, MaskPriorConfig(min_area=0.02)) is None  # 4 < 8 px
    assert postprocess(np.zeros((20, 20), np.float32), MaskPriorConfig()) is None


def test_postprocess_threshold_and_no_component_filter():
    map_HW = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    mask = postprocess(map_HW, MaskPriorConfig(threshold=0.25, min_component=0.0))
    assert int(mask.sum()) == int((map_HW > 0.25).sum()) == 75
    full = postprocess(np.ones((10, 10), np.float32), MaskPriorConfig())
    assert full.all()


# --- gt -----------------------------------------------------------------------------------


def test_gt_prior_resizes_by_nearest_neighbour():
    source = TinySource()
    img = np.zeros((8, 12, 3), np.uint8)
    map_HW = MASK_PRIORS["gt"](source, 0, img, DataConfig())
    assert map_HW.dtype == np.float32 and map_HW.shape == (8, 12)
    expected = np.repeat(np.repeat(source.load_foreground(0), 2, 0), 2, 1)
    np.testing.assert_array_equal(map_HW, expected.astype(np.float32))
    mask = compute_mask(source, 0, img, DataConfig(mask_prior=MaskPriorConfig(source="gt")))
    np.testing.assert_array_equal(mask, expected)


def test_gt_on_a_source_without_foreground_names_key_and_fix():
    cfg = DataConfig(mask_prior=MaskPriorConfig(source="gt"))
    with pytest.raises(ValueError) as err:
        check_mask_prior(TinySource(foreground=False), cfg)
    text = str(err.value)
    assert text.startswith("invalid config value data.mask_prior.source='gt': ")
    assert "the TinySource data set has no ground-truth foreground masks" in text
    assert "data.mask_prior.source=superpixel_saliency" in text and "files" in text
    with pytest.raises(ValueError, match="has no ground-truth foreground"):
        compute_mask(TinySource(foreground=False), 0, np.zeros((4, 6, 3), np.uint8), cfg)
    check_mask_prior(TinySource(), cfg)  # passes


def test_gt_error_names_the_registered_data_set():
    class NoForeground(TestbedSource):
        has_foreground = False

    source = NoForeground(length=1)
    with pytest.raises(ValueError, match="the NoForeground data set"):
        check_mask_prior(source, DataConfig(mask_prior=MaskPriorConfig(source="gt")))
    from vice.data.datasets.folder import FolderSource

    assert "data.dataset='folder'" in str(mask_priors._no_foreground(object.__new__(FolderSource)))


def test_unknown_prior():
    cfg = DataConfig()
    cfg.mask_prior.source = "basnet"
    with pytest.raises(ValueError, match=r"data\.mask_prior\.source='basnet': one of \['gt'"):
        compute_mask(TinySource(), 0, np.zeros((4, 6, 3), np.uint8), cfg)
    with pytest.raises(ValueError, match=r"data\.mask_prior\.source='basnet'"):
        check_mask_prior(TinySource(), cfg)


# --- files --------------------------------------------------------------------------------


def test_load_saliency_png_scales_by_255_and_takes_the_first_channel(tmp_path):
    gray = _write_map(tmp_path / "g.png", [[0, 51], [255, 102]])
    np.testing.assert_allclose(load_saliency_png(gray), [[0, 0.2], [1, 0.4]], atol=1e-6)
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = [[255, 0], [51, 0]]
    rgb[..., 1] = 7
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_allclose(load_saliency_png(tmp_path / "c.png"), [[1, 0], [0.2, 0]], atol=1e-6)
    Image.fromarray(np.full((2, 2), 65535, np.uint16)).save(tmp_path / "w.png")
    np.testing.assert_allclose(load_saliency_png(tmp_path / "w.png"), np.ones((2, 2)))


def test_files_prior_reads_and_resizes_to_the_image_passed(tmp_path):
    source, cfg = _files_setup(tmp_path, sizes=((4, 4),))
    _write_map(tmp_path / "saliency" / "a.png", [[0, 0, 255, 255]] * 4)  # right half on
    native = MASK_PRIORS["files"](source, 0, np.zeros((4, 4, 3), np.uint8), cfg)
    np.testing.assert_array_equal(native, [[0, 0, 1, 1]] * 4)
    big = MASK_PRIORS["files"](source, 0, np.zeros((8, 16, 3), np.uint8), cfg)
    assert big.shape == (8, 16) and big.dtype == np.float32
    assert big.min() >= 0 and big.max() <= 1
    np.testing.assert_array_equal(big[:, :6], 0)  # bilinear: a ramp between the halves
    np.testing.assert_array_equal(big[:, 10:], 1)
    assert 0 < big[0, 7] < big[0, 8] < 1
    mask = compute_mask(source, 0, np.zeros((8, 16, 3), np.uint8), cfg)
    np.testing.assert_array_equal(mask, big > 0.5)


def test_files_directory_absolute_or_under_root(tmp_path):
    source, cfg = _files_setup(tmp_path)
    check_mask_prior(source, cfg)
    absolute = _files_cfg("/nonexistent-root", directory=tmp_path / "saliency")
    check_mask_prior(source, absolute)
    no_root = _files_cfg(tmp_path)
    no_root.root = None
    with pytest.raises(ValueError) as err:
        check_mask_prior(source, no_root)
    assert str(err.value) == (
        "invalid config value data.mask_prior.directory='saliency': a relative directory is "
        "read under data.root, which is not set; set data.root, or "
        "data.mask_prior.directory to an absolute path"
    )


def test_files_missing_directory_names_key_path_and_fix(tmp_path):
    source, _ = _files_setup(tmp_path)
    cfg = _files_cfg(tmp_path, directory="maps")
    with pytest.raises(ValueError) as err:
        check_mask_prior(source, cfg)
    assert str(err.value) == (
        "invalid config value data.mask_prior.directory='maps': the saliency map directory "
        f"'{tmp_path / 'maps'}' does not exist; write one <image stem>.png per image there, "
        "or set data.mask_prior.directory to the directory that holds them (absolute, or "
        "relative to data.root)"
    )


def test_files_on_a_procedural_source_names_the_data_set(tmp_path):
    cfg = _files_cfg(tmp_path)
    with pytest.raises(ValueError) as err:
        check_mask_prior(TestbedSource(length=2), cfg)
    assert str(err.value) == (
        "invalid config value data.mask_prior.source='files': data.dataset='testbed' is "
        "procedural (no image files to name saliency maps after); use "
        "data.mask_prior.source=gt or superpixel_saliency"
    )


def test_files_missing_maps_are_counted_and_named(tmp_path):
    sizes = [(4, 4)] * 8
    source, cfg = _files_setup(tmp_path, sizes=sizes, map_sizes=[None] * 7 + [(4, 4)])
    with pytest.raises(ValueError) as err:
        check_mask_prior(source, cfg)
    directory = tmp_path / "saliency"
    assert str(err.value) == (
        "invalid config value data.mask_prior.directory='saliency': 7 of 8 images have no "
        f"saliency map in '{directory}' (a.png, b.png, c.png, d.png, e.png, ...); e.g. image "
        f"'{source.paths[0]}' expects '{directory / 'a.png'}'. Write one <image stem>.png "
        "per image there, or set data.mask_prior.directory to the directory that holds them"
    )
    with pytest.raises(FileNotFoundError) as err:
        compute_mask(source, 0, np.zeros((4, 4, 3), np.uint8), cfg)
    assert str(err.value) == (
        f"no saliency map for image '{source.paths[0]}': expected '{directory / 'a.png'}'; "
        "write one <image stem>.png per image there, or set data.mask_prior.directory to the "
        "directory that holds them"
    )


def test_files_wrong_size_names_both_files_and_sizes(tmp_path):
    source, cfg = _files_setup(tmp_path, sizes=((8, 10), (6, 6)), map_sizes=((5, 10), (6, 6)))
    expected = (
        f"saliency map '{tmp_path / 'saliency' / 'a.png'}' is 10x5 (W x H) but its image "
        f"'{source.paths[0]}' is 10x8: it is another image's map, or it was resized; write "
        "each map at its image's native size, named <image stem>.png, or set "
        "data.mask_prior.directory to the directory of the matching maps"
    )
    with pytest.raises(ValueError) as err:
        check_mask_prior(source, cfg)
    assert str(err.value) == expected
    # The size is checked against the native image, not the (resized) image passed in.
    with pytest.raises(ValueError) as err:
        compute_mask(source, 0, np.zeros((5, 10, 3), np.uint8), cfg)
    assert str(err.value) == expected


def test_files_wrong_size_of_any_map_is_found_before_training(tmp_path):
    """Not only the first pair: a later map of another size fails the check, and several are
    counted."""
    sizes = ((8, 10), (6, 6), (4, 4), (5, 7))
    source, cfg = _files_setup(tmp_path, sizes=sizes, map_sizes=(*sizes[:3], (7, 5)))
    with pytest.raises(ValueError) as err:
        check_mask_prior(source, cfg)
    assert str(err.value).startswith(
        f"saliency map '{tmp_path / 'saliency' / 'd.png'}' is 5x7 (W x H) but its image "
        f"'{source.paths[3]}' is 7x5"
    )
    source, cfg = _files_setup(
        tmp_path / "two", sizes=sizes, map_sizes=((8, 8), *sizes[1:3], (7, 5))
    )
    with pytest.raises(ValueError) as err:
        check_mask_prior(source, cfg)
    assert str(err.value).startswith(
        "2 of 4 saliency maps differ in size from their images; the first: saliency map "
        f"'{tmp_path / 'two' / 'saliency' / 'a.png'}' is 8x8 (W x H)"
    )


def test_files_images_sharing_a_stem_are_refused(tmp_path):
    a = _write_image(tmp_path / "x" / "a.png", 4, 4)
    b = _write_image(tmp_path / "y" / "a.jpg", 4, 4)
    _write_map(tmp_path / "saliency" / "a.png", np.zeros((4, 4)))
    with pytest.raises(ValueError, match=re.escape(f"images '{a}' and '{b}' would share")):
        check_mask_prior(FileSource([a, b]), _files_cfg(tmp_path))


def test_native_size_follows_exif_rotation(tmp_path):
    img = Image.fromarray(np.zeros((4, 10, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: decoded as 10 x 4 (H x W)
    img.save(tmp_path / "r.jpg", exif=exif)
    assert mask_priors.native_size(tmp_path / "r.jpg") == (10, 4)


# --- superpixel_saliency --------------------------------------------------------------------


def test_otsu_threshold_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.2, 0.05, 30), rng.normal(0.7, 0.1, 10)])
    weights = rng.uniform(1, 5, 40)
    best, best_t = -1.0, None
    for t in np.unique(values)[:-1]:
        lo, hi = values <= t, values > t
        w0, w1 = weights[lo].sum(), weights[hi].sum()
        m0, m1 = (
            np.average(values[lo], weights=weights[lo]),
            np.average(values[hi], weights=weights[hi]),
        )
        if w0 * w1 * (m0 - m1) ** 2 > best:
            best, best_t = w0 * w1 * (m0 - m1) ** 2, t
    t = otsu_threshold(values, weights)
    assert ((values <= t) == (values <= best_t)).all()
    assert otsu_threshold(np.array([0.0, 0.0, 1.0, 1.0]), np.ones(4)) == 0.5


def test_saliency_map_finds_a_central_object_and_ignores_a_uniform_image():
    img = np.full((64, 64, 3), (90, 120, 90), np.uint8)
    img[20:44, 16:48] = (220, 40, 40)
    map_HW = saliency_map(img, SuperpixelConfig(region_size=8))
    assert map_HW.dtype == np.float32 and map_HW.shape == (64, 64)
    assert map_HW.min() == 0.0 and map_HW.max() == 1.0
    mask = postprocess(map_HW, MaskPriorConfig())
    truth = np.zeros((64, 64), bool)
    truth[20:44, 16:48] = True
    assert (mask & truth).sum() / (mask | truth).sum() > 0.9
    uniform = saliency_map(np.full((32, 32, 3), 77, np.uint8), SuperpixelConfig(region_size=8))
    np.testing.assert_array_equal(uniform, 0)


def test_saliency_does_not_read_gt_regions():
    img = np.zeros((32, 32, 3), np.uint8)
    img[8:24, 8:24] = 255
    gt_cfg = SuperpixelConfig(method="gt", region_size=8)
    np.testing.assert_array_equal(
        saliency_map(img, gt_cfg), saliency_map(img, SuperpixelConfig(region_size=8))
    )


def _iou(mask, truth):
    if mask is None:  # skipped: scored as an empty mask
        return 0.0
    return float((mask & truth).sum() / (mask | truth).sum())


def test_superpixel_saliency_beats_trivial_masks_on_the_testbed():
    """The measured numbers in `saliency_map`'s docstring: 64 val images at the testbed's own
    sampling scale (conf/data/testbed.yaml: 128 px, 5 px superpixels)."""
    source = TestbedSource(split="val", length=64, size=128, seed=0)
    cfg = DataConfig(
        dataset="testbed",
        superpixels=SuperpixelConfig(region_size=5),
        mask_prior=MaskPriorConfig(source="superpixel_saliency"),
    )
    box = np.zeros((128, 128), bool)
    box[32:96, 32:96] = True  # centred, half the side
    ours, everything, centred = [], [], []
    for i in range(len(source)):
        truth = source.load_foreground(i)
        ours.append(_iou(compute_mask(source, i, source.load_image(i), cfg), truth))
        everything.append(_iou(np.ones_like(truth), truth))
        centred.append(_iou(box, truth))
    ours, everything, centred = np.mean(ours), np.mean(everything), np.mean(centred)
    assert everything == pytest.approx(0.30, abs=0.005)
    assert centred == pytest.approx(0.19, abs=0.005)
    assert ours == pytest.approx(0.37, abs=0.02)
    assert ours > everything + 0.05 and ours > centred + 0.15


# --- compute_mask with the cache --------------------------------------------------------------


def test_compute_mask_caches_file_backed_sources(tmp_path):
    source, cfg = _files_setup(tmp_path, sizes=((8, 8),))
    _write_map(tmp_path / "saliency" / "a.png", np.pad(np.full((4, 4), 255), 2))
    cache = MaskCache(tmp_path / "cache")
    img = np.zeros((8, 8, 3), np.uint8)
    first = compute_mask(source, 0, img, cfg, cache)
    second = compute_mask(source, 0, img, cfg, cache)
    np.testing.assert_array_equal(first, second)
    assert int(second.sum()) == 16 and (cache.hits, cache.misses) == (1, 1)
    # A changed post-processing field is a new entry (and a skip is cached as one).
    skipping = _files_cfg(tmp_path, min_area=0.5)
    assert compute_mask(source, 0, img, skipping, cache) is None
    assert compute_mask(source, 0, img, skipping, cache) is None
    assert (cache.hits, cache.misses) == (2, 2)
    # So is an edited map file.
    _write_map(tmp_path / "saliency" / "a.png", np.full((8, 8), 255))
    assert compute_mask(source, 0, img, cfg, cache).all()
    assert (cache.hits, cache.misses) == (2, 3)


def test_cache_keys_depend_on_prior_fields_and_superpixels(tmp_path):
    source, cfg = _files_setup(tmp_path, sizes=((8, 8),))
    keys = set()
    for prior in (
        MaskPriorConfig(source="files"),
        MaskPriorConfig(source="files", threshold=0.6),
        MaskPriorConfig(source="files", min_component=0.02),
        MaskPriorConfig(source="files", directory=str(tmp_path / "saliency")),
        MaskPriorConfig(source="superpixel_saliency"),
    ):
        files, params = mask_priors._cache_inputs(source, 0, _cfg_with(tmp_path, prior))
        keys.add(MaskCache(tmp_path).key(files, (8, 8), params))
    assert len(keys) == 5
    spx = _cfg_with(tmp_path, MaskPriorConfig(source="superpixel_saliency"))
    spx.superpixels.region_size = 7
    files, params = mask_priors._cache_inputs(source, 0, spx)
    assert params["superpixels"]["region_size"] == 7 and "cache_dir" not in params["mask_prior"]
    assert MaskCache(tmp_path).key(files, (8, 8), params) not in keys
    with_dir = _cfg_with(tmp_path, MaskPriorConfig(source="files", cache_dir="/x"))
    assert mask_priors._cache_inputs(source, 0, with_dir) == mask_priors._cache_inputs(
        source, 0, cfg
    )


def _cfg_with(root, prior: MaskPriorConfig) -> DataConfig:
    return DataConfig(dataset="folder", root=str(root), mask_prior=prior)


def test_procedural_sources_are_never_cached(tmp_path):
    cache = MaskCache(tmp_path / "cache")
    cfg = DataConfig(mask_prior=MaskPriorConfig(source="gt"))
    for _ in range(2):
        mask = compute_mask(TinySource(), 0, np.zeros((4, 6, 3), np.uint8), cfg, cache)
    assert int(mask.sum()) == 6 and (cache.hits, cache.misses) == (0, 0)
    assert not (tmp_path / "cache").exists()


def test_config_validation_uses_this_registry():
    cfg = DataConfig(mask_prior=MaskPriorConfig(source="superpixel_saliency"))
    cfg.validate()
    cfg.mask_prior.source = "basnet"
    with pytest.raises(ValueError, match=r"data\.mask_prior\.source"):
        cfg.validate()


# --- on a VOC tree (the data set MaskContrast trains on) --------------------------------------


def test_voc_saliency_files_match_the_ground_truth_foreground(tmp_path):
    from tests.data.datasets.fixtures import make_voc
    from vice.data.datasets.voc import VOCSource

    root = make_voc(tmp_path / "voc", saliency=True, size=(12, 16))
    source = VOCSource(str(root), split="train")
    # min_area 0: no image is skipped, so every mask can be compared.
    files_cfg = DataConfig(dataset="voc", root=str(root), mask_prior=MaskPriorConfig("files"))
    files_cfg.mask_prior.min_area = 0.0
    gt_cfg = DataConfig(dataset="voc", root=str(root), mask_prior=MaskPriorConfig("gt"))
    gt_cfg.mask_prior.min_area = 0.0
    check_mask_prior(source, files_cfg)
    check_mask_prior(source, gt_cfg)
    cache = MaskCache(tmp_path / "cache")
    for i in range(len(source)):
        img = np.zeros((24, 32, 3), np.uint8)  # the builder's size: twice the native one
        from_files = compute_mask(source, i, img, files_cfg, cache)
        from_gt = compute_mask(source, i, img, gt_cfg, cache)
        np.testing.assert_array_equal(from_files, from_gt)
    assert cache.misses == 2 * len(source)


def test_voc_saliency_files_of_another_size_are_refused(tmp_path):
    from tests.data.datasets.fixtures import make_voc
    from vice.data.datasets.voc import VOCSource

    root = make_voc(tmp_path / "voc", saliency=True, saliency_size=(6, 8), size=(12, 16))
    source = VOCSource(str(root), split="train")
    cfg = DataConfig(dataset="voc", root=str(root), mask_prior=MaskPriorConfig("files"))
    first = source.image_id(0)
    with pytest.raises(ValueError) as err:
        check_mask_prior(source, cfg)
    assert str(err.value).startswith(
        f"{len(source)} of {len(source)} saliency maps differ in size from their images; the "
        f"first: saliency map '{root / 'saliency' / (first + '.png')}' is 8x6 (W x H) but its "
        f"image '{source.path(0)}' is 16x12: it is another image's map, or it was resized"
    )
