import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from vice.config import EvalConfig
from vice.data.datasets.synthetic import SyntheticSource
from vice.data.datasets.testbed import TestbedSource
from vice.eval.evaluate import evaluate, evaluate_features, foreground_iou, format_summary
from vice.eval.features import extract_features, load_eval_foreground, load_eval_set
from vice.eval.mask_kmeans import mask_kmeans

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
    lines = summary.splitlines()
    assert lines[3].startswith("linear")  # the table's last row; then the region metrics
    assert lines[4].startswith("regions: NN same class") and len(lines) == 5


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


class _NoInstances(SyntheticSource):
    """The synthetic scenes as a source without instance maps (like coco or folder)."""

    @property
    def has_instances(self) -> bool:
        return False


def _floors(model):
    from vice.eval.floors import build_floors

    names = ["chance", "instance_random", "instance_mean_colour", "raw_colour", "random_init"]
    floors, skipped = build_floors(names, MEAN, STD, random_network=model, dim=8)
    assert not skipped
    return floors


def test_floors_are_scored_on_the_same_images_with_margins(tmp_path, stand_in_model):
    from tests.eval.conftest import RandomConvEmbed

    val = SyntheticSource(split="val", length=6, size=64)
    train = SyntheticSource(split="train", length=4, size=64)
    cfg = _cfg(cluster_counts=[8, 16], linear_iters=50, linear_train_images=4)
    floors = _floors(RandomConvEmbed(seed=1))
    metrics = evaluate(
        stand_in_model,
        val,
        train,
        cfg,
        MEAN,
        STD,
        "cpu",
        tmp_path,
        floors=floors,
        floors_skipped=["random_init_layer2"],
    )
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    names = [f.name for f in floors]
    assert metrics["floors.names"] == names
    assert metrics["floors.skipped"] == ["random_init_layer2"]
    for prefix in ("", *(f"floors.{n}." for n in names)):
        for key in ("clustering.8.miou", "clustering.16.acc", "linear.miou"):
            assert 0.0 <= metrics[prefix + key] <= 1.0, prefix + key
        for key in ("region.nn_same_class", "region.probe_acc"):
            assert 0.0 <= metrics[prefix + key] <= 1.0, prefix + key
        assert metrics[prefix + "region.nn_chance"] == metrics["region.nn_chance"]
    assert "floors.chance.clustering.8.iou_per_class" not in metrics  # lists: network only
    # the probes (vice.eval.probes), for the network and every floor; coupling where the
    # floor is a function of the image: raw colour's pixels ignore their surroundings
    assert metrics["probe.regions"] == metrics["floors.raw_colour.probe.regions"] > 0
    assert 0.0 < metrics["probe.coupling"] <= 1.0 + 1e-9
    assert metrics["floors.raw_colour.probe.coupling"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["floors.chance.probe.coupling"] is None  # NaN in JSON: not probed
    assert all(f"floors.{n}.probe.position_r2" in metrics for n in names)
    for key in (
        "clustering.8.miou",
        "clustering.16.miou",
        "linear.miou",
        "region.nn_same_class",
        "region.probe_acc",
    ):
        floor = metrics[f"margin.{key}.floor"]
        best = max(metrics[f"floors.{n}.{key}"] for n in names)
        assert metrics[f"floors.{floor}.{key}"] == best
        assert metrics[f"margin.{key}"] == pytest.approx(metrics[key] - best)
    # With C = #classes the instance floors group perfectly within each instance.
    assert (
        metrics["floors.instance_random.clustering.16.acc"]
        > metrics["floors.chance.clustering.16.acc"]
    )

    summary = format_summary(metrics)
    floor = metrics["margin.clustering.8.miou.floor"]
    assert f"margin: clustering C=8 mIoU {100 * metrics['clustering.8.miou']:.2f} %" in summary
    assert f"points over {floor}" in summary
    assert summary.splitlines()[-1].startswith("regions: NN same class")

    again = evaluate(
        stand_in_model,
        val,
        train,
        cfg,
        MEAN,
        STD,
        "cpu",
        tmp_path / "b",
        floors=floors,
        floors_skipped=["random_init_layer2"],
    )
    for key, value in again.items():
        assert key.endswith("seconds") or value == metrics[key], key  # seeded floors


def test_without_instance_maps_the_instance_floors_and_region_metrics_are_skipped(
    tmp_path, stand_in_model
):
    val = _NoInstances(split="val", length=4, size=64)
    cfg = _cfg(cluster_counts=[8], linear=False)
    metrics = evaluate(
        stand_in_model, val, None, cfg, MEAN, STD, "cpu", tmp_path, floors=_floors(stand_in_model)
    )
    assert metrics["floors.names"] == ["chance", "raw_colour", "random_init"]
    assert metrics["floors.skipped"] == ["instance_random", "instance_mean_colour"]
    assert metrics["region.skipped"] == "_NoInstances has no instance maps"
    assert not any(k.startswith(("region.nn", "floors.instance")) for k in metrics)
    assert not any("region" in k for k in metrics if k.startswith("margin."))
    # the random_init floor is the stand-in itself: same code, same images, same score
    assert metrics["floors.random_init.clustering.8.miou"] == metrics["clustering.8.miou"]
    assert metrics["margin.clustering.8.miou"] <= 0.0
    assert "regions:" not in format_summary(metrics)


# --- MaskContrast's mask k-means and saliency IoU (models with a `foreground`) ---------------


class _Foreground(torch.nn.Module):
    """Unit embeddings (a fixed random conv) and a known predicted foreground: the left half
    of every image, or all of it."""

    def __init__(self, kind: str = "left"):
        super().__init__()
        from tests.eval.conftest import RandomConvEmbed

        self.embed, self.kind = RandomConvEmbed(d=8), kind

    def forward(self, x_BCHW):
        return self.embed(x_BCHW)

    def foreground(self, x_BCHW):
        b, _, h, w = x_BCHW.shape
        fg_BHW = torch.ones((b, h, w), dtype=torch.bool)
        if self.kind == "left":
            fg_BHW[..., w // 2 :] = False
        return fg_BHW


def _testbed(length: int, background_class=None):
    source = TestbedSource(split="val", length=length, size=32)
    source.background_class = background_class
    return source


def _fg_cfg(**kw) -> EvalConfig:
    return _cfg(image_size=32, cluster_counts=[12], kmeans_iters=5, linear=False, **kw)


@pytest.mark.parametrize(
    ("background_class", "clusters", "kind"), [(None, 13, "left"), (0, 12, "all")]
)
def test_a_foreground_model_gets_mask_kmeans_and_saliency_iou(
    tmp_path, background_class, clusters, kind
):
    val = _testbed(16, background_class)
    model = _Foreground(kind)
    cfg = _fg_cfg()
    metrics = evaluate(model, val, None, cfg, MEAN, STD, "cpu", tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics

    pred = np.zeros((16, 32, 32), bool)
    pred[..., : 16 if kind == "left" else 32] = True
    images, labels = load_eval_set(val, 32)
    feats = extract_features(model, images, MEAN, STD, cfg.batch_size, "cpu")
    want = mask_kmeans(feats, pred, labels, 12, background_class)
    for key in ("miou", "acc", "miou_sd", "acc_sd"):
        assert metrics[f"mask_kmeans.{key}"] == want[key], key
    assert metrics["mask_kmeans.clusters"] == clusters == want["clusters"]
    assert metrics["mask_kmeans.empty_masks"] == 0
    assert 0.0 < metrics["mask_kmeans.miou"] <= 1.0 and metrics["mask_kmeans.miou_sd"] >= 0.0

    truth = load_eval_foreground(val, 32)
    assert metrics["saliency.iou"] == foreground_iou(pred, truth)
    if kind == "all":  # everything predicted: IoU = the true foreground's share
        assert metrics["saliency.iou"] == pytest.approx(truth.mean())
    assert metrics["saliency.fg_fraction"] == (0.5 if kind == "left" else 1.0)
    assert metrics["saliency.gt_fg_fraction"] == float(truth.mean())

    summary = format_summary(metrics).splitlines()
    assert summary[2].startswith("mask k-means (5 seeds)")
    assert summary[3] == (
        f"saliency: IoU {100 * metrics['saliency.iou']:.2f} % with the ground-truth foreground "
        f"(predicted {100 * metrics['saliency.fg_fraction']:.1f} % of pixels, "
        f"true {100 * truth.mean():.1f} %)"
    )


def test_foreground_iou_of_hand_made_masks():
    pred = np.array([[[1, 1, 0, 0], [1, 0, 0, 0]]], bool)
    truth = np.array([[[0, 1, 1, 0], [1, 0, 0, 0]]], bool)
    assert foreground_iou(pred, truth) == 2 / 4  # 2 shared of 4 in either
    assert foreground_iou(pred, pred) == 1.0 and foreground_iou(pred, ~pred) == 0.0
    empty = np.zeros((1, 2, 4), bool)
    assert foreground_iou(empty, empty) == 1.0  # nothing predicted, nothing there


def test_a_model_without_foreground_gets_no_mask_metrics(tmp_path, stand_in_model):
    metrics = evaluate(stand_in_model, _testbed(4), None, _fg_cfg(), MEAN, STD, "cpu", tmp_path)
    assert "clustering.12.miou" in metrics
    assert not any(k.startswith(("mask_kmeans.", "saliency.")) for k in metrics)
    assert "mask k-means" not in format_summary(metrics)


def test_fewer_images_with_a_mask_than_clusters_skips_mask_kmeans(tmp_path):
    cfg = _fg_cfg(max_images=4)
    metrics = evaluate(_Foreground(), _testbed(16), None, cfg, MEAN, STD, "cpu", tmp_path)
    assert metrics["mask_kmeans.skipped"] == (
        "12 k-means clusters need at least as many images with a foreground mask, got 4 of 4"
    )
    assert not any(k.startswith("mask_kmeans.miou") for k in metrics)
    assert metrics["num_images"] == 4 and metrics["saliency.fg_fraction"] == 0.5
    assert "mask k-means" not in format_summary(metrics)
