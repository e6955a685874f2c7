"""SlotCon: semantic grouping + slot contrast with an EMA teacher (Wen et al., NeurIPS 2022;
methods.md section 3, research/slotcon_ddssl.md).

Student: trunk -> 3-layer 1x1-conv projector (BN, GELU) -> K learnable prototypes; a slot
predictor (3-layer MLP, BN, GELU). Teacher: an EMA copy of trunk, projector and prototypes,
momentum `teacher_momentum` -> 1 on a cosine over the run's steps. Each view's projected
features are grouped (cosine scores with the prototypes; softmax over prototypes at
`grouping_temperature` pools one slot per prototype). Group loss: the student's score map
predicts the teacher's centred one (DINO) on the two views' overlap (RoIAlign, un-flipped).
Slot loss: InfoNCE of predicted student slots against the teacher slot of the same prototype
in the other view, over prototypes active in both views, with every active teacher slot of
the global batch as a candidate. Total = w * group + (1 - w) * slot, each summed over the two
directions, as published.

Trunk (`backbone_output`): "c5" is the published one, an undilated torchvision ResNet's layer4
(stride 32; `model.backbone` and `model.init_weights` apply, the decoder keys do not);
"decoder" is the project's dilated ResNet + decoder (`model.*`), dense at stride 4, which the
dense evaluation needs. Evaluation and model_final.pt read the teacher's trunk + projector
(`export()`), its features upsampled to the input and unit-normalised.

Shapes: V = 2 views, B images (this rank), D projected dim, K prototypes, h x w score map.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vice import dist
from vice.config import MethodConfig, _check_prob, _check_range, _fail
from vice.methods.base import Method
from vice.methods.slotcon_losses import (
    active_prototypes,
    align_to_overlap,
    group_cross_entropy,
    kept_fraction,
    masked_grouping,
    semantic_grouping,
    slot_contrast,
    slot_pairs,
    teacher_momentum,
)
from vice.models import build_model
from vice.models.backbones import BACKBONES, DilatedResNet, load_local_weights
from vice.models.model import upsample_unit
from vice.ops.gather import all_gather_rows
from vice.ops.precision import at_least_float32

if TYPE_CHECKING:
    from vice.config import Config, ModelConfig
    from vice.data.batches import TwoCropBatch

BACKBONE_OUTPUTS = ("c5", "decoder")
C5_STRIDE = 32


@dataclass
class SlotConConfig(MethodConfig):
    """SlotCon's model and losses; every default is the published COCO one."""

    name: str = "slotcon"
    backbone_output: str = "c5"  # "c5" (published, stride 32) or "decoder" (model.*, stride 4)
    num_prototypes: int = 256  # K (published: 256 COCO, 2048 ImageNet)
    hidden_dim: int = 4096  # projector and predictor width
    out_dim: int = 256  # projected feature / slot / prototype dimension
    grouping_temperature: float = 0.07  # slot attention, both branches (the code's teacher_temp)
    student_temperature: float = 0.1  # group loss, student scores
    teacher_temperature: float = 0.07  # group loss, centred teacher scores
    center_momentum: float = 0.9
    teacher_momentum: float = 0.99  # at step 0; cosine to 1 at the last step
    slot_temperature: float = 0.2  # InfoNCE tau; the loss is scaled by 2 tau
    group_loss_weight: float = 0.5  # total = w * group + (1 - w) * slot
    # Length of the teacher's momentum schedule. 0: the trainer's run length
    # (trainer.max_steps, else trainer.epochs x images // ranks // data.batch_size).
    total_steps: int = 0

    def validate(self, prefix: str = "method") -> None:
        super().validate(prefix)
        if self.backbone_output not in BACKBONE_OUTPUTS:
            raise _fail(
                f"{prefix}.backbone_output", self.backbone_output, f"one of {BACKBONE_OUTPUTS}"
            )
        _check_range(f"{prefix}.num_prototypes", self.num_prototypes, 2)
        _check_range(f"{prefix}.hidden_dim", self.hidden_dim, 1)
        _check_range(f"{prefix}.out_dim", self.out_dim, 2)
        for key in ("grouping", "student", "teacher", "slot"):
            name = f"{key}_temperature"
            _check_range(f"{prefix}.{name}", getattr(self, name), 0.0, lo_open=True)
        _check_prob(f"{prefix}.center_momentum", self.center_momentum)
        _check_prob(f"{prefix}.teacher_momentum", self.teacher_momentum)
        _check_prob(f"{prefix}.group_loss_weight", self.group_loss_weight)
        _check_range(f"{prefix}.total_steps", self.total_steps, 0)


def conv_mlp(c_in: int, hidden: int, c_out: int) -> nn.Sequential:
    """DINO's 3-layer head as 1x1 convs: (conv, BN, GELU) x 2, conv; trunc-normal(0.02)."""
    mlp = nn.Sequential(
        nn.Conv2d(c_in, hidden, 1), nn.BatchNorm2d(hidden), nn.GELU(),
        nn.Conv2d(hidden, hidden, 1), nn.BatchNorm2d(hidden), nn.GELU(),
        nn.Conv2d(hidden, c_out, 1),
    )  # fmt: skip
    for m in mlp.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return mlp


class SlotPredictor(nn.Module):
    """The student's slot predictor: (A, D) -> (A, D). A 1x1-conv MLP on (A, D, 1, 1), which
    is the published BatchNorm1d MLP, so that the trainer's BatchNorm2d synchronisation
    covers it (anchors differ in number between ranks)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.mlp = conv_mlp(dim, hidden, dim)

    def forward(self, q_AD: torch.Tensor) -> torch.Tensor:
        return self.mlp(q_AD[:, :, None, None]).flatten(1)


class SlotConEncoder(nn.Module):
    """Trunk (+ decoder) + projector. As the teacher, the network evaluation reads:
    images (B, 3, H, W) -> unit-norm embeddings (B, D, H, W)."""

    def __init__(self, backbone: DilatedResNet, decoder: nn.Module | None, projector: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder
        self.projector = projector

    def features(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Projected features (B, D, h, w), not normalised (what slots pool)."""
        trunk = self.backbone(x_BCHW)
        return self.projector(trunk["layer4"] if self.decoder is None else self.decoder(trunk))

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return upsample_unit(self.features(x_BCHW), x_BCHW.shape[-2:])


def build_encoder(model: ModelConfig, cfg: SlotConConfig) -> SlotConEncoder:
    """The student: parameters drawn from torch's global RNG in the order trunk, projector."""
    if cfg.backbone_output == "decoder":
        network = build_model(model)
        backbone, decoder, channels = network.backbone, network.decoder, model.embed_dim
    else:  # the published trunk: PixPro's ResNet init zeroes each block's last BN scale
        resnet = BACKBONES[model.backbone](weights=None, zero_init_residual=True)
        backbone = DilatedResNet(resnet, C5_STRIDE)
        if model.init_weights:
            load_local_weights(backbone, model.init_weights)
        decoder, channels = None, backbone.channels["layer4"]
    return SlotConEncoder(backbone, decoder, conv_mlp(channels, cfg.hidden_dim, cfg.out_dim))


def schedule_length(cfg: Config, world_size: int) -> int:
    """Steps of the teacher's momentum schedule: method.total_steps, else the trainer's count
    (trainer.max_steps, else epochs x the steps of an epoch as `vice.train.trainer.build_data`
    counts them; the image source is listed for that)."""
    if cfg.method.total_steps > 0:
        return cfg.method.total_steps
    if cfg.trainer.max_steps > 0:
        return cfg.trainer.max_steps
    from vice.data.datasets import build_source  # only here: listing COCO takes seconds

    images = len(build_source(cfg.data))
    return cfg.trainer.epochs * (images // world_size // cfg.data.batch_size)


@dataclass
class SlotConLoss:
    total: torch.Tensor  # what this rank back-propagates (w * group + (1 - w) * slot)
    group: torch.Tensor  # both directions' mean pixel cross-entropy, summed
    slot: torch.Tensor  # both directions' mean anchor InfoNCE (x 2 tau), summed
    teacher_scores: list[torch.Tensor]  # V x (B, K, h, w), full maps (for the centre)
    teacher_slots: list[torch.Tensor]  # V x (B, K, D): what the D3SSL inputs predict too
    teacher_active: list[torch.Tensor]  # V x (B, K) bool
    active: float  # prototypes active per teacher view and image, this rank's mean
    anchors: float  # anchors per image and direction, this rank's mean


def slotcon_loss(
    student_V: Sequence[torch.Tensor],
    teacher_V: Sequence[torch.Tensor],
    prototypes_KD: torch.Tensor,
    teacher_prototypes_KD: torch.Tensor,
    center_K: torch.Tensor,
    boxes_VB4: torch.Tensor,
    flips_VB: torch.Tensor,
    predictor: nn.Module,
    cfg: SlotConConfig,
) -> SlotConLoss:
    """SlotCon's loss of one rank's two views, from projected features (B, D, h, w) per view.

    Each term is a global mean (pixels, anchors counted over all ranks) times the world size:
    DDP averages gradients, so ranks holding different numbers of anchors then produce the
    gradient of the global mean, as one process on the whole batch would. (The published code
    averages each rank's own anchors.) A direction with fewer than 2 anchors in the whole
    batch contributes 0: the predictor's BatchNorm needs two samples.
    """
    temp = cfg.grouping_temperature
    world = torch.distributed.get_world_size() if dist.is_distributed() else 1
    student = [semantic_grouping(x, prototypes_KD, temp) for x in student_V]
    with torch.no_grad():
        teacher = [semantic_grouping(y, teacher_prototypes_KD, temp) for y in teacher_V]
    slots_s, scores_s = [g[0] for g in student], [g[1] for g in student]
    slots_t, scores_t = [g[0] for g in teacher], [g[1] for g in teacher]
    aligned_s = [align_to_overlap(s, boxes_VB4[v], flips_VB[v]) for v, s in enumerate(scores_s)]
    aligned_t = [align_to_overlap(s, boxes_VB4[v], flips_VB[v]) for v, s in enumerate(scores_t)]
    active_s = [active_prototypes(s) for s in scores_s]
    active_t = [active_prototypes(s) for s in scores_t]
    directions = ((0, 1), (1, 0))  # (student view, teacher view)

    n_images = student_V[0].shape[0]
    anchors = [float((active_s[s] & active_t[t]).sum()) for s, t in directions]
    local = torch.tensor([float(aligned_s[0][:, 0].numel()), *anchors], dtype=torch.float64)
    global_pixels, *global_anchors = dist.all_reduce_sum(local.to(center_K.device)).tolist()

    ts, tt = cfg.student_temperature, cfg.teacher_temperature
    group_sum = sum(
        group_cross_entropy(aligned_s[s], aligned_t[t], center_K, ts, tt) for s, t in directions
    )
    group = group_sum / global_pixels * world
    slot = prototypes_KD.new_zeros(())
    for (s, t), n_anchors in zip(directions, global_anchors, strict=True):
        if n_anchors < 2:  # every rank agrees, so no rank waits in a collective alone
            slot = slot + 0.0 * sum(p.sum() for p in predictor.parameters())
            continue
        keys_ND = F.normalize(slots_t[t].flatten(0, 1)[active_t[t].flatten()], dim=1)
        keys_MD, offset = all_gather_rows(keys_ND)
        anchors_A, labels_A = slot_pairs(active_s[s], active_t[t], offset)
        predicted_AD = predictor(slots_s[s].flatten(0, 1)[anchors_A])
        ce = slot_contrast(predicted_AD, keys_MD, labels_A, cfg.slot_temperature)
        slot = slot + ce / n_anchors * world
    w = cfg.group_loss_weight
    return SlotConLoss(
        total=w * group + (1 - w) * slot,
        group=group,
        slot=slot,
        teacher_scores=list(scores_t),
        teacher_slots=list(slots_t),
        teacher_active=list(active_t),
        active=float(active_t[0].sum() + active_t[1].sum()) / (2 * n_images),
        anchors=sum(anchors) / (2 * n_images),
    )


def slot_prediction(
    student_BDhw: torch.Tensor,
    keep_Bhw: torch.Tensor,
    prototypes_KD: torch.Tensor,
    teacher_slots_BKD: torch.Tensor,
    teacher_active_BK: torch.Tensor,
    predictor: nn.Module,
    cfg: SlotConConfig,
) -> torch.Tensor:
    """A D3SSL input's slot term: its student slots (pooled over the kept part of the map,
    `keep_Bhw`) predict the teacher slots of the same prototype (InfoNCE against every active
    teacher slot of the batch, as SlotCon's slot term). Anchors: prototypes active in the
    kept part and in the teacher's. A global mean over anchors times the world size; 0 (with
    the predictor in the graph) when the whole batch has fewer than 2 anchors."""
    world = torch.distributed.get_world_size() if dist.is_distributed() else 1
    slots_s, scores_s = masked_grouping(
        student_BDhw, prototypes_KD, cfg.grouping_temperature, keep_Bhw
    )
    active_s = active_prototypes(scores_s, keep_Bhw > 0)
    local = torch.tensor([float((active_s & teacher_active_BK).sum())], dtype=torch.float64)
    n_anchors = float(dist.all_reduce_sum(local.to(student_BDhw.device))[0])
    if n_anchors < 2:  # every rank agrees, so no rank waits in a collective alone
        return 0.0 * sum(p.sum() for p in predictor.parameters())
    keys_ND = F.normalize(teacher_slots_BKD.flatten(0, 1)[teacher_active_BK.flatten()], dim=1)
    keys_MD, offset = all_gather_rows(keys_ND)
    anchors_A, labels_A = slot_pairs(active_s, teacher_active_BK, offset)
    predicted_AD = predictor(slots_s.flatten(0, 1)[anchors_A])
    return slot_contrast(predicted_AD, keys_MD, labels_A, cfg.slot_temperature) / n_anchors * world


class SlotConMethod(Method):
    """SlotCon: student, slot predictor, EMA teacher (trunk, projector, prototypes) and the
    teacher's score centre. Parameters are drawn in the order student, prototypes, predictor;
    the teacher starts as a copy."""

    Config = SlotConConfig
    sample_builder = "two_crops"
    region_switches = True

    def __init__(self, cfg: Config, world_size: int = 1) -> None:
        super().__init__(cfg, world_size)
        self.cfg = cfg.method
        self.run_cfg = cfg  # the momentum schedule's length comes from trainer and data keys
        self.student = build_encoder(cfg.model, self.cfg)
        k, d = self.cfg.num_prototypes, self.cfg.out_dim
        self.prototypes = nn.Parameter(torch.randn(k, d))  # nn.Embedding's N(0, 1), as published
        self.predictor = SlotPredictor(d, self.cfg.hidden_dim)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.teacher_prototypes = nn.Parameter(self.prototypes.detach().clone(), False)
        self.register_buffer("center", torch.zeros(k))  # replicated: all-reduced updates
        self._total_steps: int | None = None

    @classmethod
    def region_views(cls, cfg: Config) -> tuple[int, int] | None:
        """Cut-out from view 0, small copy and paste from view 1 (the D3SSL figure's x1, x2)."""
        return (0, 1) if cfg.method.region_switches_on() else None

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        if cfg.data.masking.enabled:
            raise _fail(
                "data.masking.enabled",
                True,
                "slotcon does not mask; set data.masking.enabled=false",
            )
        views = cfg.data.views
        if views.crop_scale_max > 1:
            raise _fail(
                "data.views.crop_scale_max",
                views.crop_scale_max,
                "slotcon's crops cover crop_scale_min..crop_scale_max of the image area, so at "
                "most 1 (published: 0.08..1)",
            )
        small = round(views.view_size * views.region_aug.small_scale)
        if (
            cfg.method.decoupling.weight > 0
            and cfg.method.backbone_output == "c5"
            and (small < 2 * C5_STRIDE)
        ):
            raise _fail(
                "data.views.region_aug.small_scale",
                views.region_aug.small_scale,
                f"the de-coupling's small copy is {small} px of a {views.view_size} px view; "
                f"method.backbone_output=c5 has stride {C5_STRIDE}, so it needs at least "
                f"{2 * C5_STRIDE} px: raise small_scale or data.views.view_size",
            )
        if cfg.method.backbone_output == "c5" and views.view_size < 2 * C5_STRIDE:
            raise _fail(
                "data.views.view_size",
                views.view_size,
                f"method.backbone_output=c5 has stride {C5_STRIDE}: views of at least "
                f"{2 * C5_STRIDE} px give score maps of 2 x 2 or more; or use "
                "method.backbone_output=decoder",
            )

    def export(self) -> nn.Module:
        return self.teacher

    def total_steps(self) -> int:
        if self._total_steps is None:
            self._total_steps = schedule_length(self.run_cfg, self.world_size)
        return self._total_steps

    def momentum_after(self, step: int) -> float:
        """The teacher momentum of the update after optimizer step `step`: the published
        schedule's value at the iteration that first sees the new student (k = step + 1)."""
        return teacher_momentum(step + 1, self.total_steps(), self.cfg.teacher_momentum)

    def training_step(
        self, batch: TwoCropBatch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        views_VBCSS = batch.views.to(self.prototypes.dtype)
        with torch.autocast(views_VBCSS.device.type, torch.bfloat16, enabled=self.autocast):
            student_V = [self.student.features(views_VBCSS[v]) for v in range(2)]
            with torch.no_grad():
                teacher_V = [self.teacher.features(views_VBCSS[v]) for v in range(2)]
        out = slotcon_loss(
            [at_least_float32(x) for x in student_V],
            [at_least_float32(y) for y in teacher_V],
            self.prototypes,
            self.teacher_prototypes,
            self.center,
            batch.boxes,
            batch.flips,
            self.predictor,
            self.cfg,
        )
        self.update_center(out.teacher_scores)
        world = torch.distributed.get_world_size() if dist.is_distributed() else 1
        total = out.total
        switch_terms = {}
        for switch, loss in self.region_losses(batch, out, teacher_V).items():
            total = total + getattr(self.cfg, switch).weight * loss
            switch_terms[f"loss_{switch}"] = float(loss.detach()) / world
        # Each rank's share of the global value: the trainer sums terms over ranks to log.
        terms = {
            "loss": float(total.detach()) / world,
            **switch_terms,
            "loss_group": float(out.group.detach()) / world,
            "loss_slot": float(out.slot.detach()) / world,
            "active_prototypes": out.active / world,
            "slots_per_image": out.anchors / world,
            "teacher_momentum": self.momentum_after(step) / world,
        }
        return total, terms

    def region_losses(
        self, batch: TwoCropBatch, out: SlotConLoss, teacher_V: Sequence[torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The D3SSL terms of the switches that are on. De-coupling: the cut view 0 predicts
        the teacher's clean view 1 and the small cut copy of view 1 predicts view 0 (the
        figure's cross-view pairs); de-positioning: the paste predicts the teacher's slots of
        the same square in place in view 1 (`teacher_V`: the teacher's features per view)."""
        cfg, region = self.cfg, batch.region
        if not cfg.region_switches_on():
            return {}
        if region is None:
            raise ValueError(
                "method.decoupling / method.depositioning is on but the batch carries no D3SSL "
                "inputs: build the data set with region_views=SlotConMethod.region_views(cfg)"
            )
        inputs = []  # (switch, student input, its ids, teacher slots, teacher active)
        if cfg.decoupling.weight > 0:
            a, b = region.a, region.b
            inputs += [
                ("decoupling", region.cut, region.cut_ids, out.teacher_slots[1 - a],
                 out.teacher_active[1 - a]),
                ("decoupling", region.small, region.small_ids, out.teacher_slots[1 - b],
                 out.teacher_active[1 - b]),
            ]  # fmt: skip
        if cfg.depositioning.weight > 0:
            with torch.no_grad():
                teacher_b = at_least_float32(teacher_V[region.b])
                keep = kept_fraction(region.source_ids, teacher_b.shape[-2:])
                slots_t, scores_t = masked_grouping(
                    teacher_b, self.teacher_prototypes, cfg.grouping_temperature, keep
                )
                active_t = active_prototypes(scores_t, keep > 0)
            inputs += [("depositioning", region.paste, region.paste_ids, slots_t, active_t)]
        losses: dict[str, torch.Tensor] = {}
        for switch, x_BCSS, ids, slots_t, active_t in inputs:
            x_BCSS = x_BCSS.to(self.prototypes.dtype)
            with torch.autocast(x_BCSS.device.type, torch.bfloat16, enabled=self.autocast):
                x_BDhw = at_least_float32(self.student.features(x_BCSS))
            keep = kept_fraction(ids, x_BDhw.shape[-2:])
            loss = slot_prediction(
                x_BDhw, keep, self.prototypes, slots_t, active_t, self.predictor, cfg
            )
            losses[switch] = losses.get(switch, 0) + loss
        return losses

    @torch.no_grad()
    def assignments(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """Each pixel's teacher prototype (arg-max cosine score), int64 (B, h, w): the hard
        grouping the collapse check (`vice.eval.slots`) counts."""
        _, scores_BKhw = semantic_grouping(
            self.teacher.features(x_BCHW), self.teacher_prototypes, self.cfg.grouping_temperature
        )
        return scores_BKhw.argmax(dim=1)

    @torch.no_grad()
    def update_center(self, scores_V: Sequence[torch.Tensor]) -> None:
        """centre <- m * centre + (1 - m) * mean teacher score over every pixel of both views
        on all ranks (full maps, not the overlap)."""
        sums_K = sum(s.sum(dim=(0, 2, 3)) for s in scores_V)
        count = sum(s[:, 0].numel() for s in scores_V)
        packed = dist.all_reduce_sum(torch.cat([sums_K, sums_K.new_tensor([count])]))
        m = self.cfg.center_momentum
        self.center.mul_(m).add_(packed[:-1] / packed[-1], alpha=1 - m)

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """EMA of the student's parameters (not BatchNorm statistics: the teacher keeps its
        own, from its forward passes, as published) and prototypes into the teacher."""
        m = self.momentum_after(step)
        pairs = zip(self.teacher.parameters(), self.student.parameters(), strict=True)
        for t, s in [*pairs, (self.teacher_prototypes, self.prototypes)]:
            t.mul_(m).add_(s.detach(), alpha=1 - m)
