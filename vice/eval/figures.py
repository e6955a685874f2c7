"""Evaluation figures, Pillow only.

The segmentation figure: image | ground truth | clusters | linear probe, one row per image.
Cluster ids are drawn after mapping to classes, so one colour means one class in every
column. Pixels the ground truth ignores are black in the ground-truth column; predictions are
drawn everywhere (the model predicts ignored pixels too).

The per-class IoU chart: one row of horizontal bars per class (one bar per result, e.g. k-means
and the linear probe), read from the `<result>.iou_per_class` lists of metrics.json.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vice.data.datasets.base import IGNORE_INDEX
from vice.run_dir import EvalDir

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


IOU_SUFFIX = ".iou_per_class"
_CHART_WIDTH = 900  # px, whatever the number of classes
_LINE_H = 20  # px per text line (title, legend, axis labels)
_BAR_H = 12  # px per bar
_BAR_GAP = 2  # px between the bars of one class
_ROW_GAP = 8  # px between classes
_AXIS_H = 2 * _LINE_H  # tick labels and the axis title
_LABEL_MAX = 260  # px at most for "id: class name"; longer names are shortened with "..."
_VALUE_W = 48  # px right of the longest bar for its value label
_GRID = (225, 225, 225)
_MUTED = (130, 130, 130)
# Result colours, told apart from each other (the classes keep their palette in the swatches).
_RESULT_COLOURS = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189), (140, 86, 75),
    (23, 190, 207),
)  # fmt: skip


def iou_results(metrics: Mapping) -> dict[str, list]:
    """{"clustering.27": [iou of class 0, ...], "linear": [...]} from a metrics dict; NaN and
    None (classes absent from the ground truth) become None."""
    out = {}
    for key, values in metrics.items():
        if str(key).endswith(IOU_SUFFIX):
            out[key[: -len(IOU_SUFFIX)]] = [
                None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
                for v in values
            ]
    return out


def default_iou_results(metrics: Mapping) -> list[str]:
    """The k-means result drawn in segmentations.png (the smallest C >= #classes, the
    Hungarian one when present, else the largest C) and the linear probe when present."""
    found = iou_results(metrics)
    counts = sorted(int(k.split(".")[1]) for k in found if k.startswith("clustering."))
    k = metrics.get("num_classes") or max(len(v) for v in found.values())
    chosen = [c for c in counts if c >= k][:1] or counts[-1:]
    names = [f"clustering.{c}" for c in chosen]
    return names + (["linear"] if "linear" in found else [])


def _result_title(name: str, num_classes: int) -> str:
    if name == "linear":
        return "linear probe"
    if name.startswith("clustering.") and name.split(".")[1].isdigit():
        c = int(name.split(".")[1])
        return f"k-means C={c} ({'majority' if c > num_classes else 'Hungarian'})"
    return name


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _text_left_middle(draw: ImageDraw.ImageDraw, x: float, y: float, text: str, font, fill):
    """Text starting at x, centred vertically on y (works for the bitmap fallback font too,
    which has no `anchor`)."""
    _, top, _, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((x, y - (top + bottom) / 2), text, fill=fill, font=font)


def per_class_iou_figure(
    metrics: Mapping, results: Sequence[str] | None = None, width: int = _CHART_WIDTH
) -> Image.Image:
    """Horizontal bars of per-class IoU (in %), one group per class, one bar per result.

    Args:
        metrics: The dict of eval/metrics.json (or returned by `evaluate`): `<result>.
            iou_per_class` lists of fractions, None for classes absent from the ground truth;
            `<result>.miou`, `num_classes` and `class_names` are used when present.
        results: Which results, e.g. ["clustering.27", "linear"]; default
            `default_iou_results(metrics)`.
        width: Image width in px; the height follows from the number of classes and results:
            (1 + #results) * 20 + 12 + #classes * (#results * 14 - 2 + 8) + 40.

    Returns:
        An RGB image: title, one legend line per result (with its mIoU), the bars (absent
        classes marked "n/a"), dashed mIoU lines and a 0-100 axis.
    """
    found = iou_results(metrics)
    if not found:
        keys = sorted(map(str, metrics))[:8]
        raise ValueError(
            "per_class_iou_figure: no per-class IoUs in metrics (expected keys like "
            f"'clustering.27{IOU_SUFFIX}' or 'linear{IOU_SUFFIX}', as in eval/metrics.json); "
            f"got {keys or 'an empty dict'}"
        )
    if isinstance(results, str):
        results = [results]
    names = list(results) if results is not None else default_iou_results(metrics)
    if not names:
        raise ValueError("per_class_iou_figure: results is empty; name at least one result")
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValueError(
            f"per_class_iou_figure: no per-class IoUs for {unknown}; available: {sorted(found)}"
        )
    lengths = {n: len(found[n]) for n in names}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise ValueError(f"per_class_iou_figure: per-class lists differ or are empty: {lengths}")
    for n in names:
        bad = [v for v in found[n] if v is not None and not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"per_class_iou_figure: {n} has IoUs outside [0, 1]: {bad[:3]}")

    k = next(iter(lengths.values()))
    m = len(names)
    class_names = list(metrics.get("class_names") or [])
    class_names = class_names if len(class_names) == k else [f"class {c}" for c in range(k)]
    palette = class_palette(k)
    font, small = _font(), _font(_FONT_SIZE - 2)
    group_h = m * _BAR_H + (m - 1) * _BAR_GAP
    pitch = group_h + _ROW_GAP
    plot_top = (1 + m) * _LINE_H + 2 * _GAP
    height = plot_top + k * pitch + _AXIS_H
    fig = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(fig)

    # Columns: swatch + "id: name" | bars from x0 (0 %) to x1 (100 %) | value labels.
    swatch = _BAR_H
    labels = [f"{c}: {name}" for c, name in enumerate(class_names)]
    label_w = min(_LABEL_MAX, max(draw.textlength(t, font=font) for t in labels))
    x0 = int(_GAP + swatch + _GAP + label_w + _GAP)
    x1 = width - _VALUE_W - _GAP
    if x1 - x0 < 100:
        raise ValueError(f"per_class_iou_figure: width={width} leaves no room for the bars")

    def x_of(iou: float) -> float:
        return x0 + iou * (x1 - x0)

    n_images = metrics.get("num_images")
    title = "Per-class IoU (%)" + (f", {n_images} eval images" if n_images else "")
    draw.text((_GAP, _GAP), title, fill=_TEXT, font=font)
    mious = {}
    for j, name in enumerate(names):
        known = [v for v in found[name] if v is not None]
        miou = metrics.get(f"{name}.miou")
        mious[name] = float(miou) if miou is not None else sum(known) / max(1, len(known))
        y = _GAP + (1 + j) * _LINE_H
        colour = _RESULT_COLOURS[j % len(_RESULT_COLOURS)]
        draw.rectangle((_GAP, y + 3, _GAP + 2 * swatch, y + 3 + swatch), fill=colour)
        text = f"{_result_title(name, k)}: mIoU {100 * mious[name]:.1f}%"
        draw.text((3 * _GAP + 2 * swatch, y), text, fill=_TEXT, font=font)

    plot_bottom = plot_top + k * pitch
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = x_of(tick)
        draw.line((x, plot_top - _GAP // 2, x, plot_bottom), fill=_GRID)
        text = f"{100 * tick:.0f}"
        draw.text(
            (x - draw.textlength(text, font=small) / 2, plot_bottom + 2),
            text,
            fill=_TEXT,
            font=small,
        )
    axis = "IoU (%); dashed: mIoU"
    draw.text(
        ((x0 + x1 - draw.textlength(axis, font=small)) / 2, plot_bottom + _LINE_H),
        axis,
        fill=_TEXT,
        font=small,
    )

    for j, name in enumerate(names):  # dashed mIoU lines under the bars and values
        x = x_of(mious[name])
        colour = _RESULT_COLOURS[j % len(_RESULT_COLOURS)]
        for y in range(plot_top, plot_bottom, 8):
            draw.line((x, y, x, min(y + 4, plot_bottom)), fill=colour, width=2)
    for c in range(k):
        top = plot_top + c * pitch
        mid = top + group_h / 2
        draw.rectangle(
            (_GAP, mid - swatch / 2, _GAP + swatch, mid + swatch / 2),
            fill=tuple(int(v) for v in palette[c]),
            outline=_TEXT,
        )
        text = _fit(draw, labels[c], font, label_w)
        _text_left_middle(draw, 2 * _GAP + swatch, mid, text, font, _TEXT)
        for j, name in enumerate(names):
            y = top + j * (_BAR_H + _BAR_GAP)
            iou = found[name][c]
            if iou is None:
                _text_left_middle(draw, x0 + 4, y + _BAR_H / 2, "n/a", small, _MUTED)
                continue
            colour = _RESULT_COLOURS[j % len(_RESULT_COLOURS)]
            if iou > 0:
                draw.rectangle((x0, y, max(x0 + 1, x_of(iou)), y + _BAR_H - 1), fill=colour)
            _text_left_middle(draw, x_of(iou) + 4, y + _BAR_H / 2, f"{100 * iou:.1f}", small, _TEXT)
    draw.line((x0, plot_top - _GAP // 2, x0, plot_bottom), fill=_TEXT)
    return fig


def write_per_class_iou_figure(
    eval_dir: str | Path,
    metrics: Mapping | None = None,
    results: Sequence[str] | None = None,
) -> Path:
    """Writes `<eval_dir>/per_class_iou.png` (atomically) and returns its path.

    Args:
        eval_dir: The evaluation folder.
        metrics: The metrics dict; default: read `<eval_dir>/metrics.json`.
        results: See `per_class_iou_figure`.
    """
    eval_dir = EvalDir(eval_dir)
    if metrics is None:
        path = eval_dir.metrics
        if not path.is_file():
            raise FileNotFoundError(f"no {path}: run the evaluation first")
        metrics = json.loads(path.read_text())
    fig = per_class_iou_figure(metrics, results)
    out = eval_dir.per_class_iou
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fig.save(tmp, format="PNG")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
