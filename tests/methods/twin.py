"""A tiny teacher-student method defined outside the library, to hold the method interface to
what SlotCon-like methods need: two views, an EMA teacher (parameters and BatchNorm buffers),
a predictor head only the student has, and a replicated counter buffer.

BYOL on globally pooled dense embeddings: the student's predicted embedding of one view
matches the teacher's embedding of the other, symmetrised. Evaluation reads the teacher.

Shapes: B images per rank, D embedding.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vice.config import MethodConfig, _check_range, _fail
from vice.methods import METHODS
from vice.methods.base import Method
from vice.models import build_model


@dataclass
class TwinConfig(MethodConfig):
    name: str = "twin"
    momentum: float = 0.9  # teacher <- momentum * teacher + (1 - momentum) * student
    hidden: int = 16  # predictor width

    def validate(self, prefix: str = "method") -> None:
        super().validate(prefix)
        _check_range(f"{prefix}.momentum", self.momentum, 0.0, 1.0)
        _check_range(f"{prefix}.hidden", self.hidden, 1)


class TwinMethod(Method):
    Config = TwinConfig
    sample_builder = "vice_views"  # views 0 and 1 of ViCE's builder, masking off

    def __init__(self, cfg, world_size: int = 1) -> None:
        super().__init__(cfg, world_size)
        self.cfg = cfg.method
        dim = cfg.model.embed_dim
        self.student = build_model(cfg.model)
        self.predictor = nn.Sequential(
            nn.Linear(dim, self.cfg.hidden), nn.ReLU(), nn.Linear(self.cfg.hidden, dim)
        )
        self.teacher = copy.deepcopy(self.student)
        self.teacher.requires_grad_(False)
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.int64))

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.data.views.num_views != 2:
            raise _fail("data.views.num_views", cfg.data.views.num_views, "twin uses 2 views")
        if cfg.data.masking.enabled:
            raise _fail(
                "data.masking.enabled", True, "twin does not mask; set data.masking.enabled=false"
            )

    def training_step(self, batch, step):
        views_VBCSS = batch.views.to(self.predictor[0].weight.dtype)
        both = torch.cat([views_VBCSS[0], views_VBCSS[1]])  # (2B, 3, S, S)
        swapped = torch.cat([views_VBCSS[1], views_VBCSS[0]])
        z_ND = self.student(both).mean(dim=(2, 3))
        p_ND = F.normalize(self.predictor(z_ND), dim=1)
        with torch.no_grad():
            t_ND = F.normalize(self.teacher(swapped).mean(dim=(2, 3)), dim=1)
        # Each rank's mean; DDP averages gradients, so equal per-rank batches give the
        # gradient of the global mean.
        loss = 2 - 2 * (p_ND * t_ND).sum(dim=1).mean()
        world = self.world_size
        return loss, {"loss": loss.item() / world, "loss_byol": loss.item() / world}

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        m = self.cfg.momentum
        for t, s in zip(self.teacher.parameters(), self.student.parameters(), strict=True):
            t.mul_(m).add_(s.detach(), alpha=1 - m)
        for t, s in zip(self.teacher.buffers(), self.student.buffers(), strict=True):
            t.copy_(s)
        self.ema_updates += 1

    def export(self) -> nn.Module:
        return self.teacher


def register() -> None:
    METHODS.setdefault("twin", TwinMethod)


def unregister() -> None:
    METHODS.pop("twin", None)
