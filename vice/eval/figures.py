"""The segmentation figure: image | ground truth | clusters | linear probe, one row per image.

Cluster ids are drawn after mapping to classes, so one colour means one class in every
column. Pixels the ground truth ignores are black in the ground-truth column; predictions are
drawn everywhere (the model predicts ignored pixels too). Pillow only.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vice.data.datasets.base import IGNORE_INDEX

_MIN_TILE = 160  # px; small eval crops are enlarged (nearest for labels) to at least this
_GAP = 6
_FONT_SIZE = 14
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)


# Twenty colours chosen to be told apart at a glance (the widely used "20 distinct colours"
# set, black left out); further classes get generated colours.
_DISTINCT = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (170, 110, 40), (128, 0, 0), (170, 255, 195), (128, 128, 0),
    (0, 0, 128), (128, 128, 128), (255, 215, 180), (220, 190, 255), (255, 255, 255),
)  # fmt: skip


def class_palette(n: int) -> np.ndarray:
    """n fixed colours (n, 3) uint8; class c always gets colour c, never black (black marks
    ignored pixels).

    Past the twenty hand-picked colours, hues step by the golden ratio (neighbouring ids get
    distant hues) and saturation/brightness cycle through three levels.
    """
    golden = (math.sqrt(5) - 1) / 2
    levels = ((0.85, 0.95), (0.55, 0.75), (0.95, 0.55))  # (saturation, value)
    out = np.empty((n, 3), dtype=np.uint8)
    for c in range(n):
        if c < len(_DISTINCT):
            out[c] = _DISTINCT[c]
            continue
        s, v = levels[c % 3]
        r, g, b = colorsys.hsv_to_rgb((c * golden) % 1.0, s, v)
        out[c] = (round(255 * r), round(255 * g), round(255 * b))
    return out


def _font(size: int = _FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def colourise(ids_HW: np.ndarray, palette_K3: np.ndarray) -> np.ndarray:
    """Class ids -> RGB; IGNORE_INDEX (and any id outside the palette) -> black."""
    out = np.zeros((*ids_HW.shape, 3), dtype=np.uint8)
    ok = (ids_HW >= 0) & (ids_HW < len(palette_K3)) & (ids_HW != IGNORE_INDEX)
    out[ok] = palette_K3[ids_HW[ok]]
    return out


def _to_numpy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def segmentation_figure(
    images_NSS3: np.ndarray,
    labels_NSS: np.ndarray,
    cluster_pred_NSS: np.ndarray | torch.Tensor,
    linear_pred_NSS: np.ndarray | torch.Tensor | None,
    num_classes: int,
    rows: int = 4,
    class_names: tuple[str, ...] | list[str] | None = None,
    cluster_title: str = "clusters (mapped)",
) -> Image.Image:
    """Composes the figure for the first `rows` images.

    Args:
        images_NSS3: uint8 RGB eval crops.
        labels_NSS: Ground truth (class ids or IGNORE_INDEX).
        cluster_pred_NSS: Cluster ids already mapped to class ids.
        linear_pred_NSS: Linear-probe classes, or None to leave the column out.
        num_classes: Number of classes (palette size).
        rows: Images shown.
        class_names: Names for the legend; default "class <id>".
        cluster_title: Header of the clusters column (e.g. "k-means C=27 (Hungarian)").

    Returns:
        An RGB image: a header row, one row per image, and a colour legend of the classes.
    """
    palette = class_palette(num_classes)
    preds = [_to_numpy(cluster_pred_NSS)]
    titles = ["image", "ground truth", cluster_title]
    if linear_pred_NSS is not None:
        preds.append(_to_numpy(linear_pred_NSS))
        titles.append("linear probe")
    rows = max(1, min(rows, len(images_NSS3)))
    s = images_NSS3.shape[1]
    zoom = max(1, math.ceil(_MIN_TILE / s))
    tile = s * zoom
    font = _font()
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (11, 3)
    line_h = ascent + descent + 4
    header_h = line_h + _GAP

    # Legend: one swatch + name per class, wrapped to the figure width.
    names = list(class_names) if class_names else []
    names += [f"class {c}" for c in range(len(names), num_classes)]
    width = len(titles) * tile + (len(titles) + 1) * _GAP
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    entries, x, y = [], _GAP, 0
    legend = [(c, f"{c}: {name}") for c, name in enumerate(names[:num_classes])]
    legend.append((-1, "ignored"))  # drawn black, like the ignored ground-truth pixels
    for c, text in legend:
        w = line_h + 4 + int(probe.textlength(text, font=font)) + 2 * _GAP
        if x + w > width and x > _GAP:
            x, y = _GAP, y + line_h + 2
        entries.append((x, y, c, text))
        x += w
    legend_h = y + line_h + 2 * _GAP

    grid_h = header_h + rows * tile + rows * _GAP
    fig = Image.new("RGB", (width, grid_h + legend_h), _BACKGROUND)
    draw = ImageDraw.Draw(fig)
    for j, title in enumerate(titles):
        x0 = _GAP + j * (tile + _GAP)
        tw = draw.textlength(title, font=font)
        draw.text((x0 + (tile - tw) / 2, _GAP // 2 + 2), title, fill=_TEXT, font=font)
    for i in range(rows):
        y0 = header_h + i * (tile + _GAP)
        panels = [
            Image.fromarray(images_NSS3[i]).resize((tile, tile), Image.BICUBIC),
            *(
                Image.fromarray(colourise(np.asarray(a[i]), palette)).resize(
                    (tile, tile), Image.NEAREST
                )
                for a in [_to_numpy(labels_NSS), *preds]
            ),
        ]
        for j, panel in enumerate(panels):
            fig.paste(panel, (_GAP + j * (tile + _GAP), y0))
    for x, y, c, text in entries:
        top = grid_h + _GAP + y
        draw.rectangle(
            (x, top + 2, x + line_h - 4, top + line_h - 2),
            fill=(0, 0, 0) if c < 0 else tuple(int(v) for v in palette[c]),
            outline=_TEXT,
        )
        draw.text((x + line_h + 2, top + 1), text, fill=_TEXT, font=font)
    return fig
