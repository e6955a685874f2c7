"""The training loop: one explicit function from batches to checkpoints.

Order of one step: learning rate -> forward + loss -> backward -> drop prototype gradients
while frozen -> clip -> optimizer step -> re-normalise prototypes -> mark samples consumed ->
log (every `log_every`) -> checkpoint (every `checkpoint_every` steps or `checkpoint_minutes`).
On start the newest complete checkpoint of the run directory is restored, so a restarted job
continues exactly where the last checkpoint left it.
"""

from __future__ import annotations

import logging
import os
import random
import resource
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from vice import dist
from vice.config import Config
from vice.data.datasets import build_source
from vice.data.loader import build_pretrain_loader
from vice.data.pretrain import ViceDataset
from vice.methods import METHODS
from vice.models import build_model
from vice.models.sync_bn import convert_distributed_bn
from vice.system_metrics import SystemMetrics
from vice.tracking import Tracker, build_tracker, default_tags, flatten
from vice.train.checkpoint import CheckpointManager
from vice.train.optim import build_optimizer, learning_rate, set_lr
from vice.train.rng import capture_rng, restore_rng
from vice.train.stop import StopEvent, read_stops, record_stop

log = logging.getLogger(__name__)

FINAL_WEIGHTS = "model_final.pt"
# Fault injection: seconds added to every step, so that tests can make a run outlast a short
# SLURM time limit without changing what it computes (tests/cluster/test_preemption.py).
STEP_DELAY_ENV = "VICE_TEST_STEP_DELAY_S"


def configure_threads(cfg: Config, procs_per_node: int) -> None:
    threads = cfg.trainer.threads_per_process
    if threads == 0:
        # The CPUs this process may run on (a SLURM allocation's cpuset), not the host's.
        threads = max(1, len(os.sched_getaffinity(0)) // procs_per_node)
    torch.set_num_threads(threads)


def seed_everything(seed: int, rank: int) -> None:
    # Same model init on every rank (DDP also broadcasts it); rank-specific streams after.
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = dict(batch)
    for key in ("views", "ids", "num_regions"):
        out[key] = batch[key].to(device, non_blocking=True)
    if device.type == "cuda":
        out["views"] = out["views"].contiguous(memory_format=torch.contiguous_format)
    return out


def _format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _record_stop(run_dir: Path, tracker: Tracker, signal_name: str, step: int) -> None:
    now = time.time()
    record_stop(run_dir, StopEvent(signal_name, step, now, os.getpid()))
    count = len(read_stops(run_dir))
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
    tracker.set_tags({f"stop.{count}": f"{signal_name} at step {step}, {when}", "stops": count})


class Progress:
    """A live line on a terminal, periodic log lines otherwise (both on rank 0)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.tty = enabled and sys.stdout.isatty()

    def tick(self, step: int, images_per_s: float, eta_s: float) -> None:
        if self.tty:
            print(
                f"\r  step {step}/{self.total}  {images_per_s:6.1f} img/s  "
                f"ETA {_format_eta(eta_s)}   ",
                end="",
                flush=True,
            )

    def line(self, text: str) -> None:
        if self.enabled:
            print(("\r" if self.tty else "") + text, flush=True)


def train(
    cfg: Config,
    run_dir: str | Path,
    tracker: Tracker | None = None,
    should_stop: Callable[[int], str | bool | None] | None = None,
) -> dict[str, Any]:
    """Pretrains `cfg` in this process (one rank of a torchrun job, or alone).

    `should_stop(step)` is asked at every step boundary (a stop signal's flag, see
    `vice.train.stop`, or a test); a truthy answer (the signal's name) on any rank makes all
    ranks save one checkpoint together and return with status "stopped"; rank 0 records the
    stop in `<run_dir>/stops.jsonl` and in the run's tags. Returns a summary: status, steps,
    final weights path, mean images/s, the stop signal.
    """
    run_dir = Path(run_dir)
    info = dist.init_distributed(cfg.trainer.device)
    procs_per_node = dist.env_int("LOCAL_WORLD_SIZE", 1)
    configure_threads(cfg, procs_per_node)
    seed_everything(cfg.trainer.seed, info.rank)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    device = info.device
    amp = cfg.trainer.amp and device.type == "cuda"
    tracker = tracker or build_tracker(cfg.tracking, run_dir, info.is_main)
    progress = Progress(0, info.is_main)

    # --- data
    source = build_source(cfg.data)
    dataset = ViceDataset(source, cfg.data)
    loader, sampler = build_pretrain_loader(dataset, cfg.data, info.rank, info.world_size)
    steps_per_epoch = sampler.per_rank // cfg.data.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"invalid config value data.batch_size={cfg.data.batch_size}: more than the "
            f"{sampler.per_rank} images each of {info.world_size} ranks gets per epoch"
        )
    total_steps = cfg.trainer.max_steps or cfg.trainer.epochs * steps_per_epoch

    # --- model, method, optimizer
    model = build_model(cfg.model).to(device)
    if cfg.model.sync_bn and info.world_size > 1:
        # NCCL has a fused SyncBN; on gloo our all-reduce version keeps the same semantics.
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            model = convert_distributed_bn(model)
    if device.type == "cuda" and cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net: torch.nn.Module = model
    if info.world_size > 1:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    prototypes = model.prototypes
    method = METHODS[cfg.method.name](cfg.method, cfg.model.embed_dim, info.world_size)
    method.to(device)
    optimizer = build_optimizer(model, cfg.optim)
    checkpoints = CheckpointManager(run_dir / "checkpoints", cfg.trainer.keep_checkpoints)

    # --- resume
    step, epoch, skipped, resumes = 0, 0, 0, 0
    # Loss terms summed since the last log line, per rank: saved, so that the first log line
    # after a resume averages the same steps as an uninterrupted run's.
    terms_sum: dict[str, float] = {}
    window_steps = 0
    loaded = checkpoints.load_latest()
    if loaded is not None:
        state, path = loaded
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        step, epoch, skipped = int(state["step"]), int(state["epoch"]), int(state["skipped"])
        resumes = int(state.get("resumes", 0)) + 1
        if int(state["world_size"]) == info.world_size:
            mine = state["ranks"][info.rank]
            restore_rng(mine["rng"])
            method.load_state_dict(mine["method"])
            terms_sum = {k: float(v) for k, v in mine.get("terms_sum", {}).items()}
            window_steps = int(mine.get("window_steps", 0))
        else:
            log.warning(
                "checkpoint was written by %s ranks, this job has %s: model and "
                "optimizer resume, per-rank RNG and queue start afresh",
                state["world_size"],
                info.world_size,
            )
        progress.line(f"resumed from {path} at step {step} (epoch {epoch})")
    else:
        sampler.set_epoch(0)
    if info.is_main and step == 0:
        tracker.log_params(flatten(asdict(cfg)))
    hosts = sorted(set(dist.all_gather_object(socket.gethostname())))
    if info.is_main:
        tracker.set_tags(
            {
                **default_tags(),
                "world_size": info.world_size,
                "device": str(device),
                "backend": info.backend or "none",
                "hosts": ",".join(hosts),
                "restart_count": resumes,
            }
        )

    def save(at_step: int) -> Path | None:
        ranks = dist.all_gather_object(
            {
                "rng": capture_rng(),
                "method": method.state_dict(),
                "terms_sum": dict(terms_sum),
                "window_steps": window_steps,
            }
        )
        path = None
        if info.is_main:
            state = {
                "step": at_step,
                "epoch": epoch,
                "skipped": skipped,
                "resumes": resumes,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": {},  # bf16 autocast needs no loss scaling; kept for the format
                "sampler": sampler.state_dict(),
                "prototypes_frozen": method.prototypes_frozen(at_step),
                "world_size": info.world_size,
                "ranks": ranks,
            }
            path = checkpoints.save(state, at_step)
        dist.barrier()
        return path

    # --- loop
    progress = Progress(total_steps, info.is_main)
    progress.line(
        f"training {total_steps} steps ({steps_per_epoch}/epoch) on {info.world_size}"
        f" x {device.type}, {cfg.data.batch_size} images x {cfg.data.views.num_views}"
        f" views per rank"
    )
    images_per_step = cfg.data.batch_size * info.world_size
    # One sampler per node (its local rank 0); read at each log line, so CPU shares cover
    # the steps since the previous one, and gathered to rank 0, the only one that logs.
    system = None
    if cfg.tracking.enabled and cfg.tracking.system_metrics and info.local_rank == 0:
        system = SystemMetrics(node_id=f"node{info.rank // procs_per_node}")
    window = {"data": 0.0, "compute": 0.0, "steps": 0}
    last_save = time.monotonic()
    started = time.monotonic()
    rates: list[float] = []
    step_delay = float(os.environ.get(STEP_DELAY_ENV) or 0)
    while step < total_steps:
        tic = time.monotonic()
        for batch in loader:
            got = time.monotonic()
            batch = _to_device(batch, device)
            lr = learning_rate(step, total_steps, cfg.optim)
            set_lr(optimizer, lr)
            loss, terms = method.loss(net, prototypes, batch, step, autocast=amp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if method.prototypes_frozen(step):
                for p in prototypes.parameters():
                    p.grad = None
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            prototypes.normalize_()
            if step_delay:
                time.sleep(step_delay)
            sampler.advance(cfg.data.batch_size)
            step += 1
            skipped += int(batch["skipped"])
            for k, v in terms.items():
                terms_sum[k] = terms_sum.get(k, 0.0) + v
            window_steps += 1
            done = time.monotonic()
            window["data"] += got - tic
            window["compute"] += done - got
            window["steps"] += 1
            tic = done

            if step % cfg.trainer.log_every == 0 or step == total_steps:
                keys = sorted(terms_sum)
                packed = torch.tensor(
                    [terms_sum[k] for k in keys] + [float(skipped)], dtype=torch.float64
                )
                packed = dist.all_reduce_sum(packed.to(device)).cpu()
                n = window["steps"]
                elapsed = window["data"] + window["compute"]
                rate = images_per_step * n / max(elapsed, 1e-9)
                rates.append(rate)
                metrics = {k: float(packed[i]) / window_steps for i, k in enumerate(keys)}
                metrics.update(
                    lr=lr,
                    images_per_s=rate,
                    data_wait_share=window["data"] / max(elapsed, 1e-9),
                    memory_mb=peak_memory_mb(device),
                    skipped_images=float(packed[-1]),
                    epoch=float(epoch),
                )
                eta = (total_steps - step) * elapsed / n
                progress.line(
                    f"step {step}/{total_steps} | loss {metrics['loss']:.4f} "
                    f"(swav {metrics['loss_swav']:.4f}, coherence {metrics['loss_coherence']:.4f})"
                    f" | lr {lr:.4g} | {rate:.1f} img/s | data {metrics['data_wait_share']:.0%}"
                    f" | ETA {_format_eta(eta)}"
                )
                if cfg.tracking.enabled and cfg.tracking.system_metrics:  # every rank gathers
                    for node in dist.all_gather_object(system.snapshot() if system else {}):
                        metrics.update(node)
                if info.is_main:
                    tracker.log_metrics(metrics, step)
                window = {"data": 0.0, "compute": 0.0, "steps": 0}
                terms_sum = {}
                window_steps = 0
            else:
                progress.tick(step, images_per_step / max(done - got, 1e-9), 0.0)

            # One small all-reduce per step makes every rank take the same decisions.
            reason = should_stop(step) if should_stop is not None else None
            flags = torch.tensor(
                [
                    float(time.monotonic() - last_save >= cfg.trainer.checkpoint_minutes * 60),
                    float(bool(reason)),
                ]
            )
            time_due, stop = (dist.all_reduce_max(flags.to(device)).cpu() > 0).tolist()
            if step % cfg.trainer.checkpoint_every == 0 or time_due or stop or step == total_steps:
                save(step)
                last_save = time.monotonic()
            if stop and step < total_steps:
                signal_name = (
                    reason if isinstance(reason, str) else "peer" if not reason else "stop"
                )
                if info.is_main:
                    _record_stop(run_dir, tracker, signal_name, step)
                progress.line(
                    f"stopping at step {step} ({signal_name}): checkpoint saved, a restart "
                    "continues here"
                )
                return {
                    "signal": signal_name,
                    "status": "stopped",
                    "steps": step,
                    "final_weights": None,
                    "images_per_s": float(np.mean(rates)) if rates else 0.0,
                    "seconds": time.monotonic() - started,
                    "skipped_images": skipped,
                }
            if step >= total_steps:
                break
        else:
            epoch += 1
            sampler.set_epoch(epoch)
            continue
        break

    final = run_dir / FINAL_WEIGHTS
    if info.is_main:
        tmp = final.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, final)
    dist.barrier()
    summary = {
        "status": "completed",
        "steps": step,
        "final_weights": str(final),
        "images_per_s": float(np.mean(rates)) if rates else 0.0,
        "seconds": time.monotonic() - started,
        "skipped_images": skipped,
    }
    progress.line(
        f"pretraining done: {step} steps in {_format_eta(summary['seconds'])}, "
        f"{summary['images_per_s']:.1f} img/s"
    )
    return summary
