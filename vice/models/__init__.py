"""Segmentation networks producing dense unit embeddings, and ViCE/SwAV-style prototypes."""

from __future__ import annotations

from vice.config import ModelConfig
from vice.models.backbones import BACKBONES, DilatedResNet, build_backbone
from vice.models.decoders import DECODERS, DeepLabV3PlusDecoder, FPNDecoder
from vice.models.model import DenseEmbeddingModel
from vice.models.prototypes import Prototypes

__all__ = [
    "BACKBONES",
    "DECODERS",
    "DeepLabV3PlusDecoder",
    "DenseEmbeddingModel",
    "DilatedResNet",
    "FPNDecoder",
    "Prototypes",
    "build_backbone",
    "build_model",
]


def build_model(cfg: ModelConfig) -> DenseEmbeddingModel:
    """Builds trunk and decoder from `cfg` (validated first).

    Parameters are drawn from torch's global RNG (seed it before calling); the trunk is then
    overwritten by `cfg.init_weights` when set. channels_last and SyncBatchNorm are the trainer's.

    Raises:
        ValueError: an invalid config value or an unusable `model.init_weights` file.
    """
    cfg.validate("model")
    backbone = build_backbone(cfg.backbone, cfg.output_stride, cfg.init_weights)
    decoder = DECODERS[cfg.decoder](cfg, backbone.channels)
    return DenseEmbeddingModel(backbone, decoder)
