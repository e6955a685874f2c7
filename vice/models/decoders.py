"""Decoders from the trunk's stage features to a dense embedding at layer1 resolution (H/4).

Shape legend:
    B batch, D embed_dim, A ASPP/decoder width (256), L low-level width (48),
    F FPN width (128), C1..C4 trunk channels of layer1..layer4,
    h1 x w1 layer1 resolution (ceil(H/4) x ceil(W/4)), hs x ws layer4 resolution (H/8 or H/16).

Every decoder takes the trunk's feature dict and returns (B, D, h1, w1); the model upsamples it
to the input resolution. `DECODERS` maps a config name to a builder
`(cfg: ModelConfig, channels: dict[str, int]) -> nn.Module`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vice.config import ModelConfig

ASPP_DIM = 256  # DeepLabV3+ width of every ASPP branch and of the decoder convs
LOW_LEVEL_DIM = 48  # DeepLabV3+ projection of layer1 (paper Table 1: 48 works best)
FPN_DIM = 128  # PiCIE's lateral width


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _init_weights(module: nn.Module) -> None:
    # Same scheme as torchvision's ResNet, so trunk and head start at comparable scales.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _resize(x_BCHW: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x_BCHW.shape[-2:]) == size:
        return x_BCHW  # OS 8 gives layer2..4 equal sizes; bilinear at scale 1 is the identity
    return F.interpolate(x_BCHW, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, three 3x3 atrous branches, image pooling.

    The image-pooling branch has BatchNorm over a 1x1 map, so training mode needs more than one
    sample per forward (all views of a batch are forwarded together, so B >= 2 in practice).
    """

    def __init__(
        self, c_in: int, rates: Sequence[int], dim: int = ASPP_DIM, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(c_in, dim, 1)] + [_conv_bn_relu(c_in, dim, 3, r) for r in rates]
        )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(c_in, dim, 1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        self.project = nn.Sequential(
            _conv_bn_relu(dim * (len(rates) + 2), dim, 1),
            nn.Dropout(dropout),
        )

    def forward(self, x_BCHW: Tensor) -> Tensor:
        """(B, C4, hs, ws) -> (B, A, hs, ws)."""
        h, w = x_BCHW.shape[-2:]
        outs = [branch(x_BCHW) for branch in self.branches]
        # A 1x1 map bilinearly upsampled is a constant map: expanding is exact and cheaper.
        outs.append(self.pool(x_BCHW).expand(-1, -1, h, w))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabV3+ head: ASPP on layer4, fused with a 48-channel projection of layer1.

    Args:
        channels: trunk channels per feature name (needs "layer1" and "layer4").
        embed_dim: D, channels of the output embedding.
        rates: the three atrous rates at the trunk's actual output stride.
        dropout: after the ASPP projection. 0 by default: the published ViCE code has it
            commented out, and in self-supervised training it would only add noise to the
            embeddings that Sinkhorn turns into targets.
    """

    def __init__(
        self,
        channels: Mapping[str, int],
        embed_dim: int,
        rates: Sequence[int],
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if len(rates) != 3:
            raise ValueError(f"ASPP needs 3 atrous rates, got {list(rates)}")
        self.aspp = ASPP(channels["layer4"], rates, ASPP_DIM, dropout)
        self.low_level = _conv_bn_relu(channels["layer1"], LOW_LEVEL_DIM, 1)
        self.fuse = nn.Sequential(
            _conv_bn_relu(ASPP_DIM + LOW_LEVEL_DIM, ASPP_DIM, 3),
            _conv_bn_relu(ASPP_DIM, ASPP_DIM, 3),
        )
        self.head = nn.Conv2d(ASPP_DIM, embed_dim, 1)
        _init_weights(self)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Trunk features -> (B, D, h1, w1)."""
        low_BLhw = self.low_level(features["layer1"])
        aspp_BAhw = _resize(self.aspp(features["layer4"]), tuple(low_BLhw.shape[-2:]))
        y_BAhw = self.fuse(torch.cat([aspp_BAhw, low_BLhw], dim=1))
        return self.head(y_BAhw)


class FPNDecoder(nn.Module):
    """PiCIE-style FPN: 1x1 laterals of layer1..layer4, top-down upsample-and-sum, 1x1 head.

    As in PiCIE the laterals have bias and no normalisation or activation; the final 1x1 conv
    only maps F = 128 channels to embed_dim (for D = 128 it is a re-parametrisation).

    With `normalize_laterals` every lateral is L2-normalised per pixel before the sum (our
    option, not PiCIE's). Without it the sum is dominated by whichever level has the largest
    activations; from random init those are the coarse layer3/layer4 laterals (more input
    channels), and on the synthetic scenes the embedding then clustered no better than raw
    colour while layer2 alone did (docs/vice_synthetic_history.md). Normalised, each level holds an
    equal share of every pixel's embedding.

    Args:
        channels: trunk channels per feature name (layer1..layer4).
        embed_dim: D, channels of the output embedding.
        dim: F, the lateral width.
        normalize_laterals: unit-norm (along F) laterals before the top-down sum.
    """

    def __init__(
        self,
        channels: Mapping[str, int],
        embed_dim: int,
        dim: int = FPN_DIM,
        normalize_laterals: bool = False,
    ) -> None:
        super().__init__()
        self.names = ("layer4", "layer3", "layer2", "layer1")  # coarse to fine
        self.laterals = nn.ModuleDict({n: nn.Conv2d(channels[n], dim, 1) for n in self.names})
        self.head = nn.Conv2d(dim, embed_dim, 1)
        self.normalize_laterals = normalize_laterals
        _init_weights(self)

    def _lateral(self, name: str, x_BChw: Tensor) -> Tensor:
        y_BFhw = self.laterals[name](x_BChw)
        return F.normalize(y_BFhw, dim=1) if self.normalize_laterals else y_BFhw

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Trunk features -> (B, D, h1, w1)."""
        y_BFhw = self._lateral("layer4", features["layer4"])
        for name in self.names[1:]:
            lateral_BFhw = self._lateral(name, features[name])
            y_BFhw = lateral_BFhw + _resize(y_BFhw, tuple(lateral_BFhw.shape[-2:]))
        return self.head(y_BFhw)


def aspp_rates_at(rates: Sequence[int], output_stride: int) -> list[int]:
    """Scales ASPP rates given at output stride 8 to `output_stride` (12/24/36 -> 6/12/18 at 16).

    DeepLab doubles the rates when halving the output stride so that each branch covers the same
    image area; `model.aspp_rates` is stated at OS 8, the published ViCE setting.
    """
    return [max(1, r * 8 // output_stride) for r in rates]


def build_deeplabv3plus(cfg: ModelConfig, channels: Mapping[str, int]) -> DeepLabV3PlusDecoder:
    """DeepLabV3+ decoder for `cfg` (embed_dim, aspp_rates at cfg.output_stride)."""
    return DeepLabV3PlusDecoder(
        channels, cfg.embed_dim, aspp_rates_at(cfg.aspp_rates, cfg.output_stride)
    )


def build_fpn(cfg: ModelConfig, channels: Mapping[str, int]) -> FPNDecoder:
    """PiCIE-style FPN decoder for `cfg` (embed_dim, fpn_normalize_laterals)."""
    return FPNDecoder(channels, cfg.embed_dim, normalize_laterals=cfg.fpn_normalize_laterals)


DECODERS: dict[str, Callable[[ModelConfig, Mapping[str, int]], nn.Module]] = {
    "deeplabv3plus": build_deeplabv3plus,
    "fpn": build_fpn,
}
