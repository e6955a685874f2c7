"""The crops figure: what a two-crop sample builder (SlotCon's `two_crops`, MaskContrast's
`mask_crops`) makes of one image.

Top: the source image with each view's crop rectangle (view 1 gold, view 2 cyan, labelled
1 / 2). Bottom: both views as the network sees them (augmented, denormalised, mirrored when
flipped, "flipped" in the caption) with, for a two-crop sample, the overlap box outlined in red
in the view's own coordinates exactly as the batch carries it (so already mirrored for a
flipped view), and for a mask-crop sample the foreground mask tinted green with its outline.

Shapes: H W source, S view side.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from vice.data.mask_crops import MaskCropSample
from vice.data.two_crops import TwoCropSample
from vice.viz.views_figure import VIEW_COLOURS, _denormalise

OVERLAP_COLOUR = (255, 0, 0)
MASK_COLOUR = np.array([0, 255, 0], dtype=np.float32)
MASK_ALPHA = 0.45  # weight of the tint on masked pixels
PAD = 8
HEADER = 22  # title band above the source panel
FOOTER = 16  # legend band below the views


def inner_edge(mask_SS: np.ndarray) -> np.ndarray:
    """Mask pixels with a 4-neighbour outside the mask (or on the border): its outline,
    drawn inside the mask so the overlay touches masked pixels only."""
    padded = np.pad(mask_SS, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask_SS & ~interior


def view_caption(sample: TwoCropSample | MaskCropSample, v: int) -> str:
    """`view <v+1>`, `flipped` if mirrored, and the overlap's or the mask's share of the view."""
    flip = " flipped" if bool(sample.flips_2[v]) else ""
    if isinstance(sample, TwoCropSample):
        x1, y1, x2, y2 = sample.boxes_24[v].tolist()
        return f"view {v + 1}{flip}  overlap {max(0.0, x2 - x1) * max(0.0, y2 - y1):.0%}"
    return f"view {v + 1}{flip}  mask {sample.masks_2SS[v].float().mean().item():.0%}"


def source_scale(height: int, width: int, tile: int) -> float:
    """Source pixels to figure pixels: the source's long side spans two view tiles."""
    return 2 * tile / max(height, width)


def _source_panel(img_HW3: np.ndarray, crops_24: list[list[float]], tile: int) -> Image.Image:
    h, w = img_HW3.shape[:2]
    scale = source_scale(h, w, tile)
    top = Image.fromarray(img_HW3).resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    draw = ImageDraw.Draw(top)
    for v, (x0, y0, cw, ch) in enumerate(crops_24):
        colour = VIEW_COLOURS[v % len(VIEW_COLOURS)]
        # Inclusive corners: the outline lies on the crop's own pixels, not past them.
        rect = [x0 * scale, y0 * scale, (x0 + cw) * scale - 1, (y0 + ch) * scale - 1]
        draw.rectangle(rect, outline=colour, width=3)
        draw.text((rect[0] + 5, rect[1] + 4), str(v + 1), fill=colour)
    return top


def _view_tile(
    sample: TwoCropSample | MaskCropSample,
    v: int,
    mean: list[float],
    std: list[float],
    tile: int,
) -> Image.Image:
    view = _denormalise(sample.views_2CSS[v], mean, std)
    if isinstance(sample, MaskCropSample):
        mask = sample.masks_2SS[v].numpy().astype(bool)
        tinted = view.astype(np.float32)
        tinted[mask] = (1 - MASK_ALPHA) * tinted[mask] + MASK_ALPHA * MASK_COLOUR
        tinted[inner_edge(mask)] = MASK_COLOUR
        view = tinted.round().astype(np.uint8)
    im = Image.fromarray(view).resize((tile, tile), Image.NEAREST)
    d = ImageDraw.Draw(im)
    colour = VIEW_COLOURS[v % len(VIEW_COLOURS)]
    d.rectangle([0, 0, tile - 1, tile - 1], outline=colour, width=4)
    if isinstance(sample, TwoCropSample):
        # Over the frame: an overlap reaching the view's border stays visible there.
        x1, y1, x2, y2 = sample.boxes_24[v].tolist()
        if x2 > x1 and y2 > y1:
            d.rectangle(
                [x1 * tile, y1 * tile, x2 * tile - 1, y2 * tile - 1],
                outline=OVERLAP_COLOUR,
                width=2,
            )
    d.text((6, 6), view_caption(sample, v), fill=colour)
    return im


def render_crops_figure(
    img_HW3: np.ndarray,
    sample: TwoCropSample | MaskCropSample,
    mean: list[float],
    std: list[float],
    title: str = "",
    tile: int = 260,
) -> Image.Image:
    """Composes the figure of one two-crop or mask-crop sample of the uint8 image `img_HW3`.

    Layout: the title band, the source panel (long side 2 * tile) centred, then the two
    tile x tile views side by side, then a legend line.
    """
    if not isinstance(sample, TwoCropSample | MaskCropSample):
        raise TypeError(
            "render_crops_figure draws TwoCropSample or MaskCropSample, "
            f"got {type(sample).__name__}"
        )
    top = _source_panel(img_HW3, sample.crops_24.tolist(), tile)
    tiles = [_view_tile(sample, v, mean, std, tile) for v in range(sample.views_2CSS.shape[0])]

    width = max(top.width, len(tiles) * (tile + PAD) - PAD) + 2 * PAD
    height = HEADER + top.height + PAD + tile + 2 * PAD + FOOTER
    fig = Image.new("RGB", (width, height), (24, 24, 24))
    d = ImageDraw.Draw(fig)
    d.text((PAD, 6), title, fill=(230, 230, 230))
    fig.paste(top, ((width - top.width) // 2, HEADER))
    y = HEADER + top.height + PAD
    for i, t in enumerate(tiles):
        fig.paste(t, (PAD + i * (tile + PAD), y))
    if isinstance(sample, TwoCropSample):
        legend = "red box = the crops' overlap in each view's coordinates (mirrored if flipped)"
    else:
        legend = "green = foreground mask prior in each view (outlined)"
    d.text((PAD, y + tile + 4), legend, fill=(200, 200, 200))
    return fig
