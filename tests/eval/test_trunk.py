import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vice.config import ModelConfig
from vice.eval.features import extract_features
from vice.eval.trunk import TrunkLayer
from vice.models import build_model


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(backbone="resnet18", output_stride=16, decoder="fpn")).eval()


@pytest.mark.parametrize(("layer", "channels"), [("layer1", 64), ("layer2", 128), ("layer4", 512)])
def test_unit_norm_features_at_input_resolution(model, layer: str, channels: int) -> None:
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        f = TrunkLayer(model, layer)(x)
    assert f.shape == (2, channels, 40, 56)
    torch.testing.assert_close(f.norm(dim=1), torch.ones(2, 40, 56))


def test_equals_the_upsampled_normalised_backbone_layer(model) -> None:
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = model.backbone(x)["layer2"]  # (1, 128, 4, 4) at 32 px
        want = F.normalize(F.interpolate(want, size=(32, 32), mode="bilinear"), dim=1)
        got = TrunkLayer(model, "layer2")(x)
    torch.testing.assert_close(got, want)


def test_plugs_into_extract_features(model) -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    feats = extract_features(TrunkLayer(model, "layer3"), images, [0.5] * 3, [0.25] * 3)
    assert feats.shape == (3, 256, 32, 32)


def test_unknown_layer_names_the_allowed_ones(model) -> None:
    with pytest.raises(ValueError, match=r"unknown trunk layer 'layer5'; one of \['layer1'"):
        TrunkLayer(model, "layer5")
