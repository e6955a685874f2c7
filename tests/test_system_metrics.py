import sys
import threading
import time
import types
from collections import namedtuple

import numpy as np
import psutil
import pytest

import vice.system_metrics as sm
from vice.system_metrics import SystemMetrics, cpu_percent

CPU_KEYS = {
    "cpu_percent",
    "memory_used_mb",
    "memory_percent",
    "process_rss_mb",
    "process_cpu_percent",
}
Times = namedtuple("Times", "user nice system idle iowait irq softirq steal guest guest_nice")


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(sm, "_gpu_reader", lambda: None)


def test_cpu_percent_from_two_readings():
    before = Times(100, 0, 50, 800, 50, 0, 0, 0, 0, 0)
    # +30 user, +10 system, +50 idle, +10 iowait; guest time (+20) is inside user already.
    after = Times(130, 0, 60, 850, 60, 0, 0, 0, 20, 0)
    assert cpu_percent(before, after) == 40.0
    assert cpu_percent(after, after) == 0.0


def test_snapshot_keys_and_real_numbers(no_gpu):
    metrics = SystemMetrics(interval_s=1, node_id="node3")
    snap = metrics.snapshot()
    assert set(snap) == {f"system/node3/{k}" for k in CPU_KEYS}
    assert all(isinstance(v, float) for v in snap.values())
    vm = psutil.virtual_memory()
    assert snap["system/node3/memory_used_mb"] == pytest.approx(
        (vm.total - vm.available) / 2**20, rel=0.05
    )
    assert snap["system/node3/memory_percent"] == pytest.approx(
        100 * snap["system/node3/memory_used_mb"] * 2**20 / vm.total, abs=0.01
    )
    assert 0 <= snap["system/node3/cpu_percent"] <= 100

    # 160 MB written by this process shows in its resident memory.
    rss0 = snap["system/node3/process_rss_mb"]
    block = np.ones(160 * 2**20, dtype=np.uint8)
    rss1 = metrics.snapshot()["system/node3/process_rss_mb"]
    assert rss1 - rss0 >= 150
    del block


def test_background_sampling_calls_back_with_steps(no_gpu):
    got, step = [], iter(range(100, 200))
    metrics = SystemMetrics(
        interval_s=0.05,
        node_id="node1",
        on_sample=lambda m, s: got.append((m, s, threading.current_thread().name)),
        step_fn=lambda: next(step),
    )
    with metrics:
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(got) >= 3
    assert [s for _, s, _ in got[:3]] == [100, 101, 102]
    assert got[0][2] == "system-metrics-node1"
    assert set(got[0][0]) == {f"system/node1/{k}" for k in CPU_KEYS}
    assert metrics.latest and metrics.samples >= 3
    n = len(got)
    time.sleep(0.2)
    assert len(got) == n  # stopped
    metrics.stop()  # twice is fine
    assert not any(t.name == "system-metrics-node1" for t in threading.enumerate())


def test_default_step_is_seconds_and_a_failing_callback_does_not_stop_sampling(no_gpu, caplog):
    steps = []

    def flaky(metrics, step):
        steps.append(step)
        if len(steps) == 1:
            raise ConnectionError("tracking server away")

    with SystemMetrics(interval_s=0.05, node_id="n0", on_sample=flaky):
        deadline = time.monotonic() + 10
        while len(steps) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(steps) >= 2 and steps[0] == 0  # whole seconds since start
    assert all(isinstance(s, int) for s in steps)
    assert "on_sample failed" in caplog.text


def test_start_twice_and_bad_arguments(no_gpu):
    metrics = SystemMetrics(interval_s=10, node_id="node0").start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            metrics.start()
    finally:
        t0 = time.monotonic()
        metrics.stop()
        assert time.monotonic() - t0 < 1  # does not wait out the 10 s interval
    with pytest.raises(ValueError, match=r"interval_s=0 must be > 0"):
        SystemMetrics(interval_s=0, node_id="node0")
    with pytest.raises(ValueError, match=r"node_id='node/0' must be non-empty, without '/'"):
        SystemMetrics(interval_s=1, node_id="node/0")


def _fake_nvml():
    mem = {0: (2 * 2**30, 8 * 2**30), 1: (6 * 2**30, 8 * 2**30)}  # used, total
    util = {0: 37, 1: 91}
    return types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=util[h], memory=0),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(
            used=mem[h][0], total=mem[h][1], free=mem[h][1] - mem[h][0]
        ),
    )


def test_gpus_through_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml())
    snap = SystemMetrics(interval_s=1, node_id="node0").snapshot()
    gpu = {k.removeprefix("system/node0/"): v for k, v in snap.items() if "/gpu" in k}
    assert gpu == {
        "gpu0/utilization_percent": 37.0,
        "gpu0/memory_used_mb": 2048.0,
        "gpu0/memory_percent": 25.0,
        "gpu1/utilization_percent": 91.0,
        "gpu1/memory_used_mb": 6144.0,
        "gpu1/memory_percent": 75.0,
    }


def test_gpus_through_torch_touch_only_used_devices(monkeypatch):
    asked = []
    cuda = types.SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        device_count=lambda: 2,
        memory_reserved=lambda i: [512 * 2**20, 0][i],  # this process only uses device 0
        mem_get_info=lambda i: asked.append(i) or (3 * 2**30, 4 * 2**30),  # free, total
    )
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=cuda))
    snap = SystemMetrics(interval_s=1, node_id="node0").snapshot()
    gpu = {k.removeprefix("system/node0/"): v for k, v in snap.items() if "/gpu" in k}
    assert gpu == {
        "gpu0/memory_reserved_mb": 512.0,
        "gpu0/memory_used_mb": 1024.0,
        "gpu0/memory_percent": 25.0,
        "gpu1/memory_reserved_mb": 0.0,
    }
    assert asked == [0]  # device 1 has no context of ours: not initialised by asking
    cuda.is_initialized = lambda: False
    snap = SystemMetrics(interval_s=1, node_id="node0").snapshot()
    assert not any("/gpu" in k for k in snap)
