"""The stages of a run, the same on every path: pretrain -> evaluate -> model -> figures -> sweep
summary -> finish the MLflow run.

The local launch (`jobs/local.py`) runs them one after the other in one process. On SLURM the
pretrain job runs `pretrain` on every node and the eval job, which SLURM starts only after
pretraining succeeded, runs `after_pretraining` (the other stages, in the same order). Every
stage reads what it needs from the run directory, so it does not matter which process or job
runs it.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vice.config import Config
from vice.tracking import Tracker
from vice.train.stop import StopEvent, read_stops

STOP_GRACE_S = 60  # after a stop signal, how long to wait for torchrun to save and exit


def log(message: str) -> None:
    """A timestamped line on stdout: a job log's record of what the stages did."""
    print(f"[vice {time.strftime('%Y-%m-%d %H:%M:%S')}] {message}", flush=True)


def open_run(
    cfg: Config,
    run_dir: Path,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    overrides: list[str] | None = None,
    on_slurm: bool = False,
) -> Tracker:
    """Before the stages: the resolved config into the run directory, and its MLflow run
    (created now; every later process reopens it by the id kept in the run directory), with
    its name and the tags that tell where it came from.

    Args:
        cfg: The validated config, written as the run directory's config.yaml.
        run_dir: The run directory (exists).
        run_name: The MLflow run's name where tracking.run_name is not set (see
            `vice.tracking.run_name`: the experiment and the overrides that distinguish it).
        parent_run_id: The sweep's MLflow run to nest this run under; None for a sweep point
            while the server has not answered (the run is nested once it does).
        overrides: The command line's overrides, kept in the `overrides` tag.
        on_slurm: Whether the run is a SLURM job chain (MLflow's source type JOB, else LOCAL).
    """
    from vice.pipeline import write_config
    from vice.run_dir import RunDir
    from vice.tracking import (
        PARENT_RUN_TAG,
        RUN_NAME_TAG,
        build_tracker,
        source_tags,
        sweep_config,
    )

    path = write_config(cfg, run_dir)
    name = cfg.tracking.run_name or run_name
    tracker = build_tracker(cfg.tracking, run_dir, run_name=name, parent_run_id=parent_run_id)
    tags = {
        **source_tags("jobs/launch.py", "JOB" if on_slurm else "LOCAL"),
        "overrides": shlex.join(overrides or []),
        "run_dir": str(run_dir),
    }
    # Name and parent also as tags: they hold whichever process creates the run (an outage).
    if name:
        tags[RUN_NAME_TAG] = name
    if parent_run_id:
        tags[PARENT_RUN_TAG] = parent_run_id
    tracker.set_tags(tags)
    sweep = RunDir(run_dir).sweep
    if not parent_run_id and sweep_config(sweep.path) is not None:
        # A sweep point whose parent run is not created yet (the server was down at launch).
        tracker.set_parent_sweep(sweep.path)
    tracker.log_artifact(path)
    return tracker


@dataclass(frozen=True)
class Pretrained:
    """How pretraining ended: "completed", "stopped" (on a signal, with a checkpoint saved;
    a restart continues it) or "failed".

    A stop without a `StopEvent` names only its signal: it came before training could take
    it (torchrun still in its rendezvous), and the newest checkpoint is where a restart goes on.
    """

    outcome: str
    exit_code: int
    stop: StopEvent | None = None
    signal: str | None = None  # a stop's signal when no StopEvent was recorded

    def describe(self) -> str:
        if self.outcome == "stopped" and self.stop is not None:
            return f"stopped by {self.stop.signal} at step {self.stop.step}, checkpoint saved"
        if self.outcome == "stopped":
            return (
                f"stopped by {self.signal} before training started (torchrun exit code "
                f"{self.exit_code}); its newest checkpoint stands"
            )
        return f"{self.outcome} (torchrun exit code {self.exit_code})"

    def stopped_by(self, signal_name: str | None) -> Pretrained:
        """This outcome once the job's supervisor knows a stop signal came: a torchrun that
        ended without a recorded stop ended because of it, not of a fault."""
        if signal_name is None or self.outcome != "failed":
            return self
        return Pretrained("stopped", self.exit_code, None, signal_name)


def pretrain(run_dir: str | Path, command: list[str], env: dict[str, str]) -> Pretrained:
    """Runs torchrun (`jobs/torchrun.py`) to its end; says how training ended.

    A stop is told from a failure by `stops.jsonl`: the trainer records every stop it
    completed there, whatever torchrun's exit code.
    """
    stops_before = len(read_stops(run_dir))
    log(f"torchrun: {shlex.join(command)}")
    try:
        code = _wait(subprocess.Popen(command, env=env))
    except BaseException as err:
        # submitit raises this (on global rank 0 only) when it will not requeue the job: the
        # time limit came once more than trainer.max_requeues allows. The run ends here.
        if type(err).__name__ == "UncompletedJobError":
            finish(run_dir, "FAILED")
        raise
    log(f"torchrun exited with code {code}")
    stops = read_stops(run_dir)
    if len(stops) > stops_before:
        return Pretrained("stopped", code, stops[-1])
    return Pretrained("completed" if code == 0 else "failed", code)


def _wait(proc: subprocess.Popen) -> int:
    """Waits for torchrun, which gets this process's stop signals too and then saves."""
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C: wait for the save (a second Ctrl-C ends this wait)
        return proc.wait()
    except BaseException:
        # submitit's signal handler ends this process after requeueing the job: give
        # torchrun a bounded time to save first.
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except BaseException:
            proc.kill()
        raise


def evaluate(cfg: Config, run_dir: str | Path, tracker: Tracker) -> dict[str, Any]:
    """The network's evaluation into `eval/` and the MLflow run; {} when eval.enabled=false."""
    from vice.pipeline import evaluate_run

    if not cfg.eval.enabled:
        return {}
    return evaluate_run(cfg, run_dir, tracker)


def figures(cfg: Config, run_dir: str | Path, tracker: Tracker) -> list[Path]:
    """The views figures (what the network was trained on). A figure is worth less than the
    run: a failure is logged, never raised."""
    from vice.pipeline import render_views

    try:
        paths = render_views(cfg, run_dir)
    except Exception as err:
        log(f"views figure failed (the run goes on): {type(err).__name__}: {err}")
        return []
    for path in paths:
        tracker.log_artifact(path, "views")
    return paths


def sweep_summary(cfg: Config, run_dir: str | Path) -> dict[str, Any] | None:
    """Refreshes the summary on the sweep's parent MLflow run; None when the run is not a
    sweep point. A failure is logged: the point's own results are complete without it."""
    from jobs.sweep_summary import update_parent_summary

    if not cfg.tracking.enabled:
        return None
    try:
        return update_parent_summary(run_dir, cfg.tracking.uri)
    except Exception as err:
        log(f"sweep summary not updated: {type(err).__name__}: {err}")
        return None


def log_model(cfg: Config, run_dir: str | Path, tracker: Tracker) -> Path | None:
    """The pretrained network as an MLflow model of the run (saved into the run directory,
    then sent, so an outage delays it and loses nothing). Worth less than the run: a failure
    is logged, never raised."""
    from vice.pipeline import save_mlflow_model

    if not cfg.tracking.enabled:
        return None
    try:
        path = save_mlflow_model(cfg, run_dir)
    except Exception as err:
        log(f"MLflow model not saved (the run goes on): {type(err).__name__}: {err}")
        return None
    tracker.log_model(path)
    return path


def finish(run_dir: str | Path, status: str) -> None:
    """Marks the run's MLflow run `status` (FINISHED, FAILED, or KILLED: stopped and not
    requeued), best effort: where this is called, a job's own error is what matters."""
    try:
        from vice.pipeline import load_config
        from vice.tracking import build_tracker

        build_tracker(load_config(run_dir).tracking, run_dir).finish(status)
    except Exception as err:
        log(f"could not mark the MLflow run {status}: {err}")


def after_pretraining(run_dir: str | Path) -> dict[str, Any]:
    """evaluate -> model -> figures -> sweep summary -> finish (FINISHED, or FAILED when the
    evaluation fails); returns the evaluation's metrics."""
    from vice.pipeline import load_config
    from vice.tracking import build_tracker

    cfg = load_config(run_dir)
    tracker = build_tracker(cfg.tracking, run_dir)
    try:
        metrics = evaluate(cfg, run_dir, tracker)
    except KeyboardInterrupt:  # Ctrl-C during a local run's evaluation
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    log_model(cfg, run_dir, tracker)
    figures(cfg, run_dir, tracker)
    sweep_summary(cfg, run_dir)
    tracker.finish("FINISHED")
    return metrics
