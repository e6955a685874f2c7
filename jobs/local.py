"""The local path: the stages of `jobs/stages.py` in this process, torchrun standalone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from jobs import stages
from jobs.torchrun import torchrun_command, torchrun_env
from vice.config import Config


def run_local(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Pretrains on this machine, then evaluates, draws, finishes; returns the eval metrics.

    The run directory holds the config and the MLflow run id already (`stages.open_run`).
    Exits (SystemExit) when training stopped on a signal or failed, saying what to do.
    """
    nproc = cfg.trainer.gpus_per_node
    command = torchrun_command(run_dir, nproc)
    result = stages.pretrain(run_dir, command, torchrun_env(nproc, os.cpu_count() or 1))
    if result.outcome == "stopped":
        # Nothing requeues a local run: it ends KILLED (Ctrl-C, kill) until it is continued,
        # which reopens it RUNNING.
        stages.finish(run_dir, "KILLED")
        raise SystemExit(
            f"{result.describe()}; continue with: "
            f"python jobs/launch.py <the same overrides> hydra.run.dir={run_dir}"
        )
    if result.outcome == "failed":
        stages.finish(run_dir, "FAILED")
        raise SystemExit(f"pretraining failed (exit {result.exit_code}); run_dir: {run_dir}")
    return stages.after_pretraining(run_dir)
