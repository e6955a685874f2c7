"""SGD with LARC / LARS layer-wise trust ratios, and the per-step learning-rate schedule.

LARC (clip mode, as SwAV/ViCE use it): each parameter's step is scaled by
min(eta * ||w|| / (||g|| + wd * ||w||) / lr, 1), so no layer moves faster than a trust ratio
of its weights. LARS (scale mode) multiplies by eta * ||w|| / (||g|| + wd * ||w||) without
the clip. Biases and norm layers (1-d parameters) are excluded from both and from weight
decay, as is usual.
"""

from __future__ import annotations

import math

import torch

from vice.config import OptimConfig


class LARCSGD(torch.optim.SGD):
    """SGD whose per-parameter gradient is rescaled by a LARC/LARS trust ratio first."""

    def __init__(
        self,
        params,
        lr: float,
        momentum: float,
        weight_decay: float,
        trust_coefficient: float,
        clip: bool,
    ) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=0.0)
        self.trust_coefficient = trust_coefficient
        self.clip = clip
        for group in self.param_groups:
            group.setdefault("larc_weight_decay", weight_decay)
            group.setdefault("apply_larc", True)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            wd = group["larc_weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if wd:
                    p.grad.add_(p, alpha=wd)
                if not group["apply_larc"]:
                    continue
                w_norm = torch.linalg.vector_norm(p)
                g_norm = torch.linalg.vector_norm(p.grad)
                ratio = self.trust_coefficient * w_norm / (g_norm + 1e-12)
                if self.clip:
                    ratio = torch.clamp(ratio / group["lr"], max=1.0)
                # Zero weights or gradients (fresh layers, frozen prototypes): plain SGD.
                ratio = torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))
                p.grad.mul_(ratio)
        return super().step(closure)


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weights (ndim > 1) get weight decay and LARC/LARS; biases and norm layers neither."""
    decay, no_decay = [], []
    for _, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "larc_weight_decay": weight_decay, "apply_larc": True},
        {"params": no_decay, "larc_weight_decay": 0.0, "apply_larc": False},
    ]


def _sgd(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    plain = [{"params": g["params"], "weight_decay": g["larc_weight_decay"]} for g in groups]
    return torch.optim.SGD(plain, lr=cfg.start_lr, momentum=cfg.momentum)


def _larc(clip: bool):
    def build(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
        return LARCSGD(
            groups,
            lr=cfg.start_lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            trust_coefficient=cfg.trust_coefficient,
            clip=clip,
        )

    return build


# optim.name -> builder of the optimizer over parameter groups in `param_groups`' format.
OPTIMIZERS = {"sgd_larc": _larc(clip=True), "sgd_lars": _larc(clip=False), "sgd": _sgd}


def build_optimizer(
    groups: torch.nn.Module | list[dict], cfg: OptimConfig
) -> torch.optim.Optimizer:
    """The optimizer over a method's parameter groups (or a module's default groups).

    Groups carry `larc_weight_decay` and `apply_larc` (see `param_groups`); a method that
    excludes more (e.g. its prototypes from weight decay) returns its own groups.
    """
    if isinstance(groups, torch.nn.Module):
        groups = param_groups(groups, cfg.weight_decay)
    return OPTIMIZERS[cfg.name](groups, cfg)


def learning_rate(step: int, total_steps: int, cfg: OptimConfig, steps_per_epoch: int = 1) -> float:
    """Linear warm-up start_lr -> lr over warmup_iters, then `cfg.schedule` to the end."""
    if step < cfg.warmup_iters:
        return cfg.start_lr + (cfg.lr - cfg.start_lr) * step / cfg.warmup_iters
    return SCHEDULES[cfg.schedule](step - cfg.warmup_iters, total_steps - cfg.warmup_iters,
                                   cfg, steps_per_epoch)  # fmt: skip


def _cosine(step: int, span: int, cfg: OptimConfig, steps_per_epoch: int) -> float:
    progress = min(1.0, step / max(1, span))
    return cfg.final_lr + 0.5 * (cfg.lr - cfg.final_lr) * (1 + math.cos(math.pi * progress))


def _poly(step: int, span: int, cfg: OptimConfig, steps_per_epoch: int) -> float:
    return cfg.lr * max(0.0, 1.0 - step / max(1, span)) ** cfg.poly_power


def _poly_epoch(step: int, span: int, cfg: OptimConfig, steps_per_epoch: int) -> float:
    """lr * (1 - e / E)^power for epoch e of E (MaskContrast's adjust_learning_rate)."""
    per = max(1, steps_per_epoch)
    epochs = max(1, math.ceil(span / per))
    return cfg.lr * max(0.0, 1.0 - (step // per) / epochs) ** cfg.poly_power


# After warm-up: (steps since warm-up, steps after warm-up, cfg, steps per epoch) -> lr.
SCHEDULES = {"cosine": _cosine, "poly": _poly, "poly_epoch": _poly_epoch}


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
