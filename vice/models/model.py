"""The dense embedding network: dilated ResNet trunk + decoder.

Shape legend: B batch, C input channels (3), H/W input height/width, D embed_dim,
h1 x w1 decoder resolution (layer1, ceil(H/4) x ceil(W/4)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vice.models.backbones import DilatedResNet
from vice.ops.precision import at_least_float32


class DenseEmbeddingModel(nn.Module):
    """Per-pixel L2-normalised embeddings at the input resolution.

    What methods train (as their student, teacher or encoder) and what evaluation reads
    (`Method.export()`); heads, prototypes and teachers belong to the method.

    Args:
        backbone: trunk returning the layer1..layer4 feature dict.
        decoder: maps that dict to (B, D, h1, w1).
    """

    def __init__(self, backbone: DilatedResNet, decoder: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder

    def forward(self, x_BCHW: Tensor) -> Tensor:
        """Returns z_BDHW: unit-norm (along D) embeddings of every input pixel, float32."""
        return upsample_unit(self.decoder(self.backbone(x_BCHW)), x_BCHW.shape[-2:])


def upsample_unit(y_BDhw: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear upsampling of (B, D, h, w) features to `size` (H, W), then unit norm along D.

    Runs in float32 even under bf16 autocast: bf16 keeps 8 mantissa bits, too few for unit
    norms that the loss compares across views and prototypes.
    """
    with torch.autocast(device_type=y_BDhw.device.type, enabled=False):
        y_BDHW = F.interpolate(
            at_least_float32(y_BDhw), size=tuple(size), mode="bilinear", align_corners=False
        )
        return F.normalize(y_BDHW, dim=1, eps=1e-12)
