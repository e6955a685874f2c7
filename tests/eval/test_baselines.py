import numpy as np
import torch

from tests.eval.test_evaluate import _cfg
from vice.data.datasets.synthetic import SyntheticSource
from vice.eval.baselines import raw_colour_features
from vice.eval.evaluate import evaluate
from vice.eval.features import pixels_PD


def test_raw_colour_features_are_normalised_rgb():
    images = np.zeros((2, 3, 3, 3), np.uint8)
    images[1, 2, 1] = (255, 0, 128)
    feats = raw_colour_features(images, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 1.0))
    assert feats.shape == (2, 3, 3, 3) and feats.dtype == torch.float32
    torch.testing.assert_close(feats[1, :, 2, 1], torch.tensor([1.0, -2.0, 128 / 255 - 0.5]))
    assert pixels_PD(feats).data_ptr() == feats.data_ptr()  # channels-last: a free view


def test_raw_colour_baseline_runs_through_evaluate(tmp_path):
    val = SyntheticSource(split="val", length=4, size=64)
    cfg = _cfg(cluster_counts=[8], linear=False)
    metrics = evaluate(
        None, val, None, cfg, [], [], "cpu", tmp_path, features_fn=raw_colour_features
    )
    assert 0.0 < metrics["clustering.8.acc"] <= 1.0 and 0.0 < metrics["clustering.8.miou"] <= 1.0
    assert (tmp_path / "segmentations.png").exists()
