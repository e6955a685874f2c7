"""The training loop: one explicit, method-agnostic loop from batches to checkpoints.

Order of one step: learning rate -> `method(batch, step)` (forward + loss) -> backward ->
`method.before_optimizer_step` -> clip -> optimizer step -> `method.after_optimizer_step` ->
mark samples consumed -> log whatever terms the method returned, and its `run_tags` that
changed (every `log_every`) ->
agree across ranks on stopping -> checkpoint (every `checkpoint_every` steps, every
`checkpoint_minutes`, on a stop and at the end). On start the newest complete checkpoint of
the run directory is restored, so a restarted job continues exactly where it left off.

Construction is in the `build_*` functions; the loop knows a method only through
`vice.methods.base.Method`.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from vice import dist
from vice.config import Config
from vice.data.builders import build_samples
from vice.data.datasets import build_source
from vice.data.loader import build_pretrain_loader
from vice.data.sampler import ResumableDistributedSampler
from vice.methods import METHODS, Method, build_method
from vice.models.sync_bn import convert_distributed_bn
from vice.run_dir import RunDir
from vice.system_metrics import SystemMetrics
from vice.tracking import Tracker, build_tracker, dataset_input, default_tags, run_params
from vice.train.checkpoint import CheckpointManager
from vice.train.optim import build_optimizer, learning_rate, set_lr
from vice.train.rng import capture_rng, restore_rng
from vice.train.stop import StopEvent, read_stops, record_stop

log = logging.getLogger(__name__)

# Version of the checkpoint layout written by `save_checkpoint`. Format 1 (no `format` key)
# was written before the method interface; `Method.upgrade_checkpoint` reads it.
CHECKPOINT_FORMAT = 2
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


def _format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _agree(flags: list[bool], device: torch.device) -> list[bool]:
    """Each flag true on any rank: one small all-reduce, so every rank decides alike."""
    t = torch.tensor([float(f) for f in flags])
    return (dist.all_reduce_max(t.to(device)).cpu() > 0).tolist()


def _timed_save(parts: Parts, state: TrainState, rt: Runtime, name: str) -> float:
    """Saves a checkpoint of this step; returns the seconds the write took."""
    started = time.monotonic()
    save_checkpoint(parts, state, rt, name)
    return time.monotonic() - started


def _stop_name(reason: str | bool | None) -> str:
    """The stop's name: the signal's, "peer" (another rank's signal), "stop" (a test's)."""
    return reason if isinstance(reason, str) else "peer" if not reason else "stop"


def _record_stop(
    run_dir: Path,
    tracker: Tracker,
    signal_name: str,
    step: int,
    signal_time: float | None,
    save_s: float,
) -> None:
    now = time.time()
    since = round(now - signal_time, 3) if signal_time is not None else None
    event = StopEvent(signal_name, step, now, os.getpid(), since, round(save_s, 3))
    record_stop(run_dir, event)
    count = len(read_stops(run_dir))
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
    window = f", saved {since:.1f} s after the signal" if since is not None else ""
    tracker.set_tags(
        {f"stop.{count}": f"{signal_name} at step {step}, {when}{window}", "stops": count}
    )


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


@dataclass
class TrainState:
    """The loop's own counters: replicated (`state_dict`) and this rank's log window."""

    step: int = 0
    epoch: int = 0
    skipped: int = 0  # unreadable images skipped so far, this rank
    resumes: int = 0
    # Loss terms summed since the last log line, per rank: saved, so that the first log line
    # after a resume averages the same steps as an uninterrupted run's.
    terms_sum: dict[str, float] = field(default_factory=dict)
    window_steps: int = 0

    def state_dict(self) -> dict[str, int]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "skipped": self.skipped,
            "resumes": self.resumes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.skipped = int(state["skipped"])
        self.resumes = int(state.get("resumes", 0)) + 1

    def rank_state(self) -> dict[str, Any]:
        return {"terms_sum": dict(self.terms_sum), "window_steps": self.window_steps}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        self.terms_sum = {k: float(v) for k, v in state.get("terms_sum", {}).items()}
        self.window_steps = int(state.get("window_steps", 0))

    def add_terms(self, terms: dict[str, float]) -> None:
        for k, v in terms.items():
            self.terms_sum[k] = self.terms_sum.get(k, 0.0) + v
        self.window_steps += 1


@dataclass
class Runtime:
    """This process's place in the job."""

    info: dist.DistInfo
    device: torch.device
    amp: bool
    procs_per_node: int


def build_runtime(cfg: Config) -> Runtime:
    info = dist.init_distributed(cfg.trainer.device)
    procs_per_node = dist.env_int("LOCAL_WORLD_SIZE", 1)
    configure_threads(cfg, procs_per_node)
    seed_everything(cfg.trainer.seed, info.rank)
    if cfg.trainer.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    amp = cfg.trainer.amp and info.device.type == "cuda"
    return Runtime(info, info.device, amp, procs_per_node)


def build_data(
    cfg: Config, rt: Runtime
) -> tuple[torch.utils.data.DataLoader, ResumableDistributedSampler, int]:
    """The method's sample builder over the configured source; returns loader, sampler and
    steps per epoch."""
    method = METHODS[cfg.method.name]
    samples = build_samples(
        method.sample_builder, build_source(cfg.data), cfg.data, method.region_views(cfg)
    )
    loader, sampler = build_pretrain_loader(samples, cfg.data, rt.info.rank, rt.info.world_size)
    steps_per_epoch = sampler.per_rank // cfg.data.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"invalid config value data.batch_size={cfg.data.batch_size}: more than the "
            f"{sampler.per_rank} images each of {rt.info.world_size} ranks gets per epoch"
        )
    return loader, sampler, steps_per_epoch


def build_training_method(cfg: Config, rt: Runtime) -> tuple[Method, torch.nn.Module]:
    """The method on the device (distributed BatchNorm, channels_last on CUDA) and what the
    loop calls: the method itself, or its DDP wrapper (one gradient all-reduce for all its
    trained parameters)."""
    method = build_method(cfg, rt.info.world_size).to(rt.device)
    if cfg.model.sync_bn and rt.info.world_size > 1:
        # NCCL has a fused SyncBN; on gloo our all-reduce version keeps the same semantics.
        if rt.device.type == "cuda":
            method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        else:
            method = convert_distributed_bn(method)
    if rt.device.type == "cuda" and cfg.model.channels_last:
        method = method.to(memory_format=torch.channels_last)
    method.autocast = rt.amp
    net: torch.nn.Module = method
    if rt.info.world_size > 1:
        net = DistributedDataParallel(
            method, device_ids=[rt.device.index] if rt.device.type == "cuda" else None
        )
    return method, net


@dataclass
class Parts:
    """What a checkpoint holds, besides the loop's counters."""

    method: Method
    optimizer: torch.optim.Optimizer
    sampler: ResumableDistributedSampler
    checkpoints: CheckpointManager


def save_checkpoint(parts: Parts, state: TrainState, rt: Runtime, name: str) -> Path | None:
    """One complete checkpoint of `state.step`: replicated state once (rank 0), every rank's
    own state gathered to it. Collective: every rank calls it at the same step."""
    ranks = dist.all_gather_object(
        {"rng": capture_rng(), "method": parts.method.rank_state(), **state.rank_state()}
    )
    path = None
    if rt.info.is_main:
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "method_name": name,
            **state.state_dict(),
            "method": parts.method.state_dict(),
            "optimizer": parts.optimizer.state_dict(),
            "scaler": {},  # bf16 autocast needs no loss scaling; kept for the format
            "sampler": parts.sampler.state_dict(),
            "world_size": rt.info.world_size,
            "ranks": ranks,
        }
        path = parts.checkpoints.save(checkpoint, state.step)
    dist.barrier()
    return path


def restore_checkpoint(parts: Parts, state: TrainState, rt: Runtime, name: str) -> Path | None:
    """Restores the newest complete checkpoint; returns its path (None: a fresh start)."""
    loaded = parts.checkpoints.load_latest()
    if loaded is None:
        parts.sampler.set_epoch(0)
        return None
    checkpoint, path = loaded
    checkpoint = METHODS[name].current_checkpoint(checkpoint, str(path))
    if checkpoint["method_name"] != name:
        raise ValueError(
            f"invalid config value method.name={name!r}: the run's checkpoint {path} was "
            f"written by method {checkpoint['method_name']!r}; use a new run directory"
        )
    parts.method.load_state_dict(checkpoint["method"])
    parts.optimizer.load_state_dict(checkpoint["optimizer"])
    parts.sampler.load_state_dict(checkpoint["sampler"])
    state.load_state_dict(checkpoint)
    if int(checkpoint["world_size"]) == rt.info.world_size:
        mine = checkpoint["ranks"][rt.info.rank]
        restore_rng(mine["rng"])
        parts.method.load_rank_state(mine["method"])
        state.load_rank_state(mine)
    else:
        log.warning(
            "checkpoint was written by %s ranks, this job has %s: the method's replicated "
            "state and the optimizer resume, per-rank RNG and method state start afresh",
            checkpoint["world_size"],
            rt.info.world_size,
        )
    return path


class Window:
    """Time and steps since the last log line (data wait vs compute)."""

    def __init__(self) -> None:
        self.data = self.compute = 0.0
        self.steps = 0

    def add(self, data_s: float, compute_s: float) -> None:
        self.data += data_s
        self.compute += compute_s
        self.steps += 1

    @property
    def elapsed(self) -> float:
        return max(self.data + self.compute, 1e-9)


@dataclass
class StepLogger:
    """Turns the loop's log windows into one printed line and one set of metrics."""

    rt: Runtime
    cfg: Config
    total_steps: int
    tracker: Tracker
    progress: Progress
    system: SystemMetrics | None  # this node's sampler (local rank 0 only)
    method: Method | None = None  # its `run_tags` are set when they change
    epoch: int = 0  # the epoch last logged (or resumed in): `epoch` is logged when it changes
    tags: dict[str, str] = field(default_factory=dict)  # the method's tags set so far

    def log(self, state: TrainState, window: Window, lr: float) -> float:
        """All-reduces the window's terms, prints one line and logs the metrics; returns
        images/s. Collective: every rank calls it at the same steps."""
        rt = self.rt
        keys = sorted(state.terms_sum)
        packed = torch.tensor(
            [state.terms_sum[k] for k in keys] + [float(state.skipped)], dtype=torch.float64
        )
        packed = dist.all_reduce_sum(packed.to(rt.device)).cpu()
        reduced = {k: float(packed[i]) / state.window_steps for i, k in enumerate(keys)}
        rate = self.cfg.data.batch_size * rt.info.world_size * window.steps / window.elapsed
        metrics = {k: reduced[k] for k in state.terms_sum}  # in the method's order
        metrics.update(
            lr=lr,
            images_per_s=rate,
            data_wait_share=window.data / window.elapsed,
            memory_mb=peak_memory_mb(rt.device),
            skipped_images=float(packed[-1]),
        )
        if state.epoch != self.epoch:  # a step function: one point where it steps, not a line
            metrics["epoch"] = float(state.epoch)
            self.epoch = state.epoch
        # The method's terms as it names them: `loss` first, its `loss_<part>` terms after.
        parts = ", ".join(
            f"{k[len('loss_') :]} {v:.4f}" for k, v in metrics.items() if k.startswith("loss_")
        )
        eta = (self.total_steps - state.step) * window.elapsed / window.steps
        self.progress.line(
            f"step {state.step}/{self.total_steps} | loss {metrics.get('loss', float('nan')):.4f}"
            + (f" ({parts})" if parts else "")
            + f" | lr {lr:.4g} | {rate:.1f} img/s | data {metrics['data_wait_share']:.0%}"
            f" | ETA {_format_eta(eta)}"
        )
        if self.cfg.tracking.enabled and self.cfg.tracking.system_metrics:  # every rank
            for node in dist.all_gather_object(self.system.snapshot() if self.system else {}):
                metrics.update(node)
        if rt.info.is_main:
            self.tracker.log_metrics(metrics, state.step)
            tags = self.method.run_tags() if self.method is not None else {}
            tags = {k: v for k, v in tags.items() if self.tags.get(k) != v}
            if tags:
                self.tracker.set_tags(tags)
                self.tags.update(tags)
        state.terms_sum, state.window_steps = {}, 0
        return rate


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
    rd = RunDir(run_dir)
    rt = build_runtime(cfg)
    info, device = rt.info, rt.device
    tracker = tracker or build_tracker(cfg.tracking, rd.path, info.is_main)
    progress = Progress(0, info.is_main)
    name = cfg.method.name

    loader, sampler, steps_per_epoch = build_data(cfg, rt)
    total_steps = cfg.trainer.max_steps or cfg.trainer.epochs * steps_per_epoch
    method, net = build_training_method(cfg, rt)
    optimizer = build_optimizer(method.param_groups(cfg.optim.weight_decay), cfg.optim)
    checkpoints = CheckpointManager(rd.checkpoints, cfg.trainer.keep_checkpoints)
    parts = Parts(method, optimizer, sampler, checkpoints)
    trained = [p for p in method.parameters() if p.requires_grad]

    state = TrainState()
    resumed_from = restore_checkpoint(parts, state, rt, name)
    if resumed_from is not None:
        progress.line(f"resumed from {resumed_from} at step {state.step} (epoch {state.epoch})")
    if info.is_main and state.step == 0:
        tracker.log_params(run_params(asdict(cfg)))
        d = cfg.data
        tracker.log_inputs([dataset_input(d.dataset, d.root, d.split, sampler.length, "train")])
    hosts = sorted(set(dist.all_gather_object(socket.gethostname())))
    if info.is_main:
        tracker.set_tags(
            {
                **default_tags(),
                "world_size": info.world_size,
                "device": str(device),
                "backend": info.backend or "none",
                "hosts": ",".join(hosts),
                "restart_count": state.resumes,
            }
        )

    progress = Progress(total_steps, info.is_main)
    progress.line(
        f"training {total_steps} steps ({steps_per_epoch}/epoch) of {name} on "
        f"{info.world_size} x {device.type}, {cfg.data.batch_size} images per rank"
    )
    images_per_step = cfg.data.batch_size * info.world_size
    # One sampler per node (its local rank 0); read at each log line, so CPU shares cover
    # the steps since the previous one, and gathered to rank 0, the only one that logs.
    system = None
    if cfg.tracking.enabled and cfg.tracking.system_metrics and info.local_rank == 0:
        system = SystemMetrics(node_id=f"node{info.rank // rt.procs_per_node}")
    logger = StepLogger(rt, cfg, total_steps, tracker, progress, system, method, state.epoch)
    window = Window()
    last_save = started = time.monotonic()
    save_s = 0.0  # the last checkpoint write
    rates: list[float] = []
    step_delay = float(os.environ.get(STEP_DELAY_ENV) or 0)
    stop_signal: str | None = None
    lr = learning_rate(state.step, total_steps, cfg.optim, steps_per_epoch)
    if state.step < total_steps:
        # A stop asked for during setup (imports, data, model, resume: tens of seconds on a
        # busy node, where a time limit's signal can land) ends here, before any step: the
        # checkpoint resumed from is this step's; a fresh run saves its step 0 first.
        reason = should_stop(state.step) if should_stop is not None else None
        if _agree([bool(reason)], device)[0]:
            stop_signal = _stop_name(reason)
            if resumed_from is None:
                save_s = _timed_save(parts, state, rt, name)
    while state.step < total_steps and stop_signal is None:
        tic = time.monotonic()
        for batch in loader:
            got = time.monotonic()
            batch = batch.to(device)
            lr = learning_rate(state.step, total_steps, cfg.optim, steps_per_epoch)
            set_lr(optimizer, lr)
            loss, terms = net(batch, state.step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            method.before_optimizer_step(state.step)
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trained, cfg.optim.grad_clip)
            optimizer.step()
            method.after_optimizer_step(state.step)
            if step_delay:
                time.sleep(step_delay)
            sampler.advance(cfg.data.batch_size)
            state.step += 1
            state.skipped += int(batch.skipped)
            state.add_terms(terms)
            done = time.monotonic()
            window.add(got - tic, done - got)
            tic = done

            if state.step % cfg.trainer.log_every == 0 or state.step == total_steps:
                rates.append(logger.log(state, window, lr))
                window = Window()
            else:
                progress.tick(state.step, images_per_step / max(done - got, 1e-9), 0.0)

            # One small all-reduce per step makes every rank take the same decisions.
            reason = should_stop(state.step) if should_stop is not None else None
            time_due, stop = _agree(
                [time.monotonic() - last_save >= cfg.trainer.checkpoint_minutes * 60, bool(reason)],
                device,
            )
            at_end = state.step >= total_steps
            if state.step % cfg.trainer.checkpoint_every == 0 or time_due or stop or at_end:
                save_s = _timed_save(parts, state, rt, name)
                last_save = time.monotonic()
            if stop and not at_end:
                stop_signal = _stop_name(reason)
            if stop_signal is not None or at_end:
                break
        else:
            state.epoch += 1
            sampler.set_epoch(state.epoch)

    summary = {
        "status": "stopped" if stop_signal else "completed",
        "signal": stop_signal,
        "steps": state.step,
        "final_weights": None,
        "images_per_s": float(np.mean(rates)) if rates else 0.0,
        "seconds": time.monotonic() - started,
        "skipped_images": state.skipped,
    }
    if stop_signal is not None:
        if info.is_main:
            # StopSignals keeps when its signal came (another should_stop may not)
            request = getattr(should_stop, "request", None)
            signal_time = getattr(request, "time", None)
            _record_stop(rd.path, tracker, stop_signal, state.step, signal_time, save_s)
        progress.line(
            f"stopping at step {state.step} ({stop_signal}): checkpoint saved, a restart "
            "continues here"
        )
        return summary
    if info.is_main:
        tmp = rd.final_weights.with_suffix(".tmp")
        torch.save(method.export().state_dict(), tmp)
        os.replace(tmp, rd.final_weights)
    dist.barrier()
    summary["final_weights"] = str(rd.final_weights)
    progress.line(
        f"pretraining done: {state.step} steps in {_format_eta(summary['seconds'])}, "
        f"{summary['images_per_s']:.1f} img/s"
    )
    return summary
