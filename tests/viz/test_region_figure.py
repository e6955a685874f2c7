"""The D3SSL inputs figure: five tiles, outlines where the paste came from and went."""

import numpy as np
import pytest
import torch

from tools.show_views import main as show_views
from vice.config import RegionAugConfig
from vice.data.region_aug import build_region_inputs
from vice.viz.region_figure import (
    PAD,
    SOURCE_COLOUR,
    TARGET_COLOUR,
    region_figure_of,
    render_region_figure,
)

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _inputs(size: int = 40):
    g = torch.Generator().manual_seed(0)
    views = torch.randn(2, 3, size, size, generator=g)
    ids = torch.zeros(2, size, size, dtype=torch.int64)
    region = build_region_inputs(
        np.random.default_rng(1), views, ids, 0, 1, torch.zeros(3, size, size), RegionAugConfig()
    )
    return views, ids, region


def test_the_paste_is_outlined_at_its_source_and_at_its_target():
    views, ids, region = _inputs()
    tile = 80
    fig = np.asarray(render_region_figure(views, ids, region, MEAN, STD, tile=tile))
    assert fig.shape == (2 * PAD + tile + 16, PAD + 5 * (tile + PAD), 3)
    scale = tile / 40
    for n, square, colour in ((2, region.source_ids_SS, SOURCE_COLOUR),
                              (4, region.paste_ids_SS, TARGET_COLOUR)):  # fmt: skip
        ys, xs = (square >= 0).nonzero(as_tuple=True)
        corner = fig[PAD + int(ys.min() * scale), PAD + n * (tile + PAD) + int(xs.min() * scale)]
        assert tuple(corner) == colour


def test_a_sample_without_inputs_is_refused():
    class Plain:
        region = None

    with pytest.raises(ValueError, match="carries no D3SSL inputs"):
        region_figure_of(Plain(), MEAN, STD)


def test_show_views_writes_the_region_figure(tmp_path):
    out = show_views(["--dataset", "testbed", "--region", "--out", str(tmp_path / "v.png"),
                      "--short-side", "96", "--view-size", "64", "--region-size", "8"])  # fmt: skip
    assert out.is_file() and (tmp_path / "v_region.png").is_file()
