"""The crops figure (two-crop and mask-crop samples): layout, crop rectangles on the source,
the overlap box and the mask overlay on the views, flipped captions; and `render_views`
writing it for SlotCon and MaskContrast runs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from vice.data.mask_crops import MaskCropSample
from vice.data.two_crops import TwoCropSample
from vice.hydra_schema import register, to_config
from vice.methods.slotcon import SlotConMethod
from vice.pipeline import render_views
from vice.run_dir import RunDir
from vice.viz.crops_figure import (
    FOOTER,
    HEADER,
    MASK_ALPHA,
    OVERLAP_COLOUR,
    PAD,
    render_crops_figure,
    view_caption,
)
from vice.viz.views_figure import VIEW_COLOURS

ROOT = Path(__file__).resolve().parents[2]
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
GREY = 128  # a zero normalised view denormalises to 0.5 * 255
TILE = 64
VIEW = 16  # view side: each view pixel is a 4 x 4 block of a 64 px tile
CAPTION_ROWS = 20  # the caption's band at the top of a view tile


def _two_crop(flips=(False, False), crops=((4, 6, 20, 30), (30, 20, 30, 40))) -> TwoCropSample:
    return TwoCropSample(
        views_2CSS=torch.zeros(2, 3, VIEW, VIEW),
        boxes_24=torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.5, 0.5]]),
        flips_2=torch.tensor(flips),
        crops_24=torch.tensor(crops, dtype=torch.float32),
    )


def _mask_crop(mask0_SS: np.ndarray, flips=(False, False)) -> MaskCropSample:
    masks = np.zeros((2, VIEW, VIEW), dtype=bool)
    masks[0] = mask0_SS
    return MaskCropSample(
        views_2CSS=torch.zeros(2, 3, VIEW, VIEW),
        masks_2SS=torch.from_numpy(masks),
        flips_2=torch.tensor(flips),
        crops_24=torch.tensor([[4, 6, 20, 30], [30, 20, 30, 40]], dtype=torch.float32),
    )


def _figure(sample, img_HW3=None) -> np.ndarray:
    img = np.full((64, 64, 3), 50, np.uint8) if img_HW3 is None else img_HW3
    return np.asarray(render_crops_figure(img, sample, MEAN, STD, title="t", tile=TILE))


def _views_top(source_height: int) -> int:
    return HEADER + source_height + PAD


def _tile(fig: np.ndarray, v: int, source_height: int = 128) -> np.ndarray:
    y, x = _views_top(source_height), PAD + v * (TILE + PAD)
    return fig[y : y + TILE, x : x + TILE]


# ---------------------------------------------------------------------------- layout


@pytest.mark.parametrize("kind", ["two_crops", "mask_crops"])
def test_size_follows_the_panels(kind):
    # A 48 x 96 source: its long side spans two tiles (128 x 64); below it two 64 px views.
    sample = _two_crop() if kind == "two_crops" else _mask_crop(np.eye(VIEW, dtype=bool))
    sample.crops_24 = torch.tensor([[0, 0, 40, 30], [50, 10, 40, 30]], dtype=torch.float32)
    fig = render_crops_figure(np.zeros((48, 96, 3), np.uint8), sample, MEAN, STD, tile=TILE)
    assert fig.size == (2 * TILE + PAD + 2 * PAD, HEADER + 64 + PAD + TILE + 2 * PAD + FOOTER)
    assert fig.size == (152, 190)


def test_other_samples_are_refused_by_type():
    with pytest.raises(TypeError, match="TwoCropSample or MaskCropSample, got dict"):
        render_crops_figure(np.zeros((8, 8, 3), np.uint8), {}, MEAN, STD)


# ---------------------------------------------------------------------------- source panel


@pytest.mark.parametrize("kind", ["two_crops", "mask_crops"])
def test_crop_rectangles_are_drawn_at_the_crops(kind):
    # 64 px source, 64 px tiles: scale 2, the 128 px panel centred at x = (152 - 128) // 2.
    sample = _two_crop() if kind == "two_crops" else _mask_crop(np.eye(VIEW, dtype=bool))
    fig = _figure(sample)
    ox, oy = 12, HEADER
    for v, (x0, y0, w, h) in enumerate(sample.crops_24.int().tolist()):
        colour = VIEW_COLOURS[v]
        left, top, right, bottom = 2 * x0, 2 * y0, 2 * (x0 + w) - 1, 2 * (y0 + h) - 1
        mid_x, mid_y = (left + right) // 2, (top + bottom) // 2
        for px, py in [(left, mid_y), (right, mid_y), (mid_x + 8, top), (mid_x, bottom)]:
            assert tuple(fig[oy + py, ox + px]) == colour, (v, px, py)
        # The outline is 3 px wide, drawn inside the crop: just outside it is the source.
        assert tuple(fig[oy + mid_y, ox + right + 1]) == (50, 50, 50)
        assert tuple(fig[oy + mid_y, ox + left + 3]) == (50, 50, 50)
    assert VIEW_COLOURS[0] != VIEW_COLOURS[1]


# ---------------------------------------------------------------------------- views


def test_overlap_box_is_outlined_in_the_view_coordinates_as_carried():
    tile0, tile1 = _tile(_figure(_two_crop()), 0), _tile(_figure(_two_crop()), 1)
    # View 1's box (0.25 .. 0.75) spans tile pixels 16 .. 47; view 2's (0 .. 0.5) 0 .. 31,
    # its left and top edges drawn over the view's 4 px frame.
    assert tuple(tile0[32, 16]) == OVERLAP_COLOUR
    assert tuple(tile0[32, 47]) == OVERLAP_COLOUR
    assert tuple(tile0[32, 32]) == (GREY, GREY, GREY)
    assert tuple(tile1[31, 24]) == OVERLAP_COLOUR
    assert tuple(tile1[24, 31]) == OVERLAP_COLOUR
    assert tuple(tile1[24, 0]) == OVERLAP_COLOUR  # over the frame's outer half
    assert tuple(tile1[24, 2]) == VIEW_COLOURS[1]
    assert tuple(tile1[40, 0]) == VIEW_COLOURS[1]  # below the box: the frame alone
    assert tuple(tile1[48, 48]) == (GREY, GREY, GREY)


def test_a_flipped_views_box_is_drawn_as_the_batch_carries_it():
    # The batch already mirrors a flipped view's box: the figure draws it as is.
    sample = _two_crop(flips=(True, False))
    sample.boxes_24[0] = torch.tensor([0.5, 0.25, 1.0, 0.75])
    tile0 = _tile(_figure(sample), 0)
    assert tuple(tile0[40, 32]) == OVERLAP_COLOUR
    assert tuple(tile0[40, 16]) == (GREY, GREY, GREY)


def test_mask_overlay_changes_only_masked_pixels():
    mask = np.zeros((VIEW, VIEW), dtype=bool)
    mask[6:14, 6:14] = True  # tile rows / cols 24 .. 55, clear of the caption and the frame
    mask[10, 3] = True  # a lone pixel is all outline
    with_mask, without = _figure(_mask_crop(mask)), _figure(_mask_crop(np.zeros_like(mask)))
    changed_HW = (with_mask != without).any(axis=2)
    expected = np.zeros_like(changed_HW)
    y, x = _views_top(128), PAD
    expected[y : y + TILE, x : x + TILE] = np.kron(mask, np.ones((4, 4), dtype=bool))
    caption = np.zeros_like(changed_HW)
    caption[y : y + CAPTION_ROWS, x : x + TILE] = True  # "mask 26%" against "mask 0%"
    assert np.array_equal(changed_HW & ~caption, expected)
    tile = _tile(with_mask, 0)
    tint = round((1 - MASK_ALPHA) * GREY), round((1 - MASK_ALPHA) * GREY + MASK_ALPHA * 255)
    assert tuple(tile[40, 40]) == (tint[0], tint[1], tint[0])  # inside: translucent
    assert tuple(tile[24, 40]) == (0, 255, 0)  # on the mask's outline
    assert tuple(tile[41, 13]) == (0, 255, 0)


@pytest.mark.parametrize("kind", ["two_crops", "mask_crops"])
def test_flipped_views_say_so_in_their_caption(kind):
    mask = np.zeros((VIEW, VIEW), dtype=bool)
    mask[6:14, 6:14] = True

    def make(flips):
        return _two_crop(flips) if kind == "two_crops" else _mask_crop(mask, flips)

    share = "overlap 25%" if kind == "two_crops" else "mask 25%"
    assert view_caption(make((True, False)), 0) == f"view 1 flipped  {share}"
    assert view_caption(make((True, False)), 1).startswith("view 2  ")
    flipped, plain = _figure(make((True, False))), _figure(make((False, False)))
    changed_HW = (flipped != plain).any(axis=2)
    y, x = _views_top(128), PAD
    assert changed_HW[y : y + CAPTION_ROWS, x : x + TILE].any()
    changed_HW[y : y + CAPTION_ROWS, x : x + TILE] = False
    assert not changed_HW.any()  # only the caption tells: the pixels are the batch's


# ---------------------------------------------------------------------------- render_views


def _config(experiment: str, indices: list[int]):
    register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        overrides = [f"experiment={experiment}", f"figure.indices=[{','.join(map(str, indices))}]"]
        return to_config(compose("config", overrides))


def test_every_sample_builder_has_a_figure():
    from vice.data.builders import SAMPLE_BUILDERS
    from vice.viz.sample_figures import SAMPLE_FIGURES

    assert sorted(SAMPLE_FIGURES) == sorted(SAMPLE_BUILDERS)


def test_render_views_of_vice_draws_its_views_figure(tmp_path):
    """ViCE's builder gets the views figure: the same image the figure module draws itself."""
    from vice.data.datasets import build_source
    from vice.data.pretrain import ViceDataset
    from vice.viz.views_figure import render_views_figure

    cfg = _config("smoke", [1])
    (path,) = render_views(cfg, tmp_path)
    assert path == RunDir(tmp_path).views_figure(1)
    source = build_source(cfg.data)
    dataset = ViceDataset(source, cfg.data, keep_debug=True)
    item = dataset[(cfg.figure.epoch, 1)]
    img, ids = dataset.prepare(item["index"])
    expected = render_views_figure(
        img, ids, item["sample"], cfg.data.views.mean, cfg.data.views.std,
        title=f"{cfg.data.dataset} {source.key(item['index'])}",
    )  # fmt: skip
    with Image.open(path) as im:
        assert im.size == expected.size
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(expected.convert("RGB")))


@pytest.mark.parametrize("experiment", ["slotcon_smoke", "maskcontrast_smoke"])
def test_render_views_writes_one_crops_figure_per_index(experiment, tmp_path):
    cfg = _config(experiment, [0, 3])
    paths = render_views(cfg, tmp_path)
    assert paths == [RunDir(tmp_path).views_figure(0), RunDir(tmp_path).views_figure(3)]
    # 128 px synthetic images, 260 px tiles: a 520 px source panel over two views.
    for p in paths:
        with Image.open(p) as im:
            assert (im.format, im.size) == ("PNG", (544, HEADER + 520 + PAD + 260 + 2 * PAD + 16))


def test_render_views_refuses_an_index_past_the_split(tmp_path):
    cfg = _config("slotcon_smoke", [2000])
    with pytest.raises(ValueError, match=r"figure\.indices: 2000 is past the 2000 images"):
        render_views(cfg, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_render_views_without_a_figure_for_the_builder_logs_and_returns_nothing(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(SlotConMethod, "sample_builder", "some_other_builder")
    with caplog.at_level(logging.INFO, logger="vice.pipeline"):
        assert render_views(_config("slotcon_smoke", [0]), tmp_path) == []
    assert "no views figure for method slotcon" in caplog.text
    assert list(tmp_path.iterdir()) == []


def test_render_views_keeps_vices_views_figure(tmp_path):
    cfg = _config("smoke", [1])
    assert cfg.method.name == "vice"
    assert render_views(cfg, tmp_path) == [RunDir(tmp_path).views_figure(1)]
    with Image.open(RunDir(tmp_path).views_figure(1)) as im:
        assert im.format == "PNG"
        assert im.size != (544, HEADER + 520 + PAD + 260 + 2 * PAD + 16)  # not the crops figure
