"""Unsupervised segmentation evaluation: k-means (Hungarian / majority), linear probe, region
metrics, floors, figures.

Entry points: `evaluate` (a model on labelled splits, with the floors of `build_floors` on the
same images) and `evaluate_features` (any features, e.g. `raw_colour_features`);
`format_summary` renders the resulting metrics as a table plus the margin over the floors.
"""

from vice.eval.baselines import raw_colour_features
from vice.eval.evaluate import evaluate, evaluate_features, format_summary
from vice.eval.floors import build_floors, margins
from vice.eval.regions import region_metrics

__all__ = [
    "build_floors",
    "evaluate",
    "evaluate_features",
    "format_summary",
    "margins",
    "raw_colour_features",
    "region_metrics",
]
