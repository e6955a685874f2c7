"""Image sources by name. `DATASETS` is the registry: a plain dict of constructors."""

from __future__ import annotations

from typing import Any

from vice.config import DataConfig
from vice.data.datasets.base import DatasetRootError, ImageSource
from vice.data.datasets.cityscapes import CityscapesSource
from vice.data.datasets.coco import CocoSource
from vice.data.datasets.folder import FolderSource
from vice.data.datasets.synthetic import SyntheticSource
from vice.data.datasets.testbed import TestbedSource
from vice.data.datasets.voc import VOCSource

DATASETS: dict[str, type[ImageSource]] = {
    "synthetic": SyntheticSource,
    "testbed": TestbedSource,
    "coco": CocoSource,
    "cityscapes": CityscapesSource,
    "folder": FolderSource,
    "voc": VOCSource,
}

__all__ = ["DATASETS", "DatasetRootError", "ImageSource", "build_source"]


def build_source(cfg: DataConfig, split: str | None = None, labels: bool = False) -> ImageSource:
    """The configured source for `split` (default: data.split); labels for evaluation."""
    name = cfg.dataset
    if name not in DATASETS:
        raise ValueError(f"invalid config value data.dataset={name!r}: one of {sorted(DATASETS)}")
    split = split or cfg.split
    kwargs: dict[str, Any] = {"root": cfg.root, "split": split}
    if name == "synthetic":
        syn = cfg.synthetic
        length = syn.eval_length if split == "val" else syn.length
        kwargs.update(length=length, size=syn.size, seed=cfg.seed, num_classes=syn.num_classes)
    elif name == "testbed":
        tb = cfg.testbed
        length = tb.eval_length if split == "val" else tb.length
        kwargs.update(length=length, size=tb.size, seed=cfg.seed)
    elif labels:
        if name == "folder":
            raise ValueError(
                "data.dataset='folder' has no labels: evaluation needs 'synthetic', 'testbed', "
                "'coco', 'cityscapes' or 'voc' (set eval.dataset or data.dataset)"
            )
        kwargs["labels"] = True
    return DATASETS[name](**kwargs)
