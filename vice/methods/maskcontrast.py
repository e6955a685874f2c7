"""MaskContrast: pixel embeddings contrasted against mask-pooled momentum keys (Van Gansbeke
et al., ICCV 2021; methods.md section 2, research/vice_maskcontrast.md 2.3-2.6).

Network (`MaskContrastNet`): a dilated ResNet (`model.backbone`, `model.output_stride`; the
published ResNet-50 at OS 8) with a DeepLab-v3 head (ASPP at rates 12/24/36 scaled to the
stride, 256 channels, dropout 0.5; then 3x3 conv, BN, ReLU), a 1x1 embedding head to
`model.embed_dim` (32 published) and a 1x1 saliency head (no bias). Both outputs are
upsampled bilinearly to the input; embeddings are unit-normalised.

Key encoder: a momentum copy (`momentum`, 0.999) updated after every optimizer step, and a
queue of `queue_size` mask embeddings of past global batches. Query view: every foreground
pixel (of the view's mask prior) is an anchor classified against the mask-pooled keys of
every image of the global batch plus the queue, its own image's key the positive, at
temperature T with ENet weights 1 / log(1.02 + p) per mask; plus the saliency head's
class-balanced BCE against the same mask (weight `saliency_weight`).

Shuffled BN (`shuffle_bn`, published): under DDP the key encoder sees the global batch
permuted across ranks (one permutation per step, equal on every rank), so no rank's batch
statistics come from the images of its own queries; its BatchNorm layers stay per rank
(`LocalBatchNorm2d`, which the trainer's global-BN conversion leaves alone). With one process,
or `shuffle_bn=false`, the key encoder's BN is like the query's (global under model.sync_bn).
In eval mode BN uses running statistics, so shuffled and unshuffled keys are equal there.

Evaluation and model_final.pt read the query network (`export()`), as the published
evaluation loads model_q; its `foreground(x)` (saliency > 0.5) drives the mask k-means
protocol (`vice.eval.mask_kmeans`).

Shapes: B images on this rank, N in the global batch, D embed_dim, S view side, K queue.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from vice import dist
from vice.config import MethodConfig, _check_prob, _check_range, _fail
from vice.methods.base import Method
from vice.methods.maskcontrast_losses import (
    balanced_bce,
    foreground_counts,
    mask_contrast,
    mask_pool,
)
from vice.models.backbones import DilatedResNet, build_backbone
from vice.models.decoders import ASPP, ASPP_DIM, _conv_bn_relu, _init_weights, aspp_rates_at
from vice.models.model import upsample_unit
from vice.ops.gather import all_gather_rows
from vice.ops.precision import at_least_float32

if TYPE_CHECKING:
    from vice.config import Config, ModelConfig
    from vice.data.batches import MaskCropBatch

TRUNK_MODULES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


@dataclass
class MaskContrastConfig(MethodConfig):
    """MaskContrast's heads and losses; defaults are the published VOC ones (supervised-
    saliency config; the unsupervised-saliency one has queue_size 256)."""

    name: str = "maskcontrast"
    temperature: float = 0.5  # T of the pixel-to-mask InfoNCE
    momentum: float = 0.999  # key encoder EMA
    queue_size: int = 128  # K mask embeddings of past batches (0: none)
    saliency_weight: float = 1.0  # loss = contrastive + w * balanced BCE
    dropout: float = 0.5  # after the ASPP projection (torchvision's DeepLabHead)
    shuffle_bn: bool = True  # key encoder BN over the global batch permuted across ranks
    # Trunk modules kept frozen (no gradient, BN in eval mode); published supervised-saliency
    # config: [conv1, bn1, layer1, layer2] ("~1 % mIoU"), unsupervised: none.
    frozen: list[str] = field(default_factory=list)

    def validate(self, prefix: str = "method") -> None:
        super().validate(prefix)
        _check_range(f"{prefix}.temperature", self.temperature, 0.0, lo_open=True)
        _check_prob(f"{prefix}.momentum", self.momentum)
        _check_range(f"{prefix}.queue_size", self.queue_size, 0)
        _check_range(f"{prefix}.saliency_weight", self.saliency_weight, 0.0)
        _check_range(f"{prefix}.dropout", self.dropout, 0.0, 1.0)
        unknown = [m for m in self.frozen if m not in TRUNK_MODULES]
        if unknown:
            raise _fail(
                f"{prefix}.frozen", list(self.frozen), f"trunk modules among {list(TRUNK_MODULES)}"
            )


class LocalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that keeps per-rank statistics (the shuffled key encoder's)."""


def _localise_bn(module: nn.Module) -> nn.Module:
    """The key encoder's BatchNorm layers as LocalBatchNorm2d (same state, same arithmetic)."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            local = LocalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine,
                child.track_running_stats,
            )  # fmt: skip
            local.load_state_dict(child.state_dict())
            local.train(child.training)
            local.requires_grad_(False)
            setattr(module, name, local)
        else:
            _localise_bn(child)
    return module


class DeepLabV3Head(nn.Module):
    """torchvision's DeepLabHead without its last conv: ASPP, then 3x3 conv, BN, ReLU."""

    def __init__(self, c_in: int, rates: list[int], dropout: float) -> None:
        super().__init__()
        self.aspp = ASPP(c_in, rates, ASPP_DIM, dropout)
        self.conv = _conv_bn_relu(ASPP_DIM, ASPP_DIM, 3)
        _init_weights(self)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """(B, C4, hs, ws) -> (B, 256, hs, ws)."""
        return self.conv(self.aspp(x_BCHW))


class MaskContrastNet(nn.Module):
    """Trunk + DeepLab-v3 head + embedding and saliency heads. As exported: images
    (B, 3, H, W) -> unit-norm embeddings (B, D, H, W); `foreground` gives its mask."""

    def __init__(self, backbone: DilatedResNet, head: DeepLabV3Head, embed_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.embed = nn.Conv2d(ASPP_DIM, embed_dim, 1)
        self.saliency = nn.Conv2d(ASPP_DIM, 1, 1, bias=False)
        _init_weights(self.embed)
        _init_weights(self.saliency)

    def outputs(self, x_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit embeddings (B, D, H, W) and saliency logits (B, H, W), both at input size."""
        y_BAhw = self.head(self.backbone(x_BCHW)["layer4"])
        size = x_BCHW.shape[-2:]
        z_BDHW = upsample_unit(self.embed(y_BAhw), size)
        with torch.autocast(x_BCHW.device.type, enabled=False):
            sal_BHW = F.interpolate(
                at_least_float32(self.saliency(y_BAhw)), size=tuple(size), mode="bilinear",
                align_corners=False,
            )[:, 0]  # fmt: skip
        return z_BDHW, sal_BHW

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return self.outputs(x_BCHW)[0]

    def foreground(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        """The predicted foreground, bool (B, H, W): saliency probability > 0.5."""
        return self.outputs(x_BCHW)[1] > 0


def build_network(model: ModelConfig, cfg: MaskContrastConfig) -> MaskContrastNet:
    """Parameters drawn from torch's global RNG in the order trunk, head, embedding, saliency."""
    backbone = build_backbone(model.backbone, model.output_stride, model.init_weights)
    rates = aspp_rates_at(model.aspp_rates, model.output_stride)
    head = DeepLabV3Head(backbone.channels["layer4"], rates, cfg.dropout)
    return MaskContrastNet(backbone, head, model.embed_dim)


@dataclass
class MaskContrastLoss:
    total: torch.Tensor
    contrast: torch.Tensor
    saliency: torch.Tensor
    anchors: float  # foreground query pixels of the global batch
    fg_fraction: float  # of the global batch's query pixels


class MaskContrastMethod(Method):
    """MaskContrast: query network, momentum key encoder and the queue of mask embeddings."""

    Config = MaskContrastConfig
    sample_builder = "mask_crops"

    def __init__(self, cfg: Config, world_size: int = 1) -> None:
        super().__init__(cfg, world_size)
        self.cfg = cfg.method
        self.seed = cfg.trainer.seed  # the shuffled-BN permutation: (seed, step)
        self.query = build_network(cfg.model, self.cfg)
        for name in self.cfg.frozen:
            getattr(self.query.backbone, name).requires_grad_(False)
        self.key = copy.deepcopy(self.query).requires_grad_(False)
        if self.cfg.shuffle_bn:
            _localise_bn(self.key)
        k, d = self.cfg.queue_size, cfg.model.embed_dim
        # MoCo's queue: random unit vectors until real keys replace them
        self.register_buffer("queue", F.normalize(torch.randn(k, d), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.int64))

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        if cfg.data.masking.enabled:
            raise _fail(
                "data.masking.enabled", True,
                "maskcontrast does not mask regions; set data.masking.enabled=false",
            )  # fmt: skip
        views = cfg.data.views
        if views.crop_scale_max > 1:
            raise _fail(
                "data.views.crop_scale_max", views.crop_scale_max,
                "maskcontrast's crops cover crop_scale_min..crop_scale_max of the image area, "
                "so at most 1 (published: 0.2..1)",
            )  # fmt: skip
        if cfg.data.batch_size < 2 and cfg.trainer.nodes * cfg.trainer.gpus_per_node < 2:
            raise _fail(
                "data.batch_size", cfg.data.batch_size,
                "maskcontrast contrasts each image's mask with the other images' masks and "
                "its BatchNorm needs 2 samples: at least 2 images per step",
            )  # fmt: skip

    def train(self, mode: bool = True) -> MaskContrastMethod:
        super().train(mode)
        for net in (self.query, self.key):  # frozen trunk modules keep their statistics
            for name in self.cfg.frozen:
                getattr(net.backbone, name).eval()
        return self

    def export(self) -> nn.Module:
        return self.query

    def training_step(
        self, batch: MaskCropBatch, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        views = batch.views.to(self.queue.dtype)
        masks_q, masks_k = batch.masks[0], batch.masks[1]
        with torch.autocast(views.device.type, torch.bfloat16, enabled=self.autocast):
            q_BDSS, sal_BSS = self.query.outputs(views[0])
            with torch.no_grad():
                keys_ND, offset = self.keys(views[1], masks_k, step)
        out = maskcontrast_loss(
            at_least_float32(q_BDSS), at_least_float32(sal_BSS), masks_q, keys_ND, offset,
            self.queue, self.cfg,
        )  # fmt: skip
        self.enqueue(keys_ND)
        world = torch_dist.get_world_size() if dist.is_distributed() else 1
        terms = {  # each rank's share of the global value (the trainer sums over ranks)
            "loss": float(out.total.detach()) / world,
            "loss_contrast": float(out.contrast.detach()) / world,
            "loss_saliency": float(out.saliency.detach()) / world,
            "fg_fraction": out.fg_fraction / world,
        }
        return out.total, terms

    @torch.no_grad()
    def keys(
        self, x_BCSS: torch.Tensor, masks_BSS: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, int]:
        """Mask-pooled key embeddings of the global batch (N, D), in rank order, and where
        this rank's images start. With shuffled BN, this rank encodes a slice of the global
        batch permuted by a (seed, step) permutation, and the keys are put back in order."""
        if not (self.cfg.shuffle_bn and dist.is_distributed()):
            return all_gather_rows(mask_pool(self.key(x_BCSS), masks_BSS))
        b = x_BCSS.shape[0]
        x_N, offset = all_gather_rows(x_BCSS.flatten(1))
        m_N, _ = all_gather_rows(masks_BSS.flatten(1).to(x_BCSS.dtype))
        n = x_N.shape[0]
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        perm = torch.randperm(n, generator=gen).to(x_N.device)
        mine = perm[offset : offset + b]  # this rank's slice of the permuted batch
        x_BCSS_shuffled = x_N[mine].view_as(x_BCSS)
        m_shuffled = m_N[mine].view_as(masks_BSS)
        keys_shuffled, _ = all_gather_rows(mask_pool(self.key(x_BCSS_shuffled), m_shuffled))
        keys_ND = torch.empty_like(keys_shuffled)
        keys_ND[perm] = keys_shuffled  # row perm[i] of the batch was encoded i-th
        return keys_ND, offset

    @torch.no_grad()
    def enqueue(self, keys_ND: torch.Tensor) -> None:
        """The global batch's keys replace the oldest queue entries (every rank alike)."""
        k = self.queue.shape[0]
        if k == 0:
            return
        rows = (int(self.queue_ptr) + torch.arange(keys_ND.shape[0], device=keys_ND.device)) % k
        self.queue[rows[-k:]] = keys_ND[-k:].to(self.queue.dtype)
        self.queue_ptr.fill_((int(self.queue_ptr) + keys_ND.shape[0]) % k)

    @torch.no_grad()
    def after_optimizer_step(self, step: int) -> None:
        """EMA of the query's parameters into the key encoder (its BN statistics are its
        own, from its forward passes, as MoCo's)."""
        m = self.cfg.momentum
        for k, q in zip(self.key.parameters(), self.query.parameters(), strict=True):
            k.mul_(m).add_(q.detach(), alpha=1 - m)


def maskcontrast_loss(
    q_BDSS: torch.Tensor,
    sal_BSS: torch.Tensor,
    masks_q_BSS: torch.Tensor,
    keys_ND: torch.Tensor,
    offset: int,
    queue_KD: torch.Tensor,
    cfg: MaskContrastConfig,
) -> MaskContrastLoss:
    """This rank's share of the global loss: each term's local sum over the global count
    (anchor weights, pixels) times the world size, so DDP's gradient average is the gradient
    of one process on the whole batch."""
    world = torch_dist.get_world_size() if dist.is_distributed() else 1
    counts_N, _ = all_gather_rows(foreground_counts(masks_q_BSS).to(q_BDSS.dtype)[:, None])
    num_c, den_c = mask_contrast(
        q_BDSS, masks_q_BSS, keys_ND, queue_KD, offset, counts_N[:, 0], cfg.temperature
    )
    pixels = float(masks_q_BSS.numel())
    local = torch.stack([den_c.detach().to(torch.float64), q_BDSS.new_tensor(pixels).double()])
    den_global, pixels_global = dist.all_reduce_sum(local).tolist()
    pos_fraction = float(counts_N.sum()) / pixels_global
    num_s, _ = balanced_bce(sal_BSS, masks_q_BSS, pos_fraction)
    contrast = num_c / max(den_global, 1e-12) * world
    saliency = num_s / pixels_global * world
    return MaskContrastLoss(
        total=contrast + cfg.saliency_weight * saliency,
        contrast=contrast,
        saliency=saliency,
        anchors=float(counts_N.sum()),
        fg_fraction=pos_fraction,
    )
