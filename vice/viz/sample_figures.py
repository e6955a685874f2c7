"""What a run's views figure draws, per sample builder: a plain dict, like the builders'.

Each entry takes the config and the training source and returns `draw(index)`, which renders
the figure of image `index` of `data.split` as the builder sees it at `figure.epoch`. A
builder with no entry gets no figure: `vice.pipeline.render_views` then writes none rather
than a picture of data the method never saw. A new method's builder adds its entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from PIL import Image

from vice.config import Config
from vice.data.datasets.base import ImageSource

Draw = Callable[[int], Image.Image]  # index -> the figure of that image


def _views(cfg: Config, source: ImageSource) -> Draw:
    """ViCE's views: each view with its superpixels and masked regions."""
    from vice.data.pretrain import ViceDataset
    from vice.viz.views_figure import render_views_figure

    dataset = ViceDataset(source, cfg.data, keep_debug=True)

    def draw(index: int) -> Image.Image:
        item = dataset[(cfg.figure.epoch, index)]
        img, ids = dataset.prepare(item["index"])
        title = f"{cfg.data.dataset} {source.key(item['index'])}"
        return render_views_figure(
            img, ids, item["sample"], cfg.data.views.mean, cfg.data.views.std, title=title
        )

    return draw


def _crops(cfg: Config, source: ImageSource, builder: str) -> Draw:
    """Two-crop builders: the crops on the source image, both views, overlap box or mask."""
    from vice.data.builders import build_samples
    from vice.viz.crops_figure import render_crops_figure

    dataset = build_samples(builder, source, cfg.data)

    def draw(index: int) -> Image.Image:
        item = dataset[(cfg.figure.epoch, index)]
        title = f"{cfg.method.name} {cfg.data.dataset} {source.key(item['index'])}"
        if item["index"] != index:  # the builder skipped the image and drew another
            title += f" (in place of skipped image {index})"
        return render_crops_figure(
            source.load_image(item["index"]),
            item["sample"],
            cfg.data.views.mean,
            cfg.data.views.std,
            title=title,
        )

    return draw


SAMPLE_FIGURES: dict[str, Callable[[Config, ImageSource], Draw]] = {
    "vice_views": _views,
    "two_crops": partial(_crops, builder="two_crops"),
    "mask_crops": partial(_crops, builder="mask_crops"),
}
