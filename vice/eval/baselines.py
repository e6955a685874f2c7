"""Reference features that need no model, evaluated through the same path as a model's.

`raw_colour_features`: each pixel's normalised RGB. k-means on it is the "clustering raw
colours" floor that a learned embedding must beat; note that the k-means of this package is
spherical, so it clusters the direction of (colour - mean colour), i.e. roughly hue and
saturation relative to the data set's mean colour, not brightness along that direction.
"""

from __future__ import annotations

import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def raw_colour_features(
    images_NSS3: np.ndarray,
    mean: tuple[float, ...] | list[float] = IMAGENET_MEAN,
    std: tuple[float, ...] | list[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Normalised RGB as a 3-channel feature map: float32 (N, 3, S, S), channels-last."""
    x_NSS3 = torch.from_numpy(np.ascontiguousarray(images_NSS3)).float() / 255.0
    x_NSS3 = (x_NSS3 - torch.tensor(mean)) / torch.tensor(std)
    # permute of a (N, S, S, 3) tensor is already channels-last: no copy.
    return x_NSS3.permute(0, 3, 1, 2)
