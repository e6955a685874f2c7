"""What a self-supervised method is to the rest of vice: one module that owns what it trains.

A method owns every network, head, prototype matrix, teacher / momentum encoder, queue and
centre it trains or keeps; the training loop (`vice.train.trainer`) knows only this
interface, in this order per step:

    loss, terms = method(batch, step)          # DDP wraps the method; forward = training_step
    loss.backward()
    method.before_optimizer_step(step)         # e.g. drop gradients of frozen parameters
    clip, optimizer.step()
    method.after_optimizer_step(step)          # e.g. re-normalise prototypes, EMA teacher
    method.run_tags()                          # at log lines, rank 0: e.g. when a queue joined

State is split in two, so that nothing is pickled per rank that all ranks share:
- replicated: `state_dict()` (parameters and buffers, equal on every rank, saved once by
  rank 0). Buffers are broadcast from rank 0 by DDP at every forward, so anything a rank
  keeps for itself must not be a buffer;
- per rank: `rank_state()` / `load_rank_state()`, tensors and numbers only (ViCE's queue of
  this rank's regions), never modules.

`export()` is the network that `model_final.pt` holds and evaluation reads: a module mapping
images (B, 3, H, W) to unit-norm per-pixel embeddings (B, D, H, W).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from vice.config import MethodConfig
from vice.train.optim import param_groups

if TYPE_CHECKING:
    from vice.config import Config


class Method(nn.Module):
    """Base class of every entry of `vice.methods.METHODS`.

    Subclasses set `Config` (their schema, a `MethodConfig` subclass whose defaults are the
    published ones) and `sample_builder` (a key of `vice.data.builders.SAMPLE_BUILDERS`:
    how one training sample and its batch are made), and implement `training_step` and
    `export`. Parameters are drawn from torch's global RNG in `__init__` (the trainer seeds
    it first, identically on every rank).

    Args:
        cfg: the whole, validated job config (the method reads `cfg.method`, `cfg.model`).
        world_size: ranks of the job (per-rank shares of global sizes, e.g. a queue).
    """

    Config: ClassVar[type[MethodConfig]]
    sample_builder: ClassVar[str]
    #: Takes the D3SSL switches (method.decoupling / method.depositioning): its builder makes
    #: the region-augmented inputs (`vice.data.region_aug`) and its loss uses them.
    region_switches: ClassVar[bool] = False

    def __init__(self, cfg: Config, world_size: int = 1) -> None:
        super().__init__()
        self.world_size = world_size
        self.autocast = False  # bf16 autocast of the forward passes (the trainer: on CUDA)

    @classmethod
    def region_views(cls, cfg: Config) -> tuple[int, int] | None:
        """The views (a, b) the sample builder makes the D3SSL inputs from (cut from a; small
        copy and paste from b), or None: no switch is on, or the method takes none."""
        return None

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """Raises ValueError naming a setting of `cfg` this method cannot use, and the fix.

        Runs inside `Config.validate()`, before anything is written or submitted.
        """

    def forward(self, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.training_step(batch, step)

    def training_step(self, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Forward passes and loss of one batch (already on the device).

        Returns the loss to back-propagate and the terms to log. Terms are this rank's
        shares: their sum over ranks is the global value (the loop all-reduces and logs
        them as they are named; `loss` is the total).
        """
        raise NotImplementedError

    def before_optimizer_step(self, step: int) -> None:
        """After backward, before gradient clipping and the optimizer step."""

    def after_optimizer_step(self, step: int) -> None:
        """After the optimizer step of `step` (before the step counter moves on)."""

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups over the trained parameters, with weight-decay / LARS exclusions
        (`vice.train.optim.param_groups`' format). Default: biases and norms excluded."""
        return param_groups(self, weight_decay)

    def run_tags(self) -> dict[str, str]:
        """What the method learned about this run while training, as MLflow tags (e.g. the
        step ViCE's queue joined): the loop sets those that changed at each log line. A fact
        that holds from some step on is a tag, not a metric that would stay flat."""
        return {}

    def rank_state(self) -> dict[str, Any]:
        """This rank's own state (tensors and numbers only)."""
        return {}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        """Restores what `rank_state` returned (same world size only)."""

    def export(self) -> nn.Module:
        """The network evaluation uses: images (B, 3, H, W) -> unit embeddings (B, D, H, W)."""
        raise NotImplementedError

    @staticmethod
    def upgrade_final_weights(weights: dict[str, Any]) -> dict[str, Any]:
        """The exported network's weights from a `model_final.pt` of format 1 (default: as is)."""
        return weights

    @classmethod
    def current_checkpoint(cls, state: dict[str, Any], path: str) -> dict[str, Any]:
        """`state` in the current checkpoint format (format 1 upgraded, or refused)."""
        return state if "format" in state else cls.upgrade_checkpoint(state, path)

    @classmethod
    def upgrade_checkpoint(cls, state: dict[str, Any], path: str) -> dict[str, Any]:
        """Converts a checkpoint written before the method interface (no `format` key).

        Only a method that existed then can; the default says what wrote it and what to do.
        """
        raise ValueError(
            f"checkpoint {path} was written by vice before the method interface (checkpoint "
            f"format 1, when ViCE was the only method); method={cls.Config().name!r} cannot "
            "resume it. Start a new run directory, or resume it with method=vice"
        )
