"""The D3SSL inputs figure: what `vice.data.region_aug` makes of one sample's views.

One row of five tiles, each with the pooled regions' boundaries in white:
view a | its cut-out (de-coupling) | view b with the pasted square outlined in gold at its
source | the small cut copy of view b (nearest-neighbour up to the tile) | the paste on its
partner background with the square outlined in cyan at its new place (both outlines bound the
square's pooled pixels). Captions give the share of view a cut and the paste's shift (dy, dx).

Shapes: S view side, s small side, T tile side.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

from vice.data.region_aug import RegionSample
from vice.viz.views_figure import _denormalise, boundaries

SOURCE_COLOUR = (255, 215, 0)  # the pasted square where it came from
TARGET_COLOUR = (0, 200, 255)  # ... and where it went
PAD = 8
CAPTION = 16


def _tile(view_3ss: torch.Tensor, ids_ss: torch.Tensor, tile: int, mean, std) -> Image.Image:
    rgb = _denormalise(view_3ss, mean, std)
    edge = boundaries(ids_ss.numpy()) & (ids_ss.numpy() >= 0)
    rgb[edge] = 255
    return Image.fromarray(rgb).resize((tile, tile), Image.NEAREST)


def _cut_share(view_3SS: torch.Tensor, cut_3SS: torch.Tensor) -> float:
    """The share of the view's pixels the cut-out changed."""
    return float((view_3SS != cut_3SS).any(0).float().mean())


def _square(ids_SS: torch.Tensor) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) inclusive bounds of the pixels with id >= 0, or None."""
    ys, xs = (ids_SS >= 0).nonzero(as_tuple=True)
    if len(ys) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def render_region_figure(
    views_VCSS: torch.Tensor,
    ids_VSS: torch.Tensor,
    region: RegionSample,
    mean: list[float],
    std: list[float],
    tile: int = 200,
) -> Image.Image:
    """The figure of one sample's D3SSL inputs (`region`, made from its views and ids)."""
    size = views_VCSS.shape[-1]
    a, b = region.a, region.b
    tiles = [
        (_tile(views_VCSS[a], ids_VSS[a], tile, mean, std), f"view {a}"),
        (_tile(region.cut_3SS, region.cut_ids_SS, tile, mean, std),
         f"cut-out, {_cut_share(views_VCSS[a], region.cut_3SS):.0%} grey"),
        (_tile(views_VCSS[b], ids_VSS[b], tile, mean, std), f"view {b}"),
        (_tile(region.small_3ss, region.small_ids_ss, tile, mean, std),
         f"small copy {region.small_3ss.shape[-1]} px"),
        (_tile(region.paste_3SS, region.paste_ids_SS, tile, mean, std),
         f"paste, shift {tuple(region.shift_2.tolist())}"),
    ]  # fmt: skip
    fig = Image.new("RGB", (PAD + 5 * (tile + PAD), 2 * PAD + tile + CAPTION), (24, 24, 24))
    draw = ImageDraw.Draw(fig)
    scale = tile / size
    for n, (img, caption) in enumerate(tiles):
        x = PAD + n * (tile + PAD)
        fig.paste(img, (x, PAD))
        draw.text((x, PAD + tile + 2), caption, fill=(230, 230, 230))
    for n, ids, colour in ((2, region.source_ids_SS, SOURCE_COLOUR),
                           (4, region.paste_ids_SS, TARGET_COLOUR)):  # fmt: skip
        box = _square(ids)
        if box is not None:
            x = PAD + n * (tile + PAD)
            x0, y0, x1, y1 = box
            rect = [x + x0 * scale, PAD + y0 * scale, x + (x1 + 1) * scale - 1,
                    PAD + (y1 + 1) * scale - 1]  # fmt: skip
            draw.rectangle(rect, outline=colour, width=2)
    return fig


def region_figure_of(sample, mean: list[float], std: list[float]) -> Image.Image:
    """The figure of a ViceSample or TwoCropSample that carries its D3SSL inputs."""
    if getattr(sample, "region", None) is None:
        raise ValueError("the sample carries no D3SSL inputs: build it with region_views")
    views = getattr(sample, "views_VCSS", None)
    if views is None:
        views = sample.views_2CSS
        ids = torch.zeros((2, *views.shape[-2:]), dtype=torch.int64)
    else:
        ids = sample.ids_VSS
    return render_region_figure(views, ids, sample.region, mean, std)
