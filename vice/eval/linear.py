"""The linear probe: a 1x1 convolution trained on frozen per-pixel features.

Shape legend: N images, D feature channels, S side in px, P pixels (N*S*S), V labelled
pixels, B pixels per step, C classes.

A 1x1 convolution is a linear map applied to every pixel on its own, so it is trained on the
(V, D) matrix of labelled pixels: each step draws B random labelled pixels. That is the same
objective as training the conv on whole images with ignore_index (pixels are independent under
a 1x1 conv), at a fraction of the cost.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vice.data.datasets.base import IGNORE_INDEX
from vice.eval.features import pixels_PD

_PREDICT_ROWS = 1 << 18  # pixels per prediction block


def train_linear_probe(
    feats_NDSS: torch.Tensor,
    labels_NSS: np.ndarray | torch.Tensor,
    num_classes: int,
    iters: int = 12_000,
    lr: float = 0.01,
    batch_pixels: int = 65_536,
    seed: int = 0,
    device: str | torch.device = "cpu",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> nn.Conv2d:
    """Fits a (D -> C) 1x1 conv with cross-entropy on labelled pixels.

    SGD with momentum, learning rate `lr * (1 - t / iters) ** 0.9` (poly schedule, per step).
    Weights start at zero (the problem is convex; zero start makes the probe a pure function
    of the data and the seed). Pixels labelled IGNORE_INDEX are never drawn.

    Args:
        feats_NDSS: Frozen features (channels-last avoids a copy; see `extract_features`).
        labels_NSS: Class ids in [0, num_classes) or IGNORE_INDEX.
        num_classes: C.
        iters: Optimizer steps.
        lr: Peak learning rate.
        batch_pixels: Labelled pixels drawn (with replacement) per step.
        seed: Seed of the pixel draws.
        device: Where training runs; the labelled pixels are moved there once.
        momentum, weight_decay: SGD settings.

    Returns:
        The trained head, `nn.Conv2d(D, C, 1)`, on `device`, in eval mode.
    """
    device = torch.device(device)
    x_PD = pixels_PD(feats_NDSS)
    y_P = torch.as_tensor(np.asarray(labels_NSS)).reshape(-1).long()
    if y_P.shape[0] != x_PD.shape[0]:
        raise ValueError(f"{x_PD.shape[0]} feature pixels but {y_P.shape[0]} labels")
    valid_P = y_P != IGNORE_INDEX
    if not valid_P.any():
        raise ValueError("the linear probe's training labels are all IGNORE_INDEX")
    y_V = y_P[valid_P]
    if y_V.min() < 0 or y_V.max() >= num_classes:
        raise ValueError(f"training labels must be in [0, {num_classes}) or {IGNORE_INDEX}")
    # Selecting rows copies; skip that when every pixel is labelled.
    x_VD = x_PD if bool(valid_P.all()) else x_PD[valid_P]
    x_VD = x_VD.to(device, torch.float32)
    y_V = y_V.to(device)
    v, d = x_VD.shape

    weight_CD = torch.zeros((num_classes, d), device=device, requires_grad=True)
    bias_C = torch.zeros(num_classes, device=device, requires_grad=True)
    params = (weight_CD, bias_C)
    # torch.optim.SGD (dampening 0, no Nesterov) written out: the first use of torch.optim
    # imports torch._dynamo, seconds of start-up for a two-tensor update.
    bufs = [torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(seed)
    for step in range(iters):
        lr_t = lr * (1 - step / iters) ** 0.9
        idx_B = torch.randint(v, (batch_pixels,), generator=gen).to(device, non_blocking=True)
        x_BD = x_VD.index_select(0, idx_B)  # faster than x_VD[idx_B] on the CPU
        loss = F.cross_entropy(F.linear(x_BD, weight_CD, bias_C), y_V[idx_B])
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, buf in zip(params, grads, bufs, strict=True):
                if weight_decay:
                    g = g.add(p, alpha=weight_decay)
                buf.mul_(momentum).add_(g)
                p.sub_(buf, alpha=lr_t)

    head = nn.Conv2d(d, num_classes, kernel_size=1).to(device)
    with torch.no_grad():
        head.weight.copy_(weight_CD.detach()[:, :, None, None])
        head.bias.copy_(bias_C.detach())
    return head.eval()


@torch.no_grad()
def predict_linear(head: nn.Conv2d, feats_NDSS: torch.Tensor) -> torch.Tensor:
    """Class of every pixel under the probe: int64 (N, S, S) on the CPU."""
    n, _, h, w = feats_NDSS.shape
    x_PD = pixels_PD(feats_NDSS)
    weight_CD = head.weight[:, :, 0, 0]
    pred_P = torch.empty(x_PD.shape[0], dtype=torch.long)
    for start in range(0, x_PD.shape[0], _PREDICT_ROWS):
        chunk = x_PD[start : start + _PREDICT_ROWS].to(weight_CD.device, torch.float32)
        pred_P[start : start + _PREDICT_ROWS] = (
            F.linear(chunk, weight_CD, head.bias).argmax(1).cpu()
        )
    return pred_P.reshape(n, h, w)
