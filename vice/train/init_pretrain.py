"""Image-level supervised pretraining of a trunk: the analogue of the paper's ImageNet init.

ViCE's networks start from ImageNet weights; here nothing can be downloaded, so a trunk is
pretrained on a labelled split that neither pretraining nor evaluation reads (the synthetic
data sets' "init" split) to predict which classes an image contains (multi-label, binary
cross-entropy on global-average-pooled layer4 features): image-level labels only, as an
ImageNet classifier has, never pixels. The result is a torchvision-format ResNet state dict
that `model.init_weights` loads, so that "init only" and "init + method" can be compared.

Shapes: B images, C classes, S image side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vice.data.datasets.base import IGNORE_INDEX, ImageSource
from vice.eval.features import load_eval_set
from vice.models.backbones import DilatedResNet, build_backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class InitRecipe:
    backbone: str = "resnet18"
    output_stride: int = 16
    images: int = 512  # labelled images of the init split (loaded once)
    size: int = 128  # px, square crops
    steps: int = 300
    batch_size: int = 16
    lr: float = 0.05  # SGD momentum 0.9, cosine to 0
    weight_decay: float = 1e-4
    seed: int = 0


def presence_BC(labels_BSS: np.ndarray, num_classes: int) -> torch.Tensor:
    """Which classes each image contains: float32 (B, C) of 0/1 (ignored pixels excluded)."""
    out = torch.zeros(labels_BSS.shape[0], num_classes)
    for b, lab in enumerate(labels_BSS):
        present = np.unique(lab[lab != IGNORE_INDEX])
        out[b, torch.from_numpy(present.astype(np.int64))] = 1.0
    return out


class ImageClassifier(nn.Module):
    """Trunk -> global average pool of layer4 -> linear logits per class."""

    def __init__(self, trunk: DilatedResNet, num_classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(trunk.channels["layer4"], num_classes)

    def forward(self, x_BCSS: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x_BCSS)["layer4"].mean(dim=(2, 3)))


def pretrain_image_level(
    source: ImageSource, recipe: InitRecipe, log_every: int = 50
) -> tuple[DilatedResNet, list[float]]:
    """Trains a fresh trunk to predict the classes present in `source`'s images.

    Returns the trunk (eval mode) and the loss of every step.
    """
    if source.num_classes is None:
        raise ValueError(f"{type(source).__name__} has no labels: image-level init needs them")
    torch.manual_seed(recipe.seed)
    images_NSS3, labels_NSS = load_eval_set(source, recipe.size, recipe.images)
    targets_NC = presence_BC(labels_NSS, source.num_classes)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    x_N3SS = (torch.from_numpy(images_NSS3).permute(0, 3, 1, 2).float() / 255 - mean) / std
    model = ImageClassifier(
        build_backbone(recipe.backbone, recipe.output_stride), source.num_classes
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.steps)
    gen = torch.Generator().manual_seed(recipe.seed)
    losses = []
    model.train()
    for step in range(recipe.steps):
        idx = torch.randint(len(x_N3SS), (recipe.batch_size,), generator=gen)
        x = x_N3SS[idx]
        flip = torch.rand(recipe.batch_size, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = F.binary_cross_entropy_with_logits(model(x), targets_NC[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            window = losses[-log_every:]
            print(f"step {step + 1}/{recipe.steps} | bce {sum(window) / len(window):.4f}")
    return model.trunk.eval(), losses


def save_trunk(trunk: DilatedResNet, path: str | Path) -> Path:
    """Writes the trunk as a torchvision ResNet state dict (no fc), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(trunk.state_dict(), tmp)
    os.replace(tmp, path)
    return path
