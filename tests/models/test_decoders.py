"""DeepLabV3+ and FPN decoders: shapes, ASPP rates per output stride, FPN top-down sum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vice.config import ModelConfig
from vice.models.decoders import (
    DECODERS,
    FPN_DIM,
    DeepLabV3PlusDecoder,
    FPNDecoder,
    aspp_rates_at,
)

from .test_backbones import EXPECTED_CHANNELS, expected_sizes


def fake_features(backbone: str, output_stride: int, h: int, w: int, batch: int = 2):
    sizes = expected_sizes(h, w, output_stride)
    channels = dict(zip(sizes, EXPECTED_CHANNELS[backbone], strict=True))
    features = {k: torch.randn(batch, channels[k], *sizes[k]) for k in sizes}
    return channels, features


def test_config_checks_names_against_the_registry() -> None:
    for name in DECODERS:
        ModelConfig(decoder=name, fpn_normalize_laterals=False).validate()
    expected = r"model\.decoder='unet': one of \[.deeplabv3plus., .fpn.\]"
    with pytest.raises(ValueError, match=expected):
        ModelConfig(decoder="unet").validate()


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("backbone", sorted(EXPECTED_CHANNELS))
@pytest.mark.parametrize("output_stride", [8, 16])
def test_decoder_output_at_layer1_resolution(decoder: str, backbone: str, output_stride: int):
    cfg = ModelConfig(backbone=backbone, output_stride=output_stride, decoder=decoder, embed_dim=24)
    channels, features = fake_features(backbone, output_stride, 65, 97)
    head = DECODERS[decoder](cfg, channels)
    y = head(features)
    assert tuple(y.shape) == (2, 24, 17, 25)
    assert torch.isfinite(y).all()


def test_aspp_rates_are_halved_at_output_stride_16() -> None:
    assert aspp_rates_at([12, 24, 36], 8) == [12, 24, 36]
    assert aspp_rates_at([12, 24, 36], 16) == [6, 12, 18]
    for output_stride, rates in ((8, [12, 24, 36]), (16, [6, 12, 18])):
        cfg = ModelConfig(backbone="resnet18", output_stride=output_stride)
        head = DECODERS["deeplabv3plus"](cfg, dict.fromkeys(("layer1", "layer4"), 8))
        atrous = [b[0] for b in head.aspp.branches if b[0].kernel_size == (3, 3)]
        assert [c.dilation[0] for c in atrous] == rates
        assert all(c.padding == c.dilation for c in atrous)


def test_deeplab_widths() -> None:
    head = DeepLabV3PlusDecoder({"layer1": 64, "layer4": 512}, 128, [12, 24, 36])
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    widths = sorted({c.out_channels for c in convs})
    assert widths == [48, 128, 256]
    assert head.aspp.project[0][0].in_channels == 5 * 256  # 1x1 + 3 atrous + pooling
    assert head.fuse[0][0].in_channels == 256 + 48
    assert head.head.out_channels == 128 and head.head.kernel_size == (1, 1)


def test_deeplab_image_pooling_is_global() -> None:
    # Rates larger than the 4x4 layer4 map leave each atrous branch only its centre tap, so a
    # change at layer4 pixel (0, 0) can reach distant output pixels only via image pooling.
    channels, features = fake_features("resnet18", 16, 64, 64)
    head = DeepLabV3PlusDecoder(channels, 8, [100, 100, 100]).eval()
    y = head(features)
    features["layer4"] = features["layer4"].clone()
    features["layer4"][:, :, 0, 0] += 10.0
    diff = (head(features) - y).abs().sum(dim=1)
    assert (diff > 0).all()


def test_fpn_is_a_top_down_sum_of_laterals() -> None:
    channels, features = fake_features("resnet18", 16, 65, 97)
    head = FPNDecoder(channels, 16)
    assert all(lat.out_channels == FPN_DIM for lat in head.laterals.values())

    def up(x, ref):
        return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)

    lat = {k: head.laterals[k](v) for k, v in features.items()}
    p3 = lat["layer3"] + up(lat["layer4"], lat["layer3"])
    p2 = lat["layer2"] + up(p3, lat["layer2"])
    p1 = lat["layer1"] + up(p2, lat["layer1"])
    torch.testing.assert_close(head(features), head.head(p1))


def test_fpn_normalized_laterals_share_the_sum_equally() -> None:
    channels, features = fake_features("resnet18", 16, 65, 97)
    plain = FPNDecoder(channels, 16)
    normed = FPNDecoder(channels, 16, normalize_laterals=True)
    normed.load_state_dict(plain.state_dict())  # same weights, only the sum differs

    def up(x, ref):
        return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)

    lat = {k: F.normalize(normed.laterals[k](v), dim=1) for k, v in features.items()}
    p3 = lat["layer3"] + up(lat["layer4"], lat["layer3"])
    p2 = lat["layer2"] + up(p3, lat["layer2"])
    p1 = lat["layer1"] + up(p2, lat["layer1"])
    torch.testing.assert_close(normed(features), normed.head(p1))

    # Scaling one level's lateral (weight and bias) by 1000 would let it swamp the plain sum;
    # the normalised sum does not change.
    before_plain, before_normed = plain(features), normed(features)
    with torch.no_grad():
        for head in (plain, normed):
            head.laterals["layer4"].weight.mul_(1000.0)
            head.laterals["layer4"].bias.mul_(1000.0)
    torch.testing.assert_close(normed(features), before_normed)
    assert (plain(features) - before_plain).abs().max() > 1.0


def test_fpn_normalize_laterals_comes_from_the_config() -> None:
    channels, _ = fake_features("resnet18", 16, 32, 32)
    cfg = ModelConfig(backbone="resnet18", decoder="fpn", fpn_normalize_laterals=True)
    assert DECODERS["fpn"](cfg, channels).normalize_laterals is True
    assert DECODERS["fpn"](ModelConfig(decoder="fpn"), channels).normalize_laterals is False


def test_fpn_normalize_laterals_needs_the_fpn_decoder() -> None:
    cfg = ModelConfig(decoder="deeplabv3plus", fpn_normalize_laterals=True)
    with pytest.raises(ValueError, match=r"model\.fpn_normalize_laterals=True: only the fpn"):
        cfg.validate()
