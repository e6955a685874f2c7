"""The sweep summary on the parent run: table, best point, refreshed as evals finish."""

import json

import pytest

from jobs.sweep_summary import best_row, collect, render, update_parent_summary


def _point(sweep, num, miou=None, run_id=None):
    run_dir = sweep / str(num)
    run_dir.mkdir(parents=True)
    record = {"run_dir": str(run_dir), "job_num": num, "overrides": f"optim.lr=0.{num + 1}",
              "mlflow_run_id": run_id or f"r{num}"}  # fmt: skip
    (run_dir / "jobs.json").write_text(json.dumps(record))
    if miou is not None:
        (run_dir / "eval").mkdir()
        metrics = {"num_classes": 8, "clustering.8.miou": miou, "clustering.8.acc": 0.5,
                   "linear.miou": 0.9 - miou, "class_names": ["a"]}  # fmt: skip
        (run_dir / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


def test_table_and_best_point(tmp_path):
    _point(tmp_path, 0, 0.25)
    _point(tmp_path, 1, 0.40)
    _point(tmp_path, 2)  # its eval has not finished
    rows = collect(tmp_path)
    assert [r["num"] for r in rows] == [0, 1, 2]
    row, key = best_row(rows)
    assert (row["num"], key) == (1, "clustering.8.miou")  # the headline metric, not linear
    md, table = render(rows)
    lines = md.splitlines()
    assert lines[0] == (
        "| # | overrides | mlflow run | clustering.8.acc | clustering.8.miou | linear.miou |"
    )
    assert lines[3] == "| 1 | optim.lr=0.2 | r1 | 50.00 | 40.00 | 50.00 |"
    assert lines[4] == "| 2 | optim.lr=0.3 | r2 | pending | pending | pending |"
    assert table.splitlines()[0] == (
        "num,overrides,run_id,run_dir,clustering.8.acc,clustering.8.miou,linear.miou"
    )


def test_no_metrics_no_best(tmp_path):
    _point(tmp_path, 0)
    assert best_row(collect(tmp_path)) is None


@pytest.mark.slow
def test_parent_run_gets_summary_and_best_metrics(tmp_path):
    from mlflow.tracking import MlflowClient

    from vice.config import TrackingConfig
    from vice.tracking import open_parent_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    parent = open_parent_run(TrackingConfig(uri=uri, experiment="s"), sweep, "sweep")
    first = _point(sweep, 0, 0.3)
    _point(sweep, 1)
    assert update_parent_summary(first, uri)["best"] == 0
    second = sweep / "1"
    (second / "eval").mkdir()
    (second / "eval" / "metrics.json").write_text(
        json.dumps({"num_classes": 8, "clustering.8.miou": 0.5, "linear.miou": 0.1})
    )
    assert update_parent_summary(second, uri)["best"] == 1
    client = MlflowClient(uri)
    run = client.get_run(parent)
    assert run.data.metrics["best.clustering.8.miou"] == 0.5
    assert run.data.tags["best.run_id"] == "r1" and run.data.tags["sweep.evaluated"] == "2"
    # MLflow's own columns fill for the parent as for its points
    assert run.data.tags["mlflow.source.name"] == "jobs/launch.py"
    assert run.data.tags["mlflow.source.type"] == "JOB" and run.data.tags["mlflow.user"]
    assert {a.path for a in client.list_artifacts(parent)} == {
        "sweep_summary.md",
        "sweep_summary.csv",
    }
    assert update_parent_summary(tmp_path / "not_a_sweep" / "0", uri) is None


def _status(run_dir, status):
    """What a point's tracker journals when its run ends (`Tracker.finish`)."""
    from vice.tracking_journal import Journal

    Journal(run_dir).append({"op": "terminate", "status": status})


def test_parent_stays_running_until_every_point_ended_then_takes_the_worst(tmp_path):
    from jobs.sweep_summary import close_parent_if_done, point_statuses
    from vice.config import TrackingConfig
    from vice.tracking import open_parent_run
    from vice.tracking_journal import Journal

    down = TrackingConfig(uri=f"http://127.0.0.1:{_free_port()}", experiment="s")
    assert open_parent_run(down, tmp_path, "sweep") is None  # journaled: the server is down
    points = [_point(tmp_path, n) for n in range(3)]
    for point in points:
        Journal(point).append({"op": "tags", "items": {"overrides": "x"}})  # its run opened
    _status(points[0], "FINISHED")
    _status(points[2], "KILLED")
    assert point_statuses(tmp_path) == ["FINISHED", "RUNNING", "KILLED"]
    assert close_parent_if_done(tmp_path, down.uri) is None  # point 1 still runs
    parent = Journal(tmp_path)
    assert parent.record()["status"] is None
    _status(points[1], "FINISHED")
    assert close_parent_if_done(tmp_path, down.uri) == "KILLED"
    _status(points[2], "FAILED")  # e.g. after a resubmission failed again
    assert close_parent_if_done(tmp_path, down.uri) == "FAILED"
    assert close_parent_if_done(tmp_path, down.uri) == "FAILED"  # a second job says it again
    _status(points[2], "FINISHED")
    assert close_parent_if_done(tmp_path, down.uri) == "FINISHED"
    ends = [op["status"] for op in parent.pending() if op["op"] == "terminate"]
    assert ends == ["KILLED", "FAILED", "FINISHED"]  # journaled once each, in order
    # not a sweep: nothing to close
    assert close_parent_if_done(tmp_path / "0", down.uri) is None


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_sweep_launched_before_its_parent_was_journaled_gets_a_journal(tmp_path):
    from mlflow.tracking import MlflowClient

    from vice.run_dir import SweepDir
    from vice.tracking import sweep_config

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("old"), run_name="sweep").info.run_id
    sweep = tmp_path / "sweep"
    point = _point(sweep, 0, 0.3)
    SweepDir(sweep).parent_run_id.write_text(parent + "\n")  # all an older launcher wrote
    assert update_parent_summary(point, uri)["best"] == 0
    assert client.get_run(parent).data.tags["best.run_id"] == "r0"
    assert sweep_config(sweep).uri == uri  # the sync tool finds and checks it from now on
