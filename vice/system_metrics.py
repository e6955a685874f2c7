"""Per-node system metrics sampled by a daemon thread: CPU, memory, this process, GPUs.

Keys are `system/<node_id>/<name>`, so the nodes of one run stay apart in one MLflow run:

    cpu_percent           all cores of the node, 0-100
    memory_used_mb        total - available (page cache does not count as used)
    memory_percent        the same as a percentage of the total
    process_rss_mb        resident memory of this process (loader workers not included)
    process_cpu_percent   this process; 100 = one core busy, so up to 100 x cores
    gpu<i>/...            see below; nothing when the node has no CUDA device

GPUs, read from NVML when `pynvml` (package nvidia-ml-py) imports, else from torch:
    NVML:  gpu<i>/utilization_percent, gpu<i>/memory_used_mb, gpu<i>/memory_percent for every
           GPU of the node (NVML's numbering, which ignores CUDA_VISIBLE_DEVICES).
    torch: gpu<i>/memory_reserved_mb (this process's caching allocator) and, for devices this
           process already uses, gpu<i>/memory_used_mb / memory_percent of the whole device.
           torch is only used when the process has imported it, and a device this process has
           not touched is never initialised (a CUDA context costs ~500 MB of GPU memory).
One sampler per node is enough (e.g. on local rank 0): the node-level numbers are the same
from every process.

Why not MLflow's own monitor (`set_system_metrics_node_id`): it logs straight to the server
from each node, so an outage drops its values; these go with the step's metrics through rank
0's tracker and its outage journal (`vice.tracking_journal`), and arrive exactly once.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

log = logging.getLogger(__name__)

MB = 2**20
PREFIX = "system"

#: on_sample(metrics, step): step is step_fn() when given, else whole seconds since start().
SampleCallback = Callable[[dict[str, float], int], None]


def cpu_percent(before: Any, after: Any) -> float:
    """Busy share of the CPU time between two `psutil.cpu_times()` readings, in percent.

    guest/guest_nice are already part of user/nice on Linux, so they are not added twice.
    """

    def total_and_idle(t: Any) -> tuple[float, float]:
        fields = t._asdict()
        total = sum(fields.values()) - fields.get("guest", 0.0) - fields.get("guest_nice", 0.0)
        return total, fields["idle"] + fields.get("iowait", 0.0)

    total0, idle0 = total_and_idle(before)
    total1, idle1 = total_and_idle(after)
    elapsed = total1 - total0
    if elapsed <= 0:
        return 0.0
    busy = elapsed - (idle1 - idle0)
    return round(min(100.0, max(0.0, 100.0 * busy / elapsed)), 2)


class _NvmlReader:
    """Every GPU of the node through NVML (utilisation needs it: torch has no own source)."""

    def __init__(self, pynvml: Any):
        pynvml.nvmlInit()
        self.nvml = pynvml
        self.handles = [
            pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
        ]

    def read(self) -> dict[str, float]:
        out = {}
        for i, handle in enumerate(self.handles):
            util = self.nvml.nvmlDeviceGetUtilizationRates(handle)
            mem = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            out[f"gpu{i}/utilization_percent"] = float(util.gpu)
            out[f"gpu{i}/memory_used_mb"] = round(mem.used / MB, 2)
            out[f"gpu{i}/memory_percent"] = round(100.0 * mem.used / mem.total, 2)
        return out


class _TorchReader:
    """This process's view through torch.cuda; initialises no device itself."""

    def __init__(self, torch: Any):
        self.cuda = torch.cuda

    def read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if not self.cuda.is_initialized():  # nothing allocated yet; reading would initialise
            return out
        for i in range(self.cuda.device_count()):
            reserved = self.cuda.memory_reserved(i)
            out[f"gpu{i}/memory_reserved_mb"] = round(reserved / MB, 2)
            if reserved > 0:  # the device has a context already: asking costs nothing
                free, total = self.cuda.mem_get_info(i)
                out[f"gpu{i}/memory_used_mb"] = round((total - free) / MB, 2)
                out[f"gpu{i}/memory_percent"] = round(100.0 * (total - free) / total, 2)
        return out


def _gpu_reader() -> _NvmlReader | _TorchReader | None:
    try:
        import pynvml

        return _NvmlReader(pynvml)
    except Exception as e:  # not installed, or no driver / no GPU on this node
        log.debug("system metrics: no NVML (%s)", e)
    torch = sys.modules.get("torch")  # never import torch (seconds) just to find no GPU
    if torch is not None and torch.cuda.is_available():
        return _TorchReader(torch)
    return None


class SystemMetrics:
    """Samples the node every `interval_s` seconds in a daemon thread.

    Args:
        interval_s: Seconds between samples (> 0).
        node_id: Names this node in the keys (e.g. "node0"); no "/" or spaces.
        on_sample: Called from the sampler thread with each sample, e.g.
            `lambda m, step: tracker.log_metrics(m, step)`. An exception in it is logged and
            sampling goes on (a tracking server that is briefly away must not stop it).
        step_fn: Gives the step passed to `on_sample` (e.g. the trainer's current step);
            default: whole seconds since `start()`.
    """

    def __init__(
        self,
        interval_s: float = 10.0,
        node_id: str = "node0",
        on_sample: SampleCallback | None = None,
        step_fn: Callable[[], int] | None = None,
    ):
        if not interval_s > 0:
            raise ValueError(f"SystemMetrics: interval_s={interval_s!r} must be > 0 seconds")
        if not node_id or any(c in node_id for c in "/ \t\n"):
            raise ValueError(
                f"SystemMetrics: node_id={node_id!r} must be non-empty, without '/' or spaces "
                "(it becomes part of every metric key, e.g. 'node0')"
            )
        self.interval_s = float(interval_s)
        self.node_id = node_id
        self.on_sample = on_sample
        self.step_fn = step_fn
        self.latest: dict[str, float] = {}
        self.samples = 0
        self._prefix = f"{PREFIX}/{node_id}/"
        self._process = psutil.Process()
        self._process.cpu_percent()  # primes its own counter; the first real value is next
        self._cpu_times = psutil.cpu_times()
        self._gpu = _gpu_reader()
        self._lock = threading.Lock()  # snapshot() may run in the caller and the sampler
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = time.monotonic()

    def snapshot(self) -> dict[str, float]:
        """One sample now (CPU shares are over the time since the previous sample)."""
        with self._lock:
            now = psutil.cpu_times()
            vm = psutil.virtual_memory()
            used = vm.total - vm.available
            values = {
                "cpu_percent": cpu_percent(self._cpu_times, now),
                "memory_used_mb": round(used / MB, 2),
                "memory_percent": round(100.0 * used / vm.total, 2),
                "process_rss_mb": round(self._process.memory_info().rss / MB, 2),
                "process_cpu_percent": round(self._process.cpu_percent(), 2),
            }
            self._cpu_times = now
            if self._gpu is not None:
                try:
                    values.update(self._gpu.read())
                except Exception as e:  # a GPU fault must not end the sampling
                    log.warning("system metrics: reading the GPUs failed: %s", e)
        return {self._prefix + k: float(v) for k, v in values.items()}

    def start(self) -> SystemMetrics:
        if self._thread is not None:
            raise RuntimeError("SystemMetrics.start(): already started")
        self._t0 = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"system-metrics-{self.node_id}", daemon=True
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            metrics = self.snapshot()
            self.latest = metrics
            self.samples += 1
            if self.on_sample is None:
                continue
            try:
                step = self.step_fn() if self.step_fn else int(time.monotonic() - self._t0)
                self.on_sample(metrics, step)
            except Exception:
                log.warning("system metrics: on_sample failed; sampling goes on", exc_info=True)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stops the thread (a sample in progress finishes first); safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def __enter__(self) -> SystemMetrics:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
