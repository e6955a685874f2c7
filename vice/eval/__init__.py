"""Unsupervised segmentation evaluation: k-means (Hungarian / majority), linear probe, figures.

Entry points: `evaluate` (a model on labelled splits) and `evaluate_features` (any features,
e.g. `raw_colour_features`); `format_summary` renders the resulting metrics as a table.
"""

from vice.eval.baselines import raw_colour_features
from vice.eval.evaluate import evaluate, evaluate_features, format_summary

__all__ = ["evaluate", "evaluate_features", "format_summary", "raw_colour_features"]
