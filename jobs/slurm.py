"""What runs inside the SLURM jobs of one run: the pretrain task (one per node) and the eval
task. Both call the stages of `jobs/stages.py`, as the local launch does.

Pretraining is one submitit task per node; each runs torchrun with a c10d rendezvous on the
job's first node. The evaluation is a second job that SLURM starts only after pretraining
succeeded (`afterok`, see `jobs/submit.py`).

The jobs import this module from the code snapshot of the launch (`jobs/snapshot.py`) on
their PYTHONPATH: submitit pickles the tasks by reference (`jobs.slurm.PretrainTask`), which
is why this module keeps its name and the tasks their fields (a resubmission from a newer
checkout is unpickled by the snapshot's code). submitit is imported lazily.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import stages
from jobs.stages import log
from jobs.torchrun import Rendezvous, torchrun_command, torchrun_env
from vice.run_dir import RunDir

PORT_BASE = 20000  # rendezvous ports: PORT_BASE + job id % PORT_SPAN, below Linux's ephemeral
PORT_SPAN = 12000  # range (32768+) and far from slurmd/slurmctld/MariaDB ports


def rdzv_port(job_id: str | int) -> int:
    """The c10d rendezvous port of a job: distinct for concurrent jobs (ids differ by less
    than PORT_SPAN) and the same after a requeue (same id)."""
    return PORT_BASE + int(str(job_id).split("_")[0]) % PORT_SPAN


def node_hostnames() -> list[str]:
    """The job's nodes in SLURM's order (node 0 first), as `scontrol` expands them."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST", "")
    if not nodelist:
        return [socket.gethostname()]
    out = subprocess.run(
        ["scontrol", "show", "hostnames", nodelist],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return out.split()


class TrainingStoppedError(RuntimeError):
    """Training saved a checkpoint and exited on a stop signal; a restart continues it."""


class DeferredRequeue:
    """Holds submitit's requeue on its stop signal until training has saved and exited.

    submitit's handler for its signal (SIGUSR2: the time limit is near, or a preemption with
    `send_user_signal`) runs `scontrol requeue` the moment the signal arrives, and SLURM then
    SIGKILLs the job's steps after KillWait (30 s by default), whatever the save still needs.
    Inside the task this handler only notes the signal; `requeue()` runs submitit's own
    handler afterwards (its timeout count against trainer.max_requeues, `checkpoint()`,
    `scontrol requeue`, exit), so the save window is the one the cluster and the user set:
    `cluster.signal_delay_s` before a time limit, the partition's GraceTime on a preemption.
    torchrun receives the signal from SLURM itself, as every process of the job step does.

    SIGTERM (a preemption, a requeue, scancel) is noted too, then handed to submitit's own
    handler (which lets it pass): `stopped_by` names the first stop signal of either kind, so
    a torchrun ended by one before training could save reads as stopped, not failed.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.received: float | None = None  # when the submitit signal came (time.time())
        self.stopped_by: str | None = None  # the first stop signal's name
        self._submitit_handler: Any = None
        self._term_handler: Any = None

    def _note(self, signum: int, frame: Any) -> None:
        self.stopped_by = self.stopped_by or signal.Signals(signum).name
        if self.received is None:
            self.received = time.time()
            log(
                f"{signal.Signals(signum).name} received: training saves and exits first; "
                "the requeue follows the save"
            )

    def _note_term(self, signum: int, frame: Any) -> None:
        self.stopped_by = self.stopped_by or signal.Signals(signum).name
        if callable(self._term_handler):
            self._term_handler(signum, frame)

    def __enter__(self) -> DeferredRequeue:
        self._submitit_handler = signal.signal(self.signum, self._note)
        if self.signum != signal.SIGTERM:
            self._term_handler = signal.signal(signal.SIGTERM, self._note_term)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(self.signum, self._submitit_handler)
        if self.signum != signal.SIGTERM:
            signal.signal(signal.SIGTERM, self._term_handler)

    def requeue(self) -> None:
        """submitit's handling of the signal, now: on global rank 0 it requeues the job and
        exits (SystemExit), or raises UncompletedJobError when the time limit came once more
        than trainer.max_requeues allows; other ranks return."""
        handler = self._submitit_handler
        if self.received is None or not callable(handler):
            return
        waited = time.time() - self.received
        log(f"training saved and exited {waited:.1f} s after the signal; submitit takes over")
        handler(self.signum, None)


@dataclass
class PretrainTask:
    """One node of the pretraining job: runs torchrun for this node's processes."""

    run_dir: str
    snapshot: str
    nnodes: int
    nproc_per_node: int
    eval_follows: bool = True  # False: no eval job; node 0 runs the stages after pretraining

    def __call__(self) -> int:
        import submitit

        import vice

        env = submitit.JobEnvironment()
        hosts = node_hostnames()
        node = int(env.node)
        log(
            f"pretrain job {env.job_id} node {node}/{len(hosts)} ({hosts[node]}), "
            f"restart {os.environ.get('SLURM_RESTART_COUNT', '0')}; code: vice from "
            f"{Path(vice.__file__).parent}, jobs from {Path(__file__).parent}"
        )
        rendezvous = Rendezvous(
            nnodes=self.nnodes,
            endpoint=f"{hosts[0]}:{rdzv_port(env.job_id)}",
            rdzv_id=str(env.job_id),
            is_host=node == 0,
        )
        script = Path(self.snapshot) / "jobs" / "pretrain.py"
        # torchrun waits for the save as long as the longest window SLURM may give it: the
        # time-limit signal's lead (a preemption's GraceTime ends it earlier if shorter)
        window = save_window_s(self.run_dir)
        command = torchrun_command(
            self.run_dir, self.nproc_per_node, rendezvous, script, shutdown_timeout_s=window
        )
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1)
        child_env = torchrun_env(self.nproc_per_node, cpus)
        # torchrun's agent then logs (to the .err log, timestamped) when the rendezvous
        # completed and which global ranks this node got: what one needs when a job hangs.
        child_env.setdefault("LOGLEVEL", "INFO")
        try:
            with DeferredRequeue(submitit_signal()) as deferred:
                result = stages.pretrain(self.run_dir, command, child_env)
            # A signal before the workers could take it (torchrun in its rendezvous, on a busy
            # node) ends torchrun with no stop recorded: still a stop, the newest checkpoint
            # stands, and the requeue continues from it.
            result = result.stopped_by(deferred.stopped_by)
            if result.outcome == "stopped":
                deferred.requeue()  # rank 0: requeues and exits, unless requeues are used up
        except BaseException as err:
            # submitit will not requeue (requeues used up): the run ends FAILED.
            if type(err).__name__ == "UncompletedJobError":
                stages.finish(self.run_dir, "FAILED")
                close_sweep_parent(self.run_dir)
            raise
        if result.outcome == "stopped":
            # Not a failure: SLURM requeues a preempted or `scontrol requeue`d job, submitit
            # one that reached its time limit. The exception keeps a job that nobody requeues
            # from ending COMPLETED (its eval would start without weights): it ends FAILED,
            # and tools/resubmit.py continues it.
            raise TrainingStoppedError(
                f"training {result.describe()}; a restart of job {env.job_id} (requeue or "
                f"tools/resubmit.py) continues from it; run_dir: {self.run_dir}"
            )
        if result.outcome == "failed":
            if node == 0:
                stages.finish(self.run_dir, "FAILED")
                close_sweep_parent(self.run_dir)
            raise RuntimeError(
                f"pretraining failed: torchrun exited with code {result.exit_code} on node "
                f"{node} ({hosts[node]}); run_dir: {self.run_dir}"
            )
        if node == 0 and not self.eval_follows:
            stages.after_pretraining(self.run_dir)  # eval.enabled=false: no evaluation
            close_sweep_parent(self.run_dir)
        return result.exit_code

    def checkpoint(self) -> Any:
        """submitit calls this on rank 0 at the stop signal, then requeues the job: resubmit
        the same task; the trainer resumes from its newest checkpoint. Never a collective."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def submitit_signal() -> signal.Signals:
    """The signal submitit asks SLURM for and requeues on (`SUBMITIT_PREEMPT_SIGNAL`, USR2)."""
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


def save_window_s(run_dir: str) -> int:
    """torchrun's shutdown timeout on SLURM: cluster.signal_delay_s (the save window the user
    set for a time limit), at least 60 s."""
    from vice.pipeline import load_config

    return max(60, int(load_config(run_dir).cluster.signal_delay_s))


def close_sweep_parent(run_dir: str) -> None:
    """After this point's MLflow run ended: the sweep's parent run ends too once no point
    runs, with the worst point's status (`jobs.sweep_summary`). Best effort."""
    try:
        from jobs.sweep_summary import close_parent_if_done
        from vice.pipeline import load_config

        tracking = load_config(run_dir).tracking
        if tracking.enabled and (
            status := close_parent_if_done(Path(run_dir).parent, tracking.uri)
        ):
            log(f"every point of the sweep has ended: its parent MLflow run is {status}")
    except Exception as err:
        log(f"sweep parent run not updated: {type(err).__name__}: {err}")


def _name_eval_job(run_dir: str) -> None:
    """The eval job names itself on the run: the one that ran, whichever eval was queued
    before it (a resubmission cancels and replaces evals). Best effort: the eval matters."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return
    try:
        from vice.pipeline import load_config
        from vice.tracking import build_tracker

        tracker = build_tracker(load_config(run_dir).tracking, run_dir)
        tracker.set_tags({"slurm.eval_job_id": job_id, "slurm.eval_job_ran": job_id})
        tracker.close()
    except Exception as err:
        log(f"MLflow tags of eval job {job_id} not set: {type(err).__name__}: {err}")


@dataclass
class EvalTask:
    """The evaluation job: the stages after pretraining (evaluate -> figures -> sweep summary
    -> finish the MLflow run)."""

    run_dir: str

    def __call__(self) -> dict[str, float]:
        import vice
        from vice.eval.evaluate import format_summary

        log(f"eval of {self.run_dir}; code: vice from {Path(vice.__file__).parent}")
        _name_eval_job(self.run_dir)
        try:
            metrics = stages.after_pretraining(self.run_dir)
        finally:  # FINISHED or FAILED: this point's run has ended
            close_sweep_parent(self.run_dir)
        print(format_summary(metrics), flush=True)
        log(f"metrics: {RunDir(self.run_dir).metrics}")
        return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}

    def checkpoint(self) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self)  # evaluation restarts from scratch
