"""ViCE: dense SwAV over superpixels (Karlsson et al., BMVC 2022; methods.md section 1).

Every view's per-pixel embeddings are pooled per common superpixel; the center view's region
vectors get Sinkhorn-balanced soft assignments Q over the K prototypes (with a queue of past
center-view regions from `queue_start` on); every other view predicts Q from its own region
vectors: L_swav = mean over views m > 0 and regions r of CE(Q_r, softmax(s_mr / T)).
With representative-pixel pooling the total is (w * coherence + swav) / 2.

Shapes: V views, B images, R regions in the batch (this rank), D embedding, K prototypes,
S view side.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vice import dist
from vice.config import MethodConfig
from vice.ops.pooling import pool_regions
from vice.ops.precision import at_least_float32
from vice.ops.queue import EmbeddingQueue
from vice.ops.sinkhorn import sinkhorn


def swav_cross_entropy(q_RK: torch.Tensor, scores_MRK: torch.Tensor, temperature: float):
    """Sum over predicting views m and regions r of -sum_k Q_rk log softmax(s_mr / T)_k."""
    log_p = F.log_softmax(at_least_float32(scores_MRK) / temperature, dim=-1)
    return -(q_RK.unsqueeze(0) * log_p).sum()


class ViceMethod:
    """The ViCE objective and its state (the queue). Not a module: it owns no parameters."""

    def __init__(self, cfg: MethodConfig, embed_dim: int, world_size: int = 1) -> None:
        self.cfg = cfg
        per_rank = cfg.queue_length // max(1, world_size)
        self.queue = EmbeddingQueue(per_rank, embed_dim) if per_rank > 0 else None

    def to(self, device: torch.device) -> ViceMethod:
        if self.queue is not None:
            self.queue.to(device)
        return self

    def prototypes_frozen(self, step: int) -> bool:
        return step < self.cfg.freeze_prototypes_iters

    def loss(
        self,
        model: torch.nn.Module,
        prototypes: torch.nn.Module,
        batch: dict[str, Any],
        step: int,
        autocast: bool = False,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward pass and loss for one batch; returns (loss to backprop, logged terms).

        `terms` are this rank's shares: summed over ranks they give the global values.

        Both terms are normalised by the global region count (times the world size, since DDP
        averages gradients), so ranks holding different numbers of regions still produce the
        gradient of the global mean: the same gradient as one process on the whole batch.
        """
        cfg = self.cfg
        views_VBCSS = batch["views"]
        ids_VBSS = batch["ids"]
        n_views, n_images = views_VBCSS.shape[:2]
        # The network's dtype (float32, or float64 in the DDP-equivalence test); autocast
        # lowers it inside the forward.
        x_NCSS = views_VBCSS.flatten(0, 1).to(prototypes.weight.dtype)
        device_type = x_NCSS.device.type
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            z_NDSS = model(x_NCSS)
        z_VBDSS = at_least_float32(z_NDSS).unflatten(0, (n_views, n_images))

        weight_KD = prototypes.weight
        regions_VRD, coherence = pool_regions(
            z_VBDSS,
            ids_VBSS,
            batch["num_regions"],
            mode=cfg.pooling,
            prototypes_KD=weight_KD.detach(),
        )
        scores_VRK = prototypes(regions_VRD.flatten(0, 1)).unflatten(0, regions_VRD.shape[:2])
        n_regions = regions_VRD.shape[1]

        with torch.no_grad():
            center_RK = at_least_float32(scores_VRK[0].detach())
            use_queue = self.queue is not None and step >= cfg.queue_start and len(self.queue)
            if use_queue:
                queued_MK = self.queue.tensor().to(center_RK.dtype) @ weight_KD.detach().T
                center_RK = torch.cat([center_RK, queued_MK])
            q_RK = sinkhorn(center_RK, cfg.epsilon, cfg.sinkhorn_iterations)[:n_regions]
            if self.queue is not None:
                self.queue.push(regions_VRD[0].detach())

        counts = torch.tensor([float(n_regions)], device=x_NCSS.device)
        global_regions = float(dist.all_reduce_sum(counts.clone()).item())
        world = torch.distributed.get_world_size() if dist.is_distributed() else 1
        ce_sum = swav_cross_entropy(q_RK, scores_VRK[1:], cfg.temperature)
        swav = ce_sum / ((n_views - 1) * global_regions) * world
        # The coherence loss is this rank's mean over its V * R segments (every region has
        # pixels in every view); reweighted by R / global R it becomes this rank's share of
        # the mean over all segments of the global batch, like the SwAV term.
        coherence = coherence * (n_regions / global_regions * world)
        if cfg.pooling == "representative":
            total = (cfg.coherence_weight * coherence + swav) / 2
        else:
            total = swav
        # Each rank's share of the global value: the trainer sums terms over ranks to log.
        terms = {
            "loss": float(total.detach()) / world,
            "loss_swav": float(swav.detach()) / world,
            "loss_coherence": float(coherence.detach()) / world,
            "regions_per_image": n_regions / n_images / world,
            "queue_used": float(bool(use_queue)) / world,
        }
        return total, terms

    def state_dict(self) -> dict[str, Any]:
        return {"queue": self.queue.state_dict() if self.queue is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.queue is not None and state.get("queue") is not None:
            self.queue.load_state_dict(state["queue"])
