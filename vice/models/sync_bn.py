"""Batch normalisation synchronised across ranks on any backend (gloo included).

torch.nn.SyncBatchNorm only runs on GPUs. ViCE trains with SyncBN (methods.md section 1), and
without it a 2-process run normalises each rank's half batch separately and no longer equals
a 1-process run on the same global batch. This module all-reduces per-channel sums with the
differentiable `torch.distributed.nn.functional.all_reduce`, so forward statistics and
backward gradients are those of the global batch.

Shapes: B batch, C channels, H, W spatial.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from vice.ops.precision import at_least_float32


class DistributedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose batch statistics span every rank of the default process group."""

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        if not (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        ):
            return super().forward(x_BCHW)
        from torch.distributed.nn.functional import all_reduce

        c = x_BCHW.shape[1]
        x = at_least_float32(x_BCHW)  # statistics of bf16 inputs in float32; float64 stays
        # One all-reduce carries sums, squared sums and the pixel count (ranks may hold
        # different batch sizes); gradients flow back to every rank's inputs through it.
        count = x.new_full((1,), x.numel() / c)
        total = all_reduce(torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count]))
        n = total[2 * c].detach()
        mean_C = total[:c] / n
        var_C = total[c : 2 * c] / n - mean_C * mean_C  # biased, as BatchNorm normalises with
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = (
                    self.momentum
                    if self.momentum is not None
                    else (1.0 / float(self.num_batches_tracked))
                )
                unbiased = var_C * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - m).add_(mean_C.to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = (1, c, 1, 1)
        y = (x - mean_C.view(shape)) * torch.rsqrt(var_C.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x_BCHW.dtype)


def convert_distributed_bn(module: nn.Module) -> nn.Module:
    """Replaces every BatchNorm2d in place by a DistributedBatchNorm2d.

    The new layer takes over the old one's parameter and buffer tensors themselves (not
    copies), so their dtype, device, requires_grad and any references held elsewhere (an
    optimizer built earlier) stay valid, as with torch.nn.SyncBatchNorm.convert_sync_batchnorm.
    """
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = DistributedBatchNorm2d(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
                device="meta",  # placeholders, replaced by the child's tensors below
            )
            for key, param in child.named_parameters(recurse=False):
                setattr(new, key, param)
            for key, buffer in child.named_buffers(recurse=False):
                setattr(new, key, buffer)
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_distributed_bn(child)
    return module


__all__ = ["DistributedBatchNorm2d", "convert_distributed_bn"]
