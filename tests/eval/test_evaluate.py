import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vice.config import EvalConfig
from vice.data.datasets.synthetic import SyntheticSource
from vice.eval.evaluate import evaluate, evaluate_features, format_summary

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _cfg(**kw) -> EvalConfig:
    base = dict(
        image_size=64,
        cluster_counts=[8, 16],
        kmeans_iters=10,
        linear_iters=200,
        linear_lr=0.5,
        linear_batch_pixels=4096,
        linear_train_images=8,
        figure_rows=3,
    )
    base.update(kw)
    cfg = EvalConfig(**base)
    cfg.validate()
    return cfg


def _check_fraction_list(values, k):
    assert len(values) == k
    assert all(v is None or 0.0 <= v <= 1.0 for v in values)


def test_end_to_end_on_synthetic_data(tmp_path, stand_in_model):
    val = SyntheticSource(split="val", length=8, size=64)
    train = SyntheticSource(split="train", length=8, size=64)
    metrics = evaluate(stand_in_model, val, train, _cfg(), MEAN, STD, "cpu", tmp_path)

    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == metrics
    assert metrics["num_images"] == 8 and metrics["num_classes"] == 8
    assert metrics["class_names"] == list(val.class_names)
    for prefix in ("clustering.8", "clustering.16", "linear"):
        assert 0.0 <= metrics[f"{prefix}.miou"] <= 1.0
        assert 0.0 < metrics[f"{prefix}.acc"] <= 1.0
        _check_fraction_list(metrics[f"{prefix}.iou_per_class"], 8)
        _check_fraction_list(metrics[f"{prefix}.acc_per_class"], 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "metrics.json",
        "per_class_iou.png",
        "segmentations.png",
    ]
    with Image.open(tmp_path / "segmentations.png") as fig:
        assert fig.width == 4 * 192 + 5 * 6  # 4 columns of 64 px crops enlarged 3x

    summary = format_summary(metrics)
    assert "clustering C=8 (Hungarian)" in summary and "clustering C=16 (majority)" in summary
    assert summary.splitlines()[-1].startswith("linear")


def test_no_train_split_means_no_probe_and_same_clustering(tmp_path, stand_in_model):
    val = SyntheticSource(split="val", length=4, size=64)
    cfg = _cfg(cluster_counts=[8])
    metrics = evaluate(stand_in_model, val, None, cfg, MEAN, STD, "cpu", tmp_path)
    assert not any(k.startswith("linear") for k in metrics)
    again = evaluate(stand_in_model, val, None, cfg, MEAN, STD, "cpu", tmp_path / "b")
    assert again == metrics  # deterministic for a seed


def test_too_many_clusters_are_skipped_with_a_warning(tmp_path):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 4, 4, 4, generator=g)  # 32 pixels
    labels = torch.randint(0, 3, (2, 4, 4), generator=g).numpy()
    images = np.zeros((2, 4, 4, 3), np.uint8)
    with pytest.warns(UserWarning, match="C=64 skipped"):
        metrics = evaluate_features(
            feats, labels, images, 3, _cfg(cluster_counts=[3, 64]), "cpu", tmp_path
        )
    assert "clustering.3.miou" in metrics and "clustering.64.miou" not in metrics
    assert (tmp_path / "segmentations.png").exists()


def test_classes_absent_from_the_eval_set_are_null_in_json(tmp_path):
    feats = torch.nn.functional.one_hot(torch.arange(2).repeat_interleave(8), 4).float()
    feats = feats.reshape(1, 4, 4, 4).permute(0, 3, 1, 2)  # (N=1, D=4, S=4, S=4)
    labels = np.repeat([0, 1], 8).reshape(1, 4, 4)  # classes 2, 3 never occur
    metrics = evaluate_features(
        feats,
        labels,
        np.zeros((1, 4, 4, 3), np.uint8),
        4,
        _cfg(cluster_counts=[4]),
        "cpu",
        tmp_path,
    )
    assert metrics["clustering.4.miou"] == 1.0
    assert metrics["clustering.4.iou_per_class"][2:] == [None, None]
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and not math.isnan(json.loads(text)["clustering.4.acc"])


def test_needs_a_model_or_a_feature_function(tmp_path):
    val = SyntheticSource(split="val", length=2, size=64)
    with pytest.raises(ValueError, match="model or a features_fn"):
        evaluate(None, val, None, _cfg(), MEAN, STD, "cpu", tmp_path)
