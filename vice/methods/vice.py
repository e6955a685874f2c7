"""ViCE: dense SwAV over superpixels (Karlsson et al., BMVC 2022; methods.md section 1).

Every view's per-pixel embeddings are pooled per common superpixel; the center view's region
vectors get Sinkhorn-balanced soft assignments Q over the K prototypes (with a queue of past
center-view regions from `queue_start` on); every other view predicts Q from its own region
vectors: L_swav = mean over views m > 0 and regions r of CE(Q_r, softmax(s_mr / T)).
With representative-pixel pooling the total is (w * coherence + swav) / 2, where coherence
is the mean distance of a region's pixels to its (detached) representative pixel, averaged
per (view, image) and then over them, as the published code does.

Shapes: V views, B images, R regions in the batch (this rank), D embedding, K prototypes,
S view side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from vice import dist
from vice.config import MethodConfig, _check_range, _fail
from vice.methods.base import Method
from vice.models import build_model
from vice.models.prototypes import Prototypes
from vice.ops.pooling import pool_regions, region_index
from vice.ops.precision import at_least_float32
from vice.ops.queue import EmbeddingQueue
from vice.ops.sinkhorn import sinkhorn

if TYPE_CHECKING:
    from vice.config import Config
    from vice.data.batches import ViceBatch

POOLINGS = ("mean", "representative")


@dataclass
class ViceConfig(MethodConfig):
    """ViCE's loss (methods.md section 1); every constant is the published default."""

    name: str = "vice"
    num_prototypes: int = 128  # K (published: 128 DeepLab, 27 FPN)
    temperature: float = 0.1  # softmax temperature of the predicting views
    epsilon: float = 0.05  # Sinkhorn-Knopp entropic regularisation
    sinkhorn_iterations: int = 3
    pooling: str = "representative"  # "mean" (FPN runs) or "representative" (DeepLab runs)
    coherence_weight: float = 1.0  # total = (coherence_weight * coherence + swav) / 2
    queue_length: int = 160_000  # global (all ranks); 0 disables the queue
    queue_start: int = 313  # iteration from which the queue joins Sinkhorn
    freeze_prototypes_iters: int = 313  # prototypes get no update for this many iterations

    def validate(self, prefix: str = "method") -> None:
        super().validate(prefix)
        _check_range(f"{prefix}.num_prototypes", self.num_prototypes, 2)
        _check_range(f"{prefix}.temperature", self.temperature, 0.0, lo_open=True)
        _check_range(f"{prefix}.epsilon", self.epsilon, 0.0, lo_open=True)
        _check_range(f"{prefix}.sinkhorn_iterations", self.sinkhorn_iterations, 1)
        if self.pooling not in POOLINGS:
            raise _fail(f"{prefix}.pooling", self.pooling, f"one of {list(POOLINGS)}")
        _check_range(f"{prefix}.coherence_weight", self.coherence_weight, 0.0)
        _check_range(f"{prefix}.queue_length", self.queue_length, 0)
        _check_range(f"{prefix}.queue_start", self.queue_start, 0)
        _check_range(f"{prefix}.freeze_prototypes_iters", self.freeze_prototypes_iters, 0)


def swav_cross_entropy(q_RK: torch.Tensor, scores_MRK: torch.Tensor, temperature: float):
    """Sum over predicting views m and regions r of -sum_k Q_rk log softmax(s_mr / T)_k."""
    log_p = F.log_softmax(at_least_float32(scores_MRK) / temperature, dim=-1)
    return -(q_RK.unsqueeze(0) * log_p).sum()


def vice_loss(
    z_VBDSS: torch.Tensor,
    ids_VBSS: torch.Tensor,
    num_regions_B: torch.Tensor,
    prototypes_KD: torch.Tensor,
    cfg: ViceConfig,
    queue_MD: torch.Tensor | None = None,
    *,
    global_regions: float | None = None,
    global_images: float | None = None,
    world: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ViCE's loss on one rank's unit embeddings, as the published code computes it.

    Regions are pooled per view (mean, or the most prototype-confident pixel with the
    coherence term: the representative is detached inside it, and coherence is averaged per
    (view, image) and then over them). The center view's region scores, with the queue's
    (`queue_MD`, scored by the current prototypes) below them, get Sinkhorn targets; every
    other view predicts them.

    Both terms are normalised by global counts (`global_regions` regions, `global_images`
    images over all ranks; default: this rank's) times `world`, because DDP averages
    gradients: ranks holding different numbers of regions then produce the gradient of the
    global mean, the same as one process on the whole batch.

    Returns:
        total: (coherence_weight * coherence + swav) / 2 for representative pooling, swav for
            mean pooling; swav; coherence (0 for mean pooling); center_RD: the center view's
            region vectors, detached (what the queue keeps); q_RK: the center view's
            Sinkhorn targets (what the D3SSL inputs predict too).
    """
    n_views, n_images = z_VBDSS.shape[:2]
    regions_VRD, coherence = pool_regions(
        z_VBDSS,
        ids_VBSS,
        num_regions_B,
        mode=cfg.pooling,
        prototypes_KD=prototypes_KD.detach(),
        detach_representative=True,
        coherence_per_group=True,
    )
    scores_VRK = F.linear(regions_VRD.flatten(0, 1), prototypes_KD).unflatten(
        0, regions_VRD.shape[:2]
    )
    n_regions = regions_VRD.shape[1]
    with torch.no_grad():
        center_RK = at_least_float32(scores_VRK[0].detach())
        if queue_MD is not None:
            queued_MK = queue_MD.to(center_RK.dtype) @ prototypes_KD.detach().T
            center_RK = torch.cat([center_RK, queued_MK])
        q_RK = sinkhorn(center_RK, cfg.epsilon, cfg.sinkhorn_iterations)[:n_regions]
    global_regions = float(n_regions) if global_regions is None else global_regions
    global_images = float(n_images) if global_images is None else global_images
    ce_sum = swav_cross_entropy(q_RK, scores_VRK[1:], cfg.temperature)
    swav = ce_sum / ((n_views - 1) * global_regions) * world
    # This rank's mean over its V * B (view, image) groups, reweighted to its share of the
    # mean over all groups of the global batch.
    coherence = coherence * (n_images / global_images * world)
    if cfg.pooling == "representative":
        total = (cfg.coherence_weight * coherence + swav) / 2
    else:
        total = swav
    return total, swav, coherence, regions_VRD[0].detach(), q_RK


def present_regions(ids_BSS: torch.Tensor, num_regions_B: torch.Tensor) -> torch.Tensor:
    """bool (R,): region r (rows ordered as `pool_regions`') has a pixel in its image's map."""
    seg = region_index(ids_BSS[None], num_regions_B).flatten()
    total = int(num_regions_B.sum())
    return torch.bincount(seg[seg >= 0], minlength=total)[:total] > 0


def predict_targets(
    z_BDSS: torch.Tensor,
    ids_BSS: torch.Tensor,
    num_regions_B: torch.Tensor,
    prototypes_KD: torch.Tensor,
    q_RK: torch.Tensor,
    cfg: ViceConfig,
) -> torch.Tensor:
    """Sum over the regions present in one extra input (a D3SSL cut, small copy or paste) of
    CE(Q_r, softmax(s_r / T)): the input's region vectors (pooled as the views', `cfg.pooling`,
    over the region's pixels left in it) predict the clean center view's targets `q_RK`.
    Regions without a pixel in the input add nothing."""
    regions_1RD, _ = pool_regions(
        z_BDSS[None], ids_BSS[None], num_regions_B, mode=cfg.pooling,
        prototypes_KD=prototypes_KD.detach(),
    )  # fmt: skip
    present_R = present_regions(ids_BSS, num_regions_B)
    scores_RK = F.linear(regions_1RD[0][present_R], prototypes_KD)
    return swav_cross_entropy(q_RK[present_R], scores_RK[None], cfg.temperature)


class ViceMethod(Method):
    """ViCE: the dense network, its prototypes and this rank's queue of center-view regions.

    Parameters are created in the order network, prototypes (the same draws from torch's
    global RNG, and the same state-dict keys under `network.`, as before the method
    interface).
    """

    Config = ViceConfig
    sample_builder = "vice_views"
    region_switches = True

    def __init__(self, cfg: Config, world_size: int = 1) -> None:
        super().__init__(cfg, world_size)
        self.cfg = cfg.method
        self.network = build_model(cfg.model)
        self.prototypes = Prototypes(cfg.method.num_prototypes, cfg.model.embed_dim)
        per_rank = self.cfg.queue_length // max(1, world_size)
        # Not a buffer: every rank keeps its own regions (DDP broadcasts buffers from rank 0).
        self.queue = EmbeddingQueue(per_rank, cfg.model.embed_dim) if per_rank > 0 else None
        self.queue_from: int | None = None  # the step the queue joined Sinkhorn (`run_tags`)
        self._ran_without_queue = False  # this process ran a step before the queue joined

    @classmethod
    def region_views(cls, cfg: Config) -> tuple[int, int] | None:
        """Cut-out from the first surrounding view, small copy and paste from the second (the
        first when there is one only): the teacher of every input is the center view."""
        if not cfg.method.region_switches_on():
            return None
        return 1, min(2, cfg.data.views.num_views - 1)

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        if cfg.data.views.num_views < 2:
            raise _fail(
                "data.views.num_views",
                cfg.data.views.num_views,
                "ViCE needs a center view and at least one view that predicts it: set >= 2",
            )

    def export(self) -> nn.Module:
        return self.network

    def run_tags(self) -> dict[str, str]:
        if self.queue_from is None:
            return {}
        return {"queue_used_from_step": str(self.queue_from)}

    def prototypes_frozen(self, step: int) -> bool:
        return step < self.cfg.freeze_prototypes_iters

    def before_optimizer_step(self, step: int) -> None:
        if self.prototypes_frozen(step):
            for p in self.prototypes.parameters():
                p.grad = None

    def after_optimizer_step(self, step: int) -> None:
        self.prototypes.normalize_()

    def training_step(self, batch: ViceBatch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward pass and loss for one batch; returns (loss to backprop, logged terms).

        `terms` are this rank's shares: summed over ranks they give the global values.
        """
        cfg = self.cfg
        views_VBCSS = batch.views
        n_views, n_images = views_VBCSS.shape[:2]
        # The network's dtype (float32, or float64 in the DDP-equivalence test); autocast
        # lowers it inside the forward.
        x_NCSS = views_VBCSS.flatten(0, 1).to(self.prototypes.weight.dtype)
        with torch.autocast(x_NCSS.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            z_NDSS = self.network(x_NCSS)
        z_VBDSS = at_least_float32(z_NDSS).unflatten(0, (n_views, n_images))

        queue = self.queue
        if queue is not None and queue.device != z_VBDSS.device:
            queue.to(z_VBDSS.device)
        use_queue = bool(queue is not None and step >= cfg.queue_start and len(queue))
        # Said once, where it happens: a process resumed after the queue joined leaves the tag
        # of the one that saw it (a resume exactly at queue_start sees it too).
        joins = self._ran_without_queue or step == cfg.queue_start
        if use_queue and self.queue_from is None and joins:
            self.queue_from = step
        self._ran_without_queue |= not use_queue
        n_regions = int(batch.num_regions.sum())
        extra = self.region_inputs(batch)
        counts = [float(present_regions(ids, batch.num_regions).sum()) for _, ids, _ in extra]
        local = torch.tensor([float(n_regions), float(n_images), *counts], device=z_VBDSS.device)
        global_regions, global_images, *global_counts = dist.all_reduce_sum(local).tolist()
        world = torch.distributed.get_world_size() if dist.is_distributed() else 1
        total, swav, coherence, center_RD, q_RK = vice_loss(
            z_VBDSS,
            batch.ids,
            batch.num_regions,
            self.prototypes.weight,
            cfg,
            queue.tensor() if use_queue else None,
            global_regions=global_regions,
            global_images=global_images,
            world=world,
        )
        if queue is not None:
            queue.push(center_RD)
        # Each rank's share of the global value: the trainer sums terms over ranks to log.
        terms = {
            "loss_swav": float(swav.detach()) / world,
            "loss_coherence": float(coherence.detach()) / world,
            "regions_per_image": n_regions / n_images / world,
        }
        # D3SSL: each switch's inputs predict the center view's targets; per input a global
        # mean over its regions present, times the world size (DDP averages gradients), and
        # the inputs of a switch summed (de-coupling: the cut view and the small copy).
        sums: dict[str, torch.Tensor] = {}
        for (switch, ids, z_BDSS), count in zip(extra, global_counts, strict=True):
            ce = predict_targets(z_BDSS, ids, batch.num_regions, self.prototypes.weight, q_RK, cfg)
            sums[switch] = sums.get(switch, 0) + ce / max(count, 1.0) * world
        for switch, loss in sums.items():
            total = total + getattr(cfg, switch).weight * loss
            terms[f"loss_{switch}"] = float(loss.detach()) / world
        terms["loss"] = float(total.detach()) / world
        return total, terms

    def region_inputs(self, batch: ViceBatch) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """(switch, ids (B, S, S), unit embeddings (B, D, S, S)) of every D3SSL input the
        switches use: de-coupling the cut view and the small copy, de-positioning the paste."""
        region = batch.region
        if not self.cfg.region_switches_on():
            return []
        if region is None:
            raise ValueError(
                "method.decoupling / method.depositioning is on but the batch carries no D3SSL "
                "inputs: build the data set with region_views=ViceMethod.region_views(cfg)"
            )
        wanted = []
        if self.cfg.decoupling.weight > 0:
            wanted += [("decoupling", region.cut, region.cut_ids)]
            wanted += [("decoupling", region.small, region.small_ids)]
        if self.cfg.depositioning.weight > 0:
            wanted += [("depositioning", region.paste, region.paste_ids)]
        out = []
        for switch, x_BCSS, ids in wanted:
            x_BCSS = x_BCSS.to(self.prototypes.weight.dtype)
            with torch.autocast(x_BCSS.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                z_BDSS = self.network(x_BCSS)
            out.append((switch, ids, at_least_float32(z_BDSS)))
        return out

    def rank_state(self) -> dict[str, Any]:
        return {"queue": self.queue.state_dict() if self.queue is not None else None}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        if self.queue is not None and state.get("queue") is not None:
            self.queue.load_state_dict(state["queue"])

    @classmethod
    def upgrade_checkpoint(cls, state: dict[str, Any], path: str) -> dict[str, Any]:
        """Format 1 (ViCE wired into the trainer): `model` held the network and the
        prototypes under the keys `backbone.*`, `decoder.*`, `prototypes.weight`; each rank's
        `method` entry held the queue, as `rank_state` does now."""
        model = state["model"]
        upgraded = {k: v for k, v in state.items() if k not in ("model", "prototypes_frozen")}
        upgraded["method"] = {
            (k if k.startswith("prototypes.") else f"network.{k}"): v for k, v in model.items()
        }
        upgraded["method_name"] = "vice"
        upgraded["ranks"] = [
            {**rank, "method": rank.get("method", {})} for rank in state.get("ranks", [])
        ]
        return upgraded

    @staticmethod
    def upgrade_final_weights(weights: dict[str, Any]) -> dict[str, Any]:
        """A format-1 `model_final.pt` also held the prototypes; the network is the rest."""
        return {k: v for k, v in weights.items() if not k.startswith("prototypes.")}
