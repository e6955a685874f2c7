"""`tools/status.py` and the MLflow tags on the real local cluster (tools/slurm_cluster.py up
--nodes 2): one run followed through a preemption, a killed worker and a resubmission, and a
sweep whose parent run stays RUNNING while its points run.

Each status output is printed (`pytest -s` shows the command's output at each stage).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_preemption import Run, preempt, state, stops
from .test_slurm_launch import FAST, ROOT, _command

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def status(where: Path) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "status.py"), str(where)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    print(f"\n$ python tools/status.py {where}\n{out.stdout}", flush=True)
    return out.stdout


def _client(tmp: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp}/mlflow.db")


def test_status_through_a_preemption_a_failure_and_a_resubmission(cluster, tmp_path):
    from vice.train.trainer import STEP_DELAY_ENV

    # 1 s more per step: the test's kills land before training ends on a loaded machine
    run = Run(tmp_path, env={STEP_DELAY_ENV: "1"})
    sweep = tmp_path / "sweep"
    run_id = (run.run_dir / "mlflow_run_id").read_text().strip()
    first = run.pretrain
    try:
        # 1. running: state, step/total, images/s, ETA, the MLflow run, rank 0's log
        run.wait_step(3)
        out = status(sweep)
        assert re.search(rf"pretrain job {first}: RUNNING on \S+ \| step \d+/16 \(\d+%\) \| "
                         r"[\d.]+ img/s \| ETA \d+m\d\ds", out), out  # fmt: skip
        assert f"mlflow run: {run_id}" in out
        log = re.search(r"progress log: (\S+)", out).group(1)
        assert re.fullmatch(rf"{run.run_dir}/slurm/{first}_[01]_log\.out", log)
        assert "restarts: 0 by SLURM, 0 resubmitted; stops: 0" in out

        # 2. preempted, requeued, resumed: said without opening a log
        preempt()
        run.wait_running_again(0)
        out = status(sweep)
        step = run.max_step()
        # SIGTERM from SLURM, or SIGUSR2 where the cluster sends the job's signal as well
        stop = re.search(r"stopped at step (\d+) by SIG(TERM|USR2) \(", out)
        assert stop, out
        assert f"resumed at step {stop.group(1)}" in out
        assert f"job {first} started again (restart 1)" in out
        assert "restarts: 1 by SLURM, 0 resubmitted; stops: 1 (last: SIG" in out

        # 3. rank 0's worker killed: the job fails; the cause and the fix are named
        run.wait_step(step + 1)
        run.wait("rank 0's worker", lambda: 0 in run.workers())  # not between two segments
        run.kill_worker(rank=0)
        assert run.wait_ended(run.pretrain) == "FAILED"
        assert run.wait_ended(run.eval) == "CANCELLED"
        out = status(sweep)
        assert re.search(r"cause: rank 0 on \S+ was killed by signal 9 \(SIGKILL\)", out), out
        assert (
            "fix: continue this run from its newest checkpoint with: python tools/resubmit.py "
            f"{run.run_dir} --job {first}"
        ) in out
        assert f"pretrain job {first}: FAILED" in out

        # 4. resubmitted: the run's tags name the new jobs and every attempt's
        old_eval = run.eval
        run.resubmit()
        tags = _client(tmp_path).get_run(run_id).data.tags
        assert tags["slurm.pretrain_job_id"] == run.pretrain != first
        assert tags["slurm.eval_job_id"] == run.eval != old_eval
        assert tags["slurm.pretrain_job_ids"] == f"{first},{run.pretrain}"
        assert tags["slurm.eval_job_ids"] == f"{old_eval},{run.eval}"
        out = status(sweep)
        assert f"past pretrain jobs: {first} FAILED" in out
        assert f"job {first} FAILED; resubmitted as {run.pretrain}" in out

        # 5. completed: the eval that ran names itself
        assert run.wait_ended(run.pretrain) == "COMPLETED", run.logs()[-3000:]
        assert run.wait_ended(run.eval) == "COMPLETED", run.logs()[-3000:]
        out = status(sweep)
        assert f"eval job {run.eval}: COMPLETED" in out and "metrics: " in out
        assert "0 not ended" in out
        run_info = _client(tmp_path).get_run(run_id)
        assert run_info.data.tags["slurm.eval_job_ran"] == run.eval
        assert run_info.info.status == "FINISHED"
        # a stop leaves no torchrun traceback in the logs, one line per rank instead
        errs = "".join(p.read_text() for p in (run.run_dir / "slurm").glob("*_log.err"))
        assert "SignalException" not in errs
        assert len(re.findall(r"^rank \d: stopped by SIG\w+ at step \d+", errs, re.M)) == 2
    finally:
        run.cancel()


def test_sweep_parent_run_stays_running_until_its_points_end(cluster, tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        _command(tmp_path, *FAST, "optim.lr=0.1,0.3", "launch.wait=false"),
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = re.findall(r"^  (?:pretrain|eval) job: (\d+)", proc.stdout, re.M)
    assert len(ids) == 4
    sweep = tmp_path / "sweep"
    parent = (sweep / "mlflow_parent_run_id").read_text().strip()
    client = _client(tmp_path)
    try:
        assert client.get_run(parent).info.status == "RUNNING"  # the launch returned
        deadline = time.monotonic() + 600
        while any(state(i) not in ("COMPLETED", "FAILED", "CANCELLED") for i in ids):
            assert time.monotonic() < deadline, [state(i) for i in ids]
            children = [client.get_run((sweep / n / "mlflow_run_id").read_text().strip())
                        for n in ("0", "1")]  # fmt: skip
            if any(c.info.status == "RUNNING" for c in children):
                assert client.get_run(parent).info.status == "RUNNING"
            time.sleep(3)
        assert [state(i) for i in ids] == ["COMPLETED"] * 4
        status(sweep)
        assert client.get_run(parent).info.status == "FINISHED"
    finally:
        subprocess.run(["scancel", *ids], check=False)


def test_exhausted_requeues_end_failed_with_the_cause_and_the_fix(cluster, tmp_path):
    """trainer.max_requeues=0 and a 2-minute limit: the first time-limit signal saves, then
    submitit refuses the requeue; the run ends FAILED in SLURM and MLflow, and the status view
    names the true cause (not the signal) and the fix."""
    from vice.train.trainer import STEP_DELAY_ENV

    run = Run(
        tmp_path,
        "cluster.time_min=2",
        "cluster.signal_delay_s=60",
        "trainer.checkpoint_minutes=1",
        "trainer.max_requeues=0",
        env={STEP_DELAY_ENV: "8"},  # 16 steps outlast the 2 minutes
    )
    sweep = tmp_path / "sweep"
    run_id = (run.run_dir / "mlflow_run_id").read_text().strip()
    try:
        assert run.wait_ended(run.pretrain) == "FAILED", run.logs()[-3000:]
        assert run.wait_ended(run.eval) == "CANCELLED"
        out = status(sweep)
        assert "cause: time limit reached 1 time: the requeues (trainer.max_requeues=0) are " \
            "used up" in out, out  # fmt: skip
        assert (
            "fix: raise trainer.max_requeues, or continue this run with: python "
            f"tools/resubmit.py {run.run_dir} --job {run.pretrain}"
        ) in out
        assert "stops: 1 (last: SIGUSR2 at step" in out
        assert "SignalException" not in out and "got signal: 12" not in out
        assert _client(tmp_path).get_run(run_id).info.status == "FAILED"
        # the requeue waited for the save, and the save was recorded with its duration
        assert "training saves and exits first; the requeue follows the save" in run.logs()
        assert stops(run.run_dir)[0]["since_signal_s"] is not None
    finally:
        run.cancel()


def test_scancel_ends_the_mlflow_run_killed_once_the_status_view_sees_it(cluster, tmp_path):
    from vice.train.trainer import STEP_DELAY_ENV

    run = Run(tmp_path, env={STEP_DELAY_ENV: "1"})
    run_id = (run.run_dir / "mlflow_run_id").read_text().strip()
    try:
        run.wait_step(2)
        run.cancel()
        assert run.wait_ended(run.pretrain) == "CANCELLED"
        assert run.wait_ended(run.eval) == "CANCELLED"
        out = status(tmp_path / "sweep")
        assert f"mlflow run: {run_id} (ended KILLED now: its jobs ended without ending it)" in out
        assert "  cause: cancelled (scancel)" in out and "TrainingStoppedError" not in out
        assert f"fix: continue it with: python tools/resubmit.py {run.run_dir} --job" in out
        assert _client(tmp_path).get_run(run_id).info.status == "KILLED"
        assert "ended KILLED now" not in status(tmp_path / "sweep")  # once
    finally:
        run.cancel()
