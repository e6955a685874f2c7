"""The views figure: what ViCE's sampling makes of one image.

Top: the standardised source with superpixel boundaries and each view's box. Bottom: every
view as the network sees it (augmented, masked pixels are noise), target regions tinted by
region id (same colour = same superpixel in every view), masked superpixels hatched in red.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from vice.data.sample import ViceSample

VIEW_COLOURS = [
    (255, 215, 0),
    (0, 200, 255),
    (255, 80, 200),
    (120, 255, 80),
    (255, 140, 0),
    (160, 120, 255),
    (255, 255, 255),
    (0, 255, 170),
]


def boundaries(ids_HW: np.ndarray) -> np.ndarray:
    """True on pixels whose right or lower neighbour has another id."""
    edge = np.zeros(ids_HW.shape, dtype=bool)
    edge[:, :-1] |= ids_HW[:, :-1] != ids_HW[:, 1:]
    edge[:-1, :] |= ids_HW[:-1, :] != ids_HW[1:, :]
    return edge


def region_palette(n: int, seed: int = 0) -> np.ndarray:
    """n distinct-ish bright colours (n, 3) uint8."""
    rng = np.random.default_rng(seed)
    return (64 + rng.integers(0, 192, (max(n, 1), 3))).astype(np.uint8)


def _denormalise(view_3SS: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    m = torch.tensor(mean)[:, None, None]
    s = torch.tensor(std)[:, None, None]
    rgb = (view_3SS * s + m).clamp(0, 1).permute(1, 2, 0).numpy()
    return (rgb * 255).round().astype(np.uint8)


def render_views_figure(
    img_HW3: np.ndarray,
    ids_HW: np.ndarray,
    sample: ViceSample,
    mean: list[float],
    std: list[float],
    title: str = "",
    tile: int = 260,
) -> Image.Image:
    """Composes the figure; `sample` must come from build_views(..., keep_debug=True)."""
    src = img_HW3.copy()
    src[boundaries(ids_HW)] = (src[boundaries(ids_HW)] * 0.3 + 255 * 0.7).astype(np.uint8)
    boxes = sample.debug["boxes"]
    # Views may extend past the source (crops up to 1.5x the view size): draw on a canvas
    # spanning the source and every box, the source pasted at its offset.
    h, w = src.shape[:2]
    lo_x = min(0.0, *(b.x0 for b in boxes))
    lo_y = min(0.0, *(b.y0 for b in boxes))
    hi_x = max(float(w), *(b.x0 + b.side for b in boxes))
    hi_y = max(float(h), *(b.y0 + b.side for b in boxes))
    scale = 2 * tile / max(hi_x - lo_x, hi_y - lo_y)
    top = Image.new(
        "RGB", (round((hi_x - lo_x) * scale) + 4, round((hi_y - lo_y) * scale) + 4), (48, 48, 48)
    )
    top.paste(
        Image.fromarray(src).resize((round(w * scale), round(h * scale)), Image.BILINEAR),
        (round(-lo_x * scale), round(-lo_y * scale)),
    )
    draw = ImageDraw.Draw(top)

    def at(x: float, y: float) -> tuple[float, float]:
        return (x - lo_x) * scale, (y - lo_y) * scale

    for v, b in enumerate(boxes):
        colour = VIEW_COLOURS[v % len(VIEW_COLOURS)]
        rect = [*at(b.x0, b.y0), *at(b.x0 + b.side, b.y0 + b.side)]
        draw.rectangle(rect, outline=colour, width=3 if v == 0 else 2)
        draw.text((rect[0] + 4, rect[1] + 2), f"v{v}" + (" center" if v == 0 else ""), colour)
    cx, cy = at(boxes[0].cx, boxes[0].cy)
    draw.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=VIEW_COLOURS[0])

    palette = region_palette(sample.regions_R.numel())
    tiles = []
    for v in range(sample.views_VCSS.shape[0]):
        view = _denormalise(sample.views_VCSS[v], mean, std).astype(np.float32)
        rid = sample.ids_VSS[v].numpy()
        target = rid >= 0
        view[target] = 0.55 * view[target] + 0.45 * palette[rid[target]]
        view[boundaries(np.where(target, rid, -1)) & target] = 255
        masked = sample.masked_VSS[v].numpy()
        hatch = (np.add.outer(np.arange(rid.shape[0]), np.arange(rid.shape[1])) // 4) % 2 == 0
        view[masked & hatch] = 0.4 * view[masked & hatch] + 0.6 * np.array([255, 0, 0])
        box = sample.debug["mask_boxes"][v]
        im = Image.fromarray(view.clip(0, 255).astype(np.uint8)).resize((tile, tile), Image.NEAREST)
        d = ImageDraw.Draw(im)
        k = tile / rid.shape[0]
        if box is not None:
            y0, x0, y1, x1 = box
            d.rectangle([x0 * k, y0 * k, x1 * k, y1 * k], outline=(255, 0, 0), width=2)
        colour = VIEW_COLOURS[v % len(VIEW_COLOURS)]
        d.rectangle([0, 0, tile - 1, tile - 1], outline=colour, width=4)
        flip = " flipped" if bool(sample.flips_V[v]) else ""
        d.text(
            (6, 6),
            f"v{v}{flip}  targets {int(target.any() and len(np.unique(rid)) - 1)}",
            fill=colour,
        )
        tiles.append(im)

    pad = 8
    header = 22
    width = max(top.width, len(tiles) * (tile + pad) - pad) + 2 * pad
    height = header + top.height + pad + tile + 2 * pad + 16
    fig = Image.new("RGB", (width, height), (24, 24, 24))
    d = ImageDraw.Draw(fig)
    d.text((pad, 6), title, fill=(230, 230, 230))
    fig.paste(top, ((width - top.width) // 2, header))
    y = header + top.height + pad
    for i, t in enumerate(tiles):
        fig.paste(t, (pad + i * (tile + pad), y))
    n_common = len(sample.debug["common"])
    d.text(
        (pad, y + tile + 4),
        f"{n_common} superpixels common to all views; {sample.regions_R.numel()} targets after "
        "masking (tint = region id, red hatch = masked, red box = mask box)",
        fill=(200, 200, 200),
    )
    return fig
