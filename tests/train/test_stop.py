"""Stop signals set a flag only; stops are recorded for the job's supervisor."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vice.pipeline import write_config
from vice.run_dir import RunDir
from vice.train.stop import (
    StopEvent,
    StopSignals,
    ignore_stop_signals,
    read_stops,
    record_stop,
)

from .test_trainer import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def test_first_signal_is_recorded_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGUSR2)
    with StopSignals() as stop:
        assert stop(0) is None
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop(5) == "SIGUSR2"  # the first one wins
    assert signal.getsignal(signal.SIGUSR2) is before


def test_second_ctrl_c_interrupts_at_once():
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop(1) == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_loader_workers_ignore_stop_signals():
    code = (
        "import os, signal, time\n"
        "from vice.train.stop import ignore_stop_signals\n"
        "ignore_stop_signals()\n"
        "os.kill(os.getpid(), signal.SIGUSR2); os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('alive')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "alive"
    assert ignore_stop_signals is not None


def test_stops_are_appended_and_a_torn_line_is_skipped(tmp_path):
    record_stop(tmp_path, StopEvent("SIGTERM", 40, 1.5, 11))
    record_stop(tmp_path, StopEvent("SIGUSR2", 90, 2.5, 12))
    with open(RunDir(tmp_path).stops, "a") as f:
        f.write('{"signal": "SIG')
    assert read_stops(tmp_path) == [
        StopEvent("SIGTERM", 40, 1.5, 11),
        StopEvent("SIGUSR2", 90, 2.5, 12),
    ]
    assert read_stops(tmp_path / "nothing") == []


def _torchrun(run_dir: Path, procs: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
            f"--nproc-per-node={procs}",
            "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2",
            str(ROOT / "jobs" / "pretrain.py"), str(run_dir),
        ],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_sigterm_through_torchrun_stops_all_ranks_and_resume_is_bit_exact(tmp_path):
    """The real path: the signal reaches torchrun's agent, which forwards it to both ranks;
    they agree on a step, save together, exit; two restarts later the weights equal an
    uninterrupted run's, and MLflow holds one value per logged step."""
    from mlflow.tracking import MlflowClient

    cfg = tiny_config(steps=10, workers=1)
    cfg.trainer.gpus_per_node = 2
    cfg.trainer.log_every = 1
    cfg.trainer.checkpoint_every = 3
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg.tracking.enabled, cfg.tracking.uri = True, uri
    runs = {}
    for name in ("straight", "stopped"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        write_config(cfg, run_dir)
        runs[name] = run_dir
    proc = _torchrun(runs["straight"], 2)
    assert proc.wait(timeout=600) == 0, proc.stdout.read()

    stopped = runs["stopped"]
    for stop_number in (1, 2):
        proc = _torchrun(stopped, 2)
        deadline = time.monotonic() + 300
        lines = []
        # wait for some training steps after the (re)start, then stop it
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= 2 * stop_number:
                break
        proc.send_signal(signal.SIGTERM)
        out = "".join(lines) + proc.stdout.read()
        assert proc.wait(timeout=120) != 0  # the agent itself was signalled
        stops = read_stops(stopped)
        assert len(stops) == stop_number, out
        assert stops[-1].signal == "SIGTERM"
        assert "checkpoint saved" in out
        assert not RunDir(stopped).final_weights.exists()
    proc = _torchrun(stopped, 2)
    out = proc.stdout.read()
    assert proc.wait(timeout=600) == 0, out
    assert "resumed from" in out

    a = torch.load(RunDir(runs["straight"]).final_weights, weights_only=True)
    b = torch.load(RunDir(stopped).final_weights, weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    client = MlflowClient(uri)
    ids = {n: (d / "mlflow_run_id").read_text().strip() for n, d in runs.items()}
    for key in ("loss", "loss_swav", "lr"):
        ref = [(m.step, m.value) for m in client.get_metric_history(ids["straight"], key)]
        got = [(m.step, m.value) for m in client.get_metric_history(ids["stopped"], key)]
        assert sorted(got) == sorted(ref) and len(ref) == 10, key
    tags = client.get_run(ids["stopped"]).data.tags
    assert tags["restart_count"] == "2" and tags["stops"] == "2"
    assert tags["stop.1"].startswith("SIGTERM at step ")
