"""`tools/status.py` and the MLflow statuses on the real local cluster (tools/slurm_cluster.py
up --nodes 2): a sweep whose parent run stays RUNNING while its points run, and a run whose
jobs were cancelled. (test_preemption.py follows runs through preemptions, time limits,
failures and resubmissions with the status view.)

Each status output is printed (`pytest -s` shows the command's output at each stage).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from .test_preemption import Run, _client, state, status
from .test_slurm_launch import FAST, _command
from .test_tracking_server import SECRETS, _check_run, _no_secrets, _ui_lists

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def test_sweep_parent_run_stays_running_until_its_points_end(cluster, server, tmp_path):
    """A `-m` sweep of 2 points on the cluster, logging to a real `mlflow server`, launched
    with launch.wait=false: the parent run stays RUNNING while a point runs, each point's run
    holds everything users look at (no secret of the environment in any of it), the evals
    leave a summary on the parent, and the status view ends it FINISHED."""
    from mlflow.tracking import MlflowClient

    tmp_path.mkdir(parents=True, exist_ok=True)
    overrides = (*FAST, "optim.lr=0.1,0.3", "trainer.nodes=1", "launch.wait=false")
    proc = subprocess.run(
        _command(tmp_path, *overrides, uri=server),
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, **SECRETS},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _no_secrets(proc.stdout, proc.stderr)
    pretrain_ids = re.findall(r"^  pretrain job: (\d+)", proc.stdout, re.M)
    ids = re.findall(r"^  (?:pretrain|eval) job: (\d+)", proc.stdout, re.M)
    assert len(ids) == 4 and len(pretrain_ids) == 2
    sweep = tmp_path / "sweep"
    parent = (sweep / "mlflow_parent_run_id").read_text().strip()
    assert f"mlflow parent run: {parent}" in proc.stdout
    client = MlflowClient(server)
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
    children = [(sweep / n / "mlflow_run_id").read_text().strip() for n in ("0", "1")]
    points = zip(children, ("0.1", "0.3"), pretrain_ids, strict=True)
    for num, (child, lr, job) in enumerate(points):
        assert (sweep / str(num) / "eval" / "metrics.json").is_file()
        _check_run(client, child, nodes=1, name=f"smoke lr={lr}", slurm=True)
        run = client.get_run(child)
        assert run.data.params["optim.lr"] == lr
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent
        assert tags["slurm.pretrain_job_id"] == job and tags["slurm.eval_job_id"]
        assert tags["slurm.nodes"] == "1" and tags["processes_per_node"] == "1"
    run = client.get_run(parent)
    assert run.data.tags["sweep.evaluated"] == "2"
    assert run.data.tags["best.run_id"] in children
    assert "best.clustering.8.miou" in run.data.metrics
    summary = Path(client.download_artifacts(parent, "sweep_summary.md")).read_text()
    assert "optim.lr=0.1" in summary and "optim.lr=0.3" in summary and "pending" not in summary
    _ui_lists(server, run.info.experiment_id, parent)
    for log in sweep.rglob("*_log.*"):
        _no_secrets(log.read_text(errors="replace"))


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
