"""Dilated ResNet trunks (torchvision definitions) returning their four stage features.

Shape legend:
    B batch, C input channels (3), H/W input height/width,
    C1..C4 channels of layer1..layer4 (64/128/256/512 for ResNet-18,
    256/512/1024/2048 for ResNet-50/101).
Spatial sizes follow torchvision's convolutions: every stride-2 op maps n -> ceil(n / 2), so
layer1 is ceil(H/4) x ceil(W/4), layer2 ceil(H/8), and layer3/layer4 ceil(H/8) at output stride
8 or ceil(H/16) at output stride 16.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock

FEATURE_NAMES = ("layer1", "layer2", "layer3", "layer4")

# Plain registry of torchvision constructors; always called with weights=None (no downloads).
BACKBONES: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
}

# Which of layer2/layer3/layer4 trade their stride 2 for dilation (torchvision's flag order).
_DILATE: dict[int, list[bool]] = {8: [False, True, True], 16: [False, False, True]}


def check_feature_name(name: str) -> None:
    """Raises ValueError unless `name` is one of the trunk's feature names (layer1..layer4)."""
    if name not in FEATURE_NAMES:
        raise ValueError(f"unknown trunk layer {name!r}; one of {list(FEATURE_NAMES)}")


class DilatedResNet(nn.Module):
    """A torchvision ResNet without avgpool/fc whose forward returns layer1..layer4 features.

    Module names equal torchvision's (conv1, bn1, layer1, ...), so a torchvision state dict
    minus its `fc.*` entries loads into it unchanged.

    Attributes:
        channels: output channels per feature name, e.g. {"layer1": 256, ..., "layer4": 2048}.
        output_stride: 8 or 16, the stride of layer3/layer4 relative to the input.
    """

    def __init__(self, resnet: torchvision.models.ResNet, output_stride: int) -> None:
        super().__init__()
        self.conv1 = resnet.conv1
        self.bn1 = resnet.bn1
        self.relu = resnet.relu
        self.maxpool = resnet.maxpool
        self.layer1 = resnet.layer1
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        self.layer4 = resnet.layer4
        self.output_stride = output_stride
        self.channels: dict[str, int] = {
            name: _out_channels(getattr(self, name)) for name in FEATURE_NAMES
        }

    def forward(self, x_BCHW: Tensor, until: str = "layer4") -> dict[str, Tensor]:
        """Returns {"layer1": (B, C1, H/4, W/4), "layer2": H/8, "layer3"/"layer4": H/OS}, up to
        and including `until` (evaluating an early layer need not run the deep ones)."""
        check_feature_name(until)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x_BCHW))))
        features: dict[str, Tensor] = {}
        for name in FEATURE_NAMES:
            x = getattr(self, name)(x)
            features[name] = x
            if name == until:
                break
        return features


def build_backbone(name: str, output_stride: int = 8, weights: str | None = None) -> DilatedResNet:
    """Builds a dilated ResNet trunk, optionally initialised from a local weight file.

    Args:
        name: a key of BACKBONES ("resnet18", "resnet50", "resnet101").
        output_stride: 8 (layer3/layer4 dilated 2/4) or 16 (layer4 dilated 2).
        weights: path of a torchvision-format ResNet state dict (`torch.save(m.state_dict())`);
            `fc.*` entries are ignored, every other key must match. None keeps torchvision's
            random initialisation (drawn from torch's global RNG).

    Raises:
        ValueError: unknown name or output stride, or an unusable weight file (the message
            names `model.init_weights`, the path and the problem).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    if output_stride not in _DILATE:
        raise ValueError(f"output_stride must be one of {sorted(_DILATE)}, got {output_stride}")
    dilate = _DILATE[output_stride]
    if name == "resnet18":
        resnet = BACKBONES[name](weights=None)
        dilate_basic_blocks(resnet, dilate)
    else:
        resnet = BACKBONES[name](weights=None, replace_stride_with_dilation=dilate)
    trunk = DilatedResNet(resnet, output_stride)
    if weights is not None:
        load_local_weights(trunk, weights)
    return trunk


def dilate_basic_blocks(resnet: torchvision.models.ResNet, dilate: list[bool]) -> None:
    """Replaces the stride of layer2..layer4 by dilation in a BasicBlock ResNet, in place.

    torchvision's BasicBlock refuses `dilation > 1`, so this performs the conversion that
    `replace_stride_with_dilation` performs for Bottleneck, with the same convention: a dilated
    layer's first block keeps the dilation of the layer before it (its 3x3 convs and its
    downsample get stride 1) and the remaining blocks use the doubled dilation. At output stride
    8 ResNet-18's layer3 is (1, 2) and layer4 (2, 4) per block. The published ViCE code instead
    gives every block of a layer the new dilation; we keep torchvision's rule so that ResNet-18
    and ResNet-50/101 are dilated alike and pretrained weights see the receptive field growth
    at the same place as in the Bottleneck trunks.

    Args:
        resnet: a torchvision ResNet built from BasicBlock with no dilation yet.
        dilate: for layer2, layer3, layer4, whether to trade its stride 2 for dilation.
    """
    dilation = 1
    for layer, flag in zip((resnet.layer2, resnet.layer3, resnet.layer4), dilate, strict=True):
        if not flag:
            continue
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(layer):
            if not isinstance(block, BasicBlock):
                raise TypeError(f"expected BasicBlock, got {type(block).__name__}")
            block_dilation = previous if i == 0 else dilation
            for conv in (block.conv1, block.conv2):
                conv.stride = (1, 1)
                conv.dilation = (block_dilation, block_dilation)
                conv.padding = (block_dilation, block_dilation)  # keeps 3x3 outputs same-size
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)
            block.stride = 1


def load_local_weights(trunk: DilatedResNet, path: str) -> None:
    """Loads a torchvision ResNet state dict from `path` into `trunk`, ignoring `fc.*`.

    Raises:
        ValueError: naming `model.init_weights`, the path and the problem (missing file, unreadable
            file, not a state dict, missing/unexpected keys or shape mismatches).
    """

    def fail(problem: str) -> ValueError:
        return ValueError(f"model.init_weights={path!r}: {problem}")

    if not Path(path).is_file():
        raise fail("no such file (weights are read from a local file, never downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights_only errors all mean "not usable"
        raise fail(f"cannot be read as a torch state dict ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise fail("expected a torchvision ResNet state_dict (a dict of tensors)")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = trunk.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            problems.append(f"{len(keys)} {label} keys (e.g. {keys[:3]})")
    if mismatched:
        k = mismatched[0]
        problems.append(
            f"{len(mismatched)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)}, "
            f"model {tuple(own[k].shape)})"
        )
    if problems:
        raise fail("does not match the backbone: " + "; ".join(problems))
    trunk.load_state_dict(state, strict=True)


def _out_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    conv = last.conv3 if hasattr(last, "conv3") else last.conv2
    return int(conv.out_channels)
