import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.eval.test_evaluate import _cfg
from vice.config import ModelConfig
from vice.eval.baselines import raw_colour_features
from vice.eval.evaluate import evaluate_features
from vice.eval.features import pixels_PD
from vice.eval.floors import (
    DEFAULT_FLOORS,
    build_floors,
    chance_features,
    check_floor_name,
    instance_mean_colour_features,
    instance_random_features,
    margins,
)
from vice.eval.metrics import segmentation_metrics
from vice.eval.regions import region_index
from vice.models import build_model

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _instances(n=2, s=8, seed=0):
    rng = np.random.default_rng(seed)
    return np.repeat(np.repeat(rng.integers(0, 4, (n, s // 4, s // 4)), 4, 1), 4, 2)


def test_chance_is_seeded_gaussian_noise():
    a = chance_features(3, 8, dim=6, seed=1)
    assert a.shape == (3, 6, 8, 8) and a.dtype == torch.float32
    assert pixels_PD(a).data_ptr() == a.data_ptr()  # channels-last
    torch.testing.assert_close(a, chance_features(3, 8, dim=6, seed=1), rtol=0, atol=0)
    assert not torch.equal(a, chance_features(3, 8, dim=6, seed=2))
    assert abs(float(a.mean())) < 0.1 and abs(float(a.std()) - 1) < 0.1


def test_instance_random_gives_each_instance_of_each_image_one_vector():
    inst = _instances()
    inst[1] = inst[0]  # the same ids in both images: still different instances
    f = instance_random_features(inst, dim=5, seed=3)
    assert f.shape == (2, 5, 8, 8)
    region_P, r = region_index(inst)
    x_PD = pixels_PD(f)
    vectors = {}
    for p, reg in enumerate(region_P):
        vectors.setdefault(reg, x_PD[p])
        assert torch.equal(x_PD[p], vectors[reg])
    assert len(vectors) == r
    assert len({tuple(v.tolist()) for v in vectors.values()}) == r  # all distinct
    assert torch.equal(f, instance_random_features(inst, dim=5, seed=3))
    assert not torch.equal(f, instance_random_features(inst, dim=5, seed=4))


def test_instance_mean_colour_is_the_mean_normalised_colour_of_each_instance():
    rng = np.random.default_rng(1)
    inst = _instances()
    images = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    f = instance_mean_colour_features(images, inst, MEAN, STD)
    colours = raw_colour_features(images, MEAN, STD)
    for i in range(2):
        for iid in np.unique(inst[i]):
            mask = torch.from_numpy(inst[i] == iid)
            want = colours[i].permute(1, 2, 0)[mask].mean(0)
            got = f[i].permute(1, 2, 0)[mask]
            torch.testing.assert_close(got, want.expand_as(got))


def _scene(n=3, s=16, k=3, seed=0):
    """Instances in 4x4 blocks (ids 0..5 per image) with noisy labels (some ignored)."""
    rng = np.random.default_rng(seed)
    inst = np.repeat(np.repeat(rng.integers(0, 6, (n, s // 4, s // 4)), 4, 1), 4, 2)
    labels = np.where(rng.random((n, s, s)) < 0.8, inst % k, rng.integers(0, k, (n, s, s)))
    labels[rng.random((n, s, s)) < 0.05] = 255
    return np.zeros((n, s, s, 3), np.uint8), labels, inst


def _majority_per_instance(labels, inst, k):
    """Direct computation: every pixel gets its instance's majority label."""
    pred = np.zeros_like(labels)
    for i in range(len(labels)):
        for iid in np.unique(inst[i]):
            mask = inst[i] == iid
            lab = labels[i][mask]
            pred[i][mask] = np.bincount(lab[lab != 255], minlength=k).argmax()
    return pred


@pytest.mark.parametrize("kind", ["instance_random", "onehot"])
def test_perfect_grouping_scores_the_per_instance_majority(tmp_path, kind):
    images, labels, inst = _scene()
    region_P, r = region_index(inst)
    assert r > 3  # over-clustering: majority matching
    if kind == "onehot":
        feats = F.one_hot(torch.from_numpy(region_P), r).float().reshape(3, 16, 16, r)
        feats = feats.permute(0, 3, 1, 2)
    else:
        feats = instance_random_features(inst, dim=32, seed=0)
    cfg = _cfg(cluster_counts=[r], kmeans_fit_pixels=10_000, linear=False)
    metrics = evaluate_features(feats, labels, images, 3, cfg, "cpu", None)
    want = segmentation_metrics(_majority_per_instance(labels, inst, 3), labels, 3)
    assert metrics[f"clustering.{r}.miou"] == pytest.approx(want["miou"])
    assert metrics[f"clustering.{r}.acc"] == pytest.approx(want["acc"])
    assert not list(tmp_path.iterdir())  # out_dir None: nothing written


def test_floor_names_are_checked():
    for name in (*DEFAULT_FLOORS, "random_init_layer4"):
        check_floor_name(name)
    with pytest.raises(ValueError, match=r"unknown floor 'random_init_layer5'"):
        check_floor_name("random_init_layer5")


def test_build_floors_without_a_network_skips_the_network_floors():
    floors, skipped = build_floors(DEFAULT_FLOORS, MEAN, STD, random_network=None, dim=4)
    assert [f.name for f in floors] == [
        "chance",
        "instance_random",
        "instance_mean_colour",
        "raw_colour",
    ]
    assert [f.name for f in floors if f.needs_instances] == [
        "instance_random",
        "instance_mean_colour",
    ]
    assert set(skipped) == {"random_init", "random_init_layer2"}
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    inst = _instances()
    by_name = {f.name: f for f in floors}
    assert by_name["chance"].features(images, None, 0).shape == (2, 4, 8, 8)
    torch.testing.assert_close(
        by_name["chance"].features(images, None, 5), chance_features(2, 8, 4, 5)
    )
    torch.testing.assert_close(
        by_name["instance_random"].features(images, inst, 5), instance_random_features(inst, 4, 5)
    )
    torch.testing.assert_close(
        by_name["raw_colour"].features(images, None, 0), raw_colour_features(images, MEAN, STD)
    )


def test_network_floors_run_the_network_and_its_trunk():
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(backbone="resnet18", output_stride=16, decoder="fpn", embed_dim=8)
    )
    floors, skipped = build_floors(["random_init", "random_init_layer1"], MEAN, STD, model)
    assert not skipped
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    net, trunk = (f.features(images, None, 0) for f in floors)
    assert net.shape == (2, 8, 32, 32) and trunk.shape == (2, 64, 32, 32)
    torch.testing.assert_close(net, floors[0].features(images, None, 1))  # no randomness


def test_margins_are_over_the_strongest_floor():
    metrics = {
        "clustering.8.miou": 0.30,
        "clustering.16.miou": 0.40,
        "clustering.8.acc": 0.9,  # no margin for accuracies
        "region.nn_same_class": 0.5,
        "region.probe_acc": None,  # not measured: no margin
        "floors.a.clustering.8.miou": 0.10,
        "floors.b.clustering.8.miou": 0.25,
        "floors.a.clustering.16.miou": 0.45,
        "floors.b.clustering.16.miou": 0.45,
        "floors.a.clustering.8.acc": 0.1,
        "floors.b.region.nn_same_class": None,
        "floors.a.region.probe_acc": 0.2,
    }
    got = margins(metrics, ["a", "b"])
    assert got == {
        "margin.clustering.8.miou": pytest.approx(0.05),
        "margin.clustering.8.miou.floor": "b",
        "margin.clustering.16.miou": pytest.approx(-0.05),
        "margin.clustering.16.miou.floor": "a",  # a tie: the first floor
    }
