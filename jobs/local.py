"""The local pipeline: torchrun (standalone) pretraining, then evaluation, then a summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vice.config import Config
from vice.pipeline import evaluate_run
from vice.tracking import Tracker
from vice.train.stop import read_stops

JOBS = Path(__file__).resolve().parent


def torchrun_command(cfg: Config, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes=1",
        f"--nproc-per-node={cfg.trainer.gpus_per_node}",
        "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2",
        str(JOBS / "pretrain.py"),
        str(run_dir),
    ]


def run_local(cfg: Config, run_dir: Path, tracker: Tracker) -> dict:
    """Pretrains with torchrun on this machine, then evaluates; returns the eval metrics."""
    env = dict(os.environ)
    env.setdefault(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // cfg.trainer.gpus_per_node))
    )
    env["PYTHONUNBUFFERED"] = "1"
    tracker.close()  # training's rank 0 logs into the same run meanwhile
    stops_before = len(read_stops(run_dir))
    proc = subprocess.Popen(torchrun_command(cfg, run_dir), env=env)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # torchrun got the Ctrl-C too and is saving: wait for it
        code = proc.wait()  # (a second Ctrl-C ends this wait)
    stops = read_stops(run_dir)
    if len(stops) > stops_before:
        raise SystemExit(
            f"stopped by {stops[-1].signal} at step {stops[-1].step}, checkpoint saved; "
            f"continue with: python jobs/launch.py <the same overrides> hydra.run.dir={run_dir}"
        )
    if code != 0:
        tracker.finish("FAILED")
        raise SystemExit(f"pretraining failed (exit {code}); run_dir: {run_dir}")
    metrics = evaluate_run(cfg, run_dir, tracker) if cfg.eval.enabled else {}
    tracker.finish("FINISHED")
    return metrics
