"""The upper bound of a dense self-supervised result: the same network trained with labels.

Same architecture (the method's `export()`), same budget (steps x images per step) and the
same input size as pretraining, but every pixel's class is given: a 1x1 linear classifier on
the unit embedding, per-pixel cross-entropy, Adam. What the embedding then scores under the
same evaluation is what this network and budget can reach when the semantics are told.

Shapes: B images, S crop side, D embedding, K classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vice.config import Config
from vice.data.datasets import build_source
from vice.data.datasets.base import IGNORE_INDEX
from vice.eval.features import load_eval_set


def train_supervised(
    cfg: Config, network: nn.Module, lr: float = 1e-3, log_every: int = 50
) -> list[float]:
    """Trains `network` (in place) for cfg.trainer.max_steps steps of cfg.data.batch_size
    random view-sized crops of the labelled train split; returns the loss of every step."""
    source = build_source(cfg.data, split=cfg.data.split, labels=True)
    steps, batch = cfg.trainer.max_steps, cfg.data.batch_size
    if steps <= 0:
        raise ValueError("the upper bound needs trainer.max_steps > 0 (the method's budget)")
    crop = cfg.data.views.view_size
    side = max(cfg.data.views.short_side, crop)
    images_NSS3, labels_NSS = load_eval_set(source, side, min(len(source), steps * batch))
    mean = torch.tensor(cfg.data.views.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.views.std).view(1, 3, 1, 1)
    dim = int(cfg.model.embed_dim)
    head = nn.Conv2d(dim, source.num_classes, 1)
    torch.manual_seed(cfg.trainer.seed)
    optimizer = torch.optim.Adam([*network.parameters(), *head.parameters()], lr=lr)
    rng = np.random.default_rng([cfg.trainer.seed, 7])
    network.train()
    losses = []
    for step in range(steps):
        idx = rng.integers(len(images_NSS3), size=batch)
        y0, x0 = rng.integers(side - crop + 1, size=2)
        img = torch.from_numpy(images_NSS3[idx, y0 : y0 + crop, x0 : x0 + crop])
        lab = torch.from_numpy(labels_NSS[idx, y0 : y0 + crop, x0 : x0 + crop])
        x_B3SS = (img.permute(0, 3, 1, 2).float() / 255 - mean) / std
        if rng.random() < 0.5:
            x_B3SS, lab = x_B3SS.flip(-1), lab.flip(-1)
        # Unit embeddings: a scale of 10 lets the linear head reach confident logits.
        logits_BKSS = head(10 * network(x_B3SS))
        loss = F.cross_entropy(logits_BKSS, lab, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"supervised step {step + 1}/{steps} | ce {np.mean(losses[-log_every:]):.4f}")
    network.eval()
    return losses
