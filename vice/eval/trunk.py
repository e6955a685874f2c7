"""A trained model's trunk features as a dense embedding, for evaluating them like one.

Shape legend: B batch, C input channels (3), H/W input height/width, F channels of the chosen
trunk layer.

The clustering protocol of the papers runs k-means on the final embedding. Evaluating a trunk
layer through the same path shows where in the network the learned information sits; at small
scale (docs/vice_synthetic_history.md) the trunk's layer2 clusters the synthetic textures
better than the embedding built on top of it.
"""

from __future__ import annotations

from torch import Tensor, nn

from vice.models.backbones import check_feature_name
from vice.models.model import upsample_unit


class TrunkLayer(nn.Module):
    """`model.backbone(x)[layer]`, upsampled to the input size and L2-normalised.

    Args:
        model: a dense model with a `backbone` returning the layer1..layer4 feature dict.
        layer: one of "layer1".."layer4".

    Raises:
        ValueError: unknown layer name (the message lists the allowed ones).
    """

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        check_feature_name(layer)  # at construction, not at the first forward
        self.backbone = model.backbone
        self.layer = layer

    def forward(self, x_BCHW: Tensor) -> Tensor:
        """Returns f_BFHW: unit-norm (along F) trunk features of every input pixel, float32."""
        features = self.backbone(x_BCHW, until=self.layer)  # the deeper layers are not run
        return upsample_unit(features[self.layer], x_BCHW.shape[-2:])
