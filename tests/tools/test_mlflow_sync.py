"""A tracking server that goes away mid-run: training logs on, nothing is lost or doubled.

Uses a real `mlflow server` (tools/mlflow_server.py) on a loopback port; it is stopped in the
middle of a run and started again on the same store.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vice.config import TrackingConfig
from vice.pipeline import write_config
from vice.run_dir import RunDir
from vice.tracking import MlflowTracker
from vice.tracking_journal import Journal

from ..train.test_trainer import tiny_config

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_server_outage_mid_run_loses_and_duplicates_nothing(tmp_path):
    from mlflow.tracking import MlflowClient

    port, state = _free_port(), tmp_path / "server"
    server = ("--state-dir", str(state), "--port", str(port))
    started = _tool("mlflow_server.py", "start", *server)
    assert started.returncode == 0, started.stderr
    uri = f"http://127.0.0.1:{port}"
    assert f"tracking.uri={uri}" in started.stdout
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = tiny_config()
    cfg.tracking = TrackingConfig(uri=uri, experiment="outage")
    write_config(cfg, run_dir)
    try:
        tracker = MlflowTracker(cfg.tracking, run_dir, background=False)
        tracker.log_params({"optim.lr": 0.2})
        for step in (1, 2, 3):
            tracker.log_metrics({"loss": 10.0 - step}, step)
        assert tracker.close()  # all sent

        assert _tool("mlflow_server.py", "stop", *server).returncode == 0
        for step in (4, 5, 6):  # the server is down: training goes on
            tracker.log_metrics({"loss": 10.0 - step}, step)
        assert not tracker.close()
        assert tracker.journal.pending_metric_values() == 3

        # the job restarts from a checkpoint at step 3 while the server is still down
        resumed = MlflowTracker(cfg.tracking, run_dir, background=False)
        for step in (4, 5, 6, 7):
            resumed.log_metrics({"loss": 10.0 - step}, step)
        assert not resumed.close()

        assert _tool("mlflow_server.py", "start", *server).returncode == 0
        synced = _tool("mlflow_sync.py", str(run_dir))
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert "all 10 logged metric values are in MLflow, once each" in synced.stdout

        history = MlflowClient(uri).get_metric_history(tracker.run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(s, 10.0 - s) for s in range(1, 8)]
        check = _tool("mlflow_sync.py", str(run_dir), "--check-only")
        assert check.returncode == 0 and "1/1 runs complete" in check.stdout
    finally:
        _tool("mlflow_server.py", "stop", *server)


def test_sync_reports_missing_directories(tmp_path):
    out = _tool("mlflow_sync.py", str(tmp_path / "nope"))
    assert out.returncode == 2 and "no such directory" in out.stderr
    out = _tool("mlflow_sync.py", str(tmp_path))
    assert out.returncode == 2 and "no run directories" in out.stderr


def _run_dir(tmp_path: Path, uri: str) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = tiny_config()
    cfg.tracking = TrackingConfig(uri=uri, experiment="sync")
    write_config(cfg, run_dir)
    return run_dir


@pytest.mark.slow
def test_sync_restores_the_logged_status_and_checks_params_and_tags(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    sys.path.insert(0, str(ROOT / "tools"))
    import mlflow_sync

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir = _run_dir(tmp_path, uri)
    tracker = MlflowTracker(TrackingConfig(uri=uri, experiment="sync"), run_dir)
    tracker.log_params({"optim.lr": 0.2})
    tracker.set_tags({"mlflow.runName": "smoke lr=0.2", "overrides": "optim.lr=0.2"})
    tracker.log_metrics({"loss": 1.0}, 1)
    tracker.log_artifact(RunDir(run_dir).config)
    tracker.finish("KILLED")
    client = MlflowClient(uri)
    client.update_run(tracker.run_id, status="RUNNING")  # what an older sync tool did

    assert mlflow_sync.main([str(run_dir), "--check-only"]) == 1
    assert "status: RUNNING, logged KILLED" in capsys.readouterr().out
    assert mlflow_sync.main([str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "params, tags, artifacts, models and status as logged" in out
    assert client.get_run(tracker.run_id).info.status == "KILLED"

    client.set_tag(tracker.run_id, "overrides", "optim.lr=9")
    assert mlflow_sync.main([str(run_dir), "--check-only"]) == 1
    out = capsys.readouterr().out
    assert "different tag: overrides is 'optim.lr=9', logged 'optim.lr=0.2'" in out


def test_sync_with_the_server_down_says_so_in_one_line(tmp_path):
    port = _free_port()
    run_dir = _run_dir(tmp_path, f"http://127.0.0.1:{port}")
    Journal(run_dir).append({"op": "metrics", "items": [["loss", 1.0, 0, 1]]})  # a run's log
    out = _tool("mlflow_sync.py", str(run_dir), timeout=120)
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stderr.startswith(f"error: MLflow at http://127.0.0.1:{port} does not answer (")
    assert len(out.stderr.splitlines()) == 1 and out.stdout == "", out.stderr


def _sweep_point(sweep: Path, num: int, uri: str) -> Path:
    """A sweep point as the launcher leaves it: config, its run opened, its job record."""
    import json

    from jobs.stages import open_run

    run_dir = sweep / str(num)
    run_dir.mkdir(parents=True)
    cfg = tiny_config()
    cfg.tracking = TrackingConfig(uri=uri, experiment="sweep")
    overrides = [f"optim.lr=0.{num + 1}"]
    tracker = open_run(cfg, run_dir, f"lr=0.{num + 1}", None, overrides, on_slurm=True)
    record = {"run_dir": str(run_dir), "job_num": num, "overrides": overrides[0]}
    RunDir(run_dir).jobs.write_text(json.dumps(record))
    for step in (1, 2):  # its training
        tracker.log_metrics({"loss": 1.0 / step + num}, step)
    RunDir(run_dir).eval_dir.mkdir()  # its evaluation
    metrics = {"num_classes": 8, "clustering.8.miou": 0.2 + num / 10}
    RunDir(run_dir).metrics.write_text(json.dumps(metrics))
    tracker.finish("FINISHED")
    return run_dir


@pytest.mark.slow
def test_sweep_launched_while_the_server_is_down_syncs_to_one_parent(tmp_path):
    """A whole sweep while the server is down (launch, training, eval, summary, the parent's
    end), then the sync tool: one parent run, its points nested under it, nothing lost."""
    import time

    from mlflow.tracking import MlflowClient

    from jobs.sweep_summary import close_parent_if_done, update_parent_summary
    from vice.tracking import PARENT_RUN_TAG, SweepTracker, open_parent_run

    port, state = _free_port(), tmp_path / "server"
    server = ("--state-dir", str(state), "--port", str(port))
    uri = f"http://127.0.0.1:{port}"
    sweep = tmp_path / "multirun" / "10-00-00"
    started = time.monotonic()
    assert open_parent_run(TrackingConfig(uri=uri, experiment="sweep"), sweep, "sweep s") is None
    points = [_sweep_point(sweep, num, uri) for num in range(2)]
    assert time.monotonic() - started < 60  # no minutes-long wait on the server
    for point in points:
        update_parent_summary(point, uri)
    assert close_parent_if_done(sweep, uri) == "FINISHED"
    assert SweepTracker.read_id(sweep) is None  # all of it waits in the journals

    try:
        assert _tool("mlflow_server.py", "start", *server).returncode == 0
        synced = _tool("mlflow_sync.py", str(tmp_path / "multirun"))
        assert synced.returncode == 0, synced.stdout + synced.stderr
        lines = synced.stdout.splitlines()
        assert lines[0].startswith(f"ok   {sweep} (the sweep's parent run): all 2 logged")
        assert lines[-1] == "3/3 runs complete in MLflow"
        again = _tool("mlflow_sync.py", str(sweep), "--check-only")
        assert again.returncode == 0, again.stdout

        parent = SweepTracker.read_id(sweep)
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("sweep").experiment_id
        runs = {r.info.run_name: r for r in client.search_runs([experiment])}
        assert sorted(runs) == ["lr=0.1", "lr=0.2", "sweep s"]  # one parent, not one per point
        assert runs["sweep s"].info.run_id == parent
        assert runs["sweep s"].info.status == "FINISHED"
        assert runs["sweep s"].data.metrics["best.clustering.8.miou"] == pytest.approx(0.3)
        assert runs["sweep s"].data.tags["sweep.evaluated"] == "2"
        assert runs["sweep s"].data.tags["best.overrides"] == "optim.lr=0.2"
        assert {a.path for a in client.list_artifacts(parent)} == {
            "sweep_summary.md", "sweep_summary.csv"
        }  # fmt: skip
        for name in ("lr=0.1", "lr=0.2"):
            assert runs[name].data.tags[PARENT_RUN_TAG] == parent
            assert runs[name].info.status == "FINISHED"
    finally:
        _tool("mlflow_server.py", "stop", *server)


def test_sync_of_a_sweep_with_the_server_down_says_so_in_one_line(tmp_path):
    from vice.tracking import open_parent_run

    uri = f"http://127.0.0.1:{_free_port()}"
    assert open_parent_run(TrackingConfig(uri=uri, experiment="s"), tmp_path, "sweep") is None
    out = _tool("mlflow_sync.py", str(tmp_path), timeout=120)
    assert out.returncode == 3, out.stdout + out.stderr
    assert out.stderr.startswith(f"error: MLflow at {uri} does not answer (")
    assert len(out.stderr.splitlines()) == 1 and out.stdout == "", out.stderr
