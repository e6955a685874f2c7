from pathlib import Path

import pytest

from vice.config import TrackingConfig
from vice.run_dir import RunDir
from vice.tracking import (
    MAX_PARAM_CHARS,
    MlflowTracker,
    Tracker,
    build_tracker,
    default_tags,
    flatten,
    read_run_id,
)


def test_flatten_nested_config():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": None,
    }


def test_disabled_or_not_rank_zero_gives_noop(tmp_path):
    assert type(build_tracker(TrackingConfig(enabled=False), tmp_path)) is Tracker
    assert type(build_tracker(TrackingConfig(), tmp_path, is_main=False)) is Tracker
    assert not RunDir(tmp_path).mlflow_run_id.exists()


@pytest.mark.slow
def test_mlflow_run_is_reopened_from_the_run_dir(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = TrackingConfig(uri=uri, experiment="t")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = MlflowTracker(cfg, run_dir, run_name="r")
    first.log_params({"a.b": 1, "long": "x" * (MAX_PARAM_CHARS + 10)})
    first.log_metrics({"loss": 2.0}, step=1)
    first.set_tags(default_tags())
    first.finish()
    assert read_run_id(run_dir) == first.run_id

    second = MlflowTracker(cfg, run_dir)  # a resumed job or the chained eval
    assert second.run_id == first.run_id
    second.log_params({"a.b": 1})  # same value again is accepted
    second.log_metrics({"loss": 1.0}, step=2)
    second.finish()

    client = MlflowClient(uri)
    run = client.get_run(first.run_id)
    assert run.data.params["a.b"] == "1"
    assert run.data.params["long"].endswith("(full value in params_long.txt)")
    assert [m.value for m in client.get_metric_history(first.run_id, "loss")] == [2.0, 1.0]
    assert run.data.tags["host"] and "torch.version" in run.data.tags
    assert run.info.status == "FINISHED"
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    artifacts = [a.path for a in client.list_artifacts(first.run_id)]
    assert "params_long.txt" in artifacts
    assert "--backend-store-uri " + uri in second.ui_command()


@pytest.mark.slow
def test_steps_logged_again_after_a_resume_are_kept_once(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = TrackingConfig(uri=uri, experiment="t")
    first = MlflowTracker(cfg, tmp_path)
    for step in (1, 2, 3):
        first.log_metrics({"loss": 1.0 / step}, step)
    first.close()  # the job stops here; its checkpoint was at step 1

    resumed = MlflowTracker(cfg, tmp_path)
    for step in (2, 3, 4):  # recomputed after the resume, then new
        resumed.log_metrics({"loss": 1.0 / step}, step)
    resumed.finish()

    history = MlflowClient(uri).get_metric_history(first.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25)]
    assert not resumed.journal.pending()


@pytest.mark.slow
def test_unreachable_server_never_raises_and_keeps_values_pending(tmp_path, caplog):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = TrackingConfig(uri=f"http://127.0.0.1:{port}", experiment="t")
    tracker = MlflowTracker(cfg, tmp_path, background=False)
    tracker.log_params({"a": 1})
    tracker.log_metrics({"loss": 2.0}, 1)
    assert tracker.run_id is None  # created when the server answers
    assert not tracker.close()
    assert [op["op"] for op in tracker.journal.pending()] == ["params", "metrics"]
    assert "unreachable" in caplog.text and "(1 metric values)" in caplog.text


def test_secrets_never_reach_params_or_tags(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-12345")
    cfg = TrackingConfig(uri="http://127.0.0.1:1", experiment="t")
    tracker = MlflowTracker.__new__(MlflowTracker)  # journal only: no server contacted
    tracker.run_dir = tmp_path
    from vice.tracking_journal import Journal

    tracker.journal = Journal(tmp_path)
    tracker._wake = __import__("threading").Event()
    tracker.cfg = cfg
    tracker.log_params({"data.api_key": "abc", "cmd": "curl -H tok-12345", "optim.lr": 0.3})
    tracker.set_tags({"aws_secret_access_key": "zzz", "host": "n1"})
    text = tracker.journal.pending_path.read_text()
    assert "abc" not in text and "tok-12345" not in text and "zzz" not in text
    assert '"optim.lr": "0.3"' in text and '"host": "n1"' in text


def test_git_info_of_a_code_snapshot_comes_from_its_manifest(tmp_path):
    import json

    from vice.tracking import git_info

    (tmp_path / "SNAPSHOT.json").write_text(
        json.dumps({"git_commit": "a" * 40, "git_dirty": "true"})
    )
    assert git_info(tmp_path) == {"git.commit": "a" * 40, "git.dirty": "true"}
    # a plain directory inside some other checkout is not that checkout's code
    inner = Path(__file__).resolve().parent
    assert git_info(inner) == {}
